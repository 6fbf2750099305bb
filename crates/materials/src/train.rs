//! Training, checkpoints, ensembles and prediction for the GNoME models (`gnn`).
//!
//! Training (`train`, `train_from` for a warm start such as `copy_matching` from a compositional
//! model): AdamW (betas 0.9/0.999, decoupled weight decay on weights and the embedding, default 0),
//! learning rate decayed linearly from `lr` to 0 over the planned steps, Huber loss on the per-atom
//! target, shuffled mini-batches of whole graphs. After every epoch the model is scored on a validation set (MAE per
//! atom); the best parameters are kept (and written as a checkpoint when a path is given) and
//! training stops after `patience` epochs without improvement.
//!
//! Splits: data sets carry GNoME's formula-hash split (`dataset::split_of`: 15% of formulas held
//! out); the held-out part is the *test* set and is never used for choosing anything. Early
//! stopping uses a validation set carved from the training formulas by an independent digit of
//! the same hash (`early_stop_split`: ~10% of training formulas).
//!
//! Checkpoint: one safetensors file per ensemble member, f32 tensors named as `GnnConfig::layout`,
//! metadata `format` = `octet-gnome`, `kind` (structural | compositional), `config` (GnnConfig as
//! JSON), `cutoff` (A), `seed`, `valid_mae`, `sha256` (of the tensors' data in layout order; a file
//! whose data does not match fails naming it; files written before it load unchecked). Written
//! atomically.
//!
//! Ensembles: members differ only in seed; predictions are the median over members and the
//! interquartile range (q75 - q25, linear interpolation) as uncertainty; with test-time
//! augmentation each structure is also evaluated with its cell scaled to several volumes and the
//! lowest median energy is kept (GNoME, 80-120% of the volume).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use octet_core::manifest::sha256_hex_parts;
use octet_core::{Error, Result, Rng, Slab};
use octet_optim::{AdamW, AdamWConfig};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::composition_data::CompositionEntry;
use crate::dataset::{Entry, fnv1a64};
use crate::gnn::{Acts, Gnn, GnnConfig};
use crate::graph::{self, Graph, GraphBatch};
use crate::structure::Structure;

/// Which GNoME model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Structural,
    Compositional,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Structural => "structural",
            ModelKind::Compositional => "compositional",
        }
    }
    pub fn parse(s: &str) -> Result<ModelKind> {
        match s {
            "structural" => Ok(ModelKind::Structural),
            "compositional" => Ok(ModelKind::Compositional),
            _ => Err(Error::config("model", format!("`{s}`: expected structural or compositional"))),
        }
    }
    /// Edge basis width of this model's graphs.
    pub fn basis_dim(self) -> usize {
        match self {
            ModelKind::Structural => graph::NUM_BASIS,
            ModelKind::Compositional => 0,
        }
    }
}

/// One labelled graph.
#[derive(Clone, Debug)]
pub struct Sample {
    pub id: String,
    /// Reduced formula (what the splits hash).
    pub formula: String,
    pub graph: Graph,
    /// Target per atom (eV/atom).
    pub target: f64,
}

/// Structure entries -> graphs (in parallel); an entry whose graph fails is an error naming it.
pub fn structure_samples(entries: &[Entry], cutoff: f64) -> Result<Vec<Sample>> {
    entries
        .par_iter()
        .map(|e| {
            let graph = graph::structure_graph(&e.structure, cutoff)
                .map_err(|err| Error::Other(format!("entry `{}`: {err}", e.id)))?;
            Ok(Sample { id: e.id.clone(), formula: e.structure.reduced_formula(), graph, target: e.target })
        })
        .collect()
}

/// Composition entries -> fully connected element graphs.
pub fn composition_samples(entries: &[CompositionEntry]) -> Result<Vec<Sample>> {
    entries
        .par_iter()
        .map(|e| {
            let graph = graph::composition_graph(&e.composition())
                .map_err(|err| Error::Other(format!("entry `{}`: {err}", e.id)))?;
            Ok(Sample { id: e.id.clone(), formula: e.formula.clone(), graph, target: e.target })
        })
        .collect()
}

