//! Data-parallel training (`octet_lm::dist`) across real MPI processes. Run by `cargo test`, this
//! binary starts itself under `mpirun -np 2` (MPI initialises once per process); each rank then
//! trains its half of every batch beside a one-process reference that trains the whole batch in the
//! same process, and checks:
//! - fp32, every architecture: 2 ranks x B/2 = 1 rank x B — step-1 gradients, 20 steps of losses and
//!   weights within 1e-5 relative (the summation order is the only difference), identical weights on
//!   both ranks (hash), and the bytes counted inside the `Collective` (4 per parameter + the loss);
//! - the E4M3 all-reduce's error per element within the bound derived in `octet_lm::dist`, at
//!   <= 0.27x the bytes of fp32;
//! - ZeRO gives the same weights and moments as no ZeRO, bit for bit, at every narrow level (with
//!   two ranks every sum is one addition, so the reduce-scatter adds exactly what the all-reduce does);
//! - every precision level keeps the ranks' weights identical and the loss near the reference.
//!
//! Skips with a printed reason when built without `--features octet-cli/mpi` or without `mpirun`.

use octet_core::Rng;
use octet_core::scaling::Recipe;
use octet_core::tolerance::Tolerance;
use octet_dist::Collective;
use octet_lm::blocks::{BlockKind, BlocksConfig};
use octet_lm::dist::{DataParallel, weights_hash};
use octet_lm::gpt2::Gpt2Config;
use octet_lm::llama::LlamaConfig;
use octet_lm::model::{Buffers, LanguageModel};
use octet_lm::precision::Precision;
use octet_lm::spec::ModelSpec;
use octet_lm::step::{GradScaler, Optimizer, train_step_accum, train_step_dist};
use octet_optim::AdamWConfig;

fn main() {
    if !octet_dist::MPI_BUILT {
        println!("SKIPPED dist_mpi: built without MPI (cargo test --features octet-cli/mpi)");
        return;
    }
    if octet_dist::launched_by_mpirun().is_some() {
        let coll = octet_dist::init().expect("MPI init");
        rank_checks(coll.as_ref());
        println!("rank {}: dist checks ok", coll.rank());
        return;
    }
    let Some(mpirun) = find("mpirun") else {
        println!("SKIPPED dist_mpi: no `mpirun` on PATH (apt-get install openmpi-bin)");
        return;
    };
    let me = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(mpirun)
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(&me)
        .output()
        .expect("run mpirun");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "mpirun -np 2 failed");
    assert_eq!(text.matches("dist checks ok").count(), 2, "both ranks report");
}

fn find(prog: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(prog)).find(|p| p.is_file())
}

const B: usize = 4;
const T: usize = 8;

fn specs() -> Vec<ModelSpec> {
    vec![
        ModelSpec::Gpt2(Gpt2Config::tiny()),
        ModelSpec::Blocks(BlocksConfig::tiny(BlockKind::SasP)),
        ModelSpec::Llama(LlamaConfig::tiny()),
    ]
}

/// The global batch of step `s`: the same on every rank (a seeded RNG).
fn batch(spec: &ModelSpec, s: usize) -> (Vec<u32>, Vec<u32>) {
    let v = spec.dims().vocab_size;
    let mut rng = Rng::new(100 + s as u64);
    let x = (0..B * T).map(|_| rng.below(v) as u32).collect();
    let y = (0..B * T).map(|_| rng.below(v) as u32).collect();
    (x, y)
}

fn weights_and_grads(m: &mut dyn LanguageModel) -> (Vec<f32>, Vec<f32>) {
    match m.buffers() {
        Buffers::Plain { params, grads } => (params.data.to_vec(), grads.data.to_vec()),
        Buffers::Narrow(nw) => (nw.weights.to_f32(), nw.grads.to_f32()),
    }
}

/// 1e-5 relative, with an absolute floor of 1e-5 of the tensor's largest magnitude for elements
/// that cancel (their relative error is not small, only their absolute one): the summation order of
/// two half-batch means vs one mean is the only difference.
fn order_tol(want: &[f32]) -> Tolerance {
    let amax = want.iter().fold(0f32, |a, &x| a.max(x.abs())) as f64;
    Tolerance { atol: 1e-5 * amax, rtol: 1e-5 }
}

