//! Golden test: the f32 CPU SAS and SAS-P models against an independent JAX reference computed in f64
//! (tools/ref/sas_golden.py -> tests/golden/sas/): logits, loss, every parameter gradient, 10 AdamW
//! step losses and the final parameters.

use octet_core::Tolerance;
use octet_kernels::CpuBackend;
use octet_lm::blocks::{BlockKind, BlocksConfig, BlocksLm, decay_flags, param_layout};
use octet_optim::{AdamW, AdamWConfig};
use safetensors::{Dtype, SafeTensors};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/sas");

/// f32 forward of a 2-layer model against an f64 reference: each op rounds at ~6e-8 relative and
/// softmax/norms amplify by O(10), so logits and loss agree to ~1e-6 relative; 1e-5 leaves margin.
const FORWARD: Tolerance = Tolerance { atol: 1e-6, rtol: 1e-5 };
/// Gradients pass through the same chain backwards plus sums over B*T rows (the scalar gains over
/// B*T*C products); entries near zero come from cancellation, hence the absolute part.
const GRADS: Tolerance = Tolerance { atol: 1e-7, rtol: 1e-4 };
/// Ten AdamW steps: Adam normalises updates, so a gradient entry near zero with a relative error can
/// flip an update of size lr = 1e-3; parameters stay within a fraction of one step.
const AFTER_STEPS: Tolerance = Tolerance { atol: 2e-5, rtol: 1e-4 };

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn u32s(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I32, "{name}");
    t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

fn check(kind: BlockKind, file: &str) {
    let path = format!("{DIR}/{file}");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cfg = BlocksConfig::tiny(kind);
    let (b, t) = (2, 8);
    let layout = param_layout(&cfg);
    let params: Vec<f32> = layout.specs().iter().flat_map(|s| f32s(&st, &format!("param.{}", s.name))).collect();
    let (inputs, targets) = (u32s(&st, "inputs"), u32s(&st, "targets"));
    let mut m = BlocksLm::new(cfg, CpuBackend, params).unwrap();

    m.forward(&inputs, None, b, t).unwrap();
    FORWARD.assert_close("logits", m.logits(), &f32s(&st, "logits"));
    let loss = m.forward(&inputs, Some(&targets), b, t).unwrap().unwrap();
    FORWARD.assert_close("loss", &[loss], &f32s(&st, "loss"));

    m.zero_grad();
    m.backward().unwrap();
    for s in layout.specs() {
        let name = format!("grad.{}", s.name);
        GRADS.assert_close(&name, &m.grads.data[s.range()], &f32s(&st, &name));
    }

    let layout = m.params.layout.clone();
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(layout.clone(), decay_flags(&layout), cfg);
    let mut losses = vec![];
    for _ in 0..10 {
        m.zero_grad();
        losses.push(m.forward(&inputs, Some(&targets), b, t).unwrap().unwrap());
        m.backward().unwrap();
        let grads = m.grads.data.clone();
        opt.update(&mut m.params.data, &grads, 1e-3);
    }
    FORWARD.assert_close("step_losses", &losses, &f32s(&st, "step_losses"));
    for s in layout.specs() {
        let name = format!("final.{}", s.name);
        AFTER_STEPS.assert_close(&name, &m.params.data[s.range()], &f32s(&st, &name));
    }
}

#[test]
fn sas_tiny_matches_jax_reference() {
    check(BlockKind::Sas, "sas_tiny.safetensors");
}

#[test]
fn sas_p_tiny_matches_jax_reference() {
    check(BlockKind::SasP, "sas_p_tiny.safetensors");
}