/// Is this training formula in the early-stopping validation set? (~10% of formulas, by the
/// hundred-thousands digit of the FNV-1a hash, independent of the test split's last four digits.)
pub fn early_stop_split(formula: &str) -> bool {
    (fnv1a64(formula.as_bytes()) / 10_000).is_multiple_of(10)
}

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub kind: ModelKind,
    pub width: usize,
    pub steps: usize,
    /// Neighbour cutoff for structure graphs (A).
    pub cutoff: f64,
    pub epochs: usize,
    /// Graphs per mini-batch.
    pub batch: usize,
    /// Peak learning rate (decays linearly to 0).
    pub lr: f64,
    /// Stop after this many epochs without a better validation MAE.
    pub patience: usize,
    /// Huber loss threshold (eV/atom): quadratic below, linear above.
    pub huber_delta: f64,
    /// AdamW decoupled weight decay on weight matrices and the embedding (not biases).
    #[serde(default)]
    pub weight_decay: f64,
    pub seed: u64,
}

impl TrainConfig {
    pub fn new(kind: ModelKind) -> TrainConfig {
        TrainConfig {
            kind,
            width: 128,
            steps: 3,
            cutoff: graph::CUTOFF,
            epochs: 100,
            batch: 32,
            lr: 1e-3,
            patience: 20,
            huber_delta: 0.05,
            weight_decay: 0.0,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, bool, &str); 7] = [
            ("weight_decay", self.weight_decay.is_finite() && self.weight_decay >= 0.0, "must be finite and >= 0"),
            ("width", self.width > 0, "must be positive"),
            ("steps", self.steps > 0, "must be positive"),
            ("epochs", self.epochs > 0, "must be positive"),
            ("batch", self.batch > 0, "must be positive"),
            ("lr", self.lr.is_finite() && self.lr > 0.0, "must be finite and positive"),
            ("huber_delta", self.huber_delta.is_finite() && self.huber_delta > 0.0, "must be finite and positive"),
        ];
        for (field, ok, msg) in checks {
            if !ok {
                return Err(Error::config(field, msg));
            }
        }
        if !(self.cutoff.is_finite() && self.cutoff > 0.0) {
            return Err(Error::config("cutoff", "must be finite and positive"));
        }
        Ok(())
    }
}

/// One epoch's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    /// Training MAE (eV/atom) over the epoch's batches, as they were seen.
    pub train_mae: f64,
    pub valid_mae: f64,
    pub lr: f64,
    pub seconds: f64,
    pub graphs_per_s: f64,
    pub best: bool,
}

/// What training reports as it goes.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    Start { params: usize, train: usize, valid: usize, batches_per_epoch: usize, epochs: usize, seed: u64 },
    Batch { epoch: usize, batch: usize, loss: f64 },
    Epoch(EpochReport),
    Stop { epoch: usize, best_epoch: usize, best_valid_mae: f64, reason: String },
}

/// A trained member.
#[derive(Clone, Debug)]
pub struct Trained {
    pub model: Gnn<f32>,
    pub best_valid_mae: f64,
    pub best_epoch: usize,
    pub history: Vec<EpochReport>,
}

