//! Throughput of screening (graph building + ensemble inference) and of training, for `octet bench
//! materials`. Screening counts the whole pipeline a discovery loop runs per candidate: neighbour
//! list and edge basis, then one forward pass per ensemble member (`Gnn::predict_with`, tables
//! built once per member and timed). `structures_per_s` is the unit: a structure through a
//! k-member ensemble counts as k structures, i.e. (structure, member) passes per second including
//! graph building; `ensemble_structures_per_s` counts whole ensembles (k times fewer).

use std::time::Instant;

use octet_core::{Result, Rng, Slab};
use octet_optim::{AdamW, AdamWConfig};
use rayon::prelude::*;
use serde::Serialize;

use crate::element::Element;
use crate::ensemble;
use crate::gnn::{Acts, Gnn, GnnConfig};
use crate::graph::{self, Graph, GraphBatch};
use crate::lattice::Lattice;
use crate::structure::Structure;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub width: usize,
    pub steps: usize,
    /// Ensemble members: forward passes per structure.
    pub ensemble: usize,
    /// Graphs per inference batch.
    pub batch: usize,
    /// Graphs per training batch.
    pub train_batch: usize,
    /// Timed training steps (after 2 warm-up steps).
    pub train_steps: usize,
}

/// The measured numbers.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub bench: &'static str,
    pub source: String,
    pub structures: usize,
    pub mean_atoms: f64,
    pub mean_edges: f64,
    pub width: usize,
    pub steps: usize,
    pub ensemble: usize,
    pub params_per_member: usize,
    pub threads: usize,
    pub graph_build_s: f64,
    pub graph_structures_per_s: f64,
    pub inference_s: f64,
    /// CPU seconds of all threads during inference (Linux schedstat; NaN elsewhere): on a shared
    /// machine `passes_per_cpu_s` is steadier than wall-clock rates.
    pub inference_cpu_s: f64,
    /// Forward passes (structure x member) per second.
    pub passes_per_s: f64,
    /// Forward passes per CPU second of this process.
    pub passes_per_cpu_s: f64,
    /// The unit: structures per second through graph building and inference, a structure
    /// through a k-member ensemble counted as k passes, i.e. (structure, member) passes per second
    /// including graph building: `ensemble * ensemble_structures_per_s`.
    pub structures_per_s: f64,
    /// Whole structures per second through graph building and all `ensemble` members.
    pub ensemble_structures_per_s: f64,
    pub train_graphs_per_s: f64,
    pub train_batch: usize,
}

/// CPU seconds of this process, all threads: the sum over /proc/self/task/*/schedstat of the time
/// spent on a CPU (ns); NaN where that does not exist.
fn cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// Synthetic crystals for when no data set is at hand: rock-salt and perovskite supercells (5-40
/// atoms) with jittered positions and random species.
pub fn synthetic_structures(n: usize) -> Result<Vec<Structure>> {
    let mut rng = Rng::new(7);
    let zs = [3u8, 8, 11, 12, 13, 14, 16, 17, 20, 22, 26, 29, 38, 56];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let reps = [1 + rng.below(2), 1 + rng.below(2), 1 + rng.below(3)];
        let perovskite = rng.below(2) == 1;
        let a = if perovskite { 3.9 } else { 4.6 } * (0.95 + 0.1 * rng.uniform());
        let basis: Vec<[f64; 3]> = if perovskite {
            vec![[0.0; 3], [0.5; 3], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]
        } else {
            let h = 0.5;
            vec![[0.0; 3], [h, h, 0.0], [h, 0.0, h], [0.0, h, h], [h, 0.0, 0.0], [0.0, h, 0.0], [0.0, 0.0, h], [h; 3]]
        };
        let kinds: Vec<Element> = (0..3).map(|_| Element::from_z(zs[rng.below(zs.len())]).expect("valid Z")).collect();
        let m = [[a * reps[0] as f64, 0.0, 0.0], [0.0, a * reps[1] as f64, 0.0], [0.0, 0.0, a * reps[2] as f64]];
        let (mut species, mut frac) = (Vec::new(), Vec::new());
        for i in 0..reps[0] {
            for j in 0..reps[1] {
                for k in 0..reps[2] {
                    for (b, f) in basis.iter().enumerate() {
                        let cell = [i, j, k];
                        frac.push(std::array::from_fn(|x| {
                            (f[x] + cell[x] as f64) / reps[x] as f64 + 0.01 * (rng.uniform() - 0.5)
                        }));
                        species.push(kinds[if perovskite { b.min(2) } else { b / 4 }]);
                    }
                }
            }
        }
        out.push(Structure::new(Lattice::new(m)?, species, frac)?);
    }
    Ok(out)
}

