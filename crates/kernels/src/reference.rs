//! Reference kernels: the specification of every operation. Naive loops, generic over the element
//! type, sums accumulated in f64; clarity over speed. Fast kernels are tested against these.
//!
//! Shapes: N = rows (B*T), C = channels, OC/IC = output/input channels, NH = heads, hs = C/NH,
//! V = real vocabulary, Vp = padded vocabulary (columns V..Vp are ignored by the loss).

use octet_core::Float;
use octet_core::dtype::round_bf16 as bf16_round;
use octet_core::fp8::{self, Fp8Format, Overflow};

use crate::backend::{Cast, GemmRole};
use crate::{GELU_CUBIC, GELU_SCALE};

#[inline]
fn f<F: Float>(x: F) -> f64 {
    x.into()
}
#[inline]
fn t<F: Float>(x: f64) -> F {
    F::from_f64(x)
}

/// out (B,T,C) = wte[tokens] + wpe[0..T].
pub fn encoder_forward<F: Float>(out: &mut [F], tokens: &[u32], wte: &[F], wpe: &[F], b: usize, tt: usize, c: usize) {
    for bi in 0..b {
        for ti in 0..tt {
            let tok = tokens[bi * tt + ti] as usize;
            let o = &mut out[(bi * tt + ti) * c..][..c];
            for i in 0..c {
                o[i] = t(f(wte[tok * c + i]) + f(wpe[ti * c + i]));
            }
        }
    }
}

/// dwte[tokens] += dout; dwpe[t] += dout.
pub fn encoder_backward<F: Float>(
    dwte: &mut [F],
    dwpe: &mut [F],
    dout: &[F],
    tokens: &[u32],
    b: usize,
    tt: usize,
    c: usize,
) {
    for bi in 0..b {
        for ti in 0..tt {
            let tok = tokens[bi * tt + ti] as usize;
            let d = &dout[(bi * tt + ti) * c..][..c];
            for i in 0..c {
                dwte[tok * c + i] = t(f(dwte[tok * c + i]) + f(d[i]));
                dwpe[ti * c + i] = t(f(dwpe[ti * c + i]) + f(d[i]));
            }
        }
    }
}

/// LayerNorm over the last dim: out = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + 1e-5), biased var.
/// Saves mean (N) and rstd (N) for backward.
pub fn layernorm_forward<F: Float>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    w: &[F],
    bias: &[F],
    n: usize,
    c: usize,
) {
    for r in 0..n {
        let x = &inp[r * c..][..c];
        let m = x.iter().map(|&v| f(v)).sum::<f64>() / c as f64;
        let var = x.iter().map(|&v| (f(v) - m).powi(2)).sum::<f64>() / c as f64;
        let s = 1.0 / (var + 1e-5).sqrt();
        for i in 0..c {
            out[r * c + i] = t((f(x[i]) - m) * s * f(w[i]) + f(bias[i]));
        }
        mean[r] = t(m);
        rstd[r] = t(s);
    }
}

/// LayerNorm backward. With xhat = (x - mean) * rstd and g = dout * w:
/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); dw += dout * xhat; db += dout.
/// `dinp` accumulates (it is the residual stream's gradient).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<F: Float>(
    dinp: &mut [F],
    dw: &mut [F],
    db: &mut [F],
    dout: &[F],
    inp: &[F],
    w: &[F],
    mean: &[F],
    rstd: &[F],
    n: usize,
    c: usize,
) {
    for r in 0..n {
        let (m, s) = (f(mean[r]), f(rstd[r]));
        let x = &inp[r * c..][..c];
        let d = &dout[r * c..][..c];
        let mut mg = 0.0;
        let mut mgx = 0.0;
        for i in 0..c {
            let xhat = (f(x[i]) - m) * s;
            let g = f(d[i]) * f(w[i]);
            mg += g;
            mgx += g * xhat;
        }
        mg /= c as f64;
        mgx /= c as f64;
        for i in 0..c {
            let xhat = (f(x[i]) - m) * s;
            let g = f(d[i]) * f(w[i]);
            db[i] = t(f(db[i]) + f(d[i]));
            dw[i] = t(f(dw[i]) + f(d[i]) * xhat);
            dinp[r * c + i] = t(f(dinp[r * c + i]) + s * (g - mg - xhat * mgx));
        }
    }
}

/// RMSNorm: out = x * rrms * w, rrms = 1/sqrt(mean(x^2) + eps). Saves rrms (N).
pub fn rmsnorm_forward<F: Float>(out: &mut [F], rrms: &mut [F], inp: &[F], w: &[F], n: usize, c: usize, eps: f64) {
    for r in 0..n {
        let x = &inp[r * c..][..c];
        let ms = x.iter().map(|&v| f(v) * f(v)).sum::<f64>() / c as f64;
        let s = 1.0 / (ms + eps).sqrt();
        for i in 0..c {
            out[r * c + i] = t(f(x[i]) * s * f(w[i]));
        }
        rrms[r] = t(s);
    }
}

