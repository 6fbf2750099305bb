//! Checkpoints: a directory holding `model.safetensors` (parameters by name, f32), `optimizer.safetensors`
//! (AdamW m and v by name), `state.json` (step, configs, data fingerprint) and `tokenizer.json`.
//! At the narrow levels (fp8-o1, fp8-o2) the buffers are saved as stored, bit for bit: each as two
//! tensors `<name>.codes` (U8, the elements' little-endian bytes in their format) and `<name>.scales`
//! (F32, one per unit tensor), the formats in the safetensors metadata (`weights`, `m`, `v`); the unit
//! layout is `narrow::unit_layout` of the model's parameter layout.
//! `manifest.json` records the SHA-256 of each of those files (`octet_core::manifest`); loading
//! checks every file it reads against it, so a damaged checkpoint fails naming the file.
//! Written into a temporary directory (files and directory fsynced) and renamed into place, then the
//! run's `latest` pointer is replaced atomically: an interrupted write never leaves a half checkpoint
//! that resume would load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use octet_core::{Error, Layout, Result, ScaledBuf, Slab, StateFormat};
use safetensors::{Dtype, SafeTensors};

use crate::blocks::{BlockKind, BlocksConfig};
use crate::config::TrainConfig;
use crate::gpt2::Gpt2Config;
use crate::precision::LinearScaling;
use crate::spec::ModelSpec;
use crate::step::GradScaler;
use octet_core::fs::{sync_dir, write_atomic};
use octet_core::manifest::Manifest;

/// Version 3: version 2 plus a `manifest.json` that loading requires. Version 2: `model` is a
/// `ModelSpec` (architecture, dimensions, block). Versions 1 (GPT-2 shapes only: `model` a GPT-2
/// configuration plus `block`) and 2, written before manifests, still load unchecked.
pub const STATE_VERSION: u32 = 3;

/// `state.json`: everything besides tensors that resuming needs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Completed optimizer steps; the next step to run.
    pub step: usize,
    /// The model: architecture, dimensions, block (RoPE base, tied head, ... in its configuration).
    pub model: ModelSpec,
    pub train: TrainConfig,
    /// Number of training tokens in the shard the run trained on (a cheap data fingerprint).
    pub train_tokens: usize,
    pub last_loss: Option<f64>,
    /// FP8 scaling state of every block linear (amax histories and scales), for bit-identical resume.
    #[serde(default)]
    pub scaling: Vec<LinearScaling>,
    /// Gradient scale of the narrow levels (`step::GradScaler`).
    #[serde(default)]
    pub scaler: GradScaler,
    /// Completed optimizer steps, when they differ from `step` (skipped steps at the narrow levels).
    #[serde(default)]
    pub optimizer_step: Option<u64>,
    /// FP8 all-reduce scaling factor of a data-parallel run (`dist::CommScaler`), if it had several ranks.
    #[serde(default)]
    pub comm: Option<crate::dist::CommScaler>,
}

/// Parse `state.json` text: the current version, or version 1 converted.
fn parse_state(sp: &Path, text: &str) -> Result<State> {
    let bad = |e: serde_json::Error| Error::format(sp, "state", e.to_string());
    let v: serde_json::Value = serde_json::from_str(text).map_err(bad)?;
    match v.get("version").and_then(serde_json::Value::as_u64) {
        Some(1) => {
            let mut v = v;
            let obj = v.as_object_mut().ok_or_else(|| Error::format(sp, "state", "not a JSON object"))?;
            let block: Option<BlockKind> =
                serde_json::from_value(obj.remove("block").unwrap_or_default()).map_err(bad)?;
            let gpt2: Gpt2Config = serde_json::from_value(obj.remove("model").unwrap_or_default()).map_err(bad)?;
            let model = match block {
                None => ModelSpec::Gpt2(gpt2),
                Some(k) => ModelSpec::Blocks(BlocksConfig::from_gpt2(&gpt2, k)),
            };
            obj.insert("model".into(), serde_json::to_value(model).expect("spec serialises"));
            obj.insert("version".into(), 2.into());
            serde_json::from_value(v).map_err(bad)
        }
        Some(2..=3) => serde_json::from_value(v).map_err(bad),
        Some(n) => Err(Error::format(
            sp,
            "version",
            format!("state version {n}: this octet reads versions 1 to {STATE_VERSION} (written by a newer octet?)"),
        )),
        None => Err(Error::format(sp, "version", "missing")),
    }
}

/// Parameters and optimizer state as a run holds them.
pub enum Tensors<'a> {
    Plain {
        params: &'a Slab<f32>,
        m: &'a Slab<f32>,
        v: &'a Slab<f32>,
    },
    Narrow {
        weights: &'a ScaledBuf,
        m: &'a ScaledBuf,
        v: &'a ScaledBuf,
    },
    /// A LoRA run: the merged weights as the model; the adapters and their moments as the optimizer
    /// file (`lora.`, `m.`, `v.` tensors over the adapter layout).
    Lora {
        merged: &'a Slab<f32>,
        adapters: &'a Slab<f32>,
        m: &'a Slab<f32>,
        v: &'a Slab<f32>,
    },
}

