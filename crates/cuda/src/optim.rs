//! AdamW on the device (feature `cuda`): plain f32, and FP8-LM's O2 optimizer (f16 master weights,
//! E4M3 first moment, f16 second moment, each with a per-tensor power-of-two scale) in the two
//! stages of `octet_optim::fp8_adamw`, which is the reference: same formula, same f32 operation order
//! (explicit round-to-nearest intrinsics, no FMA contraction), same scale rule, same skip rule, so a
//! device step is bit-identical to `Fp8AdamW::update_master` with `StateFormats::O2` on an F16
//! `ScaledBuf` (tests/kernels.rs checks this over several steps).
//!
//! Buffers are flat over the parameter layout (tensor i owns `ranges[i]`); launches are per tensor
//! (a GPT-2 124M step is ~150 tensors: ~450 small launches, fine for correctness, a candidate for one
//! fused launch over a tensor table later). Scales and amaxes never leave the device between the
//! stages; [`O2AdamW::step`] reads back only the skip flag and the gradient amax (16 bytes), the one
//! host sync of an optimizer step (the step counter, which sets the bias corrections, advances only
//! when the step was not skipped).

use std::ops::Range;

use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use octet_core::fp8::Fp8Format;
use octet_optim::AdamWConfig;

use crate::device::{CudaError, Gpu, Result, as_i32, check_len, elementwise};

/// The f32 constants of one tensor's update at step `t`; layout twin of `struct AdamCoeffs` in
/// [`crate::kernels::ADAM`]. Built exactly as `octet_optim`'s (f64 hyper-parameters cast once).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamCoeffs {
    pub b1: f32,
    pub b2: f32,
    pub eps: f32,
    pub lr: f32,
    /// 1 - b1^t (bias correction of m).
    pub c1: f32,
    /// 1 - b2^t (bias correction of v).
    pub c2: f32,
    /// Weight decay (0 for tensors without decay).
    pub wd: f32,
}

// SAFETY: `#[repr(C)]` of seven f32, the same layout as the CUDA struct.
unsafe impl DeviceRepr for AdamCoeffs {}

impl AdamCoeffs {
    /// Step `t` >= 1, learning rate `lr`, decay on or off: the conversions `octet_kernels::cpu::adamw_update` makes.
    pub fn new(cfg: &AdamWConfig, t: u64, lr: f64, decay: bool) -> Self {
        AdamCoeffs {
            b1: cfg.beta1 as f32,
            b2: cfg.beta2 as f32,
            eps: cfg.eps as f32,
            lr: lr as f32,
            c1: (1.0 - cfg.beta1.powi(t as i32)) as f32,
            c2: (1.0 - cfg.beta2.powi(t as i32)) as f32,
            wd: if decay { cfg.weight_decay as f32 } else { 0.0 },
        }
    }
}

impl Gpu {
    /// One AdamW update of f32 `p`, `m`, `v` in place from `g` (all the same length), bit-identical
    /// to `octet_kernels::cpu::adamw_update` with the same coefficients.
    pub fn adamw_f32(
        &self,
        p: &mut CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        k: &AdamCoeffs,
    ) -> Result<()> {
        let n = p.len();
        check_len("m", m.len(), n)?;
        check_len("v", v.len(), n)?;
        check_len("g", g.len(), n)?;
        let n64 = n as i64;
        let mut launch = self.stream().launch_builder(self.function("adamw_f32"));
        launch.arg(p).arg(m).arg(v).arg(g).arg(k).arg(&n64);
        // SAFETY: matches `adamw_f32` in kernels::ADAM (AdamCoeffs is its repr(C) twin); lengths
        // checked.
        unsafe { launch.launch(elementwise(n)) }?;
        Ok(())
    }
}

/// O2 state on the host, as `octet_core::ScaledBuf::to_raw` stores it: f16 bit patterns for the
/// master weights and v, E4M3 codes for m, and per tensor the scales `[p, m, v]`
/// (stored = round(x * scale)).
#[derive(Clone, Debug, PartialEq)]
pub struct O2HostState {
    pub master: Vec<u16>,
    pub m: Vec<u8>,
    pub v: Vec<u16>,
    pub scales: Vec<[f32; 3]>,
    /// Completed steps.
    pub step: u64,
}

/// What one [`O2AdamW::step`] did (`octet_optim::UpdateReport` without the tensor index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct O2Report {
    /// Nothing was written: some gradient or new value was NaN or inf.
    pub skipped: bool,
    /// max |g * grad_mult| over all tensors (NaN or inf if some gradient was).
    pub grad_amax: f32,
    /// Completed steps after this call.
    pub step: u64,
}

/// Where the gradients of a step are: f32, or E4M3 codes with one f32 scale per tensor.
#[derive(Clone, Copy)]
enum Grads<'a> {
    F32(&'a CudaSlice<f32>),
    E4M3 { codes: &'a CudaSlice<u8>, scales: &'a CudaSlice<f32> },
}

