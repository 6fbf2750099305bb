//! Training-step throughput benchmark: forward + backward + clip + AdamW (`step::train_step`, any precision level) on random tokens, timed per
//! step after warm-up; reports tokens/s, the median step time and achieved model GFLOP/s.

use std::time::Instant;

use octet_core::{Result, Rng};
use octet_kernels::{Backend, CpuBackend};
use octet_optim::AdamWConfig;

use crate::memory::Ledger;
use crate::precision::Precision;
use crate::spec::ModelSpec;
use crate::step::{GradScaler, Optimizer, train_step};
use crate::train::peak_rss_bytes;
use octet_core::scaling::Recipe;

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// The backend that ran the steps ("cpu", "cuda").
    pub device: &'static str,
    pub model: ModelSpec,
    pub precision: Precision,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub params: usize,
    pub median_step_ms: f64,
    pub tokens_per_s: f64,
    /// Matmul FLOPs per token, forward + backward (`ModelSpec::flops_per_token`).
    pub flops_per_token: f64,
    pub gflops: f64,
    pub peak_rss_bytes: u64,
    /// Bytes per role of the buffers the step used (see `memory::Ledger`).
    pub memory: serde_json::Value,
    /// peak_rss_bytes / ledger total: how much of the process's memory the ledger accounts for.
    pub rss_over_ledger: f64,
}

/// Time `steps` training steps (after `warmup`) of the model `spec`.
#[allow(clippy::too_many_arguments)]
pub fn bench_train(
    spec: ModelSpec,
    precision: Precision,
    b: usize,
    t: usize,
    steps: usize,
    warmup: usize,
    seed: u64,
) -> Result<BenchResult> {
    bench_train_on(CpuBackend, spec, precision, b, t, steps, warmup, seed)
}

/// `bench_train` on `backend` (its name goes into the result as `device`).
#[allow(clippy::too_many_arguments)]
pub fn bench_train_on<Bk: Backend<F = f32> + 'static>(
    backend: Bk,
    spec: ModelSpec,
    precision: Precision,
    b: usize,
    t: usize,
    steps: usize,
    warmup: usize,
    seed: u64,
) -> Result<BenchResult> {
    let device = backend.name();
    let mut model = spec.init_on(backend, precision, &Recipe::default(), seed)?;
    let vocab = spec.dims().vocab_size;
    let mut opt = Optimizer::for_model(model.as_ref(), AdamWConfig::default());
    let mut scaler = GradScaler::default();
    let mut rng = Rng::new(seed);
    let mut times = vec![];
    for i in 0..warmup + steps {
        let x: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        let y: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        let t0 = Instant::now();
        train_step(model.as_mut(), &mut opt, &mut scaler, &x, &y, b, t, 1.0, 1e-4)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let tps = (b * t) as f64 / med;
    let fpt = spec.flops_per_token(t);
    let ledger = Ledger::of(model.as_ref(), opt.state_bytes());
    let rss = peak_rss_bytes();
    Ok(BenchResult {
        device,
        model: spec,
        precision,
        batch: b,
        seq: t,
        steps,
        params: model.num_params(),
        median_step_ms: med * 1e3,
        tokens_per_s: tps,
        flops_per_token: fpt,
        gflops: tps * fpt / 1e9,
        peak_rss_bytes: rss,
        memory: ledger.to_json(),
        rss_over_ledger: rss as f64 / ledger.total() as f64,
    })
}
