//! The module graph of a crate, read from its sources: which file's code names which other
//! module (`crate::…`, `super::…`), and the cycles in it. A crate whose files form no cycle can
//! be read — and changed — from the inside out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`ws::reader`) → the modules its file refers to.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten() {
        let p = entry.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file under `src`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" => String::new(),
        [rest @ .., last] if last == "mod" => rest.join("::"),
        all => all.join("::"),
    }
}

/// The module graph of the crate whose sources are in `src`.
pub fn graph(src: &Path) -> Graph {
    let mut paths = Vec::new();
    files(src, &mut paths);
    let modules: BTreeSet<String> = paths.iter().map(|p| module_of(src, p)).collect();
    let resolve = |path: &[&str]| -> Option<String> {
        // The longest prefix that is a module of its own file.
        (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m))
    };
    let mut g = Graph::new();
    for p in &paths {
        let me = module_of(src, p);
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let deps = g.entry(me.clone()).or_default();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                // `crate::{a::x, b}`: each path of the group.
                let group: Vec<&str> = match rest.strip_prefix('{') {
                    Some(inner) => inner.split('}').next().unwrap_or("").split(',').map(str::trim).collect(),
                    None => vec![rest],
                };
                for item in group {
                    let path: Vec<&str> = item
                        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .next()
                        .unwrap_or("")
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .collect();
                    if let Some(m) = resolve(&path).filter(|m| *m != me) {
                        deps.insert(m);
                    }
                }
            }
            for (i, _) in line.match_indices("super::") {
                // `super` from a file is its parent module (from an inline `mod tests`, itself).
                if line[..i].ends_with("::") || line.contains("use super::*") {
                    continue;
                }
                let parent: Vec<&str> = me.split("::").filter(|s| !s.is_empty()).collect();
                let parent = &parent[..parent.len().saturating_sub(1)];
                let rest = &line[i + "super::".len()..];
                let tail: Vec<&str> = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .collect();
                let full: Vec<&str> = parent.iter().copied().chain(tail).collect();
                if let Some(m) = resolve(&full).filter(|m| *m != me && !me.starts_with(&format!("{m}::"))) {
                    deps.insert(m);
                }
            }
        }
    }
    g
}

/// Every cycle of the graph, as one strongly connected component each (a module on its own is
/// no cycle).
pub fn cycles(g: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm.
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v.as_str());
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found() {
        let mut g = Graph::new();
        let edge = |g: &mut Graph, a: &str, b: &str| {
            g.entry(a.into()).or_default().insert(b.into());
            g.entry(b.into()).or_default();
        };
        edge(&mut g, "a", "b");
        edge(&mut g, "b", "c");
        edge(&mut g, "c", "a");
        edge(&mut g, "c", "d");
        assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
        g.get_mut("c").unwrap().remove("a");
        assert!(cycles(&g).is_empty());
    }
}
