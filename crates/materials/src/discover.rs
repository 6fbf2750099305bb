//! The discovery loop (`octet materials discover`): generate -> featurise -> ensemble median and IQR
//! (volume augmentation) -> select by predicted energy above hull with an uncertainty bonus ->
//! oracle-relax the selection and a random control sample of the rest -> update the hull -> add
//! every oracle result (final structure and trajectory frames) to the training set -> fine-tune the
//! ensemble -> next round.
//!
//! Candidates (`candidates`): AIRSS random cells of the system's binary and ternary compositions
//! (up to `max_atoms` atoms, space group P1 or P-1) and, once the loop has structures within 50
//! meV/atom of the hull, SAPS substitutions of them (full, or one Wyckoff orbit), deduplicated
//! against every earlier candidate by reduced formula + moyo space group + radial fingerprint.
//!
//! Round 0 relaxes one fcc cell of each element with the oracle (the hull's elemental references,
//! so that formation energies are the oracle's own) and a random `bootstrap` sample of candidates,
//! and trains the first ensemble from scratch on those oracle labels alone. The flla-trained (DFT)
//! models are not used: they need registry downloads this loop must not depend on, flla holds few
//! structures in an EMT-covered system, and the targets here are formation energies against the
//! oracle's own relaxed elements, a different energy scale from DFT's. Later rounds fine-tune the
//! previous round's members on everything verified so far.
//!
//! With `known` (a data set such as flla_2015), round 0 also relaxes every known structure whose
//! elements lie in the system: they join the hull (so a hit must beat known phases, as in GNoME,
//! and a known elemental phase such as flla's O2 crystal becomes the reference where it is lower
//! than the fcc cell), the training set and the substitution parents. Their data-set targets (flla:
//! DFT formation energies) are never trained on; each round reports the ensemble's MAE against them
//! (`dft_mae_*`, a different target from the oracle's) and the oracle's own distance from them
//! (`oracle_vs_dft_mae`). With `holdout` > 0, that share of candidates (by a hash of the id) is
//! verified and scored but never trained on: `heldout_mae_{before,after}` is the MAE of the
//! ensembles before and after the round's training on every held-out label so far (predicted from
//! the unrelaxed candidate, as selection does; `heldout_mae_relaxed_*` from the relaxed structure),
//! the learning curve over rounds.
//!
//! Model targets are formation energies per atom against the oracle-relaxed elemental references.
//! By default every trajectory frame is labelled with its relaxation's final energy (`frame_labels
//! = relaxed`): candidates are unrelaxed, and a model of each geometry's own energy ranks them by
//! how far they are from a minimum (measured on EMT Cu-Ag-Au-Pd: AIRSS cells lie 0.77 eV/atom above
//! their relaxed energies on average; such a model's MAE against relaxed energies was ~490 meV/atom);
//! a prediction becomes an energy above hull through the current diagram (`hull::PhaseDiagram`),
//! whose entries are every successful oracle result so far. The model calls "stable" at predicted
//! e_above_hull <= 0. Selection takes the `select` lowest `pred_e_above_hull - bonus * iqr`; the
//! control sample is `control` uniformly drawn unselected candidates. Candidates whose reduced
//! formula is in the flla held-out split (`dataset::split_of == Valid`) are verified and scored but
//! never trained on.
//!
//! Run state lives in one directory:
//! - `journal.jsonl` (`journal::Journal`, append + fsync per line): `config` (first line; a resume
//!   with another configuration is refused naming the field), `plan` (a round's oracle requests with
//!   their structures, roles and predictions, written before any oracle call of the round), `oracle`
//!   (one per result, appended as it arrives), `trained` (the round's ensemble is saved), `round`
//!   (the round's metrics). `--resume` replays it: planned rounds are not re-planned, journaled
//!   results are never recomputed (calls in flight at a kill are redone), a saved ensemble is not
//!   retrained;
//! - `models/round-<r>/member-<k>.safetensors`, each written atomically;
//! - `metrics.jsonl` (one line per finished round) and `metrics.png` (2 x 3 panels, rounds on x:
//!   hit rate, prevalence, DAF, F1, MAE before training, cumulative stable; points with Wilson 95%
//!   bars where they apply), both rewritten atomically after each round.
//!
//! Metrics of a round (verified = the oracle returned a result): a hit is a candidate the oracle
//! places on or below the hull of the phases known before the round (e_above_hull <= 1e-6 eV/atom;
//! also counted within 25 meV/atom); hit rate = hits / verified selected; prevalence = the control
//! sample's stable share; DAF = hit rate / prevalence; precision/recall/F1 of the model's stable call
//! over all verified candidates of the round; MAE of the predicted formation energy (on the
//! unrelaxed candidate, before training on the round) against the oracle's relaxed one; stable
//! structures found: loop entries that are vertices of the updated hull, and the cumulative count
//! of candidates that broke the hull when verified. Intervals: Wilson score, 95%.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use octet_core::{Error, Result, Rng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::candidates::{self, AirssConfig, Candidate, Dedup, Origin};
use crate::composition::Composition;
use crate::dataset::{Split, fnv1a64, split_of};
use crate::element::Element;
use crate::graph;
use crate::hull::{HullEntry, PhaseDiagram};
use crate::lattice::Lattice;
use crate::oracle::{OracleConfig, OracleRequest, OracleResult, Task, TrajectoryStep, run_oracle_each};
use crate::structure::Structure;
use crate::train::{self, Member, ModelKind, Sample, TrainConfig};

/// On or below the hull, with room for round-off.
pub const STABLE_TOL: f64 = 1e-6;
/// The looser hit criterion (eV/atom).
pub const NEAR_HULL: f64 = 0.025;

