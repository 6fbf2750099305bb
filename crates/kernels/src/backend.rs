//! The backend boundary: every operation a model step needs, over slices of the backend's element
//! type. Models are written once against `Backend`; `RefBackend<F>` runs the reference kernels in any
//! float (f64 for finite differences), `CpuBackend` the fast f32 kernels.
//!
//! A device backend keeps the same slices: it allocates the models' slabs from memory that host and
//! device both address (`Memory::allocator`, e.g. CUDA managed memory), so a slice's address is valid
//! in a kernel launch, and the host reads results only after `Memory::synchronize`. Such a backend
//! implements [`HostFallback`], whose every op defaults to the fast CPU kernel on the same memory
//! (after a synchronize), overrides the ops it has device kernels for, and gets `Backend` from
//! [`impl_backend_via_host_fallback!`]: the whole model runs, correct, from the first kernel on, and
//! gets faster op by op.

use std::marker::PhantomData;
use std::sync::Arc;

pub use octet_core::fp8::Fp8Format;
use octet_core::{Allocator, Float};

use crate::{cpu, reference};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step). The update
/// itself is `cpu::adamw_update` (f32) and `reference::adamw_update` (f64); `octet_optim` builds the
/// optimizers on them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// GPT-2/nanoGPT defaults: betas (0.9, 0.95), eps 1e-8, decay 0.1.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// How a linear GEMM operand is cast before the multiply (the precision levels' GEMM formats).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cast {
    /// Multiplied as it is.
    None,
    /// Rounded to bf16 (nearest even).
    Bf16,
    /// Quantised to FP8 at a power-of-two `scale`, saturating: the GEMM multiplies
    /// `decode(encode(x * scale)) / scale` (a tensor-core FP8 GEMM: codes + scale_inv pointer).
    Fp8 { format: Fp8Format, scale: f32 },
}

/// The three GEMMs of a linear layer `Y (N,OC) = X (N,IC) @ W^T + bias`, W (OC,IC), all row-major;
/// each is one `linear_gemm` call (one cuBLASLt matmul on a device):
///
/// | role         | out            | A         | B         |
/// | ------------ | -------------- | --------- | --------- |
/// | `Forward`    | Y (N,OC) =     | X (N,IC)  | W (OC,IC), as A @ B^T + bias |
/// | `DataGrad`   | dX (N,IC) =    | dY (N,OC) | W (OC,IC), as A @ B |
/// | `WeightGrad` | dW (OC,IC) +=  | dY (N,OC) | X (N,IC), as A^T @ B |
///
/// Activation gradients overwrite, parameter gradients accumulate (the crate's convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmRole {
    Forward,
    DataGrad,
    WeightGrad,
}

impl GemmRole {
    pub const ALL: [GemmRole; 3] = [GemmRole::Forward, GemmRole::DataGrad, GemmRole::WeightGrad];
    /// Elements of (A, B, out) for N rows.
    pub fn sizes(self, n: usize, ic: usize, oc: usize) -> (usize, usize, usize) {
        match self {
            GemmRole::Forward => (n * ic, oc * ic, n * oc),
            GemmRole::DataGrad => (n * oc, oc * ic, n * ic),
            GemmRole::WeightGrad => (n * oc, n * ic, oc * ic),
        }
    }
}

/// Where a backend's buffers live and how the host waits for its work.
pub trait Memory {
    /// The allocator for the models' slabs; None: the host heap.
    fn allocator(&self) -> Option<Arc<dyn Allocator>> {
        None
    }
    /// Wait until every queued operation has finished, so the host may read its outputs.
    fn synchronize(&self) {}
}