/// Views of tensor `i` (elements `r`) of the gradients: the f32 slice, or the codes and the scale.
type GradViews<'a> = (Option<CudaView<'a, f32>>, Option<(CudaView<'a, u8>, CudaView<'a, f32>)>);

impl<'a> Grads<'a> {
    fn views(self, i: usize, r: &Range<usize>) -> GradViews<'a> {
        match self {
            Grads::F32(g) => (Some(g.slice(r.clone())), None),
            Grads::E4M3 { codes, scales } => (None, Some((codes.slice(r.clone()), scales.slice(i..i + 1)))),
        }
    }
}

/// FP8-LM O2 AdamW state on the device (see the module doc).
pub struct O2AdamW {
    pub cfg: AdamWConfig,
    /// f16 master weights (bit patterns), E4M3 m (codes), f16 v (bit patterns); flat.
    master: CudaSlice<u16>,
    m: CudaSlice<u8>,
    v: CudaSlice<u16>,
    /// (ntensors, 3): current scales of p, m, v.
    scales: CudaSlice<f32>,
    /// (ntensors, 3): the next scales, written by `adam_o2_scales` (swapped with `scales` after a step).
    next: CudaSlice<f32>,
    /// (ntensors, 4): amax bits of g, m', v', p'.
    amax: CudaSlice<u32>,
    skip: CudaSlice<u32>,
    ranges: Vec<Range<usize>>,
    decay: Vec<bool>,
    /// Powers of two of headroom in the scale choice, for p, m, v (0 in FP8-LM).
    margins: [i32; 3],
    step: u64,
}

impl O2AdamW {
    /// Uploads `state` for tensors `ranges` (tiling 0..n in order) with weight-decay flags `decay`.
    pub fn upload(
        gpu: &Gpu,
        cfg: AdamWConfig,
        ranges: Vec<Range<usize>>,
        decay: Vec<bool>,
        state: &O2HostState,
    ) -> Result<Self> {
        let n = ranges.last().map_or(0, |r| r.end);
        let tiles = ranges.iter().scan(0, |next, r| {
            let ok = r.start == *next && r.end >= r.start;
            *next = r.end;
            Some(ok)
        });
        if !tiles.into_iter().all(|ok| ok) || n == 0 {
            return Err(CudaError::Shape("O2AdamW: ranges must tile 0..n in order, n > 0".into()));
        }
        check_len("decay flags", decay.len(), ranges.len())?;
        check_len("master", state.master.len(), n)?;
        check_len("m", state.m.len(), n)?;
        check_len("v", state.v.len(), n)?;
        check_len("scales", state.scales.len(), ranges.len())?;
        as_i32("tensors", ranges.len())?;
        let s = gpu.stream();
        let scales: Vec<f32> = state.scales.iter().flatten().copied().collect();
        Ok(O2AdamW {
            cfg,
            master: s.clone_htod(&state.master)?,
            m: s.clone_htod(&state.m)?,
            v: s.clone_htod(&state.v)?,
            next: s.clone_htod(&scales)?,
            scales: s.clone_htod(&scales)?,
            amax: s.alloc_zeros(4 * ranges.len())?,
            skip: s.alloc_zeros(1)?,
            ranges,
            decay,
            margins: [0; 3],
            step: state.step,
        })
    }

    /// The same optimizer with scale margins for p, m, v (`ScaledBuf::with_margin`).
    pub fn with_margins(mut self, margins: [i32; 3]) -> Self {
        self.margins = margins;
        self
    }

    /// Copies the state back (synchronises the stream).
    pub fn download(&self, gpu: &Gpu) -> Result<O2HostState> {
        let s = gpu.stream();
        let flat = s.clone_dtoh(&self.scales)?;
        Ok(O2HostState {
            master: s.clone_dtoh(&self.master)?,
            m: s.clone_dtoh(&self.m)?,
            v: s.clone_dtoh(&self.v)?,
            scales: flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
            step: self.step,
        })
    }

    /// The f16 master weights (bit patterns), e.g. to cast into the model's compute copy.
    pub fn master(&self) -> &CudaSlice<u16> {
        &self.master
    }

    /// Completed (not skipped) steps.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One step from f32 gradients `grads` (flat, same layout) read as `g * grad_mult` (fold in
    /// clipping and the inverse loss scale), learning rate `lr`: `Fp8AdamW::update_master`. Stage 1
    /// per tensor, the scale kernel, stage 2 per tensor, then one 20-byte read-back for the report.
    pub fn step(&mut self, gpu: &Gpu, grads: &CudaSlice<f32>, grad_mult: f32, lr: f64) -> Result<O2Report> {
        check_len("grads", grads.len(), self.master.len())?;
        self.step_impl(gpu, Grads::F32(grads), grad_mult, lr)
    }

