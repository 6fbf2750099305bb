//! One optimizer step of a GPT-2 at any precision level, shared by the trainer and the benchmark:
//! forward, backward, global-norm clipping, AdamW — plain f32 AdamW over f32 parameters (fp32, bf16,
//! fp8-te), or FP8-LM's two-stage AdamW over narrow storage (fp8-o1, fp8-o2: f16 weights, E4M3
//! gradients, m / v in f32 or E4M3 / f16; see `crate::narrow`, `octet_optim::fp8_adamw`).
//!
//! Overflow: at the narrow levels the loss gradient is multiplied by a power-of-two gradient scale
//! (`GradScaler`, FP8-LM's automatic scaling factor for gradients). If any weight gradient comes out
//! NaN or inf, the step is skipped — weights, moments and the step counter untouched — and the scale
//! halves; after `GROW_INTERVAL` clean steps it doubles again, up to 1. The scale is a power of two,
//! so E4M3 codes of the scaled gradient equal those of the unscaled one and only the stored tensor
//! scale differs; the optimizer reads `decode(g) * clip / scale`.

use octet_core::{Error, Result};
use octet_optim::{AdamW, AdamWConfig, Fp8AdamW};

use crate::dist::{DataParallel, Zero};
use crate::model::{Buffers, LanguageModel};

/// Clean steps after which the gradient scale doubles (up to `MAX_SCALE`).
pub const GROW_INTERVAL: u64 = 1000;
/// The gradient scale never exceeds 1: on the CPU activation gradients are f32, so a larger scale
/// would buy no range; only overflow needs handling.
pub const MAX_SCALE: f64 = 1.0;

/// Dynamic gradient scale: halve on overflow, double after `GROW_INTERVAL` clean steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    /// Clean steps since the last change of scale.
    pub clean: u64,
    /// Steps skipped so far.
    pub skipped: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler { scale: MAX_SCALE, clean: 0, skipped: 0 }
    }
}

impl GradScaler {
    fn overflowed(&mut self) {
        self.scale *= 0.5;
        self.clean = 0;
        self.skipped += 1;
    }
    fn succeeded(&mut self) {
        self.clean += 1;
        if self.clean >= GROW_INTERVAL && self.scale < MAX_SCALE {
            self.scale = (self.scale * 2.0).min(MAX_SCALE);
            self.clean = 0;
        }
    }
}

/// The optimizer of a run.
#[derive(Clone, Debug)]
pub enum Optimizer {
    /// f32 AdamW over the model's f32 parameters (fp32, bf16, fp8-te).
    Plain(AdamW),
    /// FP8-LM AdamW over the model's narrow weights (fp8-o1: m, v f32; fp8-o2: m E4M3, v f16).
    Narrow(Fp8AdamW),
    /// The same with its state sharded over the ranks of a data-parallel job (FP8-LM's ZeRO,
    /// `crate::dist::Zero`): this rank's units only.
    Zero(Box<Zero>),
    /// f32 AdamW over the LoRA adapters only (the model's weights stay frozen; `crate::lora`).
    Lora(AdamW),
}

impl Optimizer {
    /// The optimizer `model`'s precision calls for, fresh (step 0).
    pub fn for_model(model: &dyn LanguageModel, cfg: AdamWConfig) -> Optimizer {
        if let Some(lp) = model.lora_params() {
            // Adapters take no weight decay (as PEFT's default); their moments only.
            let alloc = model.allocator();
            let flags = vec![false; lp.layout.specs().len()];
            let o = AdamW::new_in(lp.layout.clone(), flags, cfg, alloc.as_ref())
                .unwrap_or_else(|e| panic!("allocating the adapters' AdamW moments: {e}"));
            return Optimizer::Lora(o);
        }
        let decay = model.decay_flags();
        match (model.narrow(), model.plain()) {
            (Some(nw), _) => Optimizer::Narrow(Fp8AdamW::new(
                nw.units.clone(),
                nw.unit_flags(&decay),
                cfg,
                model.precision().adam_formats(),
            )),
            (None, Some((params, _))) => {
                let alloc = model.allocator();
                let o = AdamW::new_in(params.layout.clone(), decay, cfg, alloc.as_ref())
                    .unwrap_or_else(|e| panic!("allocating AdamW's moments: {e}"));
                Optimizer::Plain(o)
            }
            (None, None) => unreachable!("a model keeps its weights plain or narrow"),
        }
    }