/// Everything that decides a run's results (stored as the journal's first line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscoverConfig {
    /// The chemical system.
    pub elements: Vec<String>,
    pub rounds: usize,
    /// Candidates generated per round (after deduplication).
    pub candidates: usize,
    /// Selected for the oracle per round.
    pub select: usize,
    /// Random control sample per round.
    pub control: usize,
    /// Random candidates relaxed in round 0 to train the first ensemble.
    pub bootstrap: usize,
    /// Atoms per cell at most.
    pub max_atoms: usize,
    /// Selection score: predicted e_above_hull - bonus * IQR.
    pub uncertainty_bonus: f64,
    pub ensemble: usize,
    pub width: usize,
    pub mp_steps: usize,
    pub epochs: usize,
    pub finetune_epochs: usize,
    pub lr: f64,
    /// Trajectory frames per relaxation added to training (evenly spaced, besides the final one).
    pub traj_frames: usize,
    pub fmax: f64,
    pub relax_steps: usize,
    /// Volume factors of the test-time augmentation.
    pub volume_factors: Vec<f64>,
    /// Share of a round's candidates from substitutions once stable parents exist.
    pub substitution_share: f64,
    pub seed: u64,
    /// Oracle name (recorded; the command is not part of the identity).
    pub oracle: String,
    /// Labels of trajectory frames: `relaxed` (each frame labelled with its relaxation's final
    /// energy: the model learns "energy after relaxation from here", what selection needs from an
    /// unrelaxed candidate) or `own` (each frame's own energy: a potential-energy model).
    #[serde(default = "relaxed")]
    pub frame_labels: String,
    /// pymatgen's `lambda.json` for substitution probabilities (uniform without it).
    #[serde(default)]
    pub lambda: Option<PathBuf>,
    /// Known structures (an `octet materials data` set such as flla_2015.jsonl, or flla's CSV):
    /// those whose elements lie in the system are relaxed by the oracle in round 0 and join the
    /// hull, the training set (held-out formulas excepted) and the substitution parents; their
    /// data-set targets (flla: DFT formation energies) give each round's `dft_mae`.
    #[serde(default)]
    pub known: Option<PathBuf>,
    /// Share of candidates (bootstrap, selected, control; chosen by a hash of the id) whose oracle
    /// labels are never trained on: each round reports the ensemble's MAE on them (`heldout_mae`).
    #[serde(default)]
    pub holdout: f64,
}

impl DiscoverConfig {
    /// CI-sized defaults for a chemical system.
    pub fn new(elements: &[&str]) -> DiscoverConfig {
        DiscoverConfig {
            elements: elements.iter().map(|s| s.to_string()).collect(),
            rounds: 3,
            candidates: 400,
            select: 50,
            control: 100,
            bootstrap: 60,
            max_atoms: 6,
            uncertainty_bonus: 0.5,
            ensemble: 4,
            width: 32,
            mp_steps: 2,
            epochs: 30,
            finetune_epochs: 10,
            lr: 2e-3,
            traj_frames: 3,
            fmax: 0.05,
            relax_steps: 150,
            volume_factors: vec![0.9, 1.0, 1.1],
            substitution_share: 0.3,
            seed: 0,
            oracle: "emt".into(),
            lambda: None,
            frame_labels: relaxed(),
            known: None,
            holdout: 0.0,
        }
    }

    pub fn validate(&self) -> Result<Vec<Element>> {
        let mut els = Vec::new();
        for s in &self.elements {
            let e =
                Element::from_symbol(s).ok_or_else(|| Error::config("elements", format!("`{s}` is not an element")))?;
            if candidates::covalent_radius(e).is_none() || candidates::atomic_volume(e).is_none() {
                return Err(Error::config("elements", format!("{e}: no covalent radius / atomic volume tabulated")));
            }
            els.push(e);
        }
        let checks: [(&str, bool); 10] = [
            ("holdout", (0.0..=0.5).contains(&self.holdout)),
            ("elements", els.len() >= 2),
            ("rounds", self.rounds >= 1),
            ("select", self.select >= 1),
            ("candidates", self.candidates >= self.select + self.control),
            ("bootstrap", self.bootstrap >= 4),
            ("max_atoms", self.max_atoms >= 2),
            ("ensemble", self.ensemble >= 1),
            ("epochs", self.epochs >= 1 && self.finetune_epochs >= 1),
            (
                "volume_factors",
                !self.volume_factors.is_empty() && self.volume_factors.iter().all(|f| *f > 0.5 && *f < 2.0),
            ),
        ];
        if !["relaxed", "own"].contains(&self.frame_labels.as_str()) {
            return Err(Error::config("frame_labels", format!("`{}`: relaxed or own", self.frame_labels)));
        }
        for (field, ok) in checks {
            if !ok {
                return Err(Error::config(field, "out of range (see DiscoverConfig)"));
            }
        }
        Ok(els)
    }
}

/// moyo's space group number of `s`, or `fallback` when the search fails.
fn detected_space_group(s: &Structure, fallback: u16) -> u16 {
    crate::symmetry::analyse(s, crate::symmetry::SYMPREC).map_or(fallback, |x| x.number)
}

fn relaxed() -> String {
    "relaxed".into()
}

/// What the loop reports as it goes (the CLI draws progress bars from it).
#[derive(Clone, Debug)]
pub enum DiscoverEvent {
    /// A stage starts: `total` units of work.
    Stage { round: usize, name: String, total: usize },
    /// One more unit done in the current stage.
    Advance,
    /// A round finished: its summary line.
    Summary(String),
    /// Anything else worth a line (resume notes).
    Note(String),
}

