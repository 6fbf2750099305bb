//! FP8 per-tensor scaling state on the device (issue 18 item 4): `octet_core::scaling::ScalingMeta`'s
//! `begin_cast` / `finish_cast` for a set of tensors as two kernels (kernels::SCALING), so an amax that
//! a cast kernel or cuBLASLt's D-amax pointer left on the device becomes the next scale without a host
//! round trip; delayed scaling's amax history lives on the device. Not yet on the backend's path (its
//! casts still read the amax back): the building block, checked against `ScalingMeta` by
//! tests/kernels.rs on a GPU and by tools/cuda/emulate/run.py without one.

use cudarc::driver::{CudaSlice, PushKernelArg};
use octet_core::fp8::Fp8Format;

use crate::device::{Gpu, Result, as_i32, check_len, elementwise};

/// Scaling state of `ntensors` tensors of one format, window and margin: scale (ntensors), amax history
/// rings (ntensors, window) with their lengths and next slots, and the pending-delayed-cast flags.
pub struct DeviceScaling {
    /// The scale each tensor's next (or last) cast uses; 1 before the first.
    pub scale: CudaSlice<f32>,
    hist: CudaSlice<f32>,
    len: CudaSlice<i32>,
    next: CudaSlice<i32>,
    pending: CudaSlice<i32>,
    ntensors: usize,
    window: usize,
    fp_max: f32,
    margin: i32,
}

impl DeviceScaling {
    /// Fresh state (scales 1, empty histories), as `ScalingMeta::new(format, window, margin)` per tensor.
    pub fn new(gpu: &Gpu, ntensors: usize, format: Fp8Format, window: usize, margin: i32) -> Result<Self> {
        let s = gpu.stream();
        let n = ntensors.max(1);
        as_i32("ntensors * window", ntensors * window.max(1))?;
        Ok(DeviceScaling {
            scale: s.clone_htod(&vec![1.0f32; n])?,
            hist: s.alloc_zeros::<f32>(n * window.max(1))?,
            len: s.alloc_zeros::<i32>(n)?,
            next: s.alloc_zeros::<i32>(n)?,
            pending: s.alloc_zeros::<i32>(n)?,
            ntensors,
            window: window.max(1),
            fp_max: format.max(),
            margin,
        })
    }

    /// `begin_cast` for every tensor: `amax` (ntensors, f32 bits) is each source's amax, read only by
    /// a just-in-time cast (`jit`, or warm-up); afterwards `scale` holds the scales the casts use.
    pub fn begin(&mut self, gpu: &Gpu, amax: &CudaSlice<u32>, jit: bool) -> Result<()> {
        check_len("amax", amax.len(), self.ntensors)?;
        let (nt, w, jit) = (as_i32("ntensors", self.ntensors)?, self.window as i32, jit as i32);
        let mut launch = gpu.stream().launch_builder(gpu.function("fp8_scale_begin"));
        launch.arg(&mut self.scale).arg(&mut self.hist).arg(&mut self.len).arg(&mut self.next);
        launch.arg(&mut self.pending).arg(amax).arg(&nt).arg(&w).arg(&self.fp_max).arg(&self.margin).arg(&jit);
        // SAFETY: matches `fp8_scale_begin` in kernels::SCALING; every buffer holds ntensors (hist
        // ntensors * window) elements, checked or allocated so.
        unsafe { launch.launch(elementwise(self.ntensors)) }?;
        Ok(())
    }

    /// `finish_cast` for every tensor: a delayed cast records `amax` (ntensors, f32 bits), the amax
    /// its cast measured.
    pub fn finish(&mut self, gpu: &Gpu, amax: &CudaSlice<u32>) -> Result<()> {
        check_len("amax", amax.len(), self.ntensors)?;
        let (nt, w) = (as_i32("ntensors", self.ntensors)?, self.window as i32);
        let mut launch = gpu.stream().launch_builder(gpu.function("fp8_scale_finish"));
        launch.arg(&mut self.hist).arg(&mut self.len).arg(&mut self.next).arg(&mut self.pending);
        launch.arg(amax).arg(&nt).arg(&w);
        // SAFETY: matches `fp8_scale_finish` in kernels::SCALING; sizes as in `begin`.
        unsafe { launch.launch(elementwise(self.ntensors)) }?;
        Ok(())
    }

    /// The scales on the host (tests, logging; a synchronising copy).
    pub fn scales(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut v = gpu.stream().clone_dtoh(&self.scale)?;
        v.truncate(self.ntensors);
        Ok(v)
    }
}