fn rank_checks(c: &dyn Collective) {
    fp32_two_ranks_train_like_one_rank_on_the_whole_batch(c);
    fp8_all_reduce_error_is_within_the_e4m3_bound(c);
    zero_gives_the_same_weights_as_no_zero(c);
    every_level_keeps_the_ranks_identical(c);
    an_overflow_on_one_rank_skips_the_step_on_every_rank(c);
}

/// The single-process policy, job-wide: a non-finite gradient on any rank (here rank 1's, flagged
/// as `Narrow` flags an encode whose amax was not finite) makes every rank skip the step.
fn an_overflow_on_one_rank_skips_the_step_on_every_rank(c: &dyn Collective) {
    let (r, n) = (c.rank(), c.size());
    let spec = ModelSpec::Gpt2(Gpt2Config::tiny());
    let mut m = spec.init(Precision::Fp8O2, &Recipe::default(), 5).unwrap();
    let (x, y) = batch(&spec, 0);
    let rows = r * B / n..(r + 1) * B / n;
    m.zero_grad();
    m.set_grad_scale(1.0 / n as f64);
    m.forward(&x[rows.start * T..rows.end * T], Some(&y[rows.start * T..rows.end * T]), B / n, T).unwrap();
    m.backward().unwrap();
    if let Buffers::Narrow(nw) = m.buffers() {
        nw.overflow = r == 1;
    }
    let before = weights_hash(m.as_ref());
    let rep = DataParallel::new(c).all_reduce_grads(m.as_mut());
    assert!(rep.overflow, "rank {r} learns of rank 1's overflow");
    let Buffers::Narrow(nw) = m.buffers() else { unreachable!() };
    assert!(nw.overflow, "rank {r}: the step will be skipped (train_step_dist checks this flag)");
    assert_eq!(weights_hash(m.as_ref()), before);
}

fn fp32_two_ranks_train_like_one_rank_on_the_whole_batch(c: &dyn Collective) {
    let (r, n) = (c.rank(), c.size());
    let rows = r * B / n..(r + 1) * B / n;
    for spec in specs() {
        let rec = Recipe::default();
        let mut full = spec.init(Precision::Fp32, &rec, 5).unwrap();
        let mut mine = spec.init(Precision::Fp32, &rec, 5).unwrap();
        let mut of = Optimizer::for_model(full.as_ref(), AdamWConfig::default());
        let mut om = Optimizer::for_model(mine.as_ref(), AdamWConfig::default());
        let (mut sf, mut sm) = (GradScaler::default(), GradScaler::default());
        let mut dp = DataParallel::new(c);
        for s in 0..20 {
            let (x, y) = batch(&spec, s);
            let (xs, ys) = (&x[rows.start * T..rows.end * T], &y[rows.start * T..rows.end * T]);
            // clip 0: the gradients stay as the step used them, to be compared after it.
            let lf = train_step_accum(full.as_mut(), &mut of, &mut sf, &[(&x, &y)], B, T, 0.0, 1e-3).unwrap();
            let before = c.traffic();
            let lm = train_step_dist(mine.as_mut(), &mut om, &mut sm, &[(xs, ys)], B / n, T, 0.0, 1e-3, Some(&mut dp))
                .unwrap();
            let moved = c.traffic().since(&before);
            assert_eq!(
                moved.all_reduce as usize,
                4 * spec.num_params() + 8,
                "{spec:?}: f32 gradients + the loss, counted in the Collective"
            );
            Tolerance { atol: 0.0, rtol: 1e-5 }
                .check(&format!("{spec:?} step {s} loss"), &[lm.loss], &[lf.loss])
                .unwrap_or_else(|e| panic!("{e}"));
            let ((wf, gf), (wm, gm)) = (weights_and_grads(full.as_mut()), weights_and_grads(mine.as_mut()));
            if s == 0 {
                order_tol(&gf).check(&format!("{spec:?} step-1 gradient"), &gm, &gf).unwrap_or_else(|e| panic!("{e}"));
            }
            order_tol(&wf).check(&format!("{spec:?} step {s} weights"), &wm, &wf).unwrap_or_else(|e| panic!("{e}"));
            dp.check_same_weights(mine.as_ref(), s + 1).unwrap();
        }
    }
}