/// A planned oracle request: the candidate, why it is there and what the model said.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PlanItem {
    id: String,
    /// `reference`, `bootstrap`, `selected` or `control`.
    role: String,
    origin: Origin,
    cell: [[f64; 3]; 3],
    species: Vec<String>,
    frac: Vec<[f64; 3]>,
    #[serde(default)]
    pred_e_form: Option<f64>,
    #[serde(default)]
    pred_iqr: Option<f64>,
    #[serde(default)]
    pred_e_above_hull: Option<f64>,
    /// The known structure's data-set target (flla: DFT formation energy, eV/atom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dft_e_form: Option<f64>,
}

impl PlanItem {
    fn structure(&self) -> Result<Structure> {
        let species = self
            .species
            .iter()
            .map(|s| {
                Element::from_symbol(s).ok_or_else(|| Error::Other(format!("plan item `{}`: element `{s}`", self.id)))
            })
            .collect::<Result<Vec<_>>>()?;
        Structure::new(Lattice::new(self.cell)?, species, self.frac.clone())
    }

    fn new(c: &Candidate, role: &str) -> PlanItem {
        PlanItem {
            id: c.id.clone(),
            role: role.into(),
            origin: c.origin.clone(),
            cell: *c.structure.lattice.matrix(),
            species: c.structure.species.iter().map(|e| e.symbol().to_string()).collect(),
            frac: c.structure.frac_coords.clone(),
            pred_e_form: None,
            pred_iqr: None,
            pred_e_above_hull: None,
            dft_e_form: None,
        }
    }
}

/// The part of an oracle result the loop keeps (energies and geometry; forces are not trained on).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Verified {
    id: String,
    ok: bool,
    energy: f64,
    cell: [[f64; 3]; 3],
    positions: Vec<[f64; 3]>,
    steps: usize,
    converged: bool,
    wall_s: f64,
    error: Option<String>,
    /// Subsampled trajectory: (energy, cell, positions).
    frames: Vec<Frame>,
}

/// A kept trajectory frame: energy (eV), cell rows, Cartesian positions.
type Frame = (f64, [[f64; 3]; 3], Vec<[f64; 3]>);

fn subsample(traj: &[TrajectoryStep], k: usize) -> Vec<Frame> {
    if traj.len() < 2 || k == 0 {
        return Vec::new();
    }
    let last = traj.len() - 1; // the final frame is the result itself
    let mut idx: Vec<usize> = (0..k).map(|i| i * last / k).collect();
    idx.dedup();
    idx.into_iter().map(|i| (traj[i].energy, traj[i].cell, traj[i].positions.clone())).collect()
}

impl Verified {
    fn from(r: &OracleResult, frames: usize) -> Verified {
        Verified {
            id: r.id.clone(),
            ok: r.ok,
            energy: r.energy,
            cell: r.cell,
            positions: r.positions.clone(),
            steps: r.steps,
            converged: r.converged,
            wall_s: r.wall_s,
            error: r.error.clone(),
            frames: if r.ok { subsample(&r.trajectory, frames) } else { Vec::new() },
        }
    }
}

/// The state replayed from the journal.
#[derive(Default)]
struct State {
    plans: BTreeMap<usize, Vec<PlanItem>>,
    results: HashMap<String, Verified>,
    trained: HashSet<usize>,
    rounds: BTreeMap<usize, Value>,
}

fn rec(kind: &str, round: usize, body: Value) -> Value {
    let mut v = json!({"kind": kind, "round": round});
    if let (Some(o), Value::Object(b)) = (v.as_object_mut(), body) {
        o.extend(b);
    }
    v
}

fn replay(path: &Path, records: &[Value], cfg: &DiscoverConfig) -> Result<State> {
    let mut st = State::default();
    for (i, r) in records.iter().enumerate() {
        let field = |k: &str| r.get(k).ok_or_else(|| Error::format(path, format!("record {} `{k}`", i + 1), "missing"));
        let kind = field("kind")?.as_str().unwrap_or_default();
        let round = field("round")?.as_u64().unwrap_or(0) as usize;
        let bad = |k: &str, e: serde_json::Error| Error::format(path, format!("record {} `{k}`", i + 1), e.to_string());
        match kind {
            "config" => {
                let old: DiscoverConfig =
                    serde_json::from_value(field("config")?.clone()).map_err(|e| bad("config", e))?;
                let (a, b) = (serde_json::to_value(&old).unwrap(), serde_json::to_value(cfg).unwrap());
                if let (Some(a), Some(b)) = (a.as_object(), b.as_object())
                    && let Some(k) = b.keys().find(|k| a.get(*k) != b.get(*k))
                {
                    return Err(Error::format(
                        path,
                        format!("config.{k}"),
                        format!("the run was started with {} and resumed with {}", a[k], b[k]),
                    ));
                }
            }
            "plan" => {
                let items: Vec<PlanItem> =
                    serde_json::from_value(field("items")?.clone()).map_err(|e| bad("items", e))?;
                st.plans.insert(round, items);
            }
            "oracle" => {
                let v: Verified = serde_json::from_value(field("result")?.clone()).map_err(|e| bad("result", e))?;
                st.results.insert(v.id.clone(), v);
            }
            "trained" => {
                st.trained.insert(round);
            }
            "round" => {
                st.rounds.insert(round, field("metrics")?.clone());
            }
            k => return Err(Error::format(path, format!("record {} `kind`", i + 1), format!("unknown `{k}`"))),
        }
    }
    Ok(st)
}

/// Wilson score interval (95%) of k successes in n.
pub fn wilson(k: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (z, n, p) = (1.959964, n as f64, k as f64 / n as f64);
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    Some(((c - h).max(0.0), (c + h).min(1.0)))
}

fn rate(k: usize, n: usize) -> Value {
    match wilson(k, n) {
        Some((lo, hi)) => json!({"k": k, "n": n, "value": k as f64 / n as f64, "ci95": [lo, hi]}),
        None => json!({"k": k, "n": n, "value": null, "ci95": null}),
    }
}