    /// FP8-LM's ZeRO optimizer for `model` (a narrow level), rank `rank` of `ranks`'s shard, fresh.
    pub fn zero_for_model(model: &dyn LanguageModel, cfg: AdamWConfig, rank: usize, ranks: usize) -> Result<Optimizer> {
        let Some(nw) = model.narrow() else {
            return Err(Error::config(
                "zero",
                format!(
                    "ZeRO shards the FP8 optimizer state of the narrow levels (fp8-o1, fp8-o2, fp8-o2-v8), not `{}`",
                    model.precision()
                ),
            ));
        };
        let decay = nw.unit_flags(&model.decay_flags());
        let formats = model.precision().adam_formats();
        Ok(Optimizer::Zero(Box::new(Zero::new(nw.units.clone(), &decay, cfg, formats, rank, ranks))))
    }

    /// Completed steps.
    pub fn step(&self) -> u64 {
        match self {
            Optimizer::Plain(o) | Optimizer::Lora(o) => o.step,
            Optimizer::Narrow(o) => o.step,
            Optimizer::Zero(z) => z.opt.step,
        }
    }

    /// Bytes of Adam's m and v (with their scales) held by this process.
    pub fn state_bytes(&self) -> (usize, usize) {
        match self {
            Optimizer::Plain(o) | Optimizer::Lora(o) => (o.m.data.len() * 4, o.v.data.len() * 4),
            Optimizer::Narrow(o) => (o.m.bytes(), o.v.bytes()),
            Optimizer::Zero(z) => z.state_bytes(),
        }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    pub loss: f64,
    /// Global gradient norm before clipping (of the unscaled gradient).
    pub grad_norm: f64,
    /// The weights were not changed (a gradient overflowed); the gradient scale was halved.
    pub skipped: bool,
}

/// One training step on (B, T) tokens `x` with targets `y`: clip the global gradient norm to `clip`
/// (0 = off) and update with learning rate `lr`. A non-finite loss, or a non-finite gradient at a
/// level without a gradient scale, is an error naming the step.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &mut dyn LanguageModel,
    opt: &mut Optimizer,
    scaler: &mut GradScaler,
    x: &[u32],
    y: &[u32],
    b: usize,
    t: usize,
    clip: f64,
    lr: f64,
) -> Result<StepOutcome> {
    train_step_accum(model, opt, scaler, &[(x, y)], b, t, clip, lr)
}

/// One training step over the micro-batches `micro` (each (B, T) tokens and targets) with gradient
/// accumulation: the update of one batch N = `micro.len()` times larger. Each micro-batch's loss
/// gradient is scaled by 1/N, so the accumulated gradient is the mean over all N*B*T positions;
/// the reported loss is the mean of the micro-batch losses. At the plain levels the f32 gradients
/// add up across backwards (`+=`); at the narrow levels each layer's E4M3 gradient is decoded,
/// added to and re-encoded (`Narrow::accumulate`), the top tensors' f32 gradients add up as at the
/// plain levels.
#[allow(clippy::too_many_arguments)]
pub fn train_step_accum(
    model: &mut dyn LanguageModel,
    opt: &mut Optimizer,
    scaler: &mut GradScaler,
    micro: &[(&[u32], &[u32])],
    b: usize,
    t: usize,
    clip: f64,
    lr: f64,
) -> Result<StepOutcome> {
    train_step_dist(model, opt, scaler, micro, b, t, clip, lr, None)
}