/// Mean and standard deviation of the targets (the readout's shift and scale).
pub fn target_stats(samples: &[Sample]) -> (f64, f64) {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().map(|s| s.target).sum::<f64>() / n;
    let var = samples.iter().map(|s| (s.target - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt().max(1e-3))
}

/// The network configuration a training set implies (average adjacency, shift, scale).
pub fn model_config(cfg: &TrainConfig, train: &[Sample]) -> GnnConfig {
    let (shift, scale) = target_stats(train);
    GnnConfig {
        width: cfg.width,
        steps: cfg.steps,
        basis_dim: cfg.kind.basis_dim(),
        avg_adjacency: graph::average_adjacency(train.iter().map(|s| &s.graph)),
        scale,
        shift,
    }
}

/// Huber loss of residual r and its derivative.
fn huber(r: f64, delta: f64) -> (f64, f64) {
    if r.abs() <= delta { (0.5 * r * r, r) } else { (delta * (r.abs() - 0.5 * delta), delta * r.signum()) }
}

/// Trains one model (see the module doc). `checkpoint`: where to write the best parameters.
pub fn train(
    cfg: &TrainConfig,
    train_set: &[Sample],
    valid_set: &[Sample],
    checkpoint: Option<&Path>,
    on: &mut dyn FnMut(&Event),
) -> Result<Trained> {
    train_from(cfg, None, train_set, valid_set, checkpoint, on)
}

/// Copies into `model` every tensor of `from` with the same name and shape (a warm start from
/// another trained model, e.g. the element embedding and message layers of a compositional model
/// into a structural one); `only` restricts it to the named tensors. Returns the names copied.
pub fn copy_matching(model: &mut Gnn<f32>, from: &Gnn<f32>, only: Option<&[&str]>) -> Vec<String> {
    let mut copied = Vec::new();
    let layout = model.params.layout.clone();
    for spec in layout.specs() {
        if only.is_some_and(|o| !o.contains(&spec.name.as_str())) {
            continue;
        }
        let Some(id) = from.params.layout.id(&spec.name) else { continue };
        let src = from.params.get(id);
        if from.params.layout.specs()[id.0].shape == spec.shape {
            model.params.data[spec.range()].copy_from_slice(src);
            copied.push(spec.name.clone());
        }
    }
    copied
}

/// `train` starting from `init`'s parameters where `init` is given (same configuration, e.g. from
/// `copy_matching`), else from a seeded random initialisation.
pub fn train_from(
    cfg: &TrainConfig,
    init: Option<&Gnn<f32>>,
    train_set: &[Sample],
    valid_set: &[Sample],
    checkpoint: Option<&Path>,
    on: &mut dyn FnMut(&Event),
) -> Result<Trained> {
    cfg.validate()?;
    if train_set.is_empty() || valid_set.is_empty() {
        return Err(Error::config(
            "data",
            format!("need training and validation samples, got {} and {}", train_set.len(), valid_set.len()),
        ));
    }
    let mut model = match init {
        Some(m) => m.clone(),
        None => Gnn::<f32>::init(model_config(cfg, train_set), cfg.seed)?,
    };
    let layout = model.params.layout.clone();
    let decay: Vec<bool> = layout.specs().iter().map(|s| s.name.ends_with(".w") || s.name == "embed").collect();
    let mut opt = AdamW::new(
        layout.clone(),
        decay,
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: cfg.weight_decay },
    );
    let mut grads = Slab::<f32>::zeros(layout);
    let batches = train_set.len().div_ceil(cfg.batch);
    let total_steps = (batches * cfg.epochs) as f64;
    on(&Event::Start {
        params: model.num_params(),
        train: train_set.len(),
        valid: valid_set.len(),
        batches_per_epoch: batches,
        epochs: cfg.epochs,
        seed: cfg.seed,
    });
    let mut rng = Rng::new(cfg.seed ^ 0x05ee_d0f0_c7e7);
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    let mut acts = Acts::default();
    let mut best = (f64::INFINITY, 0usize, model.params.data.clone());
    let mut history = Vec::new();
    let mut step = 0usize;
    let mut reason = format!("{} epochs done", cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let (mut loss_sum, mut abs_sum) = (0.0, 0.0);
        let mut lr = cfg.lr;
        for (bi, chunk) in order.chunks(cfg.batch).enumerate() {
            let graphs: Vec<&Graph> = chunk.iter().map(|&i| &train_set[i].graph).collect();
            let batch = GraphBatch::new(&graphs)?;
            let y = model.forward(&mut acts, &batch)?;
            let n = chunk.len() as f64;
            let mut dy = vec![0.0f32; chunk.len()];
            let mut loss = 0.0;
            for (k, &i) in chunk.iter().enumerate() {
                let r = y[k] as f64 - train_set[i].target;
                let (l, g) = huber(r, cfg.huber_delta);
                loss += l / n;
                dy[k] = (g / n) as f32;
                abs_sum += r.abs();
            }
            if !loss.is_finite() {
                return Err(Error::NonFinite { what: "loss".into(), step, value: loss });
            }
            loss_sum += loss * n;
            grads.data.fill(0.0);
            model.backward(&mut grads, &acts, &batch, &dy);
            lr = cfg.lr * (1.0 - step as f64 / total_steps);
            opt.update(&mut model.params.data, &grads.data, lr);
            step += 1;
            on(&Event::Batch { epoch, batch: bi, loss });
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let valid_mae = mae(&model, valid_set, 256)?;
        let improved = valid_mae < best.0;
        if improved {
            best = (valid_mae, epoch, model.params.data.clone());
            if let Some(path) = checkpoint {
                save_member(path, cfg.kind, cfg.cutoff, cfg.seed, valid_mae, &model)?;
            }
        }
        let r = EpochReport {
            epoch,
            train_loss: loss_sum / train_set.len() as f64,
            train_mae: abs_sum / train_set.len() as f64,
            valid_mae,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
            graphs_per_s: train_set.len() as f64 / train_seconds,
            best: improved,
        };
        on(&Event::Epoch(r.clone()));
        history.push(r);
        if epoch - best.1 >= cfg.patience {
            reason = format!("no better validation MAE in {} epochs", cfg.patience);
            break;
        }
    }
    on(&Event::Stop { epoch: history.len(), best_epoch: best.1, best_valid_mae: best.0, reason });
    model.params.data = best.2;
    Ok(Trained { model, best_valid_mae: best.0, best_epoch: best.1, history })
}

/// Per-atom predictions for graphs, `batch` graphs at a time.
pub fn predict_graphs(model: &Gnn<f32>, graphs: &[&Graph], batch: usize) -> Result<Vec<f32>> {
    Ok(predict_members(&[model], graphs, batch)?.pop().expect("one model"))
}

/// Every model's per-atom predictions for graphs (outer index: model). Inference tables are built
/// once per model for the longest edge of all graphs; then per chunk of `batch` graphs, one
/// `GraphBatch` and the models in parallel (a pass's own kernels split further only when a thread
/// is idle), which on a few cores beats splitting every kernel of one pass at a time.
pub fn predict_members(models: &[&Gnn<f32>], graphs: &[&Graph], batch: usize) -> Result<Vec<Vec<f32>>> {
    let r_max = graphs.iter().flat_map(|g| g.distances.iter()).fold(0.0f32, |m, &r| m.max(r));
    let tables: Vec<_> = models.par_iter().map(|m| m.inference_tables(r_max as f64)).collect();
    let mut out: Vec<Vec<f32>> = models.iter().map(|_| Vec::with_capacity(graphs.len())).collect();
    for chunk in graphs.chunks(batch.max(1)) {
        let b = GraphBatch::new(chunk)?;
        let ys: Vec<Vec<f32>> =
            models.par_iter().zip(&tables).map(|(m, t)| m.predict_with(t, &b)).collect::<Result<_>>()?;
        for (o, y) in out.iter_mut().zip(ys) {
            o.extend(y);
        }
    }
    Ok(out)
}

/// Mean absolute error per atom over samples.
pub fn mae(model: &Gnn<f32>, samples: &[Sample], batch: usize) -> Result<f64> {
    let graphs: Vec<&Graph> = samples.iter().map(|s| &s.graph).collect();
    let y = predict_graphs(model, &graphs, batch)?;
    Ok(y.iter().zip(samples).map(|(&p, s)| (p as f64 - s.target).abs()).sum::<f64>() / samples.len().max(1) as f64)
}

/// One ensemble member as stored on disk.
#[derive(Clone, Debug)]
pub struct Member {
    pub kind: ModelKind,
    pub cutoff: f64,
    pub seed: u64,
    pub valid_mae: f64,
    pub model: Gnn<f32>,
}

/// Writes a member checkpoint atomically (format in the module doc).
pub fn save_member(
    path: &Path,
    kind: ModelKind,
    cutoff: f64,
    seed: u64,
    valid_mae: f64,
    model: &Gnn<f32>,
) -> Result<()> {
    let meta = HashMap::from([
        ("format".to_string(), "octet-gnome".to_string()),
        ("kind".to_string(), kind.name().to_string()),
        ("config".to_string(), serde_json::to_string(&model.cfg).map_err(|e| Error::Other(e.to_string()))?),
        ("cutoff".to_string(), cutoff.to_string()),
        ("seed".to_string(), seed.to_string()),
        ("valid_mae".to_string(), valid_mae.to_string()),
    ]);
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .params
        .iter()
        .map(|(s, v)| (s.name.clone(), s.shape.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut meta = meta;
    meta.insert("sha256".to_string(), sha256_hex_parts(owned.iter().map(|(_, _, b)| &b[..])));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("shape matches"))
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    octet_core::fs::write_atomic(path, &bytes)
}

/// Reads a member checkpoint; every missing or inconsistent field is an error naming it.
pub fn load_member(path: &Path) -> Result<Member> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, md) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).ok_or_else(|| Error::format(path, k, "missing from the safetensors metadata"));
    if get("format")? != "octet-gnome" {
        return Err(Error::format(path, "format", format!("`{}`, expected octet-gnome", get("format")?)));
    }
    let kind = ModelKind::parse(get("kind")?).map_err(|e| Error::format(path, "kind", e.to_string()))?;
    let cfg: GnnConfig =
        serde_json::from_str(get("config")?).map_err(|e| Error::format(path, "config", e.to_string()))?;
    let num = |k: &str| get(k)?.parse::<f64>().map_err(|_| Error::format(path, k, "not a number"));
    let (cutoff, valid_mae) = (num("cutoff")?, num("valid_mae")?);
    let seed = get("seed")?.parse::<u64>().map_err(|_| Error::format(path, "seed", "not an integer"))?;
    if cfg.basis_dim != kind.basis_dim() {
        return Err(Error::format(path, "config", format!("basis_dim {} for a {} model", cfg.basis_dim, kind.name())));
    }
    let layout = cfg.layout();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    let mut data = vec![0.0f32; layout.total()];
    let mut raw: Vec<&[u8]> = vec![];
    for spec in layout.specs() {
        let t = st.tensor(&spec.name).map_err(|_| Error::format(path, &spec.name, "tensor missing"))?;
        raw.push(t.data());
        if t.dtype() != Dtype::F32 || t.shape() != spec.shape.as_slice() {
            return Err(Error::format(
                path,
                &spec.name,
                format!("expected F32 {:?}, found {:?} {:?}", spec.shape, t.dtype(), t.shape()),
            ));
        }
        for (o, b) in data[spec.range()].iter_mut().zip(t.data().chunks_exact(4)) {
            *o = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        }
    }
    // Files written before checksums (no `sha256`) load unchecked.
    if let Some(want) = meta.get("sha256") {
        let got = sha256_hex_parts(raw);
        if &got != want {
            return Err(Error::format(
                path,
                "sha256",
                format!("tensor data hashes to {got}, the metadata records {want}: the file is damaged"),
            ));
        }
    }
    Ok(Member { kind, cutoff, seed, valid_mae, model: Gnn::from_params(cfg, data)? })
}

