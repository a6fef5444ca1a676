//! The ready file: once a process serves, it writes what it bound (as JSON) to a path it was
//! given, atomically. Whoever started it with port 0 reads its real addresses there: no guessing
//! free ports, so no race between picking a port and binding it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Write `what` as JSON to `path` (through a temporary file and a rename, so a reader never
/// sees half of it).
pub fn write<T: Serialize>(path: &Path, what: &T) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(what).map_err(io::Error::other)?;
    let tmp = tmp_path(path);
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Wait until `path` holds a complete ready file, polling every 20 ms, for at most `limit`;
/// `alive` is asked between polls and stops the wait when it says the process is gone.
pub async fn wait<T: DeserializeOwned>(path: &Path, limit: Duration, mut alive: impl FnMut() -> bool) -> io::Result<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match std::fs::read(path) {
            Ok(bytes) => return serde_json::from_slice(&bytes).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !alive() {
            return Err(io::Error::other(format!("the process exited before writing {}", path.display())));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no {} after {limit:?}", path.display())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn written_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("arena-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready.json");
        let _ = std::fs::remove_file(&path);
        let missing = wait::<serde_json::Value>(&path, Duration::from_millis(50), || true).await;
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::TimedOut);
        write(&path, &serde_json::json!({"http": "127.0.0.1:1"})).unwrap();
        let v: serde_json::Value = wait(&path, Duration::from_secs(1), || true).await.unwrap();
        assert_eq!(v["http"], "127.0.0.1:1");
        assert!(!tmp_path(&path).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