/// RMSNorm backward: with xhat = x * rrms, g = dout * w: dx = rrms * (g - xhat * mean(g * xhat));
/// dw += dout * xhat. `dinp` accumulates.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<F: Float>(
    dinp: &mut [F],
    dw: &mut [F],
    dout: &[F],
    inp: &[F],
    w: &[F],
    rrms: &[F],
    n: usize,
    c: usize,
) {
    for r in 0..n {
        let s = f(rrms[r]);
        let x = &inp[r * c..][..c];
        let d = &dout[r * c..][..c];
        let mgx = (0..c).map(|i| f(d[i]) * f(w[i]) * f(x[i]) * s).sum::<f64>() / c as f64;
        for i in 0..c {
            let xhat = f(x[i]) * s;
            dw[i] = t(f(dw[i]) + f(d[i]) * xhat);
            dinp[r * c + i] = t(f(dinp[r * c + i]) + s * (f(d[i]) * f(w[i]) - xhat * mgx));
        }
    }
}

/// out (N,OC) = inp (N,IC) @ w^T (w is (OC,IC)) + bias (OC).
pub fn matmul_forward<F: Float>(out: &mut [F], inp: &[F], w: &[F], bias: Option<&[F]>, n: usize, ic: usize, oc: usize) {
    for r in 0..n {
        for o in 0..oc {
            let mut acc = bias.map_or(0.0, |b| f(b[o]));
            for i in 0..ic {
                acc += f(inp[r * ic + i]) * f(w[o * ic + i]);
            }
            out[r * oc + o] = t(acc);
        }
    }
}

/// dinp (N,IC) = dout @ w (overwrite); dw (OC,IC) += dout^T @ inp; dbias (OC) += sum_rows dout.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<F: Float>(
    dinp: &mut [F],
    dw: &mut [F],
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    w: &[F],
    n: usize,
    ic: usize,
    oc: usize,
) {
    for r in 0..n {
        for i in 0..ic {
            let mut acc = 0.0;
            for o in 0..oc {
                acc += f(dout[r * oc + o]) * f(w[o * ic + i]);
            }
            dinp[r * ic + i] = t(acc);
        }
    }
    for o in 0..oc {
        for i in 0..ic {
            let mut acc = f(dw[o * ic + i]);
            for r in 0..n {
                acc += f(dout[r * oc + o]) * f(inp[r * ic + i]);
            }
            dw[o * ic + i] = t(acc);
        }
    }
    if let Some(db) = dbias {
        for o in 0..oc {
            let mut acc = f(db[o]);
            for r in 0..n {
                acc += f(dout[r * oc + o]);
            }
            db[o] = t(acc);
        }
    }
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub fn gelu_forward<F: Float>(out: &mut [F], inp: &[F]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        let x = f(x);
        *o = t(0.5 * x * (1.0 + (GELU_SCALE * (x + GELU_CUBIC * x * x * x)).tanh()));
    }
}

/// dinp = gelu'(inp) * dout (overwrite).
pub fn gelu_backward<F: Float>(dinp: &mut [F], inp: &[F], dout: &[F]) {
    for i in 0..inp.len() {
        let x = f(inp[i]);
        let u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
        let th = u.tanh();
        let du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
        let g = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
        dinp[i] = t(g * f(dout[i]));
    }
}

/// ReLU: max(x, 0).
pub fn relu_forward<F: Float>(out: &mut [F], inp: &[F]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = if f(x) > 0.0 { x } else { F::zero() };
    }
}

/// dinp = [inp > 0] * dout (overwrite).
pub fn relu_backward<F: Float>(dinp: &mut [F], inp: &[F], dout: &[F]) {
    for i in 0..inp.len() {
        dinp[i] = if f(inp[i]) > 0.0 { dout[i] } else { F::zero() };
    }
}

/// SwiGLU: out (N,H) = silu(gate) * up, where `inp` is (N, 2H) = [gate | up] per row and
/// silu(x) = x * sigmoid(x).
pub fn swiglu_forward<F: Float>(out: &mut [F], inp: &[F], n: usize, h: usize) {
    for r in 0..n {
        for j in 0..h {
            let g = f(inp[r * 2 * h + j]);
            let u = f(inp[r * 2 * h + h + j]);
            out[r * h + j] = t(g / (1.0 + (-g).exp()) * u);
        }
    }
}

