//! Every input in the fuzz corpus (`fuzz/corpus/<target>/`), and every input that once crashed a
//! target (`fuzz/regressions/<target>/`), through the target's checks: the fuzzers' findings
//! stay fixed without a fuzzer installed.

use std::path::PathBuf;

use arena_gameserver::fuzzing::TARGETS;

fn inputs(dir: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz").join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn the_corpus_passes_every_check() {
    for (target, check) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(corpus.len() >= 4, "fuzz/corpus/{target} holds {} inputs: write the seeds", corpus.len());
        for (path, data) in corpus.iter().chain(inputs("regressions", target).iter()) {
            let result = std::panic::catch_unwind(|| check(data));
            assert!(result.is_ok(), "{target} failed on {}", path.display());
        }
    }
}
