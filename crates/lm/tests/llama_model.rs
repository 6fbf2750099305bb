//! Llama on the fast CPU backend against the same model on the f64 reference backend (forward, loss,
//! every gradient), the generation forwards (last row only; key/value cache) and cached generation
//! against the training forward, a short training run at every precision level, the narrow levels
//! (fp8-o1/o2) against fp8-te on their f16 weights, configuration
//! errors, and the ChatML chat template.

use octet_core::scaling::Recipe;
use octet_core::{Rng, ScaledBuf, StateFormat, Tolerance};
use octet_kernels::Backend;
use octet_kernels::{CpuBackend, RefBackend};
use octet_lm::chat::ChatMl;
use octet_lm::generate::SampleConfig;
use octet_lm::infer::{KvCache, generate};
use octet_lm::llama::{Llama, LlamaConfig, init_params, param_layout};
use octet_lm::precision::Precision;
use octet_lm::step::{GradScaler, Optimizer, train_step};
use octet_optim::AdamWConfig;

/// f32 against f64 through the whole model: the preset for exactly this (errors compound through layers;
/// RMSNorm, attention softmax and the loss softmax amplify).
const MODEL: Tolerance = Tolerance::F32_MODEL;

fn batch(cfg: &LlamaConfig, b: usize, t: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let mut draw = || (0..b * t).map(|_| rng.below(cfg.vocab_size) as u32).collect::<Vec<_>>();
    (draw(), draw())
}

/// Tiny parameters with norm gains away from 1 (init leaves them at exactly 1).
fn params(cfg: &LlamaConfig, seed: u64) -> Vec<f32> {
    let layout = param_layout(cfg);
    let mut p = init_params(cfg, &layout, seed);
    let mut rng = Rng::new(seed + 1);
    for s in layout.specs().iter().filter(|s| s.name.ends_with("norm")) {
        p[s.range()].iter_mut().for_each(|x| *x = (1.0 + 0.1 * rng.normal()) as f32);
    }
    // Larger weights than init's 0.02 so attention and RoPE shape the logits visibly.
    p.iter_mut().for_each(|x| *x *= 5.0);
    p
}

#[test]
fn cpu_model_matches_reference_model_forward_and_backward() {
    for cfg in [LlamaConfig::tiny(), LlamaConfig { n_kv_head: 4, tied_embeddings: false, ..LlamaConfig::tiny() }] {
        let (b, t) = (2, 8);
        let p = params(&cfg, 7);
        let (x, y) = batch(&cfg, b, t, 8);
        let mut fast = Llama::new(cfg, CpuBackend, p.clone()).unwrap();
        let mut slow = Llama::new(cfg, RefBackend::<f64>::new(), p.iter().map(|&v| v as f64).collect()).unwrap();
        fast.forward(&x, None, b, t).unwrap();
        slow.forward(&x, None, b, t).unwrap();
        MODEL.assert_close("logits", fast.logits(), slow.logits());
        let lf = fast.forward(&x, Some(&y), b, t).unwrap().unwrap();
        let ls = slow.forward(&x, Some(&y), b, t).unwrap().unwrap();
        MODEL.assert_close("loss", &[lf], &[ls]);
        fast.backward().unwrap();
        slow.backward().unwrap();
        for s in fast.params.layout.clone().specs() {
            MODEL.assert_close(&format!("grad.{}", s.name), &fast.grads.data[s.range()], &slow.grads.data[s.range()]);
        }
    }
}

#[test]
fn forward_last_equals_last_rows_of_forward() {
    let cfg = LlamaConfig::tiny();
    let (b, t, vp) = (3, 7, cfg.padded_vocab);
    let (x, _) = batch(&cfg, b, t, 9);
    let mut m = Llama::new(cfg, RefBackend::<f64>::new(), params(&cfg, 3).iter().map(|&v| v as f64).collect()).unwrap();
    m.forward(&x, None, b, t).unwrap();
    let want: Vec<f64> = (0..b).flat_map(|bi| m.logits()[(bi * t + t - 1) * vp..][..vp].to_vec()).collect();
    let got = m.forward_last(&x, b, t).unwrap().to_vec();
    Tolerance::EXACT.assert_close("last-position logits", &got, &want);
}

