//! Inference for Llama models: the key/value cache (`KvCache`: keys with RoPE applied and values of
//! the positions a sequence has seen), the cached forward (`forward_cached`: each new token fed once,
//! RoPE continuing from the cached length) and `generate` on top of it. Apart from the training code:
//! no activations are saved and the GEMMs run in fp32 whatever the model's precision level.

use std::sync::Arc;

use octet_core::{Error, Float, Layout, Result, Rng, Slab};
use octet_kernels::Backend;

use crate::decoder::Decoder;
use crate::generate::{SampleConfig, pick};
use crate::llama::{Llama, LlamaConfig};
use crate::narrow::{stage_forward, stage_top};

/// Keys (RoPE applied) and values of the positions a sequence has seen, per layer, so generation feeds
/// each new token once instead of recomputing the context. One sequence; filled by
/// [`Llama::forward_cached`].
pub struct KvCache<F> {
    /// (L, cap, KVD) each.
    k: Vec<F>,
    v: Vec<F>,
    kv_dim: usize,
    cap: usize,
    len: usize,
}

impl<F: Float> KvCache<F> {
    /// Room for `cap` positions (at most `max_seq_len`).
    pub fn new(cfg: &LlamaConfig, cap: usize) -> Self {
        let cap = cap.min(cfg.max_seq_len);
        let n = cfg.n_layer * cap * cfg.kv_dim();
        KvCache { k: vec![F::default(); n], v: vec![F::default(); n], kv_dim: cfg.kv_dim(), cap, len: 0 }
    }
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Forget the sequence (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Keep the first `len` positions only (e.g. to score several continuations of one cached prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    /// Layer l's cached keys and values, (cap, KVD) each.
    fn layer_mut(&mut self, l: usize) -> (&mut [F], &mut [F]) {
        let r = l * self.cap * self.kv_dim..(l + 1) * self.cap * self.kv_dim;
        (&mut self.k[r.clone()], &mut self.v[r])
    }
}

/// Per-call scratch of the cached forward over n new tokens.
fn decode_layout(c: &LlamaConfig, n: usize) -> Layout {
    let (d, h) = (c.n_embd, c.ffn_hidden);
    Layout::new([
        ("x", vec![n, d]),
        ("x2", vec![n, d]),
        ("xn", vec![n, d]),
        ("rrms", vec![n]),
        ("raw", vec![n, c.qkv_dim()]),
        ("rot", vec![n, c.qkv_dim()]),
        ("atty", vec![n, d]),
        ("proj", vec![n, d]),
        ("gate_up", vec![n, 2 * h]),
        ("swiglu", vec![n, h]),
        ("logits", vec![c.padded_vocab]),
    ])
}

impl<Bk: Backend> Decoder<Bk, LlamaConfig> {
    /// Inference with a key/value cache: feed `tokens` (one sequence) at positions `cache.len()..`,
    /// append their keys and values to the cache, and return the logits (Vp) of the last one. Equal to
    /// `forward_last` over the whole sequence so far (up to rounding); the GEMMs run in fp32 whatever
    /// `precision` says (inference keeps no FP8 scaling state). The keys and values are copied into the
    /// cache on the host.
    pub fn forward_cached(&mut self, cache: &mut KvCache<Bk::F>, tokens: &[u32]) -> Result<Vec<Bk::F>> {
        let c = self.cfg;
        let n = tokens.len();
        if n == 0 || cache.len + n > cache.cap || cache.kv_dim != c.kv_dim() {
            return Err(Error::Shape {
                name: "tokens (cached)".into(),
                expected: vec![cache.cap.saturating_sub(cache.len)],
                found: vec![n],
            });
        }
        self.check_tokens(tokens, None, 1, n)?;
        let (d, nh, nkv, hs, h, kvd, qd) =
            (c.n_embd, c.n_head, c.n_kv_head, c.head_size(), c.ffn_hidden, c.kv_dim(), c.qkv_dim());
        stage_top(&self.backend, self.narrow.as_ref(), &mut self.params.data);
        let (be, p, pid, pos0) = (&self.backend, &mut self.params, &self.ids, cache.len);
        let al = Arc::new(decode_layout(&c, n));
        let mut a: Slab<Bk::F> = Slab::zeros_in(al.clone(), self.backend.allocator().as_ref())?;
        let r = |name: &str| al.range(al.expect_id(name));
        let (x, x2, xn, rrms, raw, rot) = (r("x"), r("x2"), r("xn"), r("rrms"), r("raw"), r("rot"));
        let (atty, proj, gu, sw, logits) = (r("atty"), r("proj"), r("gate_up"), r("swiglu"), r("logits"));

        be.embed_forward(&mut a.data[x.clone()], tokens, p.get(pid.token_embd), n, d);
        for l in 0..c.n_layer {
            let lw = stage_forward(be, self.narrow.as_ref(), l, &mut p.data);
            let w = pid.block(p, lw);
            let [o, s, i] = a.disjoint_mut([xn.clone(), rrms.clone(), x.clone()]);
            be.rmsnorm_forward(o, s, i, w.attn_norm, n, d, c.norm_eps);
            let [o, i] = a.disjoint_mut([raw.clone(), xn.clone()]);
            be.matmul_forward(o, i, w.attn_qkv, None, n, d, qd);
            let [o, i] = a.disjoint_mut([rot.clone(), raw.clone()]);
            be.rope_forward(o, i, 1, n, pos0, qd, (nh + nkv) * hs, hs, c.rope_base);
            be.synchronize();
            let (kc, vc) = cache.layer_mut(l);
            for (j, row) in a.data[rot.clone()].chunks_exact(qd).enumerate() {
                kc[(pos0 + j) * kvd..][..kvd].copy_from_slice(&row[d..d + kvd]);
                vc[(pos0 + j) * kvd..][..kvd].copy_from_slice(&row[d + kvd..]);
            }
            let (kc, vc) = (&kc[..(pos0 + n) * kvd], &vc[..(pos0 + n) * kvd]);
            let [o, q] = a.disjoint_mut([atty.clone(), rot.clone()]);
            be.attention_kv_forward(o, q, kc, vc, n, pos0 + n, qd, nh, nkv, hs);
            let [o, i] = a.disjoint_mut([proj.clone(), atty.clone()]);
            be.matmul_forward(o, i, w.attn_output, None, n, d, d);
            let [o, i, pr] = a.disjoint_mut([x2.clone(), x.clone(), proj.clone()]);
            be.residual_forward(o, i, pr);
            let [o, s, i] = a.disjoint_mut([xn.clone(), rrms.clone(), x2.clone()]);
            be.rmsnorm_forward(o, s, i, w.ffn_norm, n, d, c.norm_eps);
            let [o, i] = a.disjoint_mut([gu.clone(), xn.clone()]);
            be.matmul_forward(o, i, w.ffn_gate_up, None, n, d, 2 * h);
            let [o, i] = a.disjoint_mut([sw.clone(), gu.clone()]);
            be.swiglu_forward(o, i, n, h);
            let [o, i] = a.disjoint_mut([proj.clone(), sw.clone()]);
            be.matmul_forward(o, i, w.ffn_down, None, n, h, d);
            let [o, i, pr] = a.disjoint_mut([x.clone(), x2.clone(), proj.clone()]);
            be.residual_forward(o, i, pr);
        }
        // Final norm and head on the last row only.
        let last = x.start + (n - 1) * d..x.end;
        let [o, s, i] = a.disjoint_mut([xn.start..xn.start + d, rrms.start..rrms.start + 1, last]);
        be.rmsnorm_forward(o, s, i, p.get(pid.output_norm), 1, d, c.norm_eps);
        let [o, i] = a.disjoint_mut([logits.clone(), xn.start..xn.start + d]);
        be.matmul_forward(o, i, p.get(pid.head), None, 1, d, c.padded_vocab);
        cache.len += n;
        be.synchronize();
        Ok(a.data[logits].to_vec())
    }
}

/// Continue `prompt` by up to `sc.max_new_tokens` tokens with a key/value cache: the prompt is fed
/// once, then each new token. Stops after emitting a token in `stop` (which is returned too);
/// `on_token` sees each new token as it is chosen. Past `max_seq_len` tokens the context becomes a
/// sliding window of the last `max_seq_len`, recomputed each step.
pub fn generate<Bk: Backend>(
    model: &mut Llama<Bk>,
    prompt: &[u32],
    sc: &SampleConfig,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    let v = model.cfg.vocab_size;
    let mut rng = Rng::new(sc.seed);
    let mut ctx: Vec<u32> = if prompt.is_empty() { vec![0] } else { prompt.to_vec() };
    let mut cache = KvCache::new(&model.cfg, ctx.len() + sc.max_new_tokens);
    let cap = cache.capacity();
    let mut logits = model.forward_cached(&mut cache, &ctx[ctx.len().saturating_sub(cap)..])?;
    let mut out = Vec::with_capacity(sc.max_new_tokens);
    while out.len() < sc.max_new_tokens {
        let row: Vec<f64> = logits[..v].iter().map(|&x| x.into()).collect();
        let next = pick(&row, sc, &mut rng) as u32;
        ctx.push(next);
        out.push(next);
        on_token(next);
        if stop.contains(&next) || out.len() == sc.max_new_tokens {
            break;
        }
        logits = if cache.len() < cap {
            model.forward_cached(&mut cache, &[next])?
        } else {
            cache.clear();
            model.forward_cached(&mut cache, &ctx[ctx.len() - cap..])?
        };
    }
    Ok(out)
}