/// Calls `$callback! { [$extra] ops... }` with the list of every backend operation (one place; the
/// trait, the host fallback and device backends' delegating impls are all generated from it).
#[macro_export]
macro_rules! with_backend_ops {
    ($callback:path [$($extra:tt)*]) => {
        $callback! { [$($extra)*]
    /// out (B,T,C) = wte[tokens] + wpe[t].
    fn encoder_forward(out: &mut [Self::F], tokens: &[u32], wte: &[Self::F], wpe: &[Self::F], b: usize, t: usize, c: usize);
    /// dwte, dwpe += scatter of dout (B,T,C).
    fn encoder_backward(dwte: &mut [Self::F], dwpe: &mut [Self::F], dout: &[Self::F], tokens: &[u32], b: usize, t: usize, c: usize);
    /// LayerNorm (N,C), saving mean and rstd (N).
    fn layernorm_forward(out: &mut [Self::F], mean: &mut [Self::F], rstd: &mut [Self::F], inp: &[Self::F], w: &[Self::F], bias: &[Self::F], n: usize, c: usize);
    /// LayerNorm backward; dinp accumulates (residual stream).
    fn layernorm_backward(dinp: &mut [Self::F], dw: &mut [Self::F], db: &mut [Self::F], dout: &[Self::F], inp: &[Self::F], w: &[Self::F], mean: &[Self::F], rstd: &[Self::F], n: usize, c: usize);
    /// RMSNorm (N,C), saving 1/rms (N).
    fn rmsnorm_forward(out: &mut [Self::F], rrms: &mut [Self::F], inp: &[Self::F], w: &[Self::F], n: usize, c: usize, eps: f64);
    /// RMSNorm backward; dinp accumulates.
    fn rmsnorm_backward(dinp: &mut [Self::F], dw: &mut [Self::F], dout: &[Self::F], inp: &[Self::F], w: &[Self::F], rrms: &[Self::F], n: usize, c: usize);
    /// out (N,OC) = inp (N,IC) @ w^T + bias.
    fn matmul_forward(out: &mut [Self::F], inp: &[Self::F], w: &[Self::F], bias: Option<&[Self::F]>, n: usize, ic: usize, oc: usize);
    /// dinp = dout @ w; dw += dout^T inp; dbias += colsum dout.
    fn matmul_backward(dinp: &mut [Self::F], dw: &mut [Self::F], dbias: Option<&mut [Self::F]>, dout: &[Self::F], inp: &[Self::F], w: &[Self::F], n: usize, ic: usize, oc: usize);
    /// Causal multi-head attention over qkv (B,T,3C) -> out (B,T,C), saving lse (B,NH,T).
    fn attention_forward(out: &mut [Self::F], lse: &mut [Self::F], qkv: &[Self::F], b: usize, t: usize, c: usize, nh: usize);
    /// Attention backward; dqkv overwritten.
    fn attention_backward(dqkv: &mut [Self::F], dout: &[Self::F], qkv: &[Self::F], out: &[Self::F], lse: &[Self::F], b: usize, t: usize, c: usize, nh: usize);
    fn gelu_forward(out: &mut [Self::F], inp: &[Self::F]);
    fn gelu_backward(dinp: &mut [Self::F], inp: &[Self::F], dout: &[Self::F]);
    fn relu_forward(out: &mut [Self::F], inp: &[Self::F]);
    fn relu_backward(dinp: &mut [Self::F], inp: &[Self::F], dout: &[Self::F]);
    /// out (N,H) = silu(gate) * up with inp (N,2H) = [gate | up].
    fn swiglu_forward(out: &mut [Self::F], inp: &[Self::F], n: usize, h: usize);
    fn swiglu_backward(dinp: &mut [Self::F], inp: &[Self::F], dout: &[Self::F], n: usize, h: usize);
    fn residual_forward(out: &mut [Self::F], a: &[Self::F], b: &[Self::F]);
    /// Softmax + cross-entropy over V of Vp columns; logits become probabilities in place. A row whose
    /// target is `IGNORE_TARGET` gets loss 0 (masked cross-entropy).
    fn softmax_xent_forward(losses: &mut [Self::F], logits: &mut [Self::F], targets: &[u32], n: usize, v: usize, vp: usize);
    /// probs become dlogits = (probs - onehot) * dloss in place; rows with target `IGNORE_TARGET` become 0.
    fn softmax_xent_backward(probs: &mut [Self::F], targets: &[u32], dloss: f64, n: usize, v: usize, vp: usize);
    /// dbias (OC) += column sums of dout (N,OC).
    fn bias_backward(dbias: &mut [Self::F], dout: &[Self::F], n: usize, oc: usize);
    /// max |src| (NaN if any element is NaN).
    fn amax(src: &[Self::F]) -> f32;
    /// dst = src rounded to bf16 (nearest even), kept in the compute type: a bf16 GEMM operand.
    fn round_bf16(dst: &mut [Self::F], src: &[Self::F]);
    /// dst = decode(encode_saturating(src * scale)) / scale: the exact values an FP8 GEMM multiplies
    /// (scale is a power of two, so the division is exact). Returns max |src|.
    fn qdq_fp8(dst: &mut [Self::F], src: &[Self::F], format: $crate::backend::Fp8Format, scale: f32) -> f32;
    /// One GEMM of the precision levels' linear layer (FP8-LM's three roles, [`GemmRole`]), its
    /// operands A and B first cast as `cast_a` / `cast_b` say (none, bf16, FP8 format + scale) into
    /// the scratch `qa` / `qb` (what a CPU GEMM multiplies: the cast values, exactly; a device backend
    /// may keep casts in its own buffers). bias only with `Forward`. Returns max |A| and max |B| of the
    /// sources an FP8 cast read (the amaxes delayed scaling records), 0 for the other casts.
    #[allow(clippy::too_many_arguments)]
    fn linear_gemm(out: &mut [Self::F], qa: &mut [Self::F], qb: &mut [Self::F], a: &[Self::F], b: &[Self::F], bias: Option<&[Self::F]>, role: $crate::backend::GemmRole, cast_a: $crate::backend::Cast, cast_b: $crate::backend::Cast, n: usize, ic: usize, oc: usize) -> [f32; 2];
    /// out (N,C) = wte[tokens] (no positions: RoPE models).
    fn embed_forward(out: &mut [Self::F], tokens: &[u32], wte: &[Self::F], n: usize, c: usize);
    /// dwte[tokens] += dout (N,C).
    fn embed_backward(dwte: &mut [Self::F], dout: &[Self::F], tokens: &[u32], n: usize, c: usize);
    /// RoPE, interleaved pairs, on the first `rot` columns (heads of `hs`) of each row of inp (B,T,W),
    /// row t at position pos0 + t; columns rot..W pass through.
    fn rope_forward(out: &mut [Self::F], inp: &[Self::F], b: usize, t: usize, pos0: usize, w: usize, rot: usize, hs: usize, base: f64);
    /// RoPE backward (rotation by the negative angle); dinp overwritten.
    fn rope_backward(dinp: &mut [Self::F], dout: &[Self::F], b: usize, t: usize, pos0: usize, w: usize, rot: usize, hs: usize, base: f64);
    /// inp (N, (NH + 2 NKV) hs) = [q | k | v] -> out (N, 3 NH hs), each kv head repeated NH/NKV times.
    fn repeat_kv_forward(out: &mut [Self::F], inp: &[Self::F], n: usize, nh: usize, nkv: usize, hs: usize);
    /// Backward of repeat_kv_forward: dk, dv summed over the repeats; dinp overwritten.
    fn repeat_kv_backward(dinp: &mut [Self::F], dout: &[Self::F], n: usize, nh: usize, nkv: usize, hs: usize);
    /// inp (N, (NH + NKV) hs) = [q | k] -> out (N, 2 NH hs), each k head repeated NH/NKV times (the
    /// shaped blocks' grouped-query keys; their values are the block input).
    fn repeat_k_forward(out: &mut [Self::F], inp: &[Self::F], n: usize, nh: usize, nkv: usize, hs: usize);
    /// Backward of repeat_k_forward: dk summed over the repeats; dinp overwritten.
    fn repeat_k_backward(dinp: &mut [Self::F], dout: &[Self::F], n: usize, nh: usize, nkv: usize, hs: usize);
    /// Inference attention of Tq new queries (rows of stride ldq) against cached k, v (Tk, NKV hs) of
    /// positions 0..Tk (new ones included) -> out (Tq, NH hs); grouped-query, causal, one sequence.
    fn attention_kv_forward(out: &mut [Self::F], q: &[Self::F], k: &[Self::F], v: &[Self::F], tq: usize, tk: usize, ldq: usize, nh: usize, nkv: usize, hs: usize);
    /// Shaped attention: out (B,T,C) = (alpha_h I + beta_h softmax(q k^T / sqrt(hs) + M) - gamma_h C) v per
    /// head h, qk (B,T,2C) = [q | k], v (B,T,C), alpha/beta/gamma (NH); saves lse (B,NH,T).
    fn shaped_attention_forward(out: &mut [Self::F], lse: &mut [Self::F], qk: &[Self::F], v: &[Self::F], alpha: &[Self::F], beta: &[Self::F], gamma: &[Self::F], b: usize, t: usize, c: usize, nh: usize);
    /// Shaped attention backward: dqk, dv overwritten; dalpha, dbeta, dgamma (NH) accumulate.
    #[allow(clippy::too_many_arguments)]
    fn shaped_attention_backward(dqk: &mut [Self::F], dv: &mut [Self::F], dalpha: &mut [Self::F], dbeta: &mut [Self::F], dgamma: &mut [Self::F], dout: &[Self::F], qk: &[Self::F], v: &[Self::F], lse: &[Self::F], alpha: &[Self::F], beta: &[Self::F], gamma: &[Self::F], b: usize, t: usize, c: usize, nh: usize);
    /// out = g[0] inp (a trainable scalar gain, g a one-element parameter slice).
    fn scale_forward(out: &mut [Self::F], inp: &[Self::F], g: &[Self::F]);
    /// dinp = g[0] dout (overwrite); dg[0] += <dout, inp>.
    fn scale_backward(dinp: &mut [Self::F], dg: &mut [Self::F], dout: &[Self::F], inp: &[Self::F], g: &[Self::F]);
    /// out = a[0] x + b[0] y.
    fn scale_add_forward(out: &mut [Self::F], x: &[Self::F], y: &[Self::F], a: &[Self::F], b: &[Self::F]);
    /// dx = a[0] dout, dy = b[0] dout (overwrite); da[0] += <dout, x>, db[0] += <dout, y>.
    fn scale_add_backward(dx: &mut [Self::F], dy: &mut [Self::F], da: &mut [Self::F], db: &mut [Self::F], dout: &[Self::F], x: &[Self::F], y: &[Self::F], a: &[Self::F], b: &[Self::F]);
    /// acc += x.
    fn accumulate(acc: &mut [Self::F], x: &[Self::F]);
    /// x = 0 (gradients before a backward, the residual stream's gradient).
    fn zero(x: &mut [Self::F]);
    /// ||x||_2 accumulated in f64 (the global gradient norm of clipping).
    fn global_norm(x: &[Self::F]) -> f64;
    /// x *= s.
    fn scale_in_place(x: &mut [Self::F], s: f32);
    /// One AdamW update at step t >= 1 of one tensor's p, m, v from its gradient g (in place), as
    /// `cpu::adamw_update` (decay: apply the configured weight decay).
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(p: &mut [Self::F], g: &[Self::F], m: &mut [Self::F], v: &mut [Self::F], t: u64, lr: f64, cfg: &$crate::backend::AdamWConfig, decay: bool);
        }
    };
}

