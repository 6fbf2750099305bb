//! The memory ledger: every buffer a training step holds, counted by role from the live allocations
//! (not from a formula), so `bytes_per_param` is what the process really stores. Weight-related state
//! (weights, master weights, gradients, Adam m and v) divided by the parameter count is the number
//! FP8-LM reports (16 B for fp32 AdamW; 6 B for its O3 level).

use crate::model::LanguageModel;

/// What a buffer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemRole {
    Weights,
    Master,
    Gradients,
    AdamM,
    AdamV,
    Activations,
    Workspace,
}

impl MemRole {
    /// Counted in `bytes_per_param` (weight-related state, as FP8-LM's table).
    pub fn weight_related(self) -> bool {
        !matches!(self, MemRole::Activations | MemRole::Workspace)
    }
}

/// Bytes per role, plus the parameter count they serve.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ledger {
    pub params: usize,
    pub bytes: Vec<(MemRole, usize)>,
}

impl Ledger {
    /// The buffers of `model` and of an optimizer whose m and v take `adam_bytes`.
    pub fn of(model: &dyn LanguageModel, adam_bytes: (usize, usize)) -> Self {
        let e = size_of::<f32>();
        let (acts, dacts, ws) = model.activation_elems();
        let (weights, grads) = match (model.narrow(), model.plain()) {
            (Some(nw), _) => (nw.weights.bytes(), nw.grads.bytes()),
            (None, Some((p, g))) => (p.data.len() * e, g.data.len() * e),
            (None, None) => (0, 0),
        };
        Ledger {
            params: model.num_params(),
            bytes: vec![
                (MemRole::Weights, weights),
                (MemRole::Master, 0),
                (MemRole::Gradients, grads),
                (MemRole::AdamM, adam_bytes.0),
                (MemRole::AdamV, adam_bytes.1),
                (MemRole::Activations, (acts + dacts) * e),
                // At the narrow levels the f32 working set (one block) is workspace.
                (MemRole::Workspace, ws * e + model.working_bytes()),
            ],
        }
    }
    pub fn total(&self) -> usize {
        self.bytes.iter().map(|b| b.1).sum()
    }
    pub fn weight_related(&self) -> usize {
        self.bytes.iter().filter(|b| b.0.weight_related()).map(|b| b.1).sum()
    }
    pub fn bytes_per_param(&self) -> f64 {
        self.weight_related() as f64 / self.params as f64
    }
    /// One JSON object: bytes per role, totals and bytes per parameter.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (role, b) in &self.bytes {
            m.insert(serde_json::to_value(role).unwrap().as_str().unwrap().to_string(), (*b).into());
        }
        serde_json::json!({
            "params": self.params,
            "bytes": m,
            "weight_related_bytes": self.weight_related(),
            "total_bytes": self.total(),
            "bytes_per_param": self.bytes_per_param(),
        })
    }
}

/// The ledger of a training run of `spec` at `precision` with (B, T) batches, without running it:
/// the buffers are allocated zeroed (untouched pages cost no RSS) and counted.
pub fn plan(
    spec: crate::spec::ModelSpec,
    precision: crate::precision::Precision,
    b: usize,
    t: usize,
) -> octet_core::Result<Ledger> {
    check_batch(b, t, spec.dims().max_seq_len)?;
    let params = vec![0.0f32; spec.num_params()];
    let model = spec.from_params(params, precision, &octet_core::scaling::Recipe::default())?;
    planned(model, b, t)
}

fn check_batch(b: usize, t: usize, max_seq_len: usize) -> octet_core::Result<()> {
    if t == 0 || t > max_seq_len || b == 0 {
        return Err(octet_core::Error::config("seq", format!("need 0 < seq <= {max_seq_len} and batch > 0")));
    }
    Ok(())
}

fn planned(mut model: Box<dyn LanguageModel>, b: usize, t: usize) -> octet_core::Result<Ledger> {
    model.ensure_acts(b, t)?;
    let opt = crate::step::Optimizer::for_model(model.as_ref(), Default::default());
    Ok(Ledger::of(model.as_ref(), opt.state_bytes()))
}
