//! Precision levels (FP8-LM, PAPERS.md section 1) and the linear layer that applies them: each GEMM's
//! operands are cast to the level's format — bf16, or FP8 with per-tensor delayed scaling by role
//! (input and weight E4M3, output gradient E5M2) — and multiplied with f32 accumulation. Each GEMM
//! is one backend operation, `Backend::linear_gemm` (role, operands, their casts), so a device maps
//! it to one tensor-core GEMM; the scaling decisions (`ScalingMeta::begin_cast` / `finish_cast`)
//! stay here. On the CPU a cast is a quantise-dequantise into f32 scratch: the products and sums are
//! exactly those of an FP8 tensor-core GEMM over the same bytes and scales.
//!
//! Levels: `fp32`; `bf16` (bf16 GEMM operands; f32 master weights and Adam); `fp8-te` (FP8 GEMMs;
//! everything else f32); `fp8-o1` (also f16 weights with tensor scaling and E4M3 weight gradients,
//! `crate::narrow`; Adam in f32); `fp8-o2` (also Adam m in E4M3 and v in f16, FP8-LM's two-stage
//! optimizer `octet_optim::Fp8AdamW`): 16, 16, 16, 11 and 6 bytes per parameter (+ scales);
//! `fp8-o2-v8` (beyond the paper, opt-in): v in E4M3 with 1x128 block scales, 5 bytes (+ 1/32).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use octet_core::scaling::{PendingCast, Recipe, Role, ScalingMeta, ScalingMode};
use octet_core::{Allocator, Error, Result, StateFormat, Storage, ZeroBits};
use octet_kernels::Backend;
use octet_kernels::backend::{Cast, GemmRole};
use octet_optim::StateFormats;

/// A precision level (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    Fp8Te,
    Fp8O1,
    Fp8O2,
    /// Beyond FP8-LM: O2 with v in E4M3 too, one scale per 1x128 block (`StateFormat::E4M3Block128`).
    Fp8O2V8,
}

impl Precision {
    pub const ALL: [Precision; 6] =
        [Precision::Fp32, Precision::Bf16, Precision::Fp8Te, Precision::Fp8O1, Precision::Fp8O2, Precision::Fp8O2V8];
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp8Te => "fp8-te",
            Precision::Fp8O1 => "fp8-o1",
            Precision::Fp8O2 => "fp8-o2",
            Precision::Fp8O2V8 => "fp8-o2-v8",
        }
    }
    pub fn is_fp8(self) -> bool {
        matches!(self, Precision::Fp8Te | Precision::Fp8O1 | Precision::Fp8O2 | Precision::Fp8O2V8)
    }
    /// Weights in f16 and weight gradients in E4M3 (`crate::narrow`): O1 and O2.
    pub fn is_narrow(self) -> bool {
        matches!(self, Precision::Fp8O1 | Precision::Fp8O2 | Precision::Fp8O2V8)
    }
    /// Storage formats of Adam's m and v: f32 up to O1, E4M3 / f16 with tensor scaling at O2.
    pub fn adam_formats(self) -> StateFormats {
        match self {
            Precision::Fp8O2 => StateFormats::O2,
            Precision::Fp8O2V8 => StateFormats { m: StateFormat::E4M3, v: StateFormat::E4M3Block128 },
            _ => StateFormats::F32,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            Error::config(
                "precision",
                format!("unknown precision `{s}`; expected one of: fp32, bf16, fp8-te, fp8-o1, fp8-o2, fp8-o2-v8"),
            )
        })
    }
}

impl serde::Serialize for Precision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Precision {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Scaling state of one FP8 linear layer: one `ScalingMeta` per operand role.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearScaling {
    pub input: ScalingMeta,
    pub weight: ScalingMeta,
    pub grad_output: ScalingMeta,
}

impl LinearScaling {
    pub fn new(r: &Recipe) -> Self {
        LinearScaling {
            input: r.meta(Role::Input),
            weight: r.meta(Role::Weight),
            grad_output: r.meta(Role::GradOutput),
        }
    }
}

/// f32 scratch for cast GEMM operands, sized for the largest linear of a model and batch.
pub struct Workspace<F> {
    pub x: Storage<F>,
    pub w: Storage<F>,
    pub d: Storage<F>,
}

impl<F: ZeroBits> Workspace<F> {
    /// From `alloc` (a backend's memory; None: the host heap).
    pub fn new_in(x: usize, w: usize, d: usize, alloc: Option<&Arc<dyn Allocator>>) -> Result<Self> {
        Ok(Workspace {
            x: Storage::zeros_in(x, alloc)?,
            w: Storage::zeros_in(w, alloc)?,
            d: Storage::zeros_in(d, alloc)?,
        })
    }
    pub fn elems(&self) -> usize {
        self.x.len() + self.w.len() + self.d.len()
    }
}

/// The cast of a GEMM operand under `meta`'s scaling policy (the first half of
/// `ScalingMeta::cast_with`; `amax` measures `src` when the scale must come from it).
fn begin_fp8<Bk: Backend>(be: &Bk, meta: &mut ScalingMeta, mode: ScalingMode, src: &[Bk::F]) -> (Cast, PendingCast) {
    let pending = meta.begin_cast(mode, || be.amax(src));
    (Cast::Fp8 { format: meta.format, scale: pending.scale }, pending)
}

/// The cast a meta's last cast used (backward multiplies the operands forward cast).
fn same_fp8(meta: &ScalingMeta) -> Cast {
    Cast::Fp8 { format: meta.format, scale: meta.scale }
}

/// out (N,OC) = cast(inp) @ cast(w)^T + bias at precision `p`: one `linear_gemm` (forward role).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward<Bk: Backend>(
    be: &Bk,
    p: Precision,
    sc: Option<&mut LinearScaling>,
    mode: ScalingMode,
    ws: &mut Workspace<Bk::F>,
    out: &mut [Bk::F],
    inp: &[Bk::F],
    w: &[Bk::F],
    bias: Option<&[Bk::F]>,
    n: usize,
    ic: usize,
    oc: usize,
) {
    if p == Precision::Fp32 {
        return be.matmul_forward(out, inp, w, bias, n, ic, oc);
    }
    let (inp, w) = (&inp[..n * ic], &w[..oc * ic]);
    let (x, wq) = (&mut ws.x[..n * ic], &mut ws.w[..oc * ic]);
    let role = GemmRole::Forward;
    match p {
        Precision::Bf16 => _ = be.linear_gemm(out, x, wq, inp, w, bias, role, Cast::Bf16, Cast::Bf16, n, ic, oc),
        _ => {
            let sc = sc.expect("FP8 precision keeps scaling state per linear");
            let (cx, px) = begin_fp8(be, &mut sc.input, mode, inp);
            let (cw, pw) = begin_fp8(be, &mut sc.weight, mode, w);
            let [ax, aw] = be.linear_gemm(out, x, wq, inp, w, bias, role, cx, cw, n, ic, oc);
            sc.input.finish_cast(px, ax);
            sc.weight.finish_cast(pw, aw);
        }
    }
}