/// SwiGLU backward: dgate = dout * up * sigmoid(g) (1 + g (1 - sigmoid(g))); dup = dout * silu(g).
pub fn swiglu_backward<F: Float>(dinp: &mut [F], inp: &[F], dout: &[F], n: usize, h: usize) {
    for r in 0..n {
        for j in 0..h {
            let g = f(inp[r * 2 * h + j]);
            let u = f(inp[r * 2 * h + h + j]);
            let d = f(dout[r * h + j]);
            let sg = 1.0 / (1.0 + (-g).exp());
            dinp[r * 2 * h + j] = t(d * u * sg * (1.0 + g * (1.0 - sg)));
            dinp[r * 2 * h + h + j] = t(d * g * sg);
        }
    }
}

/// out = a + b.
pub fn residual_forward<F: Float>(out: &mut [F], a: &[F], b: &[F]) {
    for i in 0..out.len() {
        out[i] = t(f(a[i]) + f(b[i]));
    }
}

/// Causal multi-head attention. qkv (B,T,3C) holds [q | k | v] per row, head h in columns
/// h*hs..(h+1)*hs of each. out (B,T,C) = softmax(q k^T / sqrt(hs) + causal mask) v per head.
/// Saves lse (B,NH,T): the log-sum-exp of each score row, so backward can rebuild the
/// probabilities without storing the (T,T) matrix.
pub fn attention_forward<F: Float>(out: &mut [F], lse: &mut [F], qkv: &[F], b: usize, tt: usize, c: usize, nh: usize) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut s = vec![0.0f64; tt];
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..tt {
                let q = &qkv[(bi * tt + i) * 3 * c + h * hs..][..hs];
                let mut mx = f64::NEG_INFINITY;
                for j in 0..=i {
                    let k = &qkv[(bi * tt + j) * 3 * c + c + h * hs..][..hs];
                    s[j] = (0..hs).map(|d| f(q[d]) * f(k[d])).sum::<f64>() * scale;
                    mx = mx.max(s[j]);
                }
                let z: f64 = (0..=i).map(|j| (s[j] - mx).exp()).sum();
                let l = mx + z.ln();
                lse[(bi * nh + h) * tt + i] = t(l);
                for d in 0..hs {
                    let mut acc = 0.0;
                    for j in 0..=i {
                        acc += (s[j] - l).exp() * f(qkv[(bi * tt + j) * 3 * c + 2 * c + h * hs + d]);
                    }
                    out[(bi * tt + i) * c + h * hs + d] = t(acc);
                }
            }
        }
    }
}

/// Attention backward (overwrites dqkv). With P = exp(S - lse), D_i = sum_d dout_id out_id
/// (= sum_j P_ij dP_ij): dV = P^T dout; dP = dout V^T; dS = P (dP - D); dQ = dS K / sqrt(hs);
/// dK = dS^T Q / sqrt(hs).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Float>(
    dqkv: &mut [F],
    dout: &[F],
    qkv: &[F],
    out: &[F],
    lse: &[F],
    b: usize,
    tt: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut acc = vec![0.0f64; dqkv.len()];
    let idx = |bi: usize, ti: usize, part: usize, h: usize, d: usize| (bi * tt + ti) * 3 * c + part * c + h * hs + d;
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..tt {
                let l = f(lse[(bi * nh + h) * tt + i]);
                let dd: f64 = (0..hs)
                    .map(|d| f(dout[(bi * tt + i) * c + h * hs + d]) * f(out[(bi * tt + i) * c + h * hs + d]))
                    .sum();
                for j in 0..=i {
                    let sc =
                        (0..hs).map(|d| f(qkv[idx(bi, i, 0, h, d)]) * f(qkv[idx(bi, j, 1, h, d)])).sum::<f64>() * scale;
                    let p = (sc - l).exp();
                    let dp: f64 =
                        (0..hs).map(|d| f(dout[(bi * tt + i) * c + h * hs + d]) * f(qkv[idx(bi, j, 2, h, d)])).sum();
                    let ds = p * (dp - dd);
                    for d in 0..hs {
                        acc[idx(bi, j, 2, h, d)] += p * f(dout[(bi * tt + i) * c + h * hs + d]);
                        acc[idx(bi, i, 0, h, d)] += ds * f(qkv[idx(bi, j, 1, h, d)]) * scale;
                        acc[idx(bi, j, 1, h, d)] += ds * f(qkv[idx(bi, i, 0, h, d)]) * scale;
                    }
                }
            }
        }
    }
    for (o, a) in dqkv.iter_mut().zip(acc) {
        *o = t(a);
    }
}

