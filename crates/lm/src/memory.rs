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

/// A GPT shape for the analytical ledger at scale (the GPT-3 paper's sizes, GPT-2's layout: learned
/// positions, LayerNorm, biases, tied head, vocabulary 50257 padded to 50304).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GptShape {
    pub name: &'static str,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub seq: usize,
}

pub const GPT_7B: GptShape = GptShape { name: "gpt-7b", n_layer: 32, n_embd: 4096, n_head: 32, seq: 2048 };
pub const GPT_13B: GptShape = GptShape { name: "gpt-13b", n_layer: 40, n_embd: 5120, n_head: 40, seq: 2048 };
pub const GPT_175B: GptShape = GptShape { name: "gpt-175b", n_layer: 96, n_embd: 12288, n_head: 96, seq: 2048 };

impl GptShape {
    pub fn config(&self) -> crate::gpt2::Gpt2Config {
        crate::gpt2::Gpt2Config {
            vocab_size: 50257,
            padded_vocab: 50304,
            max_seq_len: self.seq,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
        }
    }
    /// Exact parameter count from the layout table (no buffer is allocated).
    pub fn params(&self) -> usize {
        crate::gpt2::param_layout(&self.config()).total()
    }
    pub fn by_name(name: &str) -> Option<GptShape> {
        [GPT_7B, GPT_13B, GPT_175B].into_iter().find(|s| s.name == name)
    }
}

/// FP8-LM's levels for the analytical ledger (PAPERS.md section 1's table), plus O3, which octet
/// does not train at yet: bytes per parameter of (weights, master, gradients, Adam m, Adam v).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleLevel {
    Fp32,
    /// Megatron-style mixed precision: bf16 weights and gradients, f32 master and moments. (octet's
    /// own `bf16` level keeps f32 weights and casts per GEMM: the same 16 bytes, other roles.)
    Bf16,
    Te,
    O1,
    O2,
    O3,
}

impl ScaleLevel {
    pub const ALL: [ScaleLevel; 6] =
        [ScaleLevel::Fp32, ScaleLevel::Bf16, ScaleLevel::Te, ScaleLevel::O1, ScaleLevel::O2, ScaleLevel::O3];
    pub fn name(self) -> &'static str {
        match self {
            ScaleLevel::Fp32 => "fp32",
            ScaleLevel::Bf16 => "bf16",
            ScaleLevel::Te => "fp8-te",
            ScaleLevel::O1 => "fp8-o1",
            ScaleLevel::O2 => "fp8-o2",
            ScaleLevel::O3 => "fp8-o3",
        }
    }
    pub fn parse(s: &str) -> Option<ScaleLevel> {
        ScaleLevel::ALL.into_iter().find(|l| l.name() == s)
    }
    /// (weights, master, gradients, m, v) bytes per parameter.
    pub fn bytes(self) -> [f64; 5] {
        match self {
            ScaleLevel::Fp32 | ScaleLevel::Te => [4.0, 0.0, 4.0, 4.0, 4.0],
            ScaleLevel::Bf16 => [2.0, 4.0, 2.0, 4.0, 4.0],
            ScaleLevel::O1 => [2.0, 0.0, 1.0, 4.0, 4.0],
            ScaleLevel::O2 => [2.0, 0.0, 1.0, 1.0, 2.0],
            ScaleLevel::O3 => [1.0, 2.0, 1.0, 1.0, 2.0],
        }
    }
    /// Bytes per gradient element on the data-parallel wire (FP8-LM's "comm" column).
    pub fn wire_bytes(self) -> f64 {
        match self {
            ScaleLevel::Fp32 | ScaleLevel::Te => 4.0,
            ScaleLevel::Bf16 => 2.0,
            ScaleLevel::O1 | ScaleLevel::O2 | ScaleLevel::O3 => 1.0,
        }
    }
}

/// Data, tensor and pipeline parallel degrees, ZeRO over the data-parallel group, micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Parallel {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    pub zero: bool,
    pub micro_batch: usize,
}

/// Per-GPU bytes by role and data-parallel communication per step, computed (not allocated).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Analytic {
    pub model: &'static str,
    pub level: ScaleLevel,
    pub parallel: Parallel,
    pub params: usize,
    pub params_per_gpu: f64,
    pub bytes: Vec<(MemRole, f64)>,
    pub weight_related_bytes: f64,
    pub total_bytes: f64,
    /// Bytes one GPU sends per optimizer step for the data-parallel gradient (and, with ZeRO, weight)
    /// collectives, ring algorithms; tensor- and pipeline-parallel traffic is not included.
    pub dp_comm_bytes_per_step: f64,
}