    /// The same step from E4M3 gradients (FP8-LM O1/O2 weight gradients) with one scale per tensor
    /// (`grad_scales`, device f32), read as `decode(g) / grad_scale * grad_mult`:
    /// `Fp8AdamW::update_master_scaled`.
    pub fn step_e4m3_grads(
        &mut self,
        gpu: &Gpu,
        grads: &CudaSlice<u8>,
        grad_scales: &CudaSlice<f32>,
        grad_mult: f32,
        lr: f64,
    ) -> Result<O2Report> {
        check_len("grads", grads.len(), self.master.len())?;
        check_len("grad scales", grad_scales.len(), self.ranges.len())?;
        self.step_impl(gpu, Grads::E4M3 { codes: grads, scales: grad_scales }, grad_mult, lr)
    }

    fn step_impl(&mut self, gpu: &Gpu, grads: Grads<'_>, grad_mult: f32, lr: f64) -> Result<O2Report> {
        let s = gpu.stream();
        let t = self.step + 1;
        let suffix = match grads {
            Grads::F32(_) => "",
            Grads::E4M3 { .. } => "_e4m3g",
        };
        s.memset_zeros(&mut self.amax)?;
        for (i, r) in self.ranges.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let k = AdamCoeffs::new(&self.cfg, t, lr, self.decay[i]);
            let n64 = r.len() as i64;
            let (mut amax, p, m, v) = (
                self.amax.slice_mut(4 * i..4 * i + 4),
                self.master.slice(r.clone()),
                self.m.slice(r.clone()),
                self.v.slice(r.clone()),
            );
            let sc = self.scales.slice(3 * i..3 * i + 3);
            let (g32, g8) = grads.views(i, r);
            let mut launch = s.launch_builder(gpu.function(&format!("adam_o2_stage1{suffix}")));
            launch.arg(&mut amax).arg(&p).arg(&m).arg(&v);
            if let Some(g) = &g32 {
                launch.arg(g);
            }
            if let Some((g, gs)) = &g8 {
                launch.arg(g).arg(gs);
            }
            launch.arg(&sc).arg(&grad_mult).arg(&k).arg(&n64);
            // SAFETY: matches `adam_o2_stage1{,_e4m3g}` in kernels::ADAM (u16 = __half bits, u8 = E4M3
            // codes); every view covers tensor i's n elements, amax 4 and scales 3 entries, the
            // gradient scale 1.
            unsafe { launch.launch(elementwise(r.len())) }?;
        }
        let nt = self.ranges.len() as i32;
        let (fp8_max, f16_max) = (Fp8Format::E4M3.max(), half::f16::MAX.to_f32());
        let [mp, mm, mv] = self.margins;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut launch = s.launch_builder(gpu.function("adam_o2_scales"));
        launch.arg(&mut self.next).arg(&mut self.skip).arg(&self.scales).arg(&self.amax);
        launch.arg(&nt).arg(&fp8_max).arg(&f16_max).arg(&mp).arg(&mm).arg(&mv);
        // SAFETY: matches `adam_o2_scales`: one block; next and scales hold 3, amax 4 per tensor.
        unsafe { launch.launch(cfg) }?;
        for (i, r) in self.ranges.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let k = AdamCoeffs::new(&self.cfg, t, lr, self.decay[i]);
            let n64 = r.len() as i64;
            let (mut p, mut m, mut v) =
                (self.master.slice_mut(r.clone()), self.m.slice_mut(r.clone()), self.v.slice_mut(r.clone()));
            let (sc, nx) = (self.scales.slice(3 * i..3 * i + 3), self.next.slice(3 * i..3 * i + 3));
            let (g32, g8) = grads.views(i, r);
            let mut launch = s.launch_builder(gpu.function(&format!("adam_o2_stage2{suffix}")));
            launch.arg(&mut p).arg(&mut m).arg(&mut v);
            if let Some(g) = &g32 {
                launch.arg(g);
            }
            if let Some((g, gs)) = &g8 {
                launch.arg(g).arg(gs);
            }
            launch.arg(&sc).arg(&nx).arg(&self.skip).arg(&grad_mult).arg(&k).arg(&n64);
            // SAFETY: matches `adam_o2_stage2{,_e4m3g}`; views as in stage 1, skip one flag.
            unsafe { launch.launch(elementwise(r.len())) }?;
        }
        std::mem::swap(&mut self.scales, &mut self.next);
        let skipped = s.clone_dtoh(&self.skip)?[0] != 0;
        let amax = s.clone_dtoh(&self.amax)?;
        let grad_amax = f32::from_bits(amax.chunks_exact(4).map(|a| a[0]).max().unwrap_or(0));
        if !skipped {
            self.step = t;
        }
        Ok(O2Report { skipped, grad_amax, step: self.step })
    }
}