/// Fused softmax + cross-entropy over the first V of Vp columns. Turns logits (N,Vp) into
/// probabilities in place (padded columns set to 0) and writes per-row losses (N). Masked
/// cross-entropy: a row whose target is `IGNORE_TARGET` gets loss 0 (its probabilities are still
/// written; backward zeroes its gradient), so sum(losses) / #(kept rows) is the loss over the kept
/// tokens only.
pub fn softmax_xent_forward<F: Float>(
    losses: &mut [F],
    logits: &mut [F],
    targets: &[u32],
    n: usize,
    v: usize,
    vp: usize,
) {
    for r in 0..n {
        let row = &mut logits[r * vp..][..vp];
        let mx = row[..v].iter().map(|&x| f(x)).fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row[..v].iter().map(|&x| (f(x) - mx).exp()).sum();
        losses[r] = match targets[r] {
            crate::IGNORE_TARGET => F::zero(),
            tgt => t(mx + z.ln() - f(row[tgt as usize])),
        };
        for x in row[..v].iter_mut() {
            *x = t((f(*x) - mx).exp() / z);
        }
        for x in row[v..].iter_mut() {
            *x = F::zero();
        }
    }
}

/// Backward of the fused loss, in place: probs (N,Vp) become dlogits = (probs - onehot) * dloss
/// (overwrite). `dloss` is d(total loss)/d(row loss), e.g. 1/N for a mean. A row whose target is
/// `IGNORE_TARGET` has no loss term: its dlogits are 0.
pub fn softmax_xent_backward<F: Float>(probs: &mut [F], targets: &[u32], dloss: f64, n: usize, v: usize, vp: usize) {
    for r in 0..n {
        let row = &mut probs[r * vp..][..vp];
        if targets[r] == crate::IGNORE_TARGET {
            row[..v].fill(F::zero());
            continue;
        }
        let tgt = targets[r] as usize;
        for (j, x) in row[..v].iter_mut().enumerate() {
            let ind = if j == tgt { 1.0 } else { 0.0 };
            *x = t((f(*x) - ind) * dloss);
        }
    }
}

/// dbias (OC) += column sums of dout (N,OC).
pub fn bias_backward<F: Float>(dbias: &mut [F], dout: &[F], n: usize, oc: usize) {
    for o in 0..oc {
        let s: f64 = (0..n).map(|r| f(dout[r * oc + o])).sum();
        dbias[o] = t(f(dbias[o]) + s);
    }
}

/// max |x| (NaN if any x is NaN).
pub fn amax<F: Float>(src: &[F]) -> f32 {
    let mut m = 0.0f64;
    for &x in src {
        let a = f(x).abs();
        if a.is_nan() {
            return f32::NAN;
        }
        m = m.max(a);
    }
    m as f32
}

/// Round to bf16 (via f32, ties to even).
pub fn round_bf16<F: Float>(dst: &mut [F], src: &[F]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = F::from_f32(bf16_round(x.to_f32()));
    }
}

/// FP8 quantise-dequantise at a power-of-two `scale` (saturating), via f32. Returns max |src|.
pub fn qdq_fp8<F: Float>(dst: &mut [F], src: &[F], format: Fp8Format, scale: f32) -> f32 {
    let inv = 1.0 / scale as f64;
    for (d, &x) in dst.iter_mut().zip(src) {
        let code = fp8::encode(format, x.to_f32() * scale, Overflow::Saturate);
        *d = t(fp8::decode(format, code) as f64 * inv);
    }
    amax(src)
}

/// `src` itself or its cast into `q`, and the FP8 cast's amax (else 0).
fn cast_operand<'s, F: Float>(q: &'s mut [F], src: &'s [F], cast: Cast) -> (&'s [F], f32) {
    match cast {
        Cast::None => (src, 0.0),
        Cast::Bf16 => {
            let q = &mut q[..src.len()];
            round_bf16(q, src);
            (q, 0.0)
        }
        Cast::Fp8 { format, scale } => {
            let q = &mut q[..src.len()];
            let amax = qdq_fp8(q, src, format, scale);
            (q, amax)
        }
    }
}

/// One GEMM of a linear layer over its cast operands (`crate::backend::GemmRole`): forward
/// out (N,OC) = A (N,IC) @ B^T + bias; data gradient out (N,IC) = A (N,OC) @ B (OC,IC); weight
/// gradient out (OC,IC) += A^T @ B (N,IC). Returns the FP8 casts' source amaxes (else 0).
#[allow(clippy::too_many_arguments)]
pub fn linear_gemm<F: Float>(
    out: &mut [F],
    qa: &mut [F],
    qb: &mut [F],
    a: &[F],
    b: &[F],
    bias: Option<&[F]>,
    role: GemmRole,
    cast_a: Cast,
    cast_b: Cast,
    n: usize,
    ic: usize,
    oc: usize,
) -> [f32; 2] {
    assert!(bias.is_none() || role == GemmRole::Forward, "linear_gemm: bias only in the forward GEMM");
    let (la, lb, _) = role.sizes(n, ic, oc);
    let (a, amax_a) = cast_operand(qa, &a[..la], cast_a);
    let (b, amax_b) = cast_operand(qb, &b[..lb], cast_b);
    match role {
        GemmRole::Forward => matmul_forward(out, a, b, bias, n, ic, oc),
        GemmRole::DataGrad => {
            for r in 0..n {
                for i in 0..ic {
                    let mut acc = 0.0;
                    for o in 0..oc {
                        acc += f(a[r * oc + o]) * f(b[o * ic + i]);
                    }
                    out[r * ic + i] = t(acc);
                }
            }
        }
        GemmRole::WeightGrad => {
            for o in 0..oc {
                for i in 0..ic {
                    let mut acc = f(out[o * ic + i]);
                    for r in 0..n {
                        acc += f(a[r * oc + o]) * f(b[r * ic + i]);
                    }
                    out[o * ic + i] = t(acc);
                }
            }
        }
    }
    [amax_a, amax_b]
}

