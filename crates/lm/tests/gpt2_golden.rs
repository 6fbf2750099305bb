//! Golden test: the f32 CPU GPT-2 against an independent JAX reference computed in f64
//! (tools/ref/gpt2_golden.py -> tests/golden/gpt2_tiny.safetensors): logits, loss, every parameter
//! gradient, 10 AdamW step losses and the final parameters.

use octet_core::Tolerance;
use octet_kernels::CpuBackend;
use octet_lm::gpt2::{Gpt2, Gpt2Config, decay_flags, param_layout};
use octet_optim::{AdamW, AdamWConfig};
use safetensors::{Dtype, SafeTensors};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/gpt2_tiny.safetensors");

/// f32 forward of a 2-layer model against an f64 reference: each op rounds at ~6e-8 relative and
/// softmax/layernorm amplify by O(10), so logits and loss agree to ~1e-6 relative; 1e-5 leaves margin.
const FORWARD: Tolerance = Tolerance { atol: 1e-6, rtol: 1e-5 };
/// Gradients pass through the same chain backwards plus sums over B*T rows; entries near zero come from
/// cancellation, hence the absolute part (gradients here are O(1e-2)).
const GRADS: Tolerance = Tolerance { atol: 1e-7, rtol: 1e-4 };
/// Ten AdamW steps: Adam normalises updates, so a gradient entry near zero with a relative error can
/// flip an update of size lr = 1e-3; parameters stay within a fraction of one step.
const AFTER_STEPS: Tolerance = Tolerance { atol: 2e-5, rtol: 1e-4 };

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{GOLDEN}: {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn u32s(st: &SafeTensors, name: &str) -> Vec<u32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I32, "{name}");
    t.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect()
}

#[test]
fn gpt2_tiny_matches_jax_reference() {
    let bytes = std::fs::read(GOLDEN).expect("golden file");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cfg = Gpt2Config::tiny();
    let (b, t) = (2, 8);
    let layout = param_layout(&cfg);
    let params: Vec<f32> = layout.specs().iter().flat_map(|s| f32s(&st, &format!("param.{}", s.name))).collect();
    let (inputs, targets) = (u32s(&st, "inputs"), u32s(&st, "targets"));
    let mut m = Gpt2::new(cfg, CpuBackend, params).unwrap();

    m.forward(&inputs, None, b, t).unwrap();
    FORWARD.assert_close("logits", m.logits(), &f32s(&st, "logits"));
    let loss = m.forward(&inputs, Some(&targets), b, t).unwrap().unwrap();
    FORWARD.assert_close("loss", &[loss], &f32s(&st, "loss"));

    m.zero_grad();
    m.backward().unwrap();
    for s in layout.specs() {
        GRADS.assert_close(
            &format!("grad.{}", s.name),
            &m.grads.data[s.range()],
            &f32s(&st, &format!("grad.{}", s.name)),
        );
    }

    let layout = m.params.layout.clone();
    let mut opt = AdamW::new(
        layout.clone(),
        decay_flags(&layout),
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 },
    );
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
        AFTER_STEPS.assert_close(
            &format!("final.{}", s.name),
            &m.params.data[s.range()],
            &f32s(&st, &format!("final.{}", s.name)),
        );
    }
}