/// Feed a sequence through the cache in pieces (a prompt, single tokens, a chunk) and compare every
/// returned row with `forward_last` over the whole prefix.
fn check_cached<Bk: Backend>(m: &mut Llama<Bk>, tol: Tolerance) {
    let (cfg, vp) = (m.cfg, m.cfg.padded_vocab);
    let (seq, _) = batch(&cfg, 1, 12, 11);
    let mut cache = KvCache::new(&cfg, 12);
    let mut fed = 0;
    for piece in [4, 1, 1, 3, 1, 2] {
        let got = m.forward_cached(&mut cache, &seq[fed..fed + piece]).unwrap();
        fed += piece;
        assert_eq!(cache.len(), fed);
        let want = m.forward_last(&seq[..fed], 1, fed).unwrap()[..vp].to_vec();
        tol.assert_close(&format!("cached logits after {fed} tokens"), &got, &want);
    }
    assert!(m.forward_cached(&mut cache, &[1]).is_err(), "cache full");
}

#[test]
fn cached_forward_equals_full_forward() {
    let cfg = LlamaConfig { n_kv_head: 1, tied_embeddings: false, ..LlamaConfig::tiny() };
    let p = params(&cfg, 5);
    let mut slow = Llama::new(cfg, RefBackend::<f64>::new(), p.iter().map(|&v| v as f64).collect()).unwrap();
    check_cached(&mut slow, Tolerance { atol: 1e-12, rtol: 1e-12 });
    let mut fast = Llama::new(cfg, CpuBackend, p).unwrap();
    check_cached(&mut fast, Tolerance::F32_MODEL);
}

#[test]
fn cached_generation_equals_recomputing_generation_past_the_context_window() {
    // max_seq_len 16 with a 5-token prompt and 20 new tokens: the last steps slide the window.
    let cfg = LlamaConfig::tiny();
    let mut m = Llama::new(cfg, RefBackend::<f64>::new(), params(&cfg, 6).iter().map(|&v| v as f64).collect()).unwrap();
    let prompt = [3u32, 1, 4, 1, 5];
    let sc = SampleConfig { max_new_tokens: 20, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
    let mut seen = vec![];
    let got = generate(&mut m, &prompt, &sc, &[], |t| seen.push(t)).unwrap();
    assert_eq!(got, seen);
    let mut ctx = prompt.to_vec();
    for _ in 0..20 {
        let w = &ctx[ctx.len().saturating_sub(cfg.max_seq_len)..];
        let row = m.forward_last(w, 1, w.len()).unwrap()[..cfg.vocab_size].to_vec();
        let next = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32;
        ctx.push(next);
    }
    assert_eq!(got, ctx[prompt.len()..]);
    // A stop token ends generation after emitting it.
    let stop = [got[2]];
    let first = got.iter().position(|t| *t == got[2]).unwrap();
    assert_eq!(generate(&mut m, &prompt, &sc, &stop, |_| {}).unwrap(), got[..=first]);
}

#[test]
fn llama_learns_a_fixed_batch_at_every_precision() {
    let cfg = LlamaConfig::tiny();
    let (b, t) = (4, 16);
    let (x, y) = batch(&cfg, b, t, 10);
    for p in Precision::ALL {
        let mut m = Llama::new(cfg, CpuBackend, init_params(&cfg, &param_layout(&cfg), 1))
            .unwrap()
            .with_precision(p, &Recipe::default())
            .unwrap();
        let mut opt = Optimizer::for_model(&m, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 });
        let mut sc = GradScaler::default();
        let mut losses = vec![];
        for _ in 0..60 {
            let out = train_step(&mut m, &mut opt, &mut sc, &x, &y, b, t, 0.0, 1e-2).unwrap();
            assert!(!out.skipped, "{p}");
            losses.push(out.loss);
        }
        // Starts at ln(61) ~ 4.11 (near-uniform predictions); 64 random targets are memorised.
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!((first - (cfg.vocab_size as f64).ln()).abs() < 0.05, "{p}: initial loss {first}");
        assert!(last < 0.5, "{p}: loss {first} -> {last} after 60 steps");
    }
}