struct Loop<'a> {
    dir: PathBuf,
    cfg: DiscoverConfig,
    elements: Vec<Element>,
    oracle: &'a OracleConfig,
    journal: Mutex<crate::journal::Journal>,
    st: State,
    on: &'a (dyn Fn(&DiscoverEvent) + Sync),
    subst: Option<candidates::SubstitutionTable>,
}

/// Runs (or, with `resume`, continues) the loop in `dir`; returns the per-round metrics.
pub fn discover(
    dir: &Path,
    cfg: &DiscoverConfig,
    oracle: &OracleConfig,
    resume: bool,
    on: &(dyn Fn(&DiscoverEvent) + Sync),
) -> Result<Vec<Value>> {
    let elements = cfg.validate()?;
    // One process per run directory; temporaries a killed run left are removed under the lock.
    let held = octet_core::rundir::RunDir::hold(dir, "octet materials discover")?;
    for p in held.swept() {
        on(&DiscoverEvent::Note(format!("removed {}, left by an interrupted run", p.display())));
    }
    let jpath = dir.join("journal.jsonl");
    if jpath.exists() && !resume {
        return Err(Error::format(
            &jpath,
            "journal",
            "a run exists in this directory: pass --resume, or use a new --dir",
        ));
    }
    let opened = crate::journal::Journal::open(&jpath)?;
    if opened.dropped_bytes > 0 {
        on(&DiscoverEvent::Note(format!("journal: dropped a torn last line ({} bytes)", opened.dropped_bytes)));
    }
    let st = replay(&jpath, &opened.records, cfg)?;
    let mut lp = Loop {
        dir: dir.to_path_buf(),
        cfg: cfg.clone(),
        elements,
        oracle,
        journal: Mutex::new(opened.journal),
        st,
        on,
        subst: cfg.lambda.as_deref().map(candidates::SubstitutionTable::read).transpose()?,
    };
    if opened.records.is_empty() {
        lp.append(rec("config", 0, json!({"config": cfg})))?;
    } else {
        on(&DiscoverEvent::Note(format!(
            "resuming: {} journaled oracle results, {} rounds done",
            lp.st.results.len(),
            lp.st.rounds.len()
        )));
    }
    lp.run()?;
    Ok(lp.st.rounds.values().cloned().collect())
}