/// `train_step_accum` as one rank of a data-parallel job (`crate::dist`): `micro` holds this rank's
/// rows (B is the local batch), the loss gradient is also scaled by 1/N, the gradients are summed
/// over ranks in the level's wire format before the update (reduce-scattered with ZeRO), the
/// reported loss is the mean over ranks, and the FP8 amax histories are synchronised after it.
#[allow(clippy::too_many_arguments)]
pub fn train_step_dist(
    model: &mut dyn LanguageModel,
    opt: &mut Optimizer,
    scaler: &mut GradScaler,
    micro: &[(&[u32], &[u32])],
    b: usize,
    t: usize,
    clip: f64,
    lr: f64,
    mut dp: Option<&mut DataParallel<'_>>,
) -> Result<StepOutcome> {
    let step = opt.step() as usize;
    let n = micro.len();
    if n == 0 {
        return Err(Error::config("grad_accum", "a step needs at least one micro-batch"));
    }
    let ranks = dp.as_ref().map_or(1, |d| d.size());
    model.zero_grad();
    let s = if model.narrow().is_some() { scaler.scale } else { 1.0 };
    model.set_grad_scale(s / (n * ranks) as f64);
    let mut loss = 0.0;
    for (i, (x, y)) in micro.iter().enumerate() {
        model.set_accumulate(i > 0);
        let l = model.forward(x, Some(y), b, t)?.expect("targets given");
        if !l.is_finite() {
            return Err(Error::NonFinite { what: "training loss".into(), step, value: l });
        }
        model.backward()?;
        loss += l / n as f64;
    }
    model.set_accumulate(false);
    if let Some(dp) = dp.as_deref_mut() {
        loss = dp.mean(loss);
        if !matches!(opt, Optimizer::Zero(_)) {
            // An overflow on any rank marks every rank's narrow gradient (`Narrow::overflow`).
            dp.all_reduce_grads(model);
        }
    }
    let out = update(model, opt, scaler, dp.as_deref_mut(), clip, lr, step, loss)?;
    if let Some(dp) = dp {
        dp.sync_scaling(model.scaling_mut());
    }
    Ok(out)
}

/// The update after the gradients are complete (and synchronised).
#[allow(clippy::too_many_arguments)]
fn update(
    model: &mut dyn LanguageModel,
    opt: &mut Optimizer,
    scaler: &mut GradScaler,
    dp: Option<&mut DataParallel<'_>>,
    clip: f64,
    lr: f64,
    step: usize,
    loss: f64,
) -> Result<StepOutcome> {
    match opt {
        Optimizer::Lora(o) => {
            let grad_norm = model.lora_update(o, clip, lr);
            if !grad_norm.is_finite() {
                return Err(Error::NonFinite { what: "adapter gradient norm".into(), step, value: grad_norm });
            }
            Ok(StepOutcome { loss, grad_norm, skipped: false })
        }
        Optimizer::Plain(o) => {
            let grad_norm = model.plain_update(o, clip, lr);
            if !grad_norm.is_finite() {
                return Err(Error::NonFinite { what: "gradient norm".into(), step, value: grad_norm });
            }
            Ok(StepOutcome { loss, grad_norm, skipped: false })
        }
        Optimizer::Narrow(o) => {
            let Buffers::Narrow(nw) = model.buffers() else {
                unreachable!("optimizer matches the model's storage (Optimizer::for_model)")
            };
            let s = scaler.scale;
            let grad_norm = nw.grads.sum_squares().sqrt() / s;
            if nw.overflow || !grad_norm.is_finite() {
                scaler.overflowed();
                return Ok(StepOutcome { loss, grad_norm: f64::INFINITY, skipped: true });
            }
            let clip_factor = if clip > 0.0 && grad_norm > clip { clip / grad_norm } else { 1.0 };
            let report = o.update_master_scaled(&mut nw.weights, &nw.grads, (clip_factor / s) as f32, lr);
            if report.skipped {
                scaler.overflowed();
            } else {
                scaler.succeeded();
            }
            Ok(StepOutcome { loss, grad_norm, skipped: report.skipped })
        }
        Optimizer::Zero(z) => {
            let Some(dp) = dp else {
                return Err(Error::Other("a ZeRO optimizer steps inside a data-parallel job".into()));
            };
            let Buffers::Narrow(nw) = model.buffers() else {
                unreachable!("ZeRO is built for narrow models (Optimizer::zero_for_model)")
            };
            let (grad_norm, skipped) = z.step(dp, nw, scaler.scale, clip, lr)?;
            if skipped {
                scaler.overflowed();
            } else {
                scaler.succeeded();
            }
            Ok(StepOutcome { loss, grad_norm, skipped })
        }
    }
}
