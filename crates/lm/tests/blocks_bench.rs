//! Parameter counts of the five blocks and a forward+backward(+AdamW) step-time comparison at the
//! issue-4 shape (8 layers, d=256, 8 heads, T=128, B=8, vocabulary 1024), on the CPU backend at fp32.
//! Kinds are interleaved round by round so machine drift hits all alike; medians are reported.
//!
//!     cargo test --release -p octet-lm --test blocks_bench -- --ignored --nocapture

use std::time::Instant;

use octet_core::scaling::Recipe;
use octet_kernels::CpuBackend;
use octet_lm::blocks::{BlockKind, BlocksConfig, BlocksLm, decay_flags};
use octet_lm::precision::Precision;
use octet_optim::{AdamW, AdamWConfig};

/// CPU seconds of this process, all threads: the sum over /proc/self/task/*/schedstat of the time
/// spent on a CPU (ns). Less sensitive than wall time to other processes on a shared machine.
fn cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[test]
#[ignore = "benchmark: ~1 minute on 2 cores"]
fn block_step_times() {
    let (b, t, rounds) = (8, 128, 7);
    let prec: Precision = std::env::var("PRECISION").ok().map_or(Precision::Fp32, |s| s.parse().unwrap());
    let layers: usize = std::env::var("LAYERS").ok().map_or(8, |s| s.parse().unwrap());
    let rounds: usize = std::env::var("ROUNDS").ok().map_or(rounds, |s| s.parse().unwrap());
    // BLOCKS="sas-p" runs one kind alone (for a profiler); the table then shows only it.
    let kinds: Vec<BlockKind> = std::env::var("BLOCKS")
        .ok()
        .map_or(BlockKind::ALL.to_vec(), |s| s.split(',').map(|k| k.parse().unwrap()).collect());
    let cfg = |k| BlocksConfig {
        vocab_size: 1024,
        padded_vocab: 1024,
        max_seq_len: t,
        n_layer: layers,
        n_head: 8,
        n_embd: 256,
        block: k,
        llama: None,
    };
    let mut models: Vec<_> = kinds
        .iter()
        .map(|&k| {
            let m = BlocksLm::init(cfg(k), CpuBackend, prec, &Recipe::default(), 1).unwrap();
            let l = m.params.layout.clone();
            let opt = AdamW::new(l.clone(), decay_flags(&l), AdamWConfig::default());
            (m, opt)
        })
        .collect();
    let x: Vec<u32> = (0..b * t).map(|i| (i * 7919 % 1024) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|i| ((i + 1) * 7919 % 1024) as u32).collect();
    let mut fb = vec![vec![]; kinds.len()];
    let mut step = vec![vec![]; kinds.len()];
    let mut cpu = vec![vec![]; kinds.len()];
    for round in 0..rounds + 1 {
        for (k, (m, opt)) in models.iter_mut().enumerate() {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            m.zero_grad();
            m.forward(&x, Some(&y), b, t).unwrap();
            m.backward().unwrap();
            let t1 = Instant::now();
            let g = m.grads.data.clone();
            opt.update(&mut m.params.data, &g, 1e-4);
            let (t2, c2) = (Instant::now(), cpu_seconds());
            if round > 0 {
                cpu[k].push(c2 - c0);
                fb[k].push((t1 - t0).as_secs_f64());
                step[k].push((t2 - t0).as_secs_f64());
            }
        }
    }
    let base_p = cfg(kinds[0]).num_params() as f64;
    let (base_fb, base_step) = (median(fb[0].clone()), median(step[0].clone()));
    println!("{layers} layers, d=256, 8 heads, T={t}, B={b}, V=1024, {prec}, {rounds} rounds (median)");
    println!(
        "| block | params | params/first | fwd+bwd ms | step ms (with AdamW) | tok/s | vs first | CPU s/step | CPU vs first |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let base_cpu = median(cpu[0].clone());
    for (k, kind) in kinds.iter().enumerate() {
        let p = cfg(*kind).num_params();
        let (f, s, c) = (median(fb[k].clone()), median(step[k].clone()), median(cpu[k].clone()));
        let tok = (b * t) as f64;
        println!(
            "| {kind} | {p} | {:.3} | {:.1} | {:.1} | {:.0} | {:.3}x (fwd+bwd {:.3}x) | {c:.3} | {:.3}x |",
            p as f64 / base_p,
            f * 1e3,
            s * 1e3,
            tok / s,
            base_step / s,
            base_fb / f,
            base_cpu / c
        );
    }
}