/// out (N,C) = wte[tokens]: a token embedding without positions (RoPE models).
pub fn embed_forward<F: Float>(out: &mut [F], tokens: &[u32], wte: &[F], n: usize, c: usize) {
    for r in 0..n {
        let tok = tokens[r] as usize;
        out[r * c..][..c].copy_from_slice(&wte[tok * c..][..c]);
    }
}

/// dwte[tokens] += dout (N,C).
pub fn embed_backward<F: Float>(dwte: &mut [F], dout: &[F], tokens: &[u32], n: usize, c: usize) {
    for r in 0..n {
        let tok = tokens[r] as usize;
        for i in 0..c {
            dwte[tok * c + i] = t(f(dwte[tok * c + i]) + f(dout[r * c + i]));
        }
    }
}

/// The RoPE angle of pair `i` (of hs/2) at position `pos`: pos * base^(-2i/hs).
#[inline]
pub fn rope_angle(pos: usize, i: usize, hs: usize, base: f64) -> f64 {
    pos as f64 * base.powf(-2.0 * i as f64 / hs as f64)
}

/// Rotary position embedding with interleaved pairs (GPT-J style; ggml's "NORM" mode, which GGUF
/// `llama` weights expect). inp (B,T,W): in each row the first `rot` columns are heads of `hs` values;
/// row t is at position p = pos0 + t (pos0 > 0 continues a sequence whose keys are cached), and pair
/// (2i, 2i+1) of every head rotates by a = rope_angle(p, i, hs, base):
/// out[2i] = x[2i] cos a - x[2i+1] sin a, out[2i+1] = x[2i] sin a + x[2i+1] cos a.
/// Columns rot..W pass through unchanged (the V of a fused QKV row).
#[allow(clippy::too_many_arguments)]
pub fn rope_forward<F: Float>(
    out: &mut [F],
    inp: &[F],
    b: usize,
    tt: usize,
    pos0: usize,
    w: usize,
    rot: usize,
    hs: usize,
    base: f64,
) {
    rope_rotate(out, inp, b, tt, pos0, w, rot, hs, base, 1.0);
}

/// RoPE backward: the rotation is orthogonal, so dinp = rotation of dout by the negative angle;
/// pass-through columns copy dout (overwrite).
#[allow(clippy::too_many_arguments)]
pub fn rope_backward<F: Float>(
    dinp: &mut [F],
    dout: &[F],
    b: usize,
    tt: usize,
    pos0: usize,
    w: usize,
    rot: usize,
    hs: usize,
    base: f64,
) {
    rope_rotate(dinp, dout, b, tt, pos0, w, rot, hs, base, -1.0);
}

#[allow(clippy::too_many_arguments)]
fn rope_rotate<F: Float>(
    out: &mut [F],
    inp: &[F],
    b: usize,
    tt: usize,
    pos0: usize,
    w: usize,
    rot: usize,
    hs: usize,
    base: f64,
    sign: f64,
) {
    for r in 0..b * tt {
        let pos = pos0 + r % tt;
        let (x, o) = (&inp[r * w..][..w], &mut out[r * w..][..w]);
        for h in 0..rot / hs {
            for i in 0..hs / 2 {
                let a = sign * rope_angle(pos, i, hs, base);
                let (s, c) = a.sin_cos();
                let (x0, x1) = (f(x[h * hs + 2 * i]), f(x[h * hs + 2 * i + 1]));
                o[h * hs + 2 * i] = t(x0 * c - x1 * s);
                o[h * hs + 2 * i + 1] = t(x0 * s + x1 * c);
            }
        }
        o[rot..].copy_from_slice(&x[rot..]);
    }
}

