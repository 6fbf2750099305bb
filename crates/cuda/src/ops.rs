//! Launch wrappers for the rest of the GPT-2 step (feature `cuda`): encoder, LayerNorm backward,
//! attention, softmax + cross-entropy, amax, FP8 quantise-dequantise and casts. Each wraps the kernels of the same name in
//! [`crate::kernels`]; see there for the formulas and launch shapes. Same conventions as
//! [`crate::Gpu`]'s other wrappers: outputs, saved values, inputs, sizes; lengths checked before the
//! (asynchronous) launch; saved statistics (mean, rstd, lse) and losses are always f32.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use crate::device::{
    BLOCK, CudaError, DeviceFloat, Gpu, Result, as_i32, attention_tiles, check_len, column_tiles, elementwise,
    warp_rows,
};

/// Largest head size the attention kernels hold in registers (32 lanes x `OCTET_ATTN_REGS`).
pub const MAX_HEAD_SIZE: usize = 256;

/// The rows of a (B, T) token batch grouped by token, on the device: what the deterministic
/// `encoder_backward` needs to sum each token's rows without atomics. Built on the host from the
/// token ids (a counting sort, O(B*T)), uploaded once per batch.
pub struct TokenBuckets {
    /// `positions[starts[u]..starts[u + 1]]`: rows of token `ids[u]`, ascending (nbuckets + 1).
    starts: CudaSlice<i32>,
    /// Row indices b*T + t grouped by token (B*T).
    positions: CudaSlice<i32>,
    /// The distinct tokens, ascending (nbuckets).
    ids: CudaSlice<u32>,
    nbuckets: usize,
    rows: usize,
}

impl TokenBuckets {
    /// Groups `tokens` (B*T, row-major) by id and uploads the grouping.
    pub fn new(gpu: &Gpu, tokens: &[u32]) -> Result<Self> {
        let rows = tokens.len();
        as_i32("B*T", rows)?;
        let mut order: Vec<i32> = (0..rows as i32).collect();
        order.sort_by_key(|&r| tokens[r as usize]); // stable: rows of a token stay ascending
        let (mut starts, mut ids) = (Vec::new(), Vec::new());
        for (k, &r) in order.iter().enumerate() {
            let tok = tokens[r as usize];
            if ids.last() != Some(&tok) {
                ids.push(tok);
                starts.push(k as i32);
            }
        }
        starts.push(rows as i32);
        let s = gpu.stream();
        let nbuckets = ids.len();
        // Empty batches still get one-element buffers (cudarc cannot copy zero-length slices).
        ids.push(0);
        Ok(TokenBuckets {
            starts: s.clone_htod(&starts)?,
            positions: s.clone_htod(if order.is_empty() { &[0][..] } else { &order })?,
            ids: s.clone_htod(&ids)?,
            nbuckets,
            rows,
        })
    }

    /// Number of distinct tokens.
    pub fn len(&self) -> usize {
        self.nbuckets
    }

    pub fn is_empty(&self) -> bool {
        self.nbuckets == 0
    }
}

/// Threads per block of the row-wise softmax kernels (one block per row).
const ROW_BLOCK: u32 = 512;

/// Largest head size of the tiled attention kernels (`OCTET_TILE_HS` in kernels::ATTENTION_TILED).
pub const TILED_MAX_HEAD_SIZE: usize = 128;

/// Which attention kernels run: `Rows` (kernels::ATTENTION, one warp per row, K/V read from global
/// memory per row) or `Tiled` (kernels::ATTENTION_TILED, 32-row tiles through shared memory, results
/// bit-identical). Both stay selectable so one GPU run can compare them; `Tiled` falls back to `Rows`
/// for heads over [`TILED_MAX_HEAD_SIZE`] or more than 65535 (batch, head) pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    Rows,
    Tiled,
}

impl AttentionKernel {
    /// From `OCTET_CUDA_ATTENTION` (`rows` or `tiled`; read once per process). Default `Rows`, the
    /// kernels the device tests have always checked, until a GPU run has timed both.
    pub fn from_env() -> Self {
        static KIND: std::sync::OnceLock<AttentionKernel> = std::sync::OnceLock::new();
        *KIND.get_or_init(|| match std::env::var("OCTET_CUDA_ATTENTION").as_deref() {
            Ok("tiled") => AttentionKernel::Tiled,
            _ => AttentionKernel::Rows,
        })
    }