macro_rules! define_backend {
    ([] $($(#[$m:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        /// Operations of a training step; argument order: outputs, saved, inputs, dimensions.
        pub trait Backend: Memory + Send + Sync {
            type F: Float;
            fn name(&self) -> &'static str;
            $($(#[$m])* fn $name(&self, $($arg: $ty),*) $(-> $ret)?;)*
        }
        impl<F: Float> Backend for RefBackend<F> {
            type F = F;
            fn name(&self) -> &'static str { "reference" }
            $(fn $name(&self, $($arg: $ty),*) $(-> $ret)? { reference::$name($($arg),*) })*
        }
        impl Backend for CpuBackend {
            type F = f32;
            fn name(&self) -> &'static str { "cpu" }
            $(fn $name(&self, $($arg: $ty),*) $(-> $ret)? { cpu::$name($($arg),*) })*
        }
        /// Every op as the fast CPU kernel on host-addressable memory, after `synchronize`: the
        /// defaults of a device backend (see the module doc), which overrides what it runs on the
        /// device. Only for f32 backends whose slabs the host can address.
        #[allow(clippy::too_many_arguments)]
        pub trait HostFallback: Backend<F = f32> {
            $(fn $name(&self, $($arg: $ty),*) $(-> $ret)? {
                self.synchronize();
                cpu::$name($($arg),*)
            })*
        }
    };
}

/// `impl Backend for $ty` (element f32, name `$name`) delegating every op to its `HostFallback` impl.
#[macro_export]
macro_rules! impl_backend_via_host_fallback {
    ($ty:ty, $name:expr) => {
        $crate::with_backend_ops!($crate::__delegate_to_host_fallback [$ty, $name]);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __delegate_to_host_fallback {
    ([$ty:ty, $bname:expr] $($(#[$m:meta])* fn $name:ident($($arg:ident : $t:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        impl $crate::Backend for $ty {
            type F = f32;
            fn name(&self) -> &'static str { $bname }
            $(fn $name(&self, $($arg: $t),*) $(-> $ret)? { <$ty as $crate::backend::HostFallback>::$name(self, $($arg),*) })*
        }
    };
}

with_backend_ops!(define_backend[]);

/// Naive reference kernels in `F` (f64 accumulation): the spec, and the f64 path for gradient checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct RefBackend<F>(PhantomData<F>);

impl<F> RefBackend<F> {
    pub fn new() -> Self {
        RefBackend(PhantomData)
    }
}

/// Fast f32 kernels on the CPU (gemm + rayon).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl<F> Memory for RefBackend<F> {}
impl Memory for CpuBackend {}