fn fp8_all_reduce_error_is_within_the_e4m3_bound(c: &dyn Collective) {
    let (r, n) = (c.rank(), c.size());
    let spec = ModelSpec::Gpt2(Gpt2Config::tiny());
    let rows = r * B / n..(r + 1) * B / n;
    let mut m = spec.init(Precision::Fp8O2, &Recipe::default(), 5).unwrap();
    let (x, y) = batch(&spec, 0);
    // What `train_step_dist` does before its all-reduce: this rank's share of the mean gradient.
    m.zero_grad();
    m.set_grad_scale(1.0 / n as f64);
    m.forward(&x[rows.start * T..rows.end * T], Some(&y[rows.start * T..rows.end * T]), B / n, T).unwrap();
    m.backward().unwrap();
    let local = weights_and_grads(m.as_mut()).1;
    let np = local.len();
    // Everyone's local gradient (as stored: decoded E4M3), to form the exact sum here.
    let bytes: Vec<u8> = local.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut all = vec![0u8; bytes.len() * n];
    c.all_gather_bytes(&bytes, &mut all);
    let g: Vec<Vec<f32>> = all
        .chunks_exact(bytes.len())
        .map(|b| b.chunks_exact(4).map(|w| f32::from_le_bytes(w.try_into().unwrap())).collect())
        .collect();
    let mut dp = DataParallel::new(c);
    let before = c.traffic();
    let rep = dp.all_reduce_grads(m.as_mut());
    let moved = c.traffic().since(&before);
    assert!(!rep.overflow);
    let Buffers::Narrow(nw) = m.buffers() else { panic!("fp8-o2 stores narrow gradients") };
    let got = nw.grads.to_f32();
    // Bound (octet_lm::dist): re-encoding errs by u|g_i| + d/S per rank; the N-1 additions by
    // (N-1)(u (1+u)^(N-1) sum_i |x_i| + d/S), with |x_i| <= (1+u)|g_i| + d/S.
    let (u, d) = (2f64.powi(-4), 2f64.powi(-10));
    let mut worst = 0f64;
    for (k, spec_u) in nw.units.specs().iter().enumerate() {
        let s = nw.grads.scale(k) as f64;
        for i in spec_u.range() {
            let exact: f64 = g.iter().map(|gi| gi[i] as f64).sum();
            let mags: f64 = g.iter().map(|gi| (gi[i] as f64).abs()).sum();
            let nn = n as f64;
            let x_mags = (1.0 + u) * mags + nn * d / s;
            let bound = u * mags + nn * d / s + (nn - 1.0) * (u * (1.0 + u).powi(n as i32 - 1) * x_mags + d / s);
            let err = (got[i] as f64 - exact).abs();
            assert!(err <= bound, "unit {} element {i}: {} vs exact {exact}, bound {bound}", spec_u.name, got[i]);
            worst = worst.max(err / bound);
        }
    }
    // Bytes: the E4M3 payload, one amax per unit and the overflow flag.
    let units = nw.units.specs().len();
    assert_eq!(moved.all_reduce as usize, np + 4 * (units + 1));
    let ratio = moved.all_reduce as f64 / (4 * np) as f64;
    assert!(ratio <= 0.27, "fp8 all-reduce moves {ratio:.3}x fp32's bytes");
    if r == 0 {
        println!("fp8 all-reduce: worst error / bound {worst:.3}; {ratio:.4}x the bytes of fp32");
    }
}