/// Median, 25th and 75th percentile (linear interpolation between order statistics).
pub fn quartiles(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    (q(0.5), q(0.25), q(0.75))
}

/// An ensemble's prediction for one input.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// Median over members of the per-atom energy (eV/atom).
    pub energy_per_atom: f64,
    /// Atoms in the cell (1 for a composition).
    pub atoms: f64,
    /// atoms * energy_per_atom (eV).
    pub energy: f64,
    /// Interquartile range over members (eV/atom).
    pub iqr: f64,
    /// Volume factor of the kept augmentation (1 without augmentation).
    pub volume_factor: f64,
    /// Every member's per-atom prediction at that volume.
    pub members: Vec<f64>,
}

/// Ensemble predictions for graphs: the members' per-atom outputs, median and IQR.
pub fn ensemble_predict(members: &[Member], graphs: &[&Graph], batch: usize) -> Result<Vec<Prediction>> {
    let models: Vec<&Gnn<f32>> = members.iter().map(|m| &m.model).collect();
    let per_member = predict_members(&models, graphs, batch)?;
    Ok((0..graphs.len())
        .map(|i| {
            let v: Vec<f64> = per_member.iter().map(|p| p[i] as f64).collect();
            let (med, q25, q75) = quartiles(&v);
            let atoms = graphs[i].atoms as f64;
            Prediction {
                energy_per_atom: med,
                atoms,
                energy: med * atoms,
                iqr: q75 - q25,
                volume_factor: 1.0,
                members: v,
            }
        })
        .collect())
}