/// Narrow buffers as loaded (the optimizer's only when asked for).
pub struct NarrowParts {
    pub weights: ScaledBuf,
    pub m: Option<ScaledBuf>,
    pub v: Option<ScaledBuf>,
}

/// `bufs` (name, buffer) as raw safetensors bytes; formats and margins in the metadata.
fn raw_safetensors(bufs: &[(&str, &ScaledBuf)]) -> Result<Vec<u8>> {
    let mut meta = HashMap::from([("format".to_string(), "octet-narrow".to_string())]);
    let mut owned: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = vec![];
    for (name, b) in bufs {
        let (codes, scales) = b.to_raw();
        meta.insert(name.to_string(), b.format().name().to_string());
        meta.insert(format!("{name}.margin"), b.margin().to_string());
        owned.push((format!("{name}.codes"), vec![codes.len()], Dtype::U8, codes));
        owned.push((format!("{name}.scales"), vec![scales.len()], Dtype::F32, f32_bytes(&scales)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("shape matches")))
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))
}

/// Buffer `name` of a file written by `raw_safetensors`, over `layout`.
fn raw_load(path: &Path, bytes: &[u8], name: &str, layout: &std::sync::Arc<Layout>) -> Result<ScaledBuf> {
    let (_, md) = SafeTensors::read_metadata(bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).ok_or_else(|| Error::format(path, k, "missing from the metadata"));
    const FORMATS: [StateFormat; 6] = [
        StateFormat::F32,
        StateFormat::F16,
        StateFormat::Bf16,
        StateFormat::E4M3,
        StateFormat::E5M2,
        StateFormat::E4M3Block128,
    ];
    let fname = get(name)?;
    let format = FORMATS
        .into_iter()
        .find(|f| f.name() == fname)
        .ok_or_else(|| Error::format(path, name, format!("unknown storage format `{fname}`")))?;
    let margin: i32 = get(&format!("{name}.margin"))?
        .parse()
        .map_err(|_| Error::format(path, format!("{name}.margin"), "not an integer"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    let tensor = |n: String| st.tensor(&n).map_err(|_| Error::format(path, &n, "tensor missing"));
    let codes = tensor(format!("{name}.codes"))?;
    let scales_t = tensor(format!("{name}.scales"))?;
    if codes.dtype() != Dtype::U8 || scales_t.dtype() != Dtype::F32 {
        return Err(Error::format(path, name, "expected U8 codes and F32 scales"));
    }
    let scales: Vec<f32> = scales_t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    ScaledBuf::from_raw(format, layout.clone(), codes.data(), &scales, margin).map_err(|e| Error::format(path, name, e))
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialise named tensors of `slabs` (with name prefixes) to safetensors bytes.
pub fn to_safetensors(slabs: &[(&str, &Slab<f32>)], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (prefix, slab) in slabs {
        for (spec, vals) in slab.iter() {
            owned.push((format!("{prefix}{}", spec.name), spec.shape.clone(), f32_bytes(vals)));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).expect("shape matches bytes"))
        })
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))
}

/// Fill `out` (laid out by `layout`) from tensors `prefix + name` of a safetensors file.
pub fn load_into(path: &Path, bytes: &[u8], prefix: &str, layout: &Layout, out: &mut [f32]) -> Result<()> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    for spec in layout.specs() {
        let name = format!("{prefix}{}", spec.name);
        let t = st.tensor(&name).map_err(|_| Error::format(path, &name, "tensor missing"))?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::format(path, &name, format!("expected dtype F32, found {:?}", t.dtype())));
        }
        if t.shape() != spec.shape.as_slice() {
            return Err(Error::format(path, &name, format!("expected shape {:?}, found {:?}", spec.shape, t.shape())));
        }
        for (o, b) in out[spec.range()].iter_mut().zip(t.data().chunks_exact(4)) {
            *o = f32::from_le_bytes(b.try_into().unwrap());
        }
    }
    Ok(())
}

