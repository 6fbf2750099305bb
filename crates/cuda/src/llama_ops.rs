//! Launch wrappers for Llama's operations (feature `cuda`): RMSNorm, RoPE, SwiGLU, repeat_kv and the
//! token embedding, each over the kernels of the same name in [`crate::kernels`] (see there for the
//! formulas and launch shapes). Same conventions as the other wrappers on [`Gpu`]: outputs, saved
//! values, inputs, sizes; lengths checked before the (asynchronous) launch; the saved 1/rms is f32
//! whatever the storage type. Activation gradients overwrite except RMSNorm's dinp (the residual
//! stream's gradient, accumulated); parameter gradients (RMSNorm dw, the embedding's dwte) accumulate,
//! summed per column or per token without atomics, so results do not depend on scheduling.

use cudarc::driver::{CudaSlice, PushKernelArg, ValidAsZeroBits};

use crate::device::{CudaError, DeviceFloat, Gpu, Result, as_i32, check_len, column_tiles, elementwise, warp_rows};
use crate::ops::TokenBuckets;

/// RoPE sizes: rot a multiple of hs, hs even and positive, rot <= W.
fn check_rope(w: usize, rot: usize, hs: usize) -> Result<()> {
    if hs == 0 || !hs.is_multiple_of(2) || !rot.is_multiple_of(hs) || rot > w {
        return Err(CudaError::Shape(format!(
            "RoPE: W = {w}, rot = {rot}, hs = {hs}: need hs even, hs | rot, rot <= W"
        )));
    }
    Ok(())
}

/// Grouped-query sizes: NKV > 0 divides NH.
fn check_kv(nh: usize, nkv: usize) -> Result<()> {
    if nkv == 0 || !nh.is_multiple_of(nkv) {
        return Err(CudaError::Shape(format!("NH = {nh}, NKV = {nkv}: need NKV > 0 dividing NH")));
    }
    Ok(())
}