/// Marker file in a stacked model's `baseline/` directory: the baseline is `baseline_predict` with
/// `elemental_zero` (training and prediction must agree).
pub const ELEMENTAL_ZERO_MARKER: &str = "elemental-zero";

/// A compositional ensemble's per-atom baseline for compositions: the ensemble median, or with
/// `elemental_zero` exactly 0 for a single element. Formation energies are measured from the
/// elements' reference phases, so an element's lowest-energy phase has 0 by definition, and a
/// composition-only model can say nothing more about an element; the structural residual then
/// learns how far a polymorph lies above it. (A compositional model trained on compounds alone
/// extrapolates to an element it never saw pure, e.g. 1.4 eV/atom for C.)
pub fn baseline_predict(
    members: &[Member],
    comps: &[crate::Composition],
    elemental_zero: bool,
    batch: usize,
) -> Result<Vec<f64>> {
    let graphs = comps.iter().map(graph::composition_graph).collect::<Result<Vec<_>>>()?;
    let preds = ensemble_predict(members, &graphs.iter().collect::<Vec<_>>(), batch)?;
    Ok(preds
        .iter()
        .zip(comps)
        .map(|(p, c)| if elemental_zero && c.fractional().len() == 1 { 0.0 } else { p.energy_per_atom })
        .collect())
}