    /// Whether the tiled kernels run for these sizes.
    pub fn runs_tiled(self, b: usize, _t: usize, c: usize, nh: usize) -> bool {
        self == AttentionKernel::Tiled && c / nh <= TILED_MAX_HEAD_SIZE && b * nh <= 65_535
    }
}

/// Checks the attention sizes: C divisible by NH, head size at most [`MAX_HEAD_SIZE`].
fn check_heads(c: usize, nh: usize) -> Result<()> {
    if nh == 0 || !c.is_multiple_of(nh) || c / nh > MAX_HEAD_SIZE {
        return Err(CudaError::Shape(format!(
            "C = {c} with NH = {nh}: need C % NH == 0 and C / NH <= {MAX_HEAD_SIZE}"
        )));
    }
    Ok(())
}

impl Gpu {
    /// out (B*T, C) = wte[tokens] + wpe[t]; `tokens` (B*T) on the device, wte (V, C), wpe (>= T, C).
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        tokens: &CudaSlice<u32>,
        wte: &CudaSlice<T>,
        wpe: &CudaSlice<T>,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        check_len("out", out.len(), b * t * c)?;
        check_len("tokens", tokens.len(), b * t)?;
        if wpe.len() < t * c || !wte.len().is_multiple_of(c) {
            return Err(CudaError::Shape(format!(
                "wte {} / wpe {} elements for T = {t}, C = {c}",
                wte.len(),
                wpe.len()
            )));
        }
        let (bt, t32, c32) = (as_i32("B*T", b * t)?, as_i32("T", t)?, as_i32("C", c)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("encoder_forward"));
        launch.arg(out).arg(tokens).arg(wte).arg(wpe).arg(&bt).arg(&t32).arg(&c32);
        // SAFETY: matches `encoder_forward_*` in kernels::ENCODER; lengths checked. Token ids are not
        // checked against V here (that would need a device reduction): the caller's tokenizer bounds
        // them, as on the CPU, where an out-of-range id panics.
        unsafe { launch.launch(elementwise(b * t * c)) }?;
        Ok(())
    }

    /// dwte[tokens] += dout rows, dwpe[t] += sum over the batch of dout (B*T, C); deterministic.
    #[allow(clippy::too_many_arguments)]
    pub fn encoder_backward<T: DeviceFloat>(
        &self,
        dwte: &mut CudaSlice<T>,
        dwpe: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        buckets: &TokenBuckets,
        b: usize,
        t: usize,
        c: usize,
    ) -> Result<()> {
        check_len("dout", dout.len(), b * t * c)?;
        check_len("token buckets", buckets.rows, b * t)?;
        if dwpe.len() < t * c || !dwte.len().is_multiple_of(c) {
            return Err(CudaError::Shape(format!(
                "dwte {} / dwpe {} elements for T = {t}, C = {c}",
                dwte.len(),
                dwpe.len()
            )));
        }
        let (b32, t32, c32) = (as_i32("B", b)?, as_i32("T", t)?, as_i32("C", c)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("encoder_backward_wpe"));
        launch.arg(&mut *dwpe).arg(dout).arg(&b32).arg(&t32).arg(&c32);
        // SAFETY: matches `encoder_backward_wpe_*`; lengths checked.
        unsafe { launch.launch(elementwise(t * c)) }?;
        if buckets.nbuckets == 0 {
            return Ok(());
        }
        let nb = as_i32("buckets", buckets.nbuckets)?;
        let cfg = LaunchConfig {
            grid_dim: ((c as u32).div_ceil(BLOCK), buckets.nbuckets.min(65_535) as u32, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream().launch_builder(self.typed::<T>("encoder_backward_wte"));
        launch.arg(dwte).arg(dout).arg(&buckets.starts).arg(&buckets.positions).arg(&buckets.ids).arg(&nb).arg(&c32);
        // SAFETY: matches `encoder_backward_wte_*`; the buckets index rows < B*T (built from B*T
        // tokens); token ids index dwte rows (the caller's vocabulary bound, as in the forward).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// LayerNorm backward: dinp += (accumulates), dw += and db += (parameter gradients), from
    /// dout, inp (N, C), w (C) and the forward's f32 mean, rstd (N).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_backward<T: DeviceFloat>(
        &self,
        dinp: &mut CudaSlice<T>,
        dw: &mut CudaSlice<T>,
        db: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        inp: &CudaSlice<T>,
        w: &CudaSlice<T>,
        mean: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        for (name, len) in [("dinp", dinp.len()), ("dout", dout.len()), ("inp", inp.len())] {
            check_len(name, len, n * c)?;
        }
        for (name, len) in [("dw", dw.len()), ("db", db.len()), ("w", w.len())] {
            check_len(name, len, c)?;
        }
        check_len("mean", mean.len(), n)?;
        check_len("rstd", rstd.len(), n)?;
        let (n32, c32) = (as_i32("n", n)?, as_i32("c", c)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("layernorm_backward_dinp"));
        launch.arg(dinp).arg(dout).arg(inp).arg(w).arg(mean).arg(rstd).arg(&n32).arg(&c32);
        // SAFETY: matches `layernorm_backward_dinp_*` in kernels::LAYERNORM_BACKWARD; one warp per row.
        unsafe { launch.launch(warp_rows(n)) }?;
        let cfg = column_tiles(c);
        let mut launch = self.stream().launch_builder(self.typed::<T>("layernorm_backward_dwdb"));
        launch.arg(dw).arg(db).arg(dout).arg(inp).arg(mean).arg(rstd).arg(&n32).arg(&c32);
        // SAFETY: matches `layernorm_backward_dwdb_*`; 32-column tiles; lengths checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Causal attention: out (B, T, C) and f32 lse (B, NH, T) from qkv (B, T, 3C), with the kernels
    /// `AttentionKernel::from_env` selects.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward<T: DeviceFloat>(
        &self,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
        qkv: &CudaSlice<T>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        self.attention_forward_with(AttentionKernel::from_env(), out, lse, qkv, b, t, c, nh)
    }

    /// `attention_forward` with the given kernels (`Tiled` falls back to `Rows` where it cannot run).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward_with<T: DeviceFloat>(
        &self,
        kernel: AttentionKernel,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
        qkv: &CudaSlice<T>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        check_heads(c, nh)?;
        check_len("out", out.len(), b * t * c)?;
        check_len("lse", lse.len(), b * nh * t)?;
        check_len("qkv", qkv.len(), b * t * 3 * c)?;
        let dims = [as_i32("B", b)?, as_i32("T", t)?, as_i32("C", c)?, as_i32("NH", nh)?];
        as_i32("B*T*3C", b * t * 3 * c)?;
        let tiled = kernel.runs_tiled(b, t, c, nh);
        let stem = if tiled { "attention_tiled_forward" } else { "attention_forward" };
        let mut launch = self.stream().launch_builder(self.typed::<T>(stem));
        launch.arg(out).arg(lse).arg(qkv).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
        let cfg = if tiled { attention_tiles(t, b * nh) } else { warp_rows(b * nh * t) };
        // SAFETY: matches `attention_forward_*` in kernels::ATTENTION (one warp per (b, h, t) row;
        // hs <= MAX_HEAD_SIZE, checked) or `attention_tiled_forward_*` in kernels::ATTENTION_TILED
        // (grid (T/32, B NH), 128 threads; hs <= TILED_MAX_HEAD_SIZE, checked by runs_tiled).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Attention backward: dqkv (B, T, 3C) overwritten, from dout, out (B, T, C), qkv and the
    /// forward's lse. Allocates a (B, NH, T) f32 scratch for D = rowsum(dout * out) per head.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward<T: DeviceFloat>(
        &self,
        dqkv: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        qkv: &CudaSlice<T>,
        out: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        self.attention_backward_with(AttentionKernel::from_env(), dqkv, dout, qkv, out, lse, b, t, c, nh)
    }

    /// `attention_backward` with the given kernels (`Tiled` falls back to `Rows` where it cannot run).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_with<T: DeviceFloat>(
        &self,
        kernel: AttentionKernel,
        dqkv: &mut CudaSlice<T>,
        dout: &CudaSlice<T>,
        qkv: &CudaSlice<T>,
        out: &CudaSlice<T>,
        lse: &CudaSlice<f32>,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<()> {
        check_heads(c, nh)?;
        check_len("dqkv", dqkv.len(), b * t * 3 * c)?;
        check_len("qkv", qkv.len(), b * t * 3 * c)?;
        check_len("dout", dout.len(), b * t * c)?;
        check_len("out", out.len(), b * t * c)?;
        check_len("lse", lse.len(), b * nh * t)?;
        let rows = b * nh * t;
        let dims = [as_i32("B", b)?, as_i32("T", t)?, as_i32("C", c)?, as_i32("NH", nh)?];
        as_i32("B*T*3C", b * t * 3 * c)?;
        let mut delta = self.stream().alloc_zeros::<f32>(rows.max(1))?;
        let mut launch = self.stream().launch_builder(self.typed::<T>("attention_backward_delta"));
        launch.arg(&mut delta).arg(dout).arg(out).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
        // SAFETY: matches `attention_backward_delta_*`; delta holds B*NH*T; lengths checked.
        unsafe { launch.launch(warp_rows(rows)) }?;
        let tiled = kernel.runs_tiled(b, t, c, nh);
        let (stems, cfg) = if tiled {
            (["attention_tiled_backward_dq", "attention_tiled_backward_dkv"], attention_tiles(t, b * nh))
        } else {
            (["attention_backward_dq", "attention_backward_dkv"], warp_rows(rows))
        };
        for stem in stems {
            let mut launch = self.stream().launch_builder(self.typed::<T>(stem));
            launch.arg(&mut *dqkv).arg(dout).arg(qkv).arg(lse).arg(&delta);
            launch.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
            // SAFETY: matches `attention_backward_{dq,dkv}_*` (kernels::ATTENTION) or their tiled
            // twins (kernels::ATTENTION_TILED, hs checked by runs_tiled): the first writes only the q
            // part, the second only the k and v parts of dqkv; both read only the inputs. Lengths checked.
            unsafe { launch.launch(cfg) }?;
        }
        Ok(())
    }

    /// Softmax + cross-entropy over the first V of Vp columns: logits (N, Vp) become probabilities
    /// in place (padded columns zero), losses (N, f32) the per-row losses; `targets` (N) < V.
    pub fn softmax_xent_forward<T: DeviceFloat>(
        &self,
        losses: &mut CudaSlice<f32>,
        logits: &mut CudaSlice<T>,
        targets: &CudaSlice<u32>,
        n: usize,
        v: usize,
        vp: usize,
    ) -> Result<()> {
        check_len("losses", losses.len(), n)?;
        check_len("logits", logits.len(), n * vp)?;
        check_len("targets", targets.len(), n)?;
        if v == 0 || v > vp {
            return Err(CudaError::Shape(format!("V = {v} must be in 1..={vp} (Vp)")));
        }
        let (n32, v32, vp32) = (as_i32("n", n)?, as_i32("v", v)?, as_i32("vp", vp)?);
        let cfg = LaunchConfig {
            grid_dim: (n.clamp(1, i32::MAX as usize) as u32, 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream().launch_builder(self.typed::<T>("softmax_xent_forward"));
        launch.arg(losses).arg(logits).arg(targets).arg(&n32).arg(&v32).arg(&vp32);
        // SAFETY: matches `softmax_xent_forward_*` in kernels::SOFTMAX_XENT (block per row, block size
        // a multiple of 32 up to 1024); lengths checked; targets < V is the caller's contract.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The fused classifier: losses (N, f32) and, in place, logits (N, Vp) become dlogits =
    /// (softmax - onehot) * dloss (padded columns zero) in one pass; a target >= V masks its row
    /// (loss 0, dlogits 0).
    #[allow(clippy::too_many_arguments)]
    pub fn classifier<T: DeviceFloat>(
        &self,
        losses: &mut CudaSlice<f32>,
        logits: &mut CudaSlice<T>,
        targets: &CudaSlice<u32>,
        dloss: f32,
        n: usize,
        v: usize,
        vp: usize,
    ) -> Result<()> {
        check_len("losses", losses.len(), n)?;
        check_len("logits", logits.len(), n * vp)?;
        check_len("targets", targets.len(), n)?;
        if v == 0 || v > vp {
            return Err(CudaError::Shape(format!("V = {v} must be in 1..={vp} (Vp)")));
        }
        let (n32, v32, vp32) = (as_i32("n", n)?, as_i32("v", v)?, as_i32("vp", vp)?);
        let cfg = LaunchConfig {
            grid_dim: (n.clamp(1, i32::MAX as usize) as u32, 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream().launch_builder(self.typed::<T>("classifier"));
        launch.arg(losses).arg(logits).arg(targets).arg(&dloss).arg(&n32).arg(&v32).arg(&vp32);
        // SAFETY: matches `classifier_*` in kernels::SOFTMAX_XENT (block per row, block size a
        // multiple of 32 up to 1024); lengths checked; any target value is safe (>= V masks).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// probs (N, Vp) become dlogits = (probs - onehot) * dloss over the first V columns, in place.
    pub fn softmax_xent_backward<T: DeviceFloat>(
        &self,
        probs: &mut CudaSlice<T>,
        targets: &CudaSlice<u32>,
        dloss: f32,
        n: usize,
        v: usize,
        vp: usize,
    ) -> Result<()> {
        check_len("probs", probs.len(), n * vp)?;
        check_len("targets", targets.len(), n)?;
        let (n32, v32, vp32) = (as_i32("n", n)?, as_i32("v", v)?, as_i32("vp", vp)?);
        let mut launch = self.stream().launch_builder(self.typed::<T>("softmax_xent_backward"));
        launch.arg(probs).arg(targets).arg(&dloss).arg(&n32).arg(&v32).arg(&vp32);
        // SAFETY: matches `softmax_xent_backward_*`; lengths checked.
        unsafe { launch.launch(elementwise(n * vp)) }?;
        Ok(())
    }

    /// `amax = max(amax, max |inp|)` as f32 bits (NaN above inf; zero `amax` first for a fresh
    /// maximum, read with `f32::from_bits`). Stays on the device: the FP8 scale of the next cast can
    /// be computed there without a host sync.
    pub fn amax<T: DeviceFloat>(&self, amax: &mut CudaSlice<u32>, inp: &CudaSlice<T>) -> Result<()> {
        check_len("amax", amax.len(), 1)?;
        let n64 = inp.len() as i64;
        let mut launch = self.stream().launch_builder(self.typed::<T>("amax"));
        launch.arg(amax).arg(inp).arg(&n64);
        // SAFETY: matches `amax_*` in kernels::CAST; block size a multiple of 32.
        unsafe { launch.launch(elementwise(inp.len())) }?;
        Ok(())
    }

    /// out = decode(fp8(inp * scale)) / scale in `format` (saturating), the values an FP8 GEMM
    /// multiplies (`Backend::qdq_fp8`), and `amax = max(amax, max |inp|)` as f32 bits (zero it first).
    pub fn qdq_fp8<T: DeviceFloat>(
        &self,
        format: octet_core::fp8::Fp8Format,
        out: &mut CudaSlice<T>,
        amax: &mut CudaSlice<u32>,
        inp: &CudaSlice<T>,
        scale: f32,
    ) -> Result<()> {
        check_len("out", out.len(), inp.len())?;
        check_len("amax", amax.len(), 1)?;
        let stem = match format {
            octet_core::fp8::Fp8Format::E4M3 => "qdq_e4m3",
            octet_core::fp8::Fp8Format::E5M2 => "qdq_e5m2",
        };
        let n64 = inp.len() as i64;
        let mut launch = self.stream().launch_builder(self.typed::<T>(stem));
        launch.arg(out).arg(amax).arg(inp).arg(&scale).arg(&n64);
        // SAFETY: matches `qdq_*` in kernels::QDQ; lengths checked; block size a multiple of 32.
        unsafe { launch.launch(elementwise(inp.len())) }?;
        Ok(())
    }

    /// out = bf16(inp), round to nearest even.
    pub fn cast_f32_to_bf16(&self, out: &mut CudaSlice<half::bf16>, inp: &CudaSlice<f32>) -> Result<()> {
        check_len("out", out.len(), inp.len())?;
        let n64 = inp.len() as i64;
        let mut launch = self.stream().launch_builder(self.function("cast_f32_to_bf16"));
        launch.arg(out).arg(inp).arg(&n64);
        // SAFETY: matches `cast_f32_to_bf16`; lengths checked.
        unsafe { launch.launch(elementwise(inp.len())) }?;
        Ok(())
    }

    /// out = inp rounded to bf16 and kept in f32 (`Backend::round_bf16`).
    pub fn round_bf16(&self, out: &mut CudaSlice<f32>, inp: &CudaSlice<f32>) -> Result<()> {
        check_len("out", out.len(), inp.len())?;
        let n64 = inp.len() as i64;
        let mut launch = self.stream().launch_builder(self.function("round_bf16_f32"));
        launch.arg(out).arg(inp).arg(&n64);
        // SAFETY: matches `round_bf16_f32`; lengths checked.
        unsafe { launch.launch(elementwise(inp.len())) }?;
        Ok(())
    }
}