impl Gpu {
    /// RMSNorm over rows of `c`: out (N, C) = x rrms w, rrms (N, f32) = 1 / sqrt(mean(x^2) + eps).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        rrms: &mut CudaSlice<f32>,
        inp: &CudaSlice<T>,
        w: &CudaSlice<T>,
        n: usize,
        c: usize,
        eps: f64,
    ) -> Result<()> {
        check_len("out", out.len(), n * c)?;
        check_len("inp", inp.len(), n * c)?;
        check_len("rrms", rrms.len(), n)?;
        check_len("w", w.len(), c)?;
        let (n32, c32) = (as_i32("n", n)?, as_i32("c", c)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("rmsnorm_forward"));
        launch.arg(out).arg(rrms).arg(inp).arg(w).arg(&n32).arg(&c32).arg(&eps);
        // SAFETY: matches `rmsnorm_forward_*` in kernels::RMSNORM (eps a double); one warp per row,
        // BLOCK a multiple of 32; lengths checked.
        unsafe { launch.launch(warp_rows(n)) }?;
        Ok(())
    }

    /// RMSNorm backward from dout, inp (N, C), w (C) and the forward's f32 rrms (N): dinp += (the
    /// residual stream), dw += (parameter gradient, column sums in 32-column tiles, deterministic).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaSlice<T>,
        dw: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        inp: &CudaSlice<T>,
        w: &CudaSlice<T>,
        rrms: &CudaSlice<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        for (name, len) in [("dinp", dinp.len()), ("dout", dout.len()), ("inp", inp.len())] {
            check_len(name, len, n * c)?;
        }
        check_len("dw", dw.len(), c)?;
        check_len("w", w.len(), c)?;
        check_len("rrms", rrms.len(), n)?;
        let (n32, c32) = (as_i32("n", n)?, as_i32("c", c)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("rmsnorm_backward_dinp"));
        launch.arg(dinp).arg(dout).arg(inp).arg(w).arg(rrms).arg(&n32).arg(&c32);
        // SAFETY: matches `rmsnorm_backward_dinp_*` in kernels::RMSNORM; one warp per row.
        unsafe { launch.launch(warp_rows(n)) }?;
        let cfg = column_tiles(c);
        let mut launch = self.stream().launch_builder(self.typed::<T>("rmsnorm_backward_dw"));
        launch.arg(dw).arg(dout).arg(inp).arg(rrms).arg(&n32).arg(&c32);
        // SAFETY: matches `rmsnorm_backward_dw_*`; 32-column tiles; lengths checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// RoPE (interleaved pairs) on the first `rot` columns (heads of `hs`) of each row of inp
    /// (B*T, W), row b*T + t at position pos0 + t; columns rot..W copied; out overwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        b: usize,
        t: usize,
        pos0: usize,
        w: usize,
        rot: usize,
        hs: usize,
        base: f64,
    ) -> Result<()> {
        self.rope(false, out, inp, b, t, pos0, w, rot, hs, base)
    }

    /// RoPE backward: dinp (B*T, W) = dout rotated by the negative angle (pass-through columns
    /// copied); overwritten.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        b: usize,
        t: usize,
        pos0: usize,
        w: usize,
        rot: usize,
        hs: usize,
        base: f64,
    ) -> Result<()> {
        self.rope(true, dinp, dout, b, t, pos0, w, rot, hs, base)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope<T: DeviceFloat>(
        &self,
        backward: bool,
        out: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        b: usize,
        t: usize,
        pos0: usize,
        w: usize,
        rot: usize,
        hs: usize,
        base: f64,
    ) -> Result<()> {
        check_rope(w, rot, hs)?;
        check_len("out", out.len(), b * t * w)?;
        check_len("inp", inp.len(), b * t * w)?;
        let rows = as_i32("B*T", b * t)?;
        let (t32, w32, rot32, hs32) = (as_i32("T", t.max(1))?, as_i32("W", w)?, as_i32("rot", rot)?, as_i32("hs", hs)?);
        // The largest position must fit the kernel's int arithmetic too.
        let p32 = as_i32("pos0 + T", pos0 + t).map(|_| pos0 as i32)?;
        let work = b * t * (rot / 2 + w - rot);
        let stem = if backward { "rope_backward" } else { "rope_forward" };
        let mut launch = self.stream().launch_builder(self.typed::<T>(stem));
        launch.arg(out).arg(inp).arg(&rows).arg(&t32).arg(&p32).arg(&w32).arg(&rot32).arg(&hs32).arg(&base);
        // SAFETY: matches `rope_{forward,backward}_*` in kernels::ROPE (base a double); grid-stride
        // over the pairs and copies; sizes and lengths checked.
        unsafe { launch.launch(elementwise(work)) }?;
        Ok(())
    }

    /// SwiGLU: out (N, H) = silu(gate) * up from inp (N, 2H) = [gate | up].
    pub fn swiglu_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        n: usize,
        h: usize,
    ) -> Result<()> {
        check_len("out", out.len(), n * h)?;
        check_len("inp", inp.len(), n * 2 * h)?;
        let (n32, h32) = (as_i32("n", n)?, as_i32("h", h)?);
        as_i32("N*2H", n * 2 * h)?;
        let mut launch = self.stream().launch_builder(self.typed::<T>("swiglu_forward"));
        launch.arg(out).arg(inp).arg(&n32).arg(&h32);
        // SAFETY: matches `swiglu_forward_*` in kernels::SWIGLU; lengths checked.
        unsafe { launch.launch(elementwise(n * h)) }?;
        Ok(())
    }

    /// SwiGLU backward: dinp (N, 2H) = [dgate | dup] overwritten, from inp (N, 2H) and dout (N, H).
    pub fn swiglu_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        dout: &CudaSlice<T>,
        n: usize,
        h: usize,
    ) -> Result<()> {
        check_len("dinp", dinp.len(), n * 2 * h)?;
        check_len("inp", inp.len(), n * 2 * h)?;
        check_len("dout", dout.len(), n * h)?;
        let (n32, h32) = (as_i32("n", n)?, as_i32("h", h)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("swiglu_backward"));
        launch.arg(dinp).arg(inp).arg(dout).arg(&n32).arg(&h32);
        // SAFETY: matches `swiglu_backward_*` in kernels::SWIGLU; lengths checked.
        unsafe { launch.launch(elementwise(n * h)) }?;
        Ok(())
    }

    /// Grouped-query to multi-head layout: inp (N, (NH + 2 NKV) hs) -> out (N, 3 NH hs), each kv head
    /// repeated NH/NKV times; out overwritten.
    pub fn repeat_kv_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        n: usize,
        nh: usize,
        nkv: usize,
        hs: usize,
    ) -> Result<()> {
        self.repeat_kv(false, out, inp, n, nh, nkv, hs)
    }

    /// repeat_kv backward: dinp (N, (NH + 2 NKV) hs) overwritten from dout (N, 3 NH hs): dq copied, each
    /// kv head's dk and dv summed over its NH/NKV repeats.
    pub fn repeat_kv_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        n: usize,
        nh: usize,
        nkv: usize,
        hs: usize,
    ) -> Result<()> {
        self.repeat_kv(true, dinp, dout, n, nh, nkv, hs)
    }

    /// Forward (out wide, inp narrow) or backward (out = dinp narrow, inp = dout wide).
    #[allow(clippy::too_many_arguments)]
    fn repeat_kv<T: DeviceFloat>(
        &self,
        backward: bool,
        out: &mut CudaSlice<T>,
        inp: &CudaSlice<T>,
        n: usize,
        nh: usize,
        nkv: usize,
        hs: usize,
    ) -> Result<()> {
        check_kv(nh, nkv)?;
        let (wide, narrow) = (n * 3 * nh * hs, n * (nh + 2 * nkv) * hs);
        // Forward: out is the wide (repeated) layout; backward: out is the narrow dinp.
        let (want_out, want_inp) = if backward { (narrow, wide) } else { (wide, narrow) };
        check_len("out", out.len(), want_out)?;
        check_len("inp", inp.len(), want_inp)?;
        as_i32("N*3C", wide)?;
        let dims = [as_i32("n", n)?, as_i32("NH", nh)?, as_i32("NKV", nkv)?, as_i32("hs", hs)?];
        let stem = if backward { "repeat_kv_backward" } else { "repeat_kv_forward" };
        let mut launch = self.stream().launch_builder(self.typed::<T>(stem));
        launch.arg(out).arg(inp).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
        // SAFETY: matches `repeat_kv_{forward,backward}_*` in kernels::REPEAT_KV (one thread per
        // output element, grid-stride); lengths checked.
        unsafe { launch.launch(elementwise(want_out)) }?;
        Ok(())
    }

    /// out (N, C) = wte[tokens] (no positions); `tokens` (N) on the device, wte (V, C).
    pub fn embed_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        tokens: &CudaSlice<u32>,
        wte: &CudaSlice<T>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check_len("out", out.len(), n * c)?;
        check_len("tokens", tokens.len(), n)?;
        if c == 0 || !wte.len().is_multiple_of(c) {
            return Err(CudaError::Shape(format!("wte has {} elements for C = {c}", wte.len())));
        }
        let (n32, c32) = (as_i32("n", n)?, as_i32("c", c)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("embed_forward"));
        launch.arg(out).arg(tokens).arg(wte).arg(&n32).arg(&c32);
        // SAFETY: matches `embed_forward_*` in kernels::EMBED; lengths checked. Token ids < V are the
        // caller's contract, as for `encoder_forward`.
        unsafe { launch.launch(elementwise(n * c)) }?;
        Ok(())
    }

    /// dwte[tokens] += dout (N, C), deterministic: the encoder's per-token sums over `buckets` (built
    /// from the N tokens). `encoder_backward` with B = N, T = 1 launches exactly that kernel plus its
    /// position-gradient kernel, which here sums all N rows into a throwaway (1, C) scratch: one extra
    /// read of dout, because the buckets' device buffers are private to `ops`.
    pub fn embed_backward<T: DeviceFloat + ValidAsZeroBits>(
        &self,
        dwte: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        buckets: &TokenBuckets,
        n: usize,
        c: usize,
    ) -> Result<()> {
        let mut scratch = self.stream().alloc_zeros::<T>(c.max(1))?;
        self.encoder_backward(dwte, &mut scratch, dout, buckets, n, 1, c)
    }
}
