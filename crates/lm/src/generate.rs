//! Sampling text from a trained model: temperature, top-k and top-p (nucleus) over the real vocabulary,
//! a sliding window of at most `max_seq_len` tokens of context.

use octet_core::{Result, Rng};

use crate::model::LanguageModel;

#[derive(Clone, Copy, Debug)]
pub struct SampleConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability (after temperature and top-k)
    /// reaches top_p (1.0 = all, the nucleus sampling of Holtzman et al. 2019).
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SampleConfig {
    /// Greedy, 256 tokens, no top-k or top-p cut, seed 0.
    fn default() -> Self {
        SampleConfig { max_new_tokens: 256, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// Continue `prompt` by `max_new_tokens` tokens; returns only the new tokens.
pub fn sample<M: LanguageModel + ?Sized>(model: &mut M, prompt: &[u32], sc: &SampleConfig) -> Result<Vec<u32>> {
    let ((v, vp), tmax) = (model.vocab(), model.max_seq_len());
    let mut rng = Rng::new(sc.seed);
    let mut ctx: Vec<u32> = if prompt.is_empty() { vec![0] } else { prompt.to_vec() };
    let mut out = Vec::with_capacity(sc.max_new_tokens);
    for _ in 0..sc.max_new_tokens {
        let window = &ctx[ctx.len().saturating_sub(tmax)..];
        let t = window.len();
        model.forward(window, None, 1, t)?;
        let row: Vec<f64> = model.logits()[(t - 1) * vp..(t - 1) * vp + v].iter().map(|&x| x.into()).collect();
        let next = pick(&row, sc, &mut rng) as u32;
        ctx.push(next);
        out.push(next);
    }
    Ok(out)
}

/// Greedy at temperature 0, else softmax(logits / T) sampling over the top-k (0 = all), then over the
/// nucleus of probability top_p (>= 1 = all; the most likely token is always kept).
pub fn pick(logits: &[f64], sc: &SampleConfig, rng: &mut Rng) -> usize {
    let argmax = || logits.iter().enumerate().fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    if sc.temperature <= 0.0 {
        return argmax();
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if sc.top_k > 0 && sc.top_k < idx.len() {
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(sc.top_k);
    }
    let mx = idx.iter().map(|&i| logits[i]).fold(f64::NEG_INFINITY, f64::max);
    let mut w: Vec<f64> = idx.iter().map(|&i| ((logits[i] - mx) / sc.temperature).exp()).collect();
    if sc.top_p < 1.0 {
        let mut order: Vec<usize> = (0..idx.len()).collect();
        order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
        let (total, mut acc) = (w.iter().sum::<f64>(), 0.0);
        let keep = order.iter().position(|&k| {
            acc += w[k];
            acc >= sc.top_p * total
        });
        let keep = keep.map_or(order.len(), |p| p + 1);
        idx = order[..keep].iter().map(|&k| idx[k]).collect();
        w = order[..keep].iter().map(|&k| w[k]).collect();
    }
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (k, &wk) in w.iter().enumerate() {
        if u < wk {
            return idx[k];
        }
        u -= wk;
    }
    idx[idx.len() - 1]
}