fn zero_gives_the_same_weights_as_no_zero(c: &dyn Collective) {
    let (r, n) = (c.rank(), c.size());
    let rows = r * B / n..(r + 1) * B / n;
    let spec = ModelSpec::Gpt2(Gpt2Config::tiny());
    for p in [Precision::Fp8O1, Precision::Fp8O2, Precision::Fp8O2V8] {
        let rec = Recipe::default();
        let mut a = spec.init(p, &rec, 5).unwrap();
        let mut z = spec.init(p, &rec, 5).unwrap();
        let mut oa = Optimizer::for_model(a.as_ref(), AdamWConfig::default());
        let mut oz = Optimizer::zero_for_model(z.as_ref(), AdamWConfig::default(), r, n).unwrap();
        let (mut sa, mut sz) = (GradScaler::default(), GradScaler::default());
        let (mut da, mut dz) = (DataParallel::new(c), DataParallel::new(c));
        for s in 0..10 {
            let (x, y) = batch(&spec, s);
            let (xs, ys) = (&x[rows.start * T..rows.end * T], &y[rows.start * T..rows.end * T]);
            // clip 1: the global norm (from the shards' partial sums under ZeRO) matters.
            let la =
                train_step_dist(a.as_mut(), &mut oa, &mut sa, &[(xs, ys)], B / n, T, 1.0, 1e-2, Some(&mut da)).unwrap();
            let lz =
                train_step_dist(z.as_mut(), &mut oz, &mut sz, &[(xs, ys)], B / n, T, 1.0, 1e-2, Some(&mut dz)).unwrap();
            assert_eq!(la, lz, "{p} step {s}: loss, norm and skip");
            assert_eq!(weights_hash(a.as_ref()), weights_hash(z.as_ref()), "{p} step {s}: weights bit for bit");
        }
        let (Optimizer::Narrow(full), Optimizer::Zero(shard)) = (&oa, &oz) else { unreachable!() };
        let (m, v) = shard.gather_full(c);
        assert!(m == full.m && v == full.v, "{p}: gathered ZeRO moments equal the unsharded ones");
        let (zm, zv) = oz.state_bytes();
        let (fm, fv) = oa.state_bytes();
        if r == 0 {
            println!("{p}: ZeRO == no ZeRO over 10 steps; rank 0 holds {} of {} optimizer bytes", zm + zv, fm + fv);
        }
    }
}

fn every_level_keeps_the_ranks_identical(c: &dyn Collective) {
    let (r, n) = (c.rank(), c.size());
    let rows = r * B / n..(r + 1) * B / n;
    for spec in specs() {
        for p in Precision::ALL {
            let rec = Recipe::default();
            let mut full = spec.init(p, &rec, 5).unwrap();
            let mut mine = spec.init(p, &rec, 5).unwrap();
            let mut of = Optimizer::for_model(full.as_ref(), AdamWConfig::default());
            let mut om = Optimizer::for_model(mine.as_ref(), AdamWConfig::default());
            let (mut sf, mut sm) = (GradScaler::default(), GradScaler::default());
            let mut dp = DataParallel::new(c);
            let (mut lf, mut lm) = (0.0, 0.0);
            for s in 0..5 {
                let (x, y) = batch(&spec, s);
                let (xs, ys) = (&x[rows.start * T..rows.end * T], &y[rows.start * T..rows.end * T]);
                lf = train_step_accum(full.as_mut(), &mut of, &mut sf, &[(&x, &y)], B, T, 1.0, 1e-3).unwrap().loss;
                lm = train_step_dist(mine.as_mut(), &mut om, &mut sm, &[(xs, ys)], B / n, T, 1.0, 1e-3, Some(&mut dp))
                    .unwrap()
                    .loss;
                dp.check_same_weights(mine.as_ref(), s + 1).unwrap();
            }
            if r == 0 {
                let name = format!("{spec:?}").split('(').next().unwrap_or("").to_string();
                println!(
                    "{name} {p}: loss after 5 steps {lm:.6} vs one rank {lf:.6} ({:+.2e} relative)",
                    (lm - lf) / lf
                );
            }
            // Five steps barely move the loss; the levels' roundings of the wire move it less. Not
            // fp8-o2-v8 (beyond FP8-LM): its E4M3 second moment flushes small v to zero, which turns
            // the all-reduce's E4M3 rounding into large steps (fp8_adamw.rs explains why an FP8 v
            // diverges); its ranks still agree (checked above).
            if p != Precision::Fp8O2V8 {
                assert!((lm - lf).abs() <= 1e-2 * lf, "{spec:?} {p}: loss {lm} vs one rank {lf}");
            }
        }
    }
}