/// Structural ensemble prediction with test-time volume augmentation: each structure at every
/// volume factor (a factor whose cell makes atoms overlap is skipped), keeping the lowest median.
pub fn predict_structures(
    members: &[Member],
    structures: &[Structure],
    factors: &[f64],
    batch: usize,
) -> Result<Vec<Prediction>> {
    let cutoff = members.first().map_or(graph::CUTOFF, |m| m.cutoff);
    let mut best: Vec<Option<Prediction>> = vec![None; structures.len()];
    for &f in factors {
        let graphs: Vec<Option<Graph>> = structures
            .par_iter()
            .map(|s| {
                let scaled = if f == 1.0 { Ok(s.clone()) } else { s.with_volume_scaled(f) };
                scaled.ok().map(|s| graph::structure_graph(&s, cutoff)).transpose()
            })
            .collect::<Result<_>>()?;
        let idx: Vec<usize> = (0..structures.len()).filter(|&i| graphs[i].is_some()).collect();
        let refs: Vec<&Graph> = idx.iter().map(|&i| graphs[i].as_ref().expect("filtered")).collect();
        for (p, &i) in ensemble_predict(members, &refs, batch)?.into_iter().zip(&idx) {
            if best[i].as_ref().is_none_or(|b| p.energy_per_atom < b.energy_per_atom) {
                best[i] = Some(Prediction { volume_factor: f, ..p });
            }
        }
    }
    best.into_iter()
        .enumerate()
        .map(|(i, p)| p.ok_or_else(|| Error::Other(format!("structure {i}: every volume factor made atoms overlap"))))
        .collect()
}

