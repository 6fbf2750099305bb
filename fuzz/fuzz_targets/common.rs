//! Shared by the fuzz targets: the input as a file (for readers that take a path), in a directory
//! private to this process under /dev/shm (or the temp dir), rewritten on every run.

use std::path::{Path, PathBuf};

/// A scratch directory for this fuzzing process.
pub fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let d = base.join(format!("octet-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Write `data` to `name` in the scratch directory and return its path.
#[allow(dead_code)] // not every target reads a file
pub fn as_file(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, data).unwrap();
    p
}