impl Loop<'_> {
    fn append(&self, v: Value) -> Result<()> {
        self.journal.lock().unwrap().append(&v)
    }

    fn models_dir(&self, round: usize) -> PathBuf {
        self.dir.join("models").join(format!("round-{round}"))
    }

    fn run(&mut self) -> Result<()> {
        // Round 0: references and the bootstrap sample.
        if !self.st.plans.contains_key(&0) {
            let mut items: Vec<PlanItem> = Vec::new();
            for &e in &self.elements {
                let a = (4.0 * candidates::atomic_volume(e).expect("validated")).cbrt();
                let s = Structure::new(
                    Lattice::cubic(a)?,
                    vec![e; 4],
                    vec![[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]],
                )?;
                let origin = Origin {
                    method: "reference".into(),
                    space_group: 225,
                    parent: None,
                    substitution: None,
                    probability: None,
                    seed: 0,
                };
                items.push(PlanItem::new(&Candidate { id: format!("ref-{e}"), structure: s, origin }, "reference"));
            }
            items.extend(self.known_items()?);
            let cands = self.generate(0, self.cfg.bootstrap)?;
            items.extend(cands.iter().map(|c| PlanItem::new(c, "bootstrap")));
            self.append(rec("plan", 0, json!({"items": items})))?;
            self.st.plans.insert(0, items);
        }
        self.verify(0)?;
        for e in self.elements.clone() {
            // The fcc cell, or a known elemental structure (flla's O2 crystal for oxygen).
            let elemental = self.st.plans[&0].iter().any(|it| {
                it.species.iter().all(|s| s == e.symbol())
                    && (it.role == "reference" || it.role == "known")
                    && self.st.results.get(&it.id).is_some_and(|r| r.ok)
            });
            let r = self.st.results.get(&format!("ref-{e}"));
            if !elemental {
                return Err(Error::Other(format!(
                    "the oracle failed on the elemental reference of {e}: {}",
                    r.and_then(|r| r.error.clone()).unwrap_or_default()
                )));
            }
        }
        if !self.st.trained.contains(&0) {
            self.train(0)?;
        }
        for round in 1..=self.cfg.rounds {
            if self.st.rounds.contains_key(&round) {
                continue;
            }
            let t0 = Instant::now();
            let prior = self.diagram(round)?;
            if !self.st.plans.contains_key(&round) {
                self.plan(round, &prior)?;
            }
            self.verify(round)?;
            let mut metrics = self.metrics(round, &prior)?;
            if !self.st.trained.contains(&round) {
                self.train(round)?;
            }
            if let (Value::Object(m), Value::Object(e)) = (&mut metrics, self.evaluate(round)?) {
                m.extend(e);
            }
            metrics["round_wall_s"] = json!(t0.elapsed().as_secs_f64());
            self.append(rec("round", round, json!({"metrics": metrics})))?;
            let line = summary_line(&metrics);
            self.st.rounds.insert(round, metrics);
            self.write_metrics()?;
            (self.on)(&DiscoverEvent::Summary(line));
        }
        self.write_metrics()
    }

    /// Round-0 plan items for the known structures (`cfg.known`) whose elements lie in the system.
    fn known_items(&self) -> Result<Vec<PlanItem>> {
        let Some(path) = &self.cfg.known else { return Ok(Vec::new()) };
        let entries = if path.extension().is_some_and(|x| x == "csv") {
            crate::dataset::read_flla_csv(path)?.entries
        } else {
            crate::dataset::read_dataset(path)?.1
        };
        let mut out = Vec::new();
        for e in entries {
            if !e.structure.species.iter().all(|s| self.elements.contains(s)) {
                continue;
            }
            let origin = Origin {
                method: "known".into(),
                space_group: detected_space_group(&e.structure, 1),
                parent: Some(e.id.clone()),
                substitution: None,
                probability: None,
                seed: 0,
            };
            let c = Candidate { id: format!("known-{}", e.id), structure: e.structure, origin };
            let mut it = PlanItem::new(&c, "known");
            it.dft_e_form = Some(e.target);
            out.push(it);
        }
        (self.on)(&DiscoverEvent::Note(format!(
            "{} known structures of {} in {}",
            out.len(),
            self.cfg.elements.join("-"),
            path.display()
        )));
        Ok(out)
    }

    /// Whether a planned candidate's label is held out of training (`cfg.holdout`).
    fn held_out(&self, it: &PlanItem) -> bool {
        self.cfg.holdout > 0.0
            && ["bootstrap", "selected", "control"].contains(&it.role.as_str())
            && ((fnv1a64(format!("holdout:{}", it.id).as_bytes()) % 10_000) as f64) < self.cfg.holdout * 10_000.0
    }

    /// After round `round`'s training: the learning curve's point. The MAE of the ensembles of
    /// rounds `round - 1` (before) and `round` (after) on the held-out oracle labels of rounds
    /// <= `round` (formation energy against the current hull's references, predicted from the
    /// unrelaxed candidate as selection does, and from the oracle-relaxed structure), and on the
    /// known structures' data-set targets (flla DFT formation energies, DFT geometries), besides
    /// the oracle's own formation energies against those DFT ones.
    fn evaluate(&self, round: usize) -> Result<Value> {
        let post = self.diagram(round + 1)?;
        let (mut initial, mut relaxed, mut target) = (Vec::new(), Vec::new(), Vec::new());
        let (mut dft_s, mut dft_t, mut oracle_vs_dft, mut dft_heldout) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, items) in &self.st.plans {
            if *r > round {
                continue;
            }
            for it in items {
                let v = self.st.results.get(&it.id).filter(|v| v.ok);
                let s = it.structure()?;
                let comp = s.composition();
                if let Some(dft) = it.dft_e_form {
                    dft_heldout.push(split_of(&comp.reduced_formula()) == Split::Valid);
                    dft_s.push(s.clone());
                    dft_t.push(dft);
                    if let Some(v) = v {
                        oracle_vs_dft.push((post.formation_energy_of(&comp, v.energy)? - dft).abs());
                    }
                }
                if let (Some(v), true) = (v, self.held_out(it)) {
                    relaxed.push(Structure::from_cartesian(Lattice::new(v.cell)?, s.species.clone(), &v.positions)?);
                    initial.push(s);
                    target.push(post.formation_energy_of(&comp, v.energy)?);
                }
            }
        }
        let mae =
            |members: &[Member], structs: &[Structure], t: &[f64], keep: &dyn Fn(usize) -> bool| -> Result<Value> {
                if structs.is_empty() {
                    return Ok(Value::Null);
                }
                let p = train::predict_structures(members, structs, &self.cfg.volume_factors, 64)?;
                let errs: Vec<f64> = p
                    .iter()
                    .zip(t)
                    .enumerate()
                    .filter(|(i, _)| keep(*i))
                    .map(|(_, (p, t))| (p.energy_per_atom - t).abs())
                    .collect();
                Ok(if errs.is_empty() { Value::Null } else { json!(errs.iter().sum::<f64>() / errs.len() as f64) })
            };
        let all = |_: usize| true;
        let mut out = serde_json::Map::new();
        for (tag, r) in [("before", round.checked_sub(1)), ("after", Some(round))] {
            let Some(r) = r else { continue };
            let m = self.load_members(r)?;
            out.insert(format!("heldout_mae_{tag}"), mae(&m, &initial, &target, &all)?);
            out.insert(format!("heldout_mae_relaxed_{tag}"), mae(&m, &relaxed, &target, &all)?);
            out.insert(format!("dft_mae_{tag}"), mae(&m, &dft_s, &dft_t, &all)?);
            out.insert(format!("dft_mae_flla_heldout_{tag}"), mae(&m, &dft_s, &dft_t, &|i| dft_heldout[i])?);
        }
        out.insert("heldout_n".into(), json!(target.len()));
        out.insert("dft_n".into(), json!(dft_t.len()));
        out.insert("dft_n_flla_heldout".into(), json!(dft_heldout.iter().filter(|&&h| h).count()));
        out.insert(
            "oracle_vs_dft_mae".into(),
            if oracle_vs_dft.is_empty() {
                Value::Null
            } else {
                json!(oracle_vs_dft.iter().sum::<f64>() / oracle_vs_dft.len() as f64)
            },
        );
        out.insert("oracle_vs_dft_n".into(), json!(oracle_vs_dft.len()));
        Ok(Value::Object(out))
    }

    /// The diagram of every successful oracle result of rounds before `round`.
    fn diagram(&self, round: usize) -> Result<PhaseDiagram> {
        let mut entries = Vec::new();
        for (r, items) in &self.st.plans {
            if *r >= round {
                continue;
            }
            for it in items {
                if let Some(v) = self.st.results.get(&it.id).filter(|v| v.ok) {
                    let comp = Composition::from_elements(&it.structure()?.species);
                    entries.push(HullEntry::new(it.id.clone(), comp, v.energy));
                }
            }
        }
        PhaseDiagram::new(entries)
    }

    /// Deduplicated candidates for a round: AIRSS cells and substitutions of stable loop structures.
    fn generate(&self, round: usize, n: usize) -> Result<Vec<Candidate>> {
        let mut dedup = Dedup::default();
        let mut parents: Vec<(String, Structure)> = Vec::new();
        let known = if round > 0 { Some(self.diagram(round)?) } else { None };
        for items in self.st.plans.values() {
            for it in items {
                let st = it.structure()?;
                dedup.insert(&st, detected_space_group(&st, it.origin.space_group));
                if let (Some(pd), Some(v)) = (&known, self.st.results.get(&it.id).filter(|v| v.ok))
                    && it.role != "reference"
                {
                    let s = Structure::from_cartesian(Lattice::new(v.cell)?, it.structure()?.species, &v.positions)?;
                    let st = pd.analyse(&s.composition(), v.energy)?;
                    if st.e_above_hull <= 0.05 {
                        parents.push((it.id.clone(), s));
                    }
                }
            }
        }
        let comps: Vec<Composition> = candidates::enumerate_compositions(&self.elements, self.cfg.max_atoms)
            .into_iter()
            .filter(|c| c.sorted().len() >= 2)
            .collect();
        let mut rng = Rng::new(self.cfg.seed ^ (round as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let airss = AirssConfig::default();
        let mut out = Vec::new();
        let mut tries = 0;
        while out.len() < n && tries < 50 * n {
            tries += 1;
            let seed = rng.next_u64();
            let cand = if !parents.is_empty() && rng.uniform() < self.cfg.substitution_share {
                let (pid, p) = &parents[rng.below(parents.len())];
                let from = p.species[rng.below(p.num_sites())];
                let others: Vec<Element> = self.elements.iter().copied().filter(|&e| e != from).collect();
                let weights: Vec<f64> = match &self.subst {
                    Some(t) => others
                        .iter()
                        .map(|&e| t.element_weight(from, e))
                        .map(|w| if w >= candidates::SUBSTITUTION_THRESHOLD { w } else { 0.0 })
                        .collect(),
                    None => vec![1.0; others.len()],
                };
                let total: f64 = weights.iter().sum();
                if total <= 0.0 {
                    continue;
                }
                let mut u = rng.uniform() * total;
                let pick = weights.iter().position(|&w| {
                    u -= w;
                    u < 0.0
                });
                let pick = pick.unwrap_or(others.len() - 1);
                let (to, probability) = (others[pick], self.subst.as_ref().map(|_| weights[pick]));
                let partial = rng.uniform() < 0.5;
                match candidates::substitute(p, from, to, partial, seed)? {
                    Some((s, k)) => Candidate {
                        id: String::new(),
                        structure: s,
                        origin: Origin {
                            method: "substitution".into(),
                            space_group: detected_space_group(p, 1),
                            parent: Some(pid.clone()),
                            substitution: Some((from.symbol().into(), to.symbol().into(), k)),
                            probability,
                            seed,
                        },
                    },
                    None => continue,
                }
            } else {
                let c = &comps[rng.below(comps.len())];
                let per_fu = c.num_atoms().round() as usize;
                let units = 1 + rng.below((self.cfg.max_atoms / per_fu).max(1));
                let sg = if rng.uniform() < 0.5 { 1 } else { 2 };
                match candidates::random_structure(&candidates::cell_counts(c, units), sg, &airss, seed)? {
                    Some(s) => Candidate {
                        id: String::new(),
                        structure: s,
                        origin: Origin {
                            method: "airss".into(),
                            space_group: sg,
                            parent: None,
                            substitution: None,
                            probability: None,
                            seed,
                        },
                    },
                    None => continue,
                }
            };
            if cand.structure.num_sites() > self.cfg.max_atoms
                || !dedup.insert(&cand.structure, detected_space_group(&cand.structure, cand.origin.space_group))
            {
                continue;
            }
            let id = format!("r{round}-{:04}-{}", out.len(), cand.structure.reduced_formula());
            out.push(Candidate { id, ..cand });
        }
        Ok(out)
    }

    fn load_members(&self, round: usize) -> Result<Vec<Member>> {
        (0..self.cfg.ensemble)
            .map(|k| train::load_member(&self.models_dir(round).join(format!("member-{k}.safetensors"))))
            .collect()
    }

    /// Generate, predict, select and journal a round's plan.
    fn plan(&mut self, round: usize, prior: &PhaseDiagram) -> Result<()> {
        (self.on)(&DiscoverEvent::Stage { round, name: "generate".into(), total: self.cfg.candidates });
        let cands = self.generate(round, self.cfg.candidates)?;
        (self.on)(&DiscoverEvent::Stage { round, name: "predict".into(), total: cands.len() });
        let members = self.load_members(round - 1)?;
        let structs: Vec<Structure> = cands.iter().map(|c| c.structure.clone()).collect();
        let preds = train::predict_structures(&members, &structs, &self.cfg.volume_factors, 64)?;
        let mut items: Vec<PlanItem> = Vec::new();
        for (c, p) in cands.iter().zip(&preds) {
            let comp = c.structure.composition();
            let energy = comp.num_atoms() * (p.energy_per_atom - prior.formation_energy_of(&comp, 0.0)?);
            let st = prior.analyse(&comp, energy)?;
            let mut it = PlanItem::new(c, "");
            it.pred_e_form = Some(p.energy_per_atom);
            it.pred_iqr = Some(p.iqr);
            it.pred_e_above_hull = Some(st.e_above_hull);
            items.push(it);
        }
        let score = |it: &PlanItem| it.pred_e_above_hull.unwrap() - self.cfg.uncertainty_bonus * it.pred_iqr.unwrap();
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| score(&items[a]).total_cmp(&score(&items[b])).then(a.cmp(&b)));
        let mut rest: Vec<usize> = order.split_off(self.cfg.select.min(order.len()));
        let mut rng = Rng::new(self.cfg.seed ^ 0xc047_u64.wrapping_add(round as u64));
        for i in (1..rest.len()).rev() {
            rest.swap(i, rng.below(i + 1));
        }
        rest.truncate(self.cfg.control);
        let mut plan = Vec::new();
        for (idx, role) in order.iter().map(|&i| (i, "selected")).chain(rest.iter().map(|&i| (i, "control"))) {
            let mut it = items[idx].clone();
            it.role = role.into();
            plan.push(it);
        }
        self.append(rec("plan", round, json!({"items": plan, "generated": cands.len()})))?;
        self.st.plans.insert(round, plan);
        Ok(())
    }

    /// Runs the oracle on every planned request of `round` without a journaled result.
    fn verify(&mut self, round: usize) -> Result<()> {
        let items = &self.st.plans[&round];
        let todo: Vec<&PlanItem> = items.iter().filter(|it| !self.st.results.contains_key(&it.id)).collect();
        (self.on)(&DiscoverEvent::Stage { round, name: "oracle".into(), total: items.len() });
        for _ in 0..items.len() - todo.len() {
            (self.on)(&DiscoverEvent::Advance);
        }
        if todo.is_empty() {
            return Ok(());
        }
        let task = Task::Relax { fmax: self.cfg.fmax, steps: self.cfg.relax_steps, relax_cell: true, trajectory: true };
        let requests: Vec<OracleRequest> = todo
            .iter()
            .map(|it| Ok(OracleRequest { id: it.id.clone(), structure: it.structure()?, task }))
            .collect::<Result<_>>()?;
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let got: Mutex<Vec<Verified>> = Mutex::new(Vec::new());
        let frames = self.cfg.traj_frames;
        let journal = &self.journal;
        let on = self.on;
        run_oracle_each(self.oracle, &requests, &|_, r| {
            let v = Verified::from(r, frames);
            let line = rec("oracle", round, json!({"result": v}));
            if let Err(e) = journal.lock().unwrap().append(&line) {
                failure.lock().unwrap().get_or_insert(e);
            }
            got.lock().unwrap().push(v);
            on(&DiscoverEvent::Advance);
        })?;
        if let Some(e) = failure.into_inner().unwrap() {
            return Err(e);
        }
        for v in got.into_inner().unwrap() {
            self.st.results.insert(v.id.clone(), v);
        }
        Ok(())
    }

    /// Training samples from every verified result of rounds <= `round`, held-out formulas excluded.
    fn samples(&self, round: usize, cutoff: f64) -> Result<Vec<Sample>> {
        let pd = self.diagram(round + 1)?;
        let mut out = Vec::new();
        for (r, items) in &self.st.plans {
            if *r > round {
                continue;
            }
            for it in items {
                let Some(v) = self.st.results.get(&it.id).filter(|v| v.ok) else { continue };
                let species = it.structure()?.species;
                let comp = Composition::from_elements(&species);
                let formula = comp.reduced_formula();
                if split_of(&formula) == Split::Valid || self.held_out(it) {
                    continue;
                }
                let mut frames = vec![(v.energy, v.cell, v.positions.clone())];
                frames.extend(v.frames.iter().cloned());
                for (k, (e, cell, pos)) in frames.into_iter().enumerate() {
                    let Ok(s) = Structure::from_cartesian(Lattice::new(cell)?, species.clone(), &pos) else { continue };
                    let Ok(g) = graph::structure_graph(&s, cutoff) else { continue };
                    let e = if self.cfg.frame_labels == "own" { e } else { v.energy };
                    let target = pd.formation_energy_of(&comp, e)?;
                    out.push(Sample { id: format!("{}#{k}", it.id), formula: formula.clone(), graph: g, target });
                }
            }
        }
        Ok(out)
    }

    /// Trains (round 0, from scratch) or fine-tunes (from round - 1) the ensemble, saves it, journals it.
    fn train(&mut self, round: usize) -> Result<()> {
        let cutoff = graph::CUTOFF;
        let all = self.samples(round, cutoff)?;
        let is_valid = |s: &Sample| fnv1a64(s.id.split('#').next().unwrap_or("").as_bytes()).is_multiple_of(10);
        let (mut tr, mut va): (Vec<Sample>, Vec<Sample>) = all.into_iter().partition(|s| !is_valid(s));
        if va.is_empty() && tr.len() > 1 {
            va.push(tr.pop().expect("nonempty"));
        }
        let epochs = if round == 0 { self.cfg.epochs } else { self.cfg.finetune_epochs };
        let batches = tr.len().div_ceil(32);
        (self.on)(&DiscoverEvent::Stage {
            round,
            name: format!("train ({} samples)", tr.len()),
            total: self.cfg.ensemble * epochs * batches,
        });
        let init = if round == 0 { None } else { Some(self.load_members(round - 1)?) };
        let dir = self.models_dir(round);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for k in 0..self.cfg.ensemble {
            let mut tc = TrainConfig::new(ModelKind::Structural);
            tc.width = self.cfg.width;
            tc.steps = self.cfg.mp_steps;
            tc.epochs = epochs;
            tc.patience = epochs;
            tc.lr = if round == 0 { self.cfg.lr } else { 0.5 * self.cfg.lr };
            tc.seed = self.cfg.seed.wrapping_mul(1000) + 100 * round as u64 + k as u64;
            let on = self.on;
            let trained = train::train_from(&tc, init.as_ref().map(|m| &m[k].model), &tr, &va, None, &mut |e| {
                if let train::Event::Batch { .. } = e {
                    on(&DiscoverEvent::Advance);
                }
            })?;
            train::save_member(
                &dir.join(format!("member-{k}.safetensors")),
                ModelKind::Structural,
                cutoff,
                tc.seed,
                trained.best_valid_mae,
                &trained.model,
            )?;
        }
        self.append(rec("trained", round, json!({"samples": tr.len(), "valid": va.len()})))?;
        self.st.trained.insert(round);
        Ok(())
    }

    fn metrics(&self, round: usize, prior: &PhaseDiagram) -> Result<Value> {
        let items = &self.st.plans[&round];
        let (mut sel, mut sel_hit, mut sel_near, mut ctl, mut ctl_hit, mut ctl_near) = (0, 0, 0, 0, 0, 0);
        let (mut tp, mut fp, mut fne, mut failed) = (0, 0, 0, 0);
        let (mut abs, mut nabs) = (0.0, 0usize);
        for it in items {
            let Some(v) = self.st.results.get(&it.id) else { continue };
            if !v.ok {
                failed += 1;
                continue;
            }
            let comp = Composition::from_elements(&it.structure()?.species);
            let st = prior.analyse(&comp, v.energy)?;
            let stable = st.e_above_hull <= STABLE_TOL;
            let near = st.e_above_hull <= NEAR_HULL;
            if it.role == "selected" {
                sel += 1;
                sel_hit += stable as usize;
                sel_near += near as usize;
            } else {
                ctl += 1;
                ctl_hit += stable as usize;
                ctl_near += near as usize;
            }
            let called = it.pred_e_above_hull.is_some_and(|e| e <= 0.0);
            match (called, stable) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fne += 1,
                _ => {}
            }
            if let Some(p) = it.pred_e_form {
                abs += (p - st.e_form_per_atom).abs();
                nabs += 1;
            }
        }
        let ratio = |a: usize, n: usize| if n == 0 { None } else { Some(a as f64 / n as f64) };
        let daf = |h: usize, p: usize| match (ratio(h, sel), ratio(p, ctl)) {
            (Some(h), Some(p)) if p > 0.0 => json!(h / p),
            _ => Value::Null,
        };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fne);
        let f1 = match (precision, recall) {
            (Some(p), Some(r)) if p + r > 0.0 => json!(2.0 * p * r / (p + r)),
            _ => Value::Null,
        };
        // The updated hull: every result so far.
        let post = self.diagram(round + 1)?;
        let loop_stable = post
            .stable_entries()
            .into_iter()
            .filter(|&i| !post.entries()[i].name.starts_with("ref-") && !post.entries()[i].name.starts_with("known-"))
            .count();
        let mut discovered = 0;
        for r in 1..=round {
            let pd = self.diagram(r)?;
            for it in &self.st.plans[&r] {
                if let Some(v) = self.st.results.get(&it.id).filter(|v| v.ok) {
                    let comp = Composition::from_elements(&it.structure()?.species);
                    discovered += (pd.analyse(&comp, v.energy)?.e_above_hull <= STABLE_TOL) as usize;
                }
            }
        }
        Ok(json!({
            "round": round,
            "selected": items.iter().filter(|i| i.role == "selected").count(),
            "control": items.iter().filter(|i| i.role == "control").count(),
            "failed": failed,
            "hit_rate": rate(sel_hit, sel),
            "hit_rate_25mev": rate(sel_near, sel),
            "prevalence": rate(ctl_hit, ctl),
            "prevalence_25mev": rate(ctl_near, ctl),
            "daf": daf(sel_hit, ctl_hit),
            "daf_25mev": daf(sel_near, ctl_near),
            "precision": rate(tp, tp + fp),
            "recall": rate(tp, tp + fne),
            "f1": f1,
            "mae_before_training": if nabs > 0 { json!(abs / nabs as f64) } else { Value::Null },
            "mae_n": nabs,
            "stable_on_hull": loop_stable,
            "discovered_cumulative": discovered,
            "oracle_results_total": self.st.results.len(),
        }))
    }

    fn write_metrics(&self) -> Result<()> {
        let mut text = String::new();
        for m in self.st.rounds.values() {
            text.push_str(&serde_json::to_string(m).expect("json"));
            text.push('\n');
        }
        octet_core::fs::write_atomic(&self.dir.join("metrics.jsonl"), text.as_bytes())?;
        let rounds: Vec<&Value> = self.st.rounds.values().collect();
        let png = crate::plot::metrics_png(&rounds);
        octet_core::fs::write_atomic(&self.dir.join("metrics.png"), &png)
    }
}