/// Reads an `octet-structures` or `octet-compositions` data set as samples for `kind` (a
/// compositional model also takes structures, using their compositions). A structural model on a
/// composition data set is an error naming the file and its `format`.
pub fn read_samples(path: &Path, kind: ModelKind, cutoff: f64) -> Result<Vec<Sample>> {
    let text = crate::io::read_text(path)?;
    let first = text.lines().next().unwrap_or_default();
    let header: crate::dataset::DatasetHeader =
        serde_json::from_str(first).map_err(|e| Error::format(path, "line 1", format!("bad data set header: {e}")))?;
    match (header.format.as_str(), kind) {
        (crate::dataset::DatasetHeader::FORMAT, ModelKind::Structural) => {
            structure_samples(&crate::dataset::parse_dataset(&text, path)?.1, cutoff)
        }
        (crate::dataset::DatasetHeader::FORMAT, ModelKind::Compositional) => {
            let entries = crate::dataset::parse_dataset(&text, path)?.1;
            entries
                .par_iter()
                .map(|e| {
                    let graph = graph::composition_graph(&e.structure.composition())?;
                    Ok(Sample { id: e.id.clone(), formula: e.structure.reduced_formula(), graph, target: e.target })
                })
                .collect()
        }
        (crate::composition_data::FORMAT, ModelKind::Compositional) => {
            composition_samples(&crate::composition_data::parse_composition_dataset(&text, path)?.1)
        }
        (crate::composition_data::FORMAT, ModelKind::Structural) => Err(Error::format(
            path,
            "format",
            "an octet-compositions data set has no structures: use --model compositional",
        )),
        (f, _) => Err(Error::format(path, "format", format!("`{f}`, expected octet-structures or octet-compositions"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compositional model warm-starts a structural one: every tensor but the edge-basis
    /// projections (absent from the compositional layout) is copied; `only` limits the copy.
    #[test]
    fn warm_start_copies_tensors_matching_by_name_and_shape() {
        let cfg = |k| GnnConfig { width: 8, steps: 2, basis_dim: k, avg_adjacency: 3.0, scale: 1.0, shift: 0.0 };
        let from = Gnn::<f32>::init(cfg(0), 1).unwrap();
        let mut to = Gnn::<f32>::init(cfg(graph::NUM_BASIS), 2).unwrap();
        let copied = copy_matching(&mut to, &from, None);
        let layout = to.params.layout.clone();
        for spec in layout.specs() {
            let is_basis_w = spec.name.ends_with("basis.w");
            assert_eq!(copied.contains(&spec.name), !is_basis_w, "{}", spec.name);
            if !is_basis_w {
                let src = from.params.get(from.params.layout.expect_id(&spec.name));
                assert_eq!(to.params.get(layout.expect_id(&spec.name)), src);
            }
        }
        let mut to = Gnn::<f32>::init(cfg(graph::NUM_BASIS), 2).unwrap();
        assert_eq!(copy_matching(&mut to, &from, Some(&["embed"])), vec!["embed".to_string()]);
    }

    #[test]
    fn a_flipped_bit_in_a_members_tensor_data_fails_naming_the_file() {
        let cfg = GnnConfig { width: 8, steps: 2, basis_dim: 0, avg_adjacency: 2.0, scale: 1.0, shift: 0.0 };
        let model = Gnn::<f32>::init(cfg, 3).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("member-0.safetensors");
        save_member(&p, ModelKind::Compositional, graph::CUTOFF, 3, 0.1, &model).unwrap();
        let m = load_member(&p).unwrap();
        assert!(m.model.params.iter().zip(model.params.iter()).all(|(a, b)| a.1 == b.1));
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x10; // inside the last tensor's data
        std::fs::write(&p, &bytes).unwrap();
        let e = load_member(&p).unwrap_err().to_string();
        assert!(e.contains("member-0.safetensors") && e.contains("damaged"), "{e}");
    }

    /// With `elemental_zero` a pure element's baseline is exactly 0 and every compound's is the
    /// ensemble median; without it, the median everywhere.
    #[test]
    fn elemental_baseline_is_zero_and_compounds_unchanged() {
        let cfg = GnnConfig { width: 8, steps: 2, basis_dim: 0, avg_adjacency: 2.0, scale: 1.0, shift: 0.7 };
        let members: Vec<Member> = (0..3)
            .map(|seed| Member {
                kind: ModelKind::Compositional,
                cutoff: graph::CUTOFF,
                seed,
                valid_mae: 0.0,
                model: Gnn::<f32>::init(cfg.clone(), seed).unwrap(),
            })
            .collect();
        let comps: Vec<crate::Composition> =
            ["C", "Fe2O3", "O2"].iter().map(|f| crate::Composition::parse(f).unwrap()).collect();
        let plain = baseline_predict(&members, &comps, false, 2).unwrap();
        let zeroed = baseline_predict(&members, &comps, true, 2).unwrap();
        assert!(plain[0] != 0.0 && plain[2] != 0.0);
        assert_eq!((zeroed[0], zeroed[1], zeroed[2]), (0.0, plain[1], 0.0));
    }
}
