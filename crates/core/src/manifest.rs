//! Integrity of what a run writes: `manifest.json` beside the files of a checkpoint records each
//! file's SHA-256, and loading checks the bytes it read against it, so a flipped bit fails with the
//! file's name instead of loading silently.
//!
//! Format (`manifest.json`): `{"version": 1, "sha256": {"<file name>": "<64 hex digits>", ...}}`.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::fs::write_atomic;
use crate::{Error, Result};

/// The manifest's file name inside the directory it describes.
pub const MANIFEST: &str = "manifest.json";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256_hex_parts([bytes])
}

/// Lowercase hex SHA-256 of the concatenation of `parts`.
pub fn sha256_hex_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// File name -> SHA-256 of its content, for the files of one directory.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub sha256: BTreeMap<String, String>,
}

impl Manifest {
    pub fn new() -> Manifest {
        Manifest { version: 1, sha256: BTreeMap::new() }
    }

    /// Record `bytes` as the content of the file `name`.
    pub fn add(&mut self, name: &str, bytes: &[u8]) {
        self.sha256.insert(name.to_string(), sha256_hex(bytes));
    }

    /// Write `dir/manifest.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(MANIFEST), serde_json::to_string_pretty(self).expect("manifest serialises").as_bytes())
    }

    /// Read `dir/manifest.json`; `None` when the directory has none (written by an older octet).
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let p = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&p, e)),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::format(&p, "manifest", e.to_string()))?;
        if m.version != 1 {
            return Err(Error::format(&p, "version", format!("manifest version {}: this octet reads 1", m.version)));
        }
        Ok(Some(m))
    }

    /// Check that `bytes`, read from `path`, are what the manifest recorded for its file name.
    pub fn check(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let want = self
            .sha256
            .get(&name)
            .ok_or_else(|| Error::format(path, "checksum", format!("{name} is not listed in {MANIFEST}")))?;
        let got = sha256_hex(bytes);
        if &got != want {
            return Err(Error::format(
                path,
                "checksum",
                format!("SHA-256 {got} differs from {want} recorded in {MANIFEST}: the file is damaged"),
            ));
        }
        Ok(())
    }

    /// Read `path` and check it.
    pub fn check_file(&self, path: &Path) -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.check(path, &bytes)?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_flipped_bit_fails_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let mut m = Manifest::new();
        m.add("model.safetensors", b"weights");
        m.write(d.path()).unwrap();
        let m = Manifest::read(d.path()).unwrap().unwrap();
        let p = d.path().join("model.safetensors");
        m.check(&p, b"weights").unwrap();
        let e = m.check(&p, b"weighta").unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("damaged"), "{e}");
        let e = m.check(&d.path().join("other.bin"), b"x").unwrap_err().to_string();
        assert!(e.contains("not listed"), "{e}");
    }

    #[test]
    fn a_directory_without_a_manifest_reads_as_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(d.path()).unwrap(), None);
        std::fs::write(d.path().join(MANIFEST), "{").unwrap();
        assert!(Manifest::read(d.path()).unwrap_err().to_string().contains("manifest.json"));
    }
}
