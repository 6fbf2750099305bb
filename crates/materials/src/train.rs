//! Training for the GNoME models (`gnn`); trained models, their directory format and inference
//! are `ensemble`'s.
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

use std::path::Path;
use std::time::Instant;

use octet_core::{Error, Result, Rng, Slab};
use octet_optim::{AdamW, AdamWConfig};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::composition_data::CompositionEntry;
// The discover loop (`discover.rs`) names these through `train`; their home is `ensemble`.
use crate::dataset::{Entry, fnv1a64};
use crate::ensemble::{Baseline, predict_graphs};
pub use crate::ensemble::{Member, ModelKind, load_member, predict_structures, save_member};
use crate::gnn::{Acts, Gnn, GnnConfig};
use crate::graph::{self, Graph, GraphBatch};

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

/// Delta learning (`train --baseline`): replaces every sample's target by its residual over the
/// baseline's prediction for its formula, and returns the baseline's MAE on the original targets.
/// `Ensemble::predict` adds the baseline back.
pub fn subtract_baseline(samples: &mut [Sample], baseline: &Baseline) -> Result<f64> {
    let comps = samples.iter().map(|s| crate::Composition::parse(&s.formula)).collect::<Result<Vec<_>>>()?;
    let preds = baseline.predict(&comps, 512)?;
    let mae = samples.iter().zip(&preds).map(|(s, p)| (s.target - p).abs()).sum::<f64>() / samples.len().max(1) as f64;
    for (s, p) in samples.iter_mut().zip(&preds) {
        s.target -= p;
    }
    Ok(mae)
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

/// Mean absolute error per atom over samples.
pub fn mae(model: &Gnn<f32>, samples: &[Sample], batch: usize) -> Result<f64> {
    let graphs: Vec<&Graph> = samples.iter().map(|s| &s.graph).collect();
    let y = predict_graphs(model, &graphs, batch)?;
    Ok(y.iter().zip(samples).map(|(&p, s)| (p as f64 - s.target).abs()).sum::<f64>() / samples.len().max(1) as f64)
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
}