/// Write a checkpoint `run_dir/ckpt-NNNNNN` atomically and point `run_dir/latest` at it; keep it and
/// the `keep - 1` newest checkpoints before it. Checkpoints of later steps (another branch of the run,
/// resumed from an earlier checkpoint) are not this run's history and stay.
pub fn save(
    run_dir: &Path,
    state: &State,
    tensors: Tensors<'_>,
    tokenizer_json: &Path,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("ckpt-{:06}", state.step);
    let final_dir = run_dir.join(&name);
    let tmp = run_dir.join(format!(".{name}{}{}", octet_core::fs::TMP_MARK, std::process::id()));
    let io = |p: &Path, e| Error::io(p, e);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let (model, opt) = match tensors {
        Tensors::Plain { params, m, v } => {
            let meta = HashMap::from([("format".to_string(), "octet".to_string())]);
            (to_safetensors(&[("", params)], meta.clone())?, to_safetensors(&[("m.", m), ("v.", v)], meta)?)
        }
        Tensors::Narrow { weights, m, v } => {
            (raw_safetensors(&[("weights", weights)])?, raw_safetensors(&[("m", m), ("v", v)])?)
        }
        Tensors::Lora { merged, adapters, m, v } => {
            let meta = HashMap::from([("format".to_string(), "octet".to_string())]);
            let opt = to_safetensors(&[("lora.", adapters), ("m.", m), ("v.", v)], meta.clone())?;
            (to_safetensors(&[("", merged)], meta)?, opt)
        }
    };
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    let tok = std::fs::read(tokenizer_json).map_err(|e| io(tokenizer_json, e))?;
    let mut manifest = Manifest::new();
    for (file, bytes) in [
        ("model.safetensors", &model[..]),
        ("optimizer.safetensors", &opt),
        ("state.json", json.as_bytes()),
        ("tokenizer.json", &tok),
    ] {
        write_atomic(&tmp.join(file), bytes)?;
        manifest.add(file, bytes);
    }
    manifest.write(&tmp)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
    sync_dir(run_dir)?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    // Prune this run's older checkpoints (names sort by step).
    let mut old: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map_err(|e| io(run_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ckpt-") && n < name.as_str())
        })
        .collect();
    old.sort();
    let keep_old = keep.saturating_sub(1);
    if old.len() > keep_old {
        for p in &old[..old.len() - keep_old] {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    Ok(final_dir)
}

/// Resolve a run directory (via its `latest` file) or a checkpoint directory.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    let latest = dir.join("latest");
    if latest.is_file() {
        let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
        return Ok(dir.join(name.trim()));
    }
    if dir.join("state.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    Err(Error::format(dir, "checkpoint", "neither a checkpoint (no state.json) nor a run directory (no `latest`)"))
}

/// A loaded checkpoint.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: State,
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// The narrow levels' buffers as stored; then `params` holds the decoded weights only when the
    /// optimizer was not asked for (sampling), and `m`, `v` are empty.
    pub narrow: Option<NarrowParts>,
}

/// Load and validate a checkpoint; `with_optimizer` also reads m and v.
pub fn load(dir: &Path, with_optimizer: bool) -> Result<Loaded> {
    let dir = resolve(dir)?;
    let sp = dir.join("state.json");
    let manifest = Manifest::read(&dir)?;
    let bytes = std::fs::read(&sp).map_err(|e| Error::io(&sp, e))?;
    if let Some(m) = &manifest {
        m.check(&sp, &bytes)?;
    }
    let text = String::from_utf8(bytes).map_err(|_| Error::format(&sp, "state", "not UTF-8"))?;
    let state = parse_state(&sp, &text)?;
    if manifest.is_none() && state.version >= 3 {
        return Err(Error::format(
            dir.join(octet_core::manifest::MANIFEST),
            "manifest",
            "missing: a version 3 checkpoint cannot be checked without it",
        ));
    }
    if let Some(m) = &manifest {
        m.check_file(&dir.join("tokenizer.json"))?;
    }
    state.model.validate().map_err(|e| Error::format(&sp, "model", e.to_string()))?;
    // A run checkpoints at most at its own horizon; a step past it is a damaged or hand-edited file.
    if state.step > state.train.steps {
        return Err(Error::format(
            &sp,
            "step",
            format!("{} is past the run's {} steps", state.step, state.train.steps),
        ));
    }
    if with_optimizer && state.train.lora_rank > 0 {
        return Err(Error::format(
            &sp,
            "train.lora_rank",
            "a LoRA run does not resume yet (its checkpoints hold the merged weights): start a new run from it with --init",
        ));
    }
    // The model's parameter layout, and the one-block layout its narrow units come from.
    let layout = state.model.param_layout();
    let read = |name: &str| {
        let p = dir.join(name);
        let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        if let Some(m) = &manifest {
            m.check(&p, &b)?;
        }
        Ok::<_, Error>((p, b))
    };
    let (p, b) = read("model.safetensors")?;
    if state.train.precision.is_narrow() {
        let working = state.model.working_layout();
        let units = std::sync::Arc::new(crate::narrow::unit_layout(&layout, &working).0);
        let weights = raw_load(&p, &b, "weights", &units)?;
        let (mut m, mut v, mut params) = (None, None, vec![]);
        if with_optimizer {
            let (p, b) = read("optimizer.safetensors")?;
            m = Some(raw_load(&p, &b, "m", &units)?);
            v = Some(raw_load(&p, &b, "v", &units)?);
        } else {
            params = weights.to_f32();
        }
        let narrow = Some(NarrowParts { weights, m, v });
        return Ok(Loaded { dir, state, params, m: vec![], v: vec![], narrow });
    }
    let mut params = vec![0.0; layout.total()];
    load_into(&p, &b, "", &layout, &mut params)?;
    let (mut m, mut v) = (vec![], vec![]);
    if with_optimizer {
        let (p, b) = read("optimizer.safetensors")?;
        m = vec![0.0; layout.total()];
        v = vec![0.0; layout.total()];
        load_into(&p, &b, "m.", &layout, &mut m)?;
        load_into(&p, &b, "v.", &layout, &mut v)?;
    }
    Ok(Loaded { dir, state, params, m, v, narrow: None })
}
