//! The device-backend path on the CPU: a backend whose slabs come from its own allocator (standing in
//! for CUDA managed memory), that overrides one op and takes the host fallback for the rest, runs
//! GPT-2, the simplified blocks and Llama at fp32 and at fp8-o2 with results bit-identical to
//! `CpuBackend`, allocating every model buffer from its memory and synchronising before the host
//! touches it.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use octet_core::scaling::Recipe;
use octet_core::{Allocator, Result, Rng};
use octet_kernels::{CpuBackend, HostFallback, Memory, impl_backend_via_host_fallback};
use octet_lm::blocks::{BlockKind, BlocksConfig, BlocksLm};
use octet_lm::gpt2::{Gpt2, Gpt2Config};
use octet_lm::llama::{Llama, LlamaConfig};
use octet_lm::model::LanguageModel;
use octet_lm::precision::Precision;
use octet_lm::step::{GradScaler, Optimizer, train_step};

/// Host memory behind a separate allocator that counts its live bytes.
#[derive(Debug, Default)]
struct Pool {
    live: AtomicUsize,
    allocations: AtomicUsize,
}

impl Allocator for Pool {
    fn name(&self) -> &'static str {
        "test-pool"
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<NonNull<u8>> {
        self.live.fetch_add(bytes, Ordering::SeqCst);
        self.allocations.fetch_add(1, Ordering::SeqCst);
        let layout = std::alloc::Layout::from_size_align(bytes, 256).unwrap();
        // SAFETY: bytes > 0 by the trait's contract.
        Ok(NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).expect("test allocation"))
    }
    unsafe fn free(&self, ptr: NonNull<u8>, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::SeqCst);
        // SAFETY: allocated above with this size and alignment.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), std::alloc::Layout::from_size_align(bytes, 256).unwrap()) };
    }
}

/// The stand-in device: its own memory, a synchronize counter, one op of its own (`residual_forward`,
/// as a device kernel would be), every other op the host fallback.
#[derive(Clone)]
struct FakeDevice {
    pool: Arc<Pool>,
    syncs: Arc<AtomicUsize>,
    own_ops: Arc<AtomicUsize>,
}

impl FakeDevice {
    fn new() -> Self {
        FakeDevice { pool: Arc::default(), syncs: Arc::default(), own_ops: Arc::default() }
    }
}

impl Memory for FakeDevice {
    fn allocator(&self) -> Option<Arc<dyn Allocator>> {
        Some(self.pool.clone())
    }
    fn synchronize(&self) {
        self.syncs.fetch_add(1, Ordering::SeqCst);
    }
}

impl HostFallback for FakeDevice {
    fn residual_forward(&self, out: &mut [f32], a: &[f32], b: &[f32]) {
        self.own_ops.fetch_add(1, Ordering::SeqCst);
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
    }
}

impl_backend_via_host_fallback!(FakeDevice, "fake-device");

fn tokens(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Three training steps of `a` (on the fake device) and `b` (on the CPU): equal losses, equal
/// weights after.
fn same_training(mut a: Box<dyn Trainable>, mut b: Box<dyn Trainable>, vocab: usize, what: &str) {
    let (bs, t) = (2, 8);
    let (x, y) = (tokens(vocab, bs * t, 1), tokens(vocab, bs * t, 2));
    let mut oa = Optimizer::for_model(a.lm(), Default::default());
    let mut ob = Optimizer::for_model(b.lm(), Default::default());
    let (mut sa, mut sb) = (GradScaler::default(), GradScaler::default());
    for step in 0..3 {
        let la = train_step(a.lm_mut(), &mut oa, &mut sa, &x, &y, bs, t, 1.0, 1e-3).unwrap();
        let lb = train_step(b.lm_mut(), &mut ob, &mut sb, &x, &y, bs, t, 1.0, 1e-3).unwrap();
        assert_eq!(la, lb, "{what}: step {step}");
    }
    assert_eq!(a.weights(), b.weights(), "{what}: weights after training");
}

/// What the comparison needs of a model on either backend.
trait Trainable {
    fn lm(&self) -> &dyn LanguageModel;
    fn lm_mut(&mut self) -> &mut dyn LanguageModel;
    fn weights(&self) -> Vec<f32>;
}

macro_rules! trainable {
    ($($ty:ty),*) => {$(
        impl Trainable for $ty {
            fn lm(&self) -> &dyn LanguageModel { self }
            fn lm_mut(&mut self) -> &mut dyn LanguageModel { self }
            fn weights(&self) -> Vec<f32> {
                match LanguageModel::narrow(self) {
                    Some(nw) => nw.weights_f32(),
                    None => self.params.data.to_vec(),
                }
            }
        }
    )*};
}
trainable!(
    Gpt2<FakeDevice>,
    Gpt2<CpuBackend>,
    BlocksLm<FakeDevice>,
    BlocksLm<CpuBackend>,
    Llama<FakeDevice>,
    Llama<CpuBackend>
);

#[test]
fn models_on_a_fallback_device_backend_train_bit_identically_in_its_memory() {
    let r = Recipe::default();
    for p in [Precision::Fp32, Precision::Fp8O2] {
        let dev = FakeDevice::new();
        // GPT-2.
        let c = Gpt2Config::tiny();
        let params = octet_lm::gpt2::init_params(&c, &octet_lm::gpt2::param_layout(&c), 3);
        let a = Gpt2::new(c, dev.clone(), params.clone()).unwrap().with_precision(p, &r).unwrap();
        let b = Gpt2::new(c, CpuBackend, params).unwrap().with_precision(p, &r).unwrap();
        assert_eq!(a.params.data.memory(), "test-pool");
        same_training(Box::new(a), Box::new(b), c.vocab_size, &format!("gpt2 {p}"));
        // SAS-P.
        let c = BlocksConfig::tiny(BlockKind::SasP);
        let params = octet_lm::blocks::init_params(&c, &octet_lm::blocks::param_layout(&c), 3);
        let a = BlocksLm::new(c, dev.clone(), params.clone()).unwrap().with_precision(p, &r).unwrap();
        let b = BlocksLm::new(c, CpuBackend, params).unwrap().with_precision(p, &r).unwrap();
        same_training(Box::new(a), Box::new(b), c.vocab_size, &format!("sas-p {p}"));
        // Llama.
        let c = LlamaConfig::tiny();
        let params = octet_lm::llama::init_params(&c, &octet_lm::llama::param_layout(&c), 3);
        let a = Llama::new(c, dev.clone(), params.clone()).unwrap().with_precision(p, &r).unwrap();
        let b = Llama::new(c, CpuBackend, params).unwrap().with_precision(p, &r).unwrap();
        same_training(Box::new(a), Box::new(b), c.vocab_size, &format!("llama {p}"));

        assert!(dev.own_ops.load(Ordering::SeqCst) > 0, "the device's own op ran");
        assert!(dev.syncs.load(Ordering::SeqCst) > 0, "the host waited before reading");
        assert!(dev.pool.allocations.load(Ordering::SeqCst) >= 3 * 4, "params, grads, activations per model");
        assert_eq!(dev.pool.live.load(Ordering::SeqCst), 0, "{p}: every device buffer freed with its model");
    }
}