/// At fp8-o1 / fp8-o2 Llama keeps f16 weights and E4M3 gradients per layer unit (`octet_lm::narrow`)
/// and stages one block at a time: its forward is fp8-te's on the same f16 weights bit for bit, its
/// stored gradients are fp8-te's encoded per unit, and the cached (generation) forward stages too.
#[test]
fn narrow_levels_compute_fp8_te_on_their_f16_weights() {
    for cfg in [LlamaConfig::tiny(), LlamaConfig { tied_embeddings: false, n_layer: 3, ..LlamaConfig::tiny() }] {
        let (b, t) = (2, 8);
        let (x, y) = batch(&cfg, b, t, 8);
        let r = Recipe::default();
        for p in [Precision::Fp8O1, Precision::Fp8O2] {
            let mut nar = Llama::new(cfg, CpuBackend, params(&cfg, 7)).unwrap().with_precision(p, &r).unwrap();
            let nw = nar.narrow.as_ref().expect("narrow storage");
            assert_eq!(nw.weights.format(), StateFormat::F16);
            assert!(nar.params.data.len() < param_layout(&cfg).total(), "f32 working set holds one block");
            let w16 = nar.params_f32();
            let mut te =
                Llama::new(cfg, CpuBackend, w16.clone()).unwrap().with_precision(Precision::Fp8Te, &r).unwrap();
            let (ln, lt) = (nar.forward(&x, Some(&y), b, t).unwrap(), te.forward(&x, Some(&y), b, t).unwrap());
            assert_eq!(ln, lt, "{p}: loss");
            nar.backward().unwrap();
            te.backward().unwrap();
            let nw = nar.narrow.as_ref().unwrap();
            assert!(!nw.overflow);
            let want = ScaledBuf::from_f32(StateFormat::E4M3, nw.units.clone(), &te.grads.data);
            assert_eq!(nw.grads, want, "{p}: gradients");
            // Generation at a narrow level: the cached forward equals fp32 on the f16 weights.
            let mut fp32 = Llama::new(cfg, CpuBackend, w16).unwrap();
            let (mut c1, mut c2) = (KvCache::new(&cfg, 8), KvCache::new(&cfg, 8));
            let a = nar.forward_cached(&mut c1, &x[..5]).unwrap();
            let e = fp32.forward_cached(&mut c2, &x[..5]).unwrap();
            assert_eq!(a, e, "{p}: cached forward");
        }
        // Back to fp32: the f16 weights come out over the full layout.
        let m = Llama::new(cfg, CpuBackend, params(&cfg, 7)).unwrap().with_precision(Precision::Fp8O2, &r).unwrap();
        let w16 = m.params_f32();
        let back = m.with_precision(Precision::Fp32, &r).unwrap();
        assert!(back.narrow.is_none());
        assert_eq!(back.params.data, w16);
    }
}

#[test]
fn bad_configurations_and_tokens_are_clear_errors() {
    let bad = LlamaConfig { n_kv_head: 3, ..LlamaConfig::tiny() };
    let e = Llama::new(bad, CpuBackend, vec![0.0; param_layout(&bad).total()]).err().unwrap().to_string();
    assert!(e.contains("n_kv_head") && e.contains("divide"), "{e}");
    let odd = LlamaConfig { n_embd: 36, n_head: 4, ..LlamaConfig::tiny() }; // head size 9
    assert!(odd.validate().unwrap_err().to_string().contains("even head size"));
    let cfg = LlamaConfig::tiny();
    let mut m = Llama::new(cfg, CpuBackend, init_params(&cfg, &param_layout(&cfg), 1)).unwrap();
    let e = m.forward(&[3, 61], None, 1, 2).unwrap_err().to_string();
    assert!(e.contains("61") && e.contains("vocab_size"), "{e}");
    assert!(m.forward(&[1; 17], None, 1, 17).is_err(), "longer than max_seq_len");
    assert!(m.backward().is_err(), "backward before a forward with targets");
}

/// SmolLM2-135M-Instruct's `tokenizer.chat_template`, verbatim (368 bytes).
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn chatml_templates_render_and_others_are_refused() {
    assert_eq!(SMOLLM2_TEMPLATE.len(), 368);
    let chat = ChatMl::from_template(SMOLLM2_TEMPLATE).unwrap();
    assert_eq!(
        chat.default_system.as_deref(),
        Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    );
    assert_eq!(
        chat.render_user("What is a register?"),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is a register?<|im_end|>\n<|im_start|>assistant\n"
    );
    // Plain ChatML (no default system message).
    let plain = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    assert_eq!(
        ChatMl::from_template(plain).unwrap().render_user("Hi"),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // Llama-3 style headers are not ChatML.
    let llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}";
    let e = ChatMl::from_template(llama3).unwrap_err().to_string();
    assert!(e.contains("ChatML") && e.contains("Jinja"), "{e}");
}
