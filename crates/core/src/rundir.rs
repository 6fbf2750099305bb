//! A run directory (checkpoints, journals, prepared data) held by one process at a time.
//!
//! - **Lock**: `<dir>/.lock`, an advisory exclusive lock (`flock`) the kernel releases when the holder
//!   exits or is killed, so a SIGKILL never leaves a stale lock. The file names its holder (pid and
//!   command) for the error a second process gets. The file itself is never removed (removing a lock
//!   file races with a process that just opened it).
//! - **Writable before any work**: creating the directory, the lock and a probe file checks it.
//! - **Stale temporaries** (`.<name>.tmp-<pid>`, left by a killed writer or a full disk) are removed
//!   under the lock, so they cannot pile up across resumes.
//! - **A fresh run never lands on an old one**: `claim_fresh` refuses a directory holding an earlier
//!   run's entries, or removes them when asked to overwrite.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::fs::is_temporary;
use crate::{Error, Result};

/// The lock file's name inside a run directory.
pub const LOCK: &str = ".lock";

/// How deep stale temporaries are looked for (the run directory, `data/`, `models/round-N/`).
const SWEEP_DEPTH: usize = 3;

/// A run directory this process holds; the lock is released on drop (or by the kernel on death).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
    swept: Vec<PathBuf>,
    /// This process created the directory: if nothing but the lock is in it when released (the
    /// run failed before writing anything), it is removed, so a rejected run leaves no trace.
    created: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let only_lock = std::fs::read_dir(&self.path)
            .map(|rd| rd.filter_map(|e| e.ok()).all(|e| e.file_name() == LOCK))
            .unwrap_or(false);
        if only_lock {
            let _ = std::fs::remove_file(self.path.join(LOCK));
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

impl RunDir {
    /// Create `dir` if needed, check that it can be written, take its lock as `who` (e.g. "octet
    /// train"), and remove the temporaries an earlier holder left.
    pub fn hold(dir: &Path, who: &str) -> Result<RunDir> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::format(dir, "directory", "exists and is not a directory"));
        }
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lp = dir.join(LOCK);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lp)
            .map_err(|e| Error::io(&lp, e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process" } else { holder };
                return Err(Error::Other(format!(
                    "{}: the run directory is in use by {holder}; wait for it to finish, or use another directory",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&lp, e)),
        }
        let me = format!("{who} (pid {})\n", std::process::id());
        (|| {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(me.as_bytes())?;
            f.flush()
        })()
        .map_err(|e| Error::io(&lp, e))?;
        // The lock file may pre-exist (read-only directory, writable file): probe a new entry too.
        let probe = dir.join(format!(".probe{}{}", crate::fs::TMP_MARK, std::process::id()));
        File::create(&probe).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))?;
        let mut swept = vec![];
        sweep(dir, SWEEP_DEPTH, &mut swept)?;
        Ok(RunDir { path: dir.to_path_buf(), _lock: f, swept, created })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stale temporaries removed when the lock was taken.
    pub fn swept(&self) -> &[PathBuf] {
        &self.swept
    }

    /// For a fresh run: refuse when the directory holds entries of an earlier run (`owned`: exact
    /// names, or prefixes ending in `*`), or remove them when `overwrite`. Other entries stay.
    pub fn claim_fresh(&self, owned: &[&str], overwrite: bool, resume_hint: &str) -> Result<()> {
        let found = owned_entries(&self.path, owned)?;
        if found.is_empty() {
            return Ok(());
        }
        if !overwrite {
            let names: Vec<String> =
                found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            return Err(Error::Other(format!(
                "{} holds an earlier run ({}): {resume_hint}, pass --overwrite to replace it, or choose another directory",
                self.path.display(),
                names.join(", ")
            )));
        }
        for p in found {
            let meta = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
            let r = if meta.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.map_err(|e| Error::io(&p, e))?;
        }
        crate::fs::sync_dir(&self.path)
    }
}

/// Entries of `dir` named in `owned` (exact names, or prefixes ending in `*`), sorted.
pub fn owned_entries(dir: &Path, owned: &[&str]) -> Result<Vec<PathBuf>> {
    let matches = |n: &str| {
        owned.iter().any(|o| match o.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => n == *o,
        })
    };
    let mut found = vec![];
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.file_name().to_str().is_some_and(matches) {
            found.push(e.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Remove `.<name>.tmp-<pid>` entries under `dir`, `depth` levels deep, never following symlinks.
fn sweep(dir: &Path, depth: usize, swept: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        let ty = e.file_type().map_err(|e| Error::io(&p, e))?;
        if e.file_name().to_str().is_some_and(is_temporary) {
            let r = if ty.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.map_err(|e| Error::io(&p, e))?;
            swept.push(p);
        } else if ty.is_dir() && depth > 1 {
            sweep(&p, depth - 1, swept)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first() {
        let d = tempfile::tempdir().unwrap();
        let held = RunDir::hold(d.path(), "octet train").unwrap();
        let e = RunDir::hold(d.path(), "octet train").unwrap_err().to_string();
        assert!(e.contains("in use by octet train (pid"), "{e}");
        drop(held);
        RunDir::hold(d.path(), "octet train").unwrap();
    }

    #[test]
    fn stale_temporaries_are_swept_and_other_entries_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".ckpt-000010.tmp-99/x")).unwrap();
        std::fs::write(d.path().join(".latest.tmp-99"), "ckpt").unwrap();
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("data/.train.bin.tmp-5"), "").unwrap();
        std::fs::write(d.path().join("notes.txt"), "").unwrap();
        let r = RunDir::hold(d.path(), "test").unwrap();
        assert_eq!(r.swept().len(), 3);
        let mut left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, [".lock", "data", "notes.txt"]);
        assert_eq!(std::fs::read_dir(d.path().join("data")).unwrap().count(), 0);
    }

    #[test]
    fn a_fresh_run_over_an_old_one_is_refused_unless_overwriting() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ckpt-000060")).unwrap();
        std::fs::write(d.path().join("latest"), "ckpt-000060").unwrap();
        std::fs::write(d.path().join("notes.txt"), "").unwrap();
        let r = RunDir::hold(d.path(), "test").unwrap();
        let owned = ["latest", "ckpt-*", "data"];
        let e = r.claim_fresh(&owned, false, "pass --resume DIR to continue it").unwrap_err().to_string();
        assert!(e.contains("ckpt-000060, latest") && e.contains("--overwrite"), "{e}");
        r.claim_fresh(&owned, true, "").unwrap();
        assert!(owned_entries(d.path(), &owned).unwrap().is_empty());
        assert!(d.path().join("notes.txt").exists());
    }

    #[test]
    fn a_directory_it_created_and_left_empty_is_removed_on_release() {
        let d = tempfile::tempdir().unwrap();
        let fresh = d.path().join("run");
        drop(RunDir::hold(&fresh, "test").unwrap());
        assert!(!fresh.exists());
        let r = RunDir::hold(&fresh, "test").unwrap();
        std::fs::write(fresh.join("latest"), "x").unwrap();
        drop(r);
        assert!(fresh.join("latest").exists());
        let existing = d.path().join("mine");
        std::fs::create_dir(&existing).unwrap();
        drop(RunDir::hold(&existing, "test").unwrap());
        assert!(existing.join(LOCK).exists(), "a directory it did not create stays as it was, lock file aside");
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("run");
        std::fs::write(&f, "").unwrap();
        let e = RunDir::hold(&f, "test").unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = RunDir::hold(&f.join("sub"), "test").unwrap_err().to_string();
        assert!(e.contains("run/sub") || e.contains("run"), "{e}");
    }
}