/// Runs the benchmark on `structures` (`source` names them in the report).
pub fn bench(cfg: &BenchConfig, structures: &[Structure], source: &str) -> Result<BenchReport> {
    if cfg.ensemble == 0 || cfg.batch == 0 || cfg.train_batch == 0 || structures.is_empty() {
        return Err(octet_core::Error::config("ensemble/batch/train_batch/structures", "must be positive"));
    }
    let n = structures.len();
    let build = || -> Result<Vec<Graph>> {
        structures.par_iter().with_min_len(8).map(|s| graph::structure_graph(s, graph::CUTOFF)).collect()
    };
    build()?; // warm-up
    let t = Instant::now();
    let graphs = build()?;
    let t_graph = t.elapsed().as_secs_f64();
    let gcfg = GnnConfig {
        width: cfg.width,
        steps: cfg.steps,
        basis_dim: graph::NUM_BASIS,
        avg_adjacency: graph::average_adjacency(&graphs),
        scale: 0.5,
        shift: -1.0,
    };
    let members: Vec<Gnn<f32>> = (0..cfg.ensemble).map(|k| Gnn::init(gcfg.clone(), k as u64)).collect::<Result<_>>()?;
    let refs: Vec<&Graph> = graphs.iter().collect();
    let models: Vec<&Gnn<f32>> = members.iter().collect();
    let infer = || -> Result<(f64, f64)> {
        let (t, c) = (Instant::now(), cpu_seconds());
        // Tables once per model per screening run (timed), members in parallel per batch.
        let ys = ensemble::predict_members(&models, &refs, cfg.batch)?;
        std::hint::black_box(ys.iter().flatten().map(|&x| x as f64).sum::<f64>());
        Ok((t.elapsed().as_secs_f64(), cpu_seconds() - c))
    };
    infer()?; // warm-up (allocations)
    let (t_infer, cpu_infer) = infer()?;

    let mut model = members[0].clone();
    let layout = model.params.layout.clone();
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = AdamW::new(layout.clone(), vec![false; layout.specs().len()], adam);
    let mut grads = Slab::<f32>::zeros(layout);
    let batches: Vec<GraphBatch> = refs.chunks(cfg.train_batch).map(GraphBatch::new).collect::<Result<_>>()?;
    let (mut train_graphs, mut t_train) = (0usize, 0.0);
    let mut acts = Acts::default();
    for s in 0..cfg.train_steps + 2 {
        let b = &batches[s % batches.len()];
        let t = Instant::now();
        let y = model.forward(&mut acts, b)?;
        let dy: Vec<f32> = y.iter().map(|&v| v.signum() / y.len() as f32).collect();
        grads.data.fill(0.0);
        model.backward(&mut grads, &acts, b, &dy);
        opt.update(&mut model.params.data, &grads.data, 1e-4);
        if s >= 2 {
            t_train += t.elapsed().as_secs_f64();
            train_graphs += b.num_graphs();
        }
    }
    let atoms: usize = structures.iter().map(|s| s.num_sites()).sum();
    let edges: usize = graphs.iter().map(|g| g.num_edges()).sum();
    Ok(BenchReport {
        bench: "materials",
        source: source.to_string(),
        structures: n,
        mean_atoms: atoms as f64 / n as f64,
        mean_edges: edges as f64 / n as f64,
        width: cfg.width,
        steps: cfg.steps,
        ensemble: cfg.ensemble,
        params_per_member: members[0].num_params(),
        threads: rayon::current_num_threads(),
        graph_build_s: t_graph,
        graph_structures_per_s: n as f64 / t_graph,
        inference_s: t_infer,
        inference_cpu_s: cpu_infer,
        passes_per_s: (n * cfg.ensemble) as f64 / t_infer,
        passes_per_cpu_s: (n * cfg.ensemble) as f64 / cpu_infer,
        structures_per_s: (n * cfg.ensemble) as f64 / (t_graph + t_infer),
        ensemble_structures_per_s: n as f64 / (t_graph + t_infer),
        train_graphs_per_s: train_graphs as f64 / t_train.max(1e-9),
        train_batch: cfg.train_batch,
    })
}