/// Grouped-query attention to multi-head layout: inp (N, (NH + 2 NKV) hs) = [q | k | v] with NH query
/// and NKV key/value heads -> out (N, 3 NH hs) = [q | k | v] with every kv head repeated NH/NKV times:
/// query head h reads kv head h / (NH/NKV) (as HF `repeat_kv` and ggml's broadcast).
pub fn repeat_kv_forward<F: Float>(out: &mut [F], inp: &[F], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    let wi = c + 2 * kvd;
    for r in 0..n {
        let (x, o) = (&inp[r * wi..][..wi], &mut out[r * 3 * c..][..3 * c]);
        o[..c].copy_from_slice(&x[..c]);
        for h in 0..nh {
            let g = h / rep;
            for part in 0..2 {
                for d in 0..hs {
                    o[(1 + part) * c + h * hs + d] = x[c + part * kvd + g * hs + d];
                }
            }
        }
    }
}

/// Backward of `repeat_kv_forward` (overwrite): dq copied; each kv head's dk and dv are the sums over
/// the NH/NKV query heads that read it.
pub fn repeat_kv_backward<F: Float>(dinp: &mut [F], dout: &[F], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    let wi = c + 2 * kvd;
    for r in 0..n {
        let (d, dx) = (&dout[r * 3 * c..][..3 * c], &mut dinp[r * wi..][..wi]);
        dx[..c].copy_from_slice(&d[..c]);
        for part in 0..2 {
            for g in 0..nkv {
                for k in 0..hs {
                    let s: f64 = (0..rep).map(|j| f(d[(1 + part) * c + (g * rep + j) * hs + k])).sum();
                    dx[c + part * kvd + g * hs + k] = t(s);
                }
            }
        }
    }
}

/// [q | k] (N, (NH + NKV) hs) -> [q | k repeated] (N, 2 NH hs): query head h reads key head
/// h / (NH / NKV), as `repeat_kv_forward` without values.
pub fn repeat_k_forward<F: Float>(out: &mut [F], inp: &[F], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    let wi = c + kvd;
    for r in 0..n {
        let (x, o) = (&inp[r * wi..][..wi], &mut out[r * 2 * c..][..2 * c]);
        o[..c].copy_from_slice(&x[..c]);
        for h in 0..nh {
            let g = h / rep;
            o[c + h * hs..][..hs].copy_from_slice(&x[c + g * hs..][..hs]);
        }
    }
}

/// Backward of `repeat_k_forward`: dq copied, dk of group g = sum of its NH/NKV query heads' dk.
pub fn repeat_k_backward<F: Float>(dinp: &mut [F], dout: &[F], n: usize, nh: usize, nkv: usize, hs: usize) {
    let (c, kvd, rep) = (nh * hs, nkv * hs, nh / nkv);
    let wi = c + kvd;
    for r in 0..n {
        let (d, dx) = (&dout[r * 2 * c..][..2 * c], &mut dinp[r * wi..][..wi]);
        dx[..c].copy_from_slice(&d[..c]);
        for g in 0..nkv {
            for k in 0..hs {
                let s: f64 = (0..rep).map(|j| f(d[c + (g * rep + j) * hs + k])).sum();
                dx[c + g * hs + k] = t(s);
            }
        }
    }
}

/// Attention of new queries against cached keys and values (inference, one sequence, no backward).
/// q: Tq rows of stride `ldq`, the first NH hs columns of each the query heads, at positions
/// tk - tq .. tk; k, v (Tk, NKV hs): keys and values of positions 0..tk, the new ones included.
/// out (Tq, NH hs): query i attends keys 0..=tk-tq+i, head h reading kv head h / (NH/NKV), scores
/// scaled by 1/sqrt(hs) — the same result as `attention_forward` on the whole sequence's rows tk-tq..tk.
#[allow(clippy::too_many_arguments)]
pub fn attention_kv_forward<F: Float>(
    out: &mut [F],
    q: &[F],
    k: &[F],
    v: &[F],
    tq: usize,
    tk: usize,
    ldq: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
) {
    let (kvd, rep, scale) = (nkv * hs, nh / nkv, 1.0 / (hs as f64).sqrt());
    for i in 0..tq {
        let last = tk - tq + i;
        for h in 0..nh {
            let g = h / rep;
            let qh = &q[i * ldq + h * hs..][..hs];
            let s: Vec<f64> = (0..=last)
                .map(|j| (0..hs).map(|d| f(qh[d]) * f(k[j * kvd + g * hs + d])).sum::<f64>() * scale)
                .collect();
            let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|&x| (x - mx).exp()).sum();
            for d in 0..hs {
                let acc: f64 = (0..=last).map(|j| (s[j] - mx).exp() / z * f(v[j * kvd + g * hs + d])).sum();
                out[i * nh * hs + h * hs + d] = t(acc);
            }
        }
    }
}

// ---- Shaped attention and scalar gains (simplified transformer blocks, PAPERS.md section 2) ----

