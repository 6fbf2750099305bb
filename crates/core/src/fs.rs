//! Writing files so that nothing is ever half-written: a temporary file beside the target, fsync,
//! rename over the target, fsync of the directory so the rename itself survives a power cut.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Write `bytes` to `path` atomically (creating its directory): a reader sees the old file or the new
/// one, never a prefix; an error removes the temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().ok_or_else(|| Error::format(path, "path", "has no file name"))?;
    let tmp = dir.join(format!(".{}{TMP_MARK}{}", name.to_string_lossy(), std::process::id()));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(dir)
}

/// fsync a directory: makes the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// What marks a temporary name: `.<final name>.tmp-<pid>` (files by `write_atomic`, checkpoint
/// directories by the trainer).
pub const TMP_MARK: &str = ".tmp-";

/// Whether `name` is a temporary of the `.<name>.tmp-<pid>` form.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        && name.rsplit_once(TMP_MARK).is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn temporaries_are_recognised_by_their_pid_suffix() {
        assert!(is_temporary(".ckpt-000010.tmp-1234"));
        assert!(is_temporary(".latest.tmp-7"));
        assert!(!is_temporary("ckpt-000010"));
        assert!(!is_temporary(".latest.tmp-"));
        assert!(!is_temporary(".notes.tmp-old"));
        assert!(!is_temporary("latest.tmp-12"));
    }
}