/// Backward of `linear_forward`, two `linear_gemm`s: dinp = cast(dout) @ cast(w) (overwrite);
/// dw += cast(dout)^T cast(inp); then dbias += colsum(dout) from the uncast gradient (as Transformer
/// Engine). FP8 reuses the input and weight scales of the forward cast, so the operands are the ones
/// forward multiplied; dout is cast (and its amax recorded) once, for the data gradient.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<Bk: Backend>(
    be: &Bk,
    p: Precision,
    sc: Option<&mut LinearScaling>,
    mode: ScalingMode,
    ws: &mut Workspace<Bk::F>,
    dinp: &mut [Bk::F],
    dw: &mut [Bk::F],
    dbias: Option<&mut [Bk::F]>,
    dout: &[Bk::F],
    inp: &[Bk::F],
    w: &[Bk::F],
    n: usize,
    ic: usize,
    oc: usize,
) {
    if p == Precision::Fp32 {
        return be.matmul_backward(dinp, dw, dbias, dout, inp, w, n, ic, oc);
    }
    let (dout, inp, w) = (&dout[..n * oc], &inp[..n * ic], &w[..oc * ic]);
    let (x, wq, d) = (&mut ws.x[..n * ic], &mut ws.w[..oc * ic], &mut ws.d[..n * oc]);
    let (dg, wg) = (GemmRole::DataGrad, GemmRole::WeightGrad);
    match p {
        Precision::Bf16 => {
            be.linear_gemm(dinp, d, wq, dout, w, None, dg, Cast::Bf16, Cast::Bf16, n, ic, oc);
            be.linear_gemm(dw, d, x, dout, inp, None, wg, Cast::Bf16, Cast::Bf16, n, ic, oc);
        }
        _ => {
            let sc = sc.expect("FP8 precision keeps scaling state per linear");
            let (cd, pd) = begin_fp8(be, &mut sc.grad_output, mode, dout);
            let [ad, _] = be.linear_gemm(dinp, d, wq, dout, w, None, dg, cd, same_fp8(&sc.weight), n, ic, oc);
            sc.grad_output.finish_cast(pd, ad);
            be.linear_gemm(dw, d, x, dout, inp, None, wg, cd, same_fp8(&sc.input), n, ic, oc);
        }
    }
    if let Some(db) = dbias {
        be.bias_backward(db, dout, n, oc);
    }
}

/// The linears of a model's blocks at one precision: backend, level, scaling mode, the FP8 scaling
/// state of every linear (`per_layer` of them per block) and the cast workspace.
pub struct Linears<'a, Bk: Backend> {
    pub be: &'a Bk,
    pub prec: Precision,
    pub mode: ScalingMode,
    pub scaling: &'a mut [LinearScaling],
    pub ws: &'a mut Workspace<Bk::F>,
    pub per_layer: usize,
    /// LoRA adapters added to every block linear (`crate::lora`), when enabled.
    pub lora: Option<&'a mut crate::lora::Lora<Bk::F>>,
}

impl<Bk: Backend> Linears<'_, Bk> {
    /// out (N,OC) = inp (N,IC) @ w^T (+ bias) for linear `k` of layer `l`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        l: usize,
        k: usize,
        out: &mut [Bk::F],
        inp: &[Bk::F],
        w: &[Bk::F],
        bias: Option<&[Bk::F]>,
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        let sc = self.scaling.get_mut(l * self.per_layer + k);
        linear_forward(self.be, self.prec, sc, self.mode, self.ws, out, inp, w, bias, n, ic, oc);
        if let Some(lo) = self.lora.as_deref_mut() {
            lo.forward(self.be, l, k, out, inp, n);
        }
    }

    /// Backward of `forward`: dinp overwritten, dw (and dbias) accumulated.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        l: usize,
        k: usize,
        dinp: &mut [Bk::F],
        dw: &mut [Bk::F],
        dbias: Option<&mut [Bk::F]>,
        dout: &[Bk::F],
        inp: &[Bk::F],
        w: &[Bk::F],
        n: usize,
        ic: usize,
        oc: usize,
    ) {
        let sc = self.scaling.get_mut(l * self.per_layer + k);
        linear_backward(self.be, self.prec, sc, self.mode, self.ws, dinp, dw, dbias, dout, inp, w, n, ic, oc);
        if let Some(lo) = self.lora.as_deref_mut() {
            lo.backward(self.be, l, k, dinp, dout, inp, n);
        }
    }
}