/// Shaped attention (He & Hofmann 2023), per head h of hs = C/NH columns:
/// A_h = alpha_h I + beta_h P_h - gamma_h C, out_h = A_h v_h, where
/// P_h = softmax(q_h k_h^T / sqrt(hs) + causal mask) and C is the uniform causal matrix
/// (C_ij = 1/(i+1) for j <= i, 0 above: row i averages the first i+1 values).
/// qk (B,T,2C) holds [q | k] per row; v (B,T,C) the values (often the block's normalised input
/// itself: identity value weights); alpha, beta, gamma (NH). Saves lse (B,NH,T), the log-sum-exp of
/// each score row, from which backward rebuilds P. With alpha = beta = gamma = 1 and q = 0,
/// P = C and A = I: the block starts as the identity.
#[allow(clippy::too_many_arguments)]
pub fn shaped_attention_forward<F: Float>(
    out: &mut [F],
    lse: &mut [F],
    qk: &[F],
    v: &[F],
    alpha: &[F],
    beta: &[F],
    gamma: &[F],
    b: usize,
    tt: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut s = vec![0.0f64; tt];
    for bi in 0..b {
        for h in 0..nh {
            let (al, be, ga) = (f(alpha[h]), f(beta[h]), f(gamma[h]));
            for i in 0..tt {
                let q = &qk[(bi * tt + i) * 2 * c + h * hs..][..hs];
                let mut mx = f64::NEG_INFINITY;
                for j in 0..=i {
                    let k = &qk[(bi * tt + j) * 2 * c + c + h * hs..][..hs];
                    s[j] = (0..hs).map(|d| f(q[d]) * f(k[d])).sum::<f64>() * scale;
                    mx = mx.max(s[j]);
                }
                let z: f64 = (0..=i).map(|j| (s[j] - mx).exp()).sum();
                let l = mx + z.ln();
                lse[(bi * nh + h) * tt + i] = t(l);
                let cw = 1.0 / (i + 1) as f64;
                for d in 0..hs {
                    let mut acc = 0.0;
                    for j in 0..=i {
                        let a = be * (s[j] - l).exp() - ga * cw + if j == i { al } else { 0.0 };
                        acc += a * f(v[(bi * tt + j) * c + h * hs + d]);
                    }
                    out[(bi * tt + i) * c + h * hs + d] = t(acc);
                }
            }
        }
    }
}

/// Shaped attention backward. With P rebuilt from lse and G_ij = <dout_i, v_j> (j <= i):
/// dalpha += sum_i G_ii; dbeta += sum_ij P_ij G_ij; dgamma -= sum_ij C_ij G_ij (accumulate, (NH));
/// dS = beta P (G - rowsum(P G)) (softmax backward of dP = beta G); dq = dS k / sqrt(hs),
/// dk = dS^T q / sqrt(hs); dv = A^T dout. dqk (B,T,2C) and dv (B,T,C) are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn shaped_attention_backward<F: Float>(
    dqk: &mut [F],
    dv: &mut [F],
    dalpha: &mut [F],
    dbeta: &mut [F],
    dgamma: &mut [F],
    dout: &[F],
    qk: &[F],
    v: &[F],
    lse: &[F],
    alpha: &[F],
    beta: &[F],
    gamma: &[F],
    b: usize,
    tt: usize,
    c: usize,
    nh: usize,
) {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut aqk = vec![0.0f64; dqk.len()];
    let mut av = vec![0.0f64; dv.len()];
    let q = |bi: usize, i: usize, h: usize, d: usize| f(qk[(bi * tt + i) * 2 * c + h * hs + d]);
    let k = |bi: usize, j: usize, h: usize, d: usize| f(qk[(bi * tt + j) * 2 * c + c + h * hs + d]);
    let row = |bi: usize, i: usize, h: usize, d: usize| (bi * tt + i) * c + h * hs + d;
    for h in 0..nh {
        let (al, be, ga) = (f(alpha[h]), f(beta[h]), f(gamma[h]));
        let (mut da, mut db, mut dg) = (0.0f64, 0.0f64, 0.0f64);
        for bi in 0..b {
            for i in 0..tt {
                let l = f(lse[(bi * nh + h) * tt + i]);
                let cw = 1.0 / (i + 1) as f64;
                let p: Vec<f64> = (0..=i)
                    .map(|j| ((0..hs).map(|d| q(bi, i, h, d) * k(bi, j, h, d)).sum::<f64>() * scale - l).exp())
                    .collect();
                let g: Vec<f64> = (0..=i)
                    .map(|j| (0..hs).map(|d| f(dout[row(bi, i, h, d)]) * f(v[row(bi, j, h, d)])).sum())
                    .collect();
                let pg: f64 = (0..=i).map(|j| p[j] * g[j]).sum();
                da += g[i];
                db += pg;
                dg -= cw * g.iter().sum::<f64>();
                for j in 0..=i {
                    let ds = be * p[j] * (g[j] - pg);
                    let a = be * p[j] - ga * cw + if j == i { al } else { 0.0 };
                    for d in 0..hs {
                        aqk[(bi * tt + i) * 2 * c + h * hs + d] += ds * k(bi, j, h, d) * scale;
                        aqk[(bi * tt + j) * 2 * c + c + h * hs + d] += ds * q(bi, i, h, d) * scale;
                        av[row(bi, j, h, d)] += a * f(dout[row(bi, i, h, d)]);
                    }
                }
            }
        }
        dalpha[h] = t(f(dalpha[h]) + da);
        dbeta[h] = t(f(dbeta[h]) + db);
        dgamma[h] = t(f(dgamma[h]) + dg);
    }
    for (o, a) in dqk.iter_mut().zip(aqk) {
        *o = t(a);
    }
    for (o, a) in dv.iter_mut().zip(av) {
        *o = t(a);
    }
}

