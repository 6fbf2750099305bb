//! The registry packages that carry octet's materials data sets and the materials cache directory;
//! the download and archive plumbing is `octet_fetch`'s (shared with the chip-design corpus), re-exported
//! here.
//!
//! The cache is a plain directory holding the archives under the names pip gives them
//! (`matminer-0.3.9.tar.gz`, `crabnet-2.0.8-py3-none-any.whl`). A file that is there is used as it
//! is; a missing one is downloaded with `python3 -m pip download ... --no-deps` into a temporary
//! folder inside the cache and renamed into place, so an interrupted download never leaves a
//! half-written archive under the final name. Offline use never runs pip and names the missing file.
//!
//! Default cache: `$OCTET_CACHE/materials` when `OCTET_CACHE` is set, else
//! `$XDG_CACHE_HOME/octet/materials`, else `~/.cache/octet/materials`.

use std::path::PathBuf;

use octet_core::{Error, Result};
pub use octet_fetch::*;

/// matminer 0.3.9, source distribution: `matminer/datasets/flla_2015.csv` (3,938 Materials Project
/// structures with formation energies).
pub const MATMINER: Package =
    Package { name: "matminer", version: "0.3.9", dist: Dist::Sdist, file: "matminer-0.3.9.tar.gz" };

/// crabnet 2.0.8, pure-Python wheel: composition-only `formula,target` sets (OQMD, matbench).
pub const CRABNET: Package = Package {
    name: "crabnet",
    version: "2.0.8",
    dist: Dist::Wheel { python_version: "3.10" },
    file: "crabnet-2.0.8-py3-none-any.whl",
};

/// The default cache directory (see the module doc).
pub fn default_cache_dir() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(root) = var("OCTET_CACHE") {
        return Ok(root.join("materials"));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Ok(xdg.join("octet/materials"));
    }
    var("HOME")
        .map(|home| home.join(".cache/octet/materials"))
        .ok_or_else(|| Error::config("cache", "neither OCTET_CACHE, XDG_CACHE_HOME nor HOME is set: pass --cache DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn pip_arguments_pin_the_version_and_the_kind_of_archive() {
        let s = |p: &Package| {
            p.pip_args(Path::new("/c")).iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(s(&MATMINER), "-m pip download matminer==0.3.9 --no-deps --no-binary :all: -d /c");
        assert_eq!(
            s(&CRABNET),
            "-m pip download crabnet==2.0.8 --no-deps --only-binary=:all: --python-version 3.10 -d /c"
        );
    }

    #[test]
    fn offline_without_the_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = ensure(&CRABNET, dir.path(), true, &mut |_| panic!("no progress expected")).unwrap_err().to_string();
        assert!(e.contains("crabnet-2.0.8-py3-none-any.whl") && e.contains("--offline"), "{e}");
        std::fs::write(dir.path().join(CRABNET.file), b"x").unwrap();
        let (p, o) = ensure(&CRABNET, dir.path(), true, &mut |_| {}).unwrap();
        assert_eq!((p, o), (dir.path().join(CRABNET.file), Origin::Cached));
        // A file that is not a zip is reported with its path and a way out.
        let e = read_zip_member(&dir.path().join(CRABNET.file), "a.csv").unwrap_err().to_string();
        assert!(e.contains("not a readable zip") && e.contains("delete the file"), "{e}");
    }
}