/// The analytical per-GPU ledger of `shape` at `level` under `par`:
/// - tensor and pipeline parallelism split every parameter evenly over `tp * pp` GPUs (the embedding's
///   extra copy on the last pipeline stage is ignored);
/// - ZeRO shards the optimizer's state (master weights, m, v) over the `dp` ranks; weights and
///   gradients stay whole, as octet's `--zero` and FP8-LM's ZeRO do;
/// - activations: Korthikanti et al. 2022 with tensor and sequence parallelism and selective
///   recomputation, `s b h 34 / tp` bytes per layer, times the `L / pp` layers of a stage, times `pp`
///   micro-batches in flight on the first stage under 1F1B (16-bit activations at every level);
/// - communication: all-reduce `2 (dp-1)/dp` of the gradient in the wire format; with ZeRO a
///   reduce-scatter `(dp-1)/dp` of the gradient plus an all-gather `(dp-1)/dp` of the weights as stored.
pub fn analytic(shape: GptShape, level: ScaleLevel, par: Parallel) -> Analytic {
    let params = shape.params();
    let per_gpu = params as f64 / (par.tp * par.pp) as f64;
    let [w, master, g, m, v] = level.bytes();
    let opt_share = if par.zero { 1.0 / par.dp as f64 } else { 1.0 };
    let acts = (shape.n_layer * shape.seq * par.micro_batch * shape.n_embd) as f64 * 34.0 / par.tp as f64;
    let bytes = vec![
        (MemRole::Weights, w * per_gpu),
        (MemRole::Master, master * per_gpu * opt_share),
        (MemRole::Gradients, g * per_gpu),
        (MemRole::AdamM, m * per_gpu * opt_share),
        (MemRole::AdamV, v * per_gpu * opt_share),
        (MemRole::Activations, acts),
    ];
    let weight_related: f64 = bytes.iter().filter(|b| b.0.weight_related()).map(|b| b.1).sum();
    let total = bytes.iter().map(|b| b.1).sum();
    let f = (par.dp - 1) as f64 / par.dp as f64;
    let comm = if par.zero {
        f * per_gpu * level.wire_bytes() + f * per_gpu * w
    } else {
        2.0 * f * per_gpu * level.wire_bytes()
    };
    Analytic {
        model: shape.name,
        level,
        parallel: par,
        params,
        params_per_gpu: per_gpu,
        bytes,
        weight_related_bytes: weight_related,
        total_bytes: total,
        dp_comm_bytes_per_step: comm,
    }
}

/// The degrees the scale table uses (ours, Megatron-like: the model split until a stage's weights fit
/// comfortably; not the paper's, which its table lists per run).
pub fn default_parallel(shape: GptShape, zero: bool) -> Parallel {
    let (dp, tp, pp) = match shape.name {
        "gpt-7b" => (32, 1, 1),
        "gpt-13b" => (16, 2, 1),
        _ => (4, 8, 4),
    };
    Parallel { dp, tp, pp, zero, micro_batch: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_shapes_have_their_nominal_sizes() {
        let b = |s: GptShape| s.params() as f64 / 1e9;
        assert!((6.5..7.0).contains(&b(GPT_7B)), "{}", b(GPT_7B));
        assert!((12.5..13.5).contains(&b(GPT_13B)), "{}", b(GPT_13B));
        assert!((174.0..176.0).contains(&b(GPT_175B)), "{}", b(GPT_175B));
    }

    #[test]
    fn analytic_weight_state_matches_the_live_ledger_at_small_size() {
        // A small GPT-2 on one GPU: the formula's weight-related bytes vs the bytes of the buffers the
        // trainer really allocates (which add 4 bytes per scale of each scaled buffer).
        use crate::precision::Precision;
        let shape = GptShape { name: "small", n_layer: 2, n_embd: 64, n_head: 4, seq: 64 };
        let spec = crate::spec::ModelSpec::Gpt2(shape.config());
        let par = Parallel { dp: 1, tp: 1, pp: 1, zero: false, micro_batch: 1 };
        for (level, p) in [
            (ScaleLevel::Fp32, Precision::Fp32),
            (ScaleLevel::Te, Precision::Fp8Te),
            (ScaleLevel::O1, Precision::Fp8O1),
            (ScaleLevel::O2, Precision::Fp8O2),
        ] {
            let live = plan(spec, p, 1, 8).unwrap();
            let a = analytic(shape, level, par);
            let units = if p.is_narrow() { 2 + 2 * 12 + 4 } else { 0 };
            let diff = live.weight_related() as f64 - a.weight_related_bytes;
            assert!(
                (0.0..=(4 * 4 * units) as f64).contains(&diff),
                "{p}: live {} vs analytic {} (scales allowed: {})",
                live.weight_related(),
                a.weight_related_bytes,
                4 * 4 * units
            );
        }
    }

    #[test]
    fn zero_divides_the_optimizer_state_by_the_data_parallel_degree() {
        let p = |zero| analytic(GPT_7B, ScaleLevel::O2, Parallel { dp: 8, tp: 1, pp: 1, zero, micro_batch: 1 });
        let (a, z) = (p(false), p(true));
        let adam = |x: &Analytic| {
            x.bytes.iter().filter(|b| matches!(b.0, MemRole::AdamM | MemRole::AdamV)).map(|b| b.1).sum::<f64>()
        };
        assert!((adam(&a) / adam(&z) - 8.0).abs() < 1e-9);
    }
}
