//! The optimizer's kernels (global norm, scale, AdamW; `octet_kernels::cpu`, the backend's ops): against
//! the f64 references, and against the optimizers built on them (`octet_optim::clip_global_norm` and
//! `AdamW::update`), which they must equal bit for bit.

use octet_core::{Rng, Tolerance};
use octet_kernels::{cpu, reference};
use octet_optim::{AdamWConfig, clip_global_norm};

fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

#[test]
fn global_norm_and_scale_match_the_reference_and_clip_global_norm() {
    let mut rng = Rng::new(1);
    let g = normal(&mut rng, 100_003, 0.3);
    let (fast, slow) = (cpu::global_norm(&g), reference::global_norm(&g));
    // f64 sums of 1e5 f32 squares in different orders: ~1e-15 relative.
    assert!((fast - slow).abs() <= 1e-12 * slow, "{fast} vs {slow}");
    // Clipping through the ops is clip_global_norm exactly.
    let (mut a, mut b) = (g.clone(), g.clone());
    let norm = clip_global_norm(&mut a, 1.0);
    assert_eq!(norm, fast);
    cpu::scale_in_place(&mut b, (1.0 / fast) as f32);
    assert_eq!(a, b);
    let mut c = g.clone();
    reference::scale_in_place(&mut c, (1.0 / fast) as f32);
    Tolerance::F32.assert_close("scaled", &b, &c);
}

#[test]
fn adamw_update_matches_the_reference_over_several_steps() {
    let mut rng = Rng::new(2);
    let n = 40_000;
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let p0 = normal(&mut rng, n, 0.02);
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.0f32; n], vec![0.0f32; n]);
    let (mut pr, mut mr, mut vr) = (p0.iter().map(|&x| x as f64).collect::<Vec<_>>(), vec![0.0f64; n], vec![0.0f64; n]);
    for t in 1..=5 {
        let g = normal(&mut rng, n, 0.01);
        let gr: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        cpu::adamw_update(&mut p, &g, &mut m, &mut v, t, 1e-3, &cfg, t % 2 == 0);
        reference::adamw_update(&mut pr, &gr, &mut mr, &mut vr, t, 1e-3, &cfg, t % 2 == 0);
    }
    // f32 against f64 over five steps: each update rounds at ~6e-8 relative; the step m/sqrt(v) is
    // O(1) times lr = 1e-3 on weights of ~0.02, so parameter errors stay near f32 rounding of p.
    let pr32: Vec<f32> = pr.iter().map(|&x| x as f32).collect();
    Tolerance::F32.assert_close("p", &p, &pr32);
    let mr32: Vec<f32> = mr.iter().map(|&x| x as f32).collect();
    Tolerance::F32.assert_close("m", &m, &mr32);
}