fn pct(v: &Value) -> String {
    match v["value"].as_f64() {
        Some(x) => format!("{:.1}% ({}/{})", 100.0 * x, v["k"], v["n"]),
        None => "n/a".into(),
    }
}

/// One line per round.
pub fn summary_line(m: &Value) -> String {
    let num =
        |v: &Value, scale: f64, unit: &str| v.as_f64().map_or("n/a".into(), |x| format!("{:.2}{unit}", x * scale));
    format!(
        "round {}: hit rate {} [25 meV: {}], prevalence {}, DAF {}, F1 {}, MAE {} meV/atom (n={}), held-out MAE {} meV/atom (n={}), stable on hull {}, discovered {} cumulative, {:.0} s",
        m["round"],
        pct(&m["hit_rate"]),
        pct(&m["hit_rate_25mev"]),
        pct(&m["prevalence"]),
        num(&m["daf"], 1.0, ""),
        num(&m["f1"], 1.0, ""),
        num(&m["mae_before_training"], 1e3, ""),
        m["mae_n"],
        num(&m["heldout_mae_after"], 1e3, ""),
        m["heldout_n"],
        m["stable_on_hull"],
        m["discovered_cumulative"],
        m["round_wall_s"].as_f64().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wilson interval: known values (k=5, n=10: 0.2366..0.7634) and the n = 0 case.
    #[test]
    fn wilson_interval() {
        let (lo, hi) = wilson(5, 10).unwrap();
        assert!((lo - 0.2366).abs() < 1e-4 && (hi - 0.7634).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson(0, 20).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611).abs() < 1e-4, "{hi}");
        assert!(wilson(0, 0).is_none());
    }
}