/// out = g[0] * inp: a trainable scalar gain on a branch (g is a one-element parameter slice).
pub fn scale_forward<F: Float>(out: &mut [F], inp: &[F], g: &[F]) {
    let g = f(g[0]);
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = t(g * f(x));
    }
}

/// dinp = g[0] * dout (overwrite); dg[0] += <dout, inp>.
pub fn scale_backward<F: Float>(dinp: &mut [F], dg: &mut [F], dout: &[F], inp: &[F], g: &[F]) {
    let gv = f(g[0]);
    let mut acc = 0.0;
    for i in 0..dinp.len() {
        acc += f(dout[i]) * f(inp[i]);
        dinp[i] = t(gv * f(dout[i]));
    }
    dg[0] = t(f(dg[0]) + acc);
}

/// out = a[0] * x + b[0] * y: two branches joined with trainable scalar gains.
pub fn scale_add_forward<F: Float>(out: &mut [F], x: &[F], y: &[F], a: &[F], b: &[F]) {
    let (a, b) = (f(a[0]), f(b[0]));
    for i in 0..out.len() {
        out[i] = t(a * f(x[i]) + b * f(y[i]));
    }
}

/// dx = a[0] dout, dy = b[0] dout (overwrite); da[0] += <dout, x>, db[0] += <dout, y>.
#[allow(clippy::too_many_arguments)]
pub fn scale_add_backward<F: Float>(
    dx: &mut [F],
    dy: &mut [F],
    da: &mut [F],
    db: &mut [F],
    dout: &[F],
    x: &[F],
    y: &[F],
    a: &[F],
    b: &[F],
) {
    let (av, bv) = (f(a[0]), f(b[0]));
    let (mut sa, mut sb) = (0.0, 0.0);
    for i in 0..dout.len() {
        let d = f(dout[i]);
        sa += d * f(x[i]);
        sb += d * f(y[i]);
        dx[i] = t(av * d);
        dy[i] = t(bv * d);
    }
    da[0] = t(f(da[0]) + sa);
    db[0] = t(f(db[0]) + sb);
}

/// acc += x: sums a second branch into an output or a gradient.
pub fn accumulate<F: Float>(acc: &mut [F], x: &[F]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = t(f(*a) + f(v));
    }
}

/// ||x||_2, f64 accumulation.
pub fn global_norm<F: Float>(x: &[F]) -> f64 {
    x.iter().map(|&v| f(v) * f(v)).sum::<f64>().sqrt()
}

/// x *= s.
pub fn scale_in_place<F: Float>(x: &mut [F], s: f32) {
    for v in x.iter_mut() {
        *v = t(f(*v) * s as f64);
    }
}

/// AdamW at step `step` in f64: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
/// p -= lr ((m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p).
#[allow(clippy::too_many_arguments)]
pub fn adamw_update<F: Float>(
    p: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
    step: u64,
    lr: f64,
    cfg: &crate::backend::AdamWConfig,
    decay: bool,
) {
    let wd = if decay { cfg.weight_decay } else { 0.0 };
    let (c1, c2) = (1.0 - cfg.beta1.powi(step as i32), 1.0 - cfg.beta2.powi(step as i32));
    for i in 0..p.len() {
        let gi = f(g[i]);
        let mi = cfg.beta1 * f(m[i]) + (1.0 - cfg.beta1) * gi;
        let vi = cfg.beta2 * f(v[i]) + (1.0 - cfg.beta2) * gi * gi;
        let pi = f(p[i]);
        p[i] = t(pi - lr * ((mi / c1) / ((vi / c2).sqrt() + cfg.eps) + wd * pi));
        m[i] = t(mi);
        v[i] = t(vi);
    }
}

/// x = 0.
pub fn zero<F: Float>(x: &mut [F]) {
    x.fill(F::default());
}
