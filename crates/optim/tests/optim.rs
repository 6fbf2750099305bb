//! AdamW, clipping and schedules against their references.

use std::sync::Arc;

use octet_core::{Layout, Rng, Tolerance};
use octet_kernels::cpu::adamw_update as adamw_fast;
use octet_optim::adamw::adamw_reference;
use octet_optim::{AdamW, AdamWConfig, Decay, Schedule, clip_global_norm, global_norm};

#[test]
fn adamw_fast_matches_reference_over_ten_steps() {
    let mut r = Rng::new(1);
    let n = 50_000;
    let cfg = AdamWConfig::default();
    let p0: Vec<f64> = (0..n).map(|_| r.normal()).collect();
    let (mut p64, mut m64, mut v64) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    let mut p32: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
    let (mut m32, mut v32) = (vec![0.0f32; n], vec![0.0f32; n]);
    for t in 1..=10 {
        let g: Vec<f64> = (0..n).map(|_| r.normal() * 0.01).collect();
        let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
        let g64: Vec<f64> = g32.iter().map(|&x| x as f64).collect();
        adamw_reference(&mut p64, &g64, &mut m64, &mut v64, t, 1e-3, &cfg, t % 2 == 0);
        adamw_fast(&mut p32, &g32, &mut m32, &mut v32, t, 1e-3, &cfg, t % 2 == 0);
    }
    Tolerance::F32.assert_close("params", &p32, &p64);
}

#[test]
fn adamw_decays_only_flagged_tensors() {
    let layout = Arc::new(Layout::new([("w", vec![4]), ("b", vec![4])]));
    let mut opt = AdamW::new(layout, vec![true, false], AdamWConfig { weight_decay: 0.5, ..Default::default() });
    let mut p = vec![1.0f32; 8];
    opt.update(&mut p, &[0.0; 8], 0.1); // zero gradient: only decay moves p
    assert!(p[..4].iter().all(|&x| (x - 0.95).abs() < 1e-7), "{p:?}");
    assert!(p[4..].iter().all(|&x| x == 1.0), "{p:?}");
}

#[test]
fn clip_scales_to_max_norm_and_reports_prior_norm() {
    let mut g = vec![3.0f32, 4.0];
    let n = clip_global_norm(&mut g, 1.0);
    assert_eq!(n, 5.0);
    Tolerance::F32.assert_close("clipped", &g, &[0.6f32, 0.8]);
    assert!((global_norm(&g) - 1.0).abs() < 1e-6);
    let mut small = vec![0.3f32, 0.4];
    clip_global_norm(&mut small, 1.0);
    assert_eq!(small, vec![0.3, 0.4]);
}

#[test]
fn schedule_warms_up_then_decays_to_min() {
    let s = Schedule { lr: 1.0, warmup: 10, total: 110, min_lr_frac: 0.1, decay: Decay::Cosine };
    assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
    assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
    assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
    assert!((s.lr_at(60) - 0.55).abs() < 1e-12); // halfway: min + (1-min)/2
    assert!((s.lr_at(110) - 0.1).abs() < 1e-12);
    assert!((s.lr_at(500) - 0.1).abs() < 1e-12);
    let l = Schedule { decay: Decay::Linear, ..s };
    assert!((l.lr_at(60) - 0.55).abs() < 1e-12);
    let c = Schedule { decay: Decay::Constant, ..s };
    assert_eq!(c.lr_at(100), 1.0);
}
