//! Checkpoints: a directory holding `model.safetensors` (parameters by name, f32), `optimizer.safetensors`
//! (AdamW m and v by name), `state.json` (step, configs, data fingerprint) and `tokenizer.json`.
//! Written into a temporary directory and renamed into place, then the run's `latest` pointer is
//! replaced atomically: an interrupted write never leaves a half checkpoint that resume would load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use octet_core::{Error, Layout, Result, Slab};
use safetensors::{Dtype, SafeTensors};

use crate::gpt2::Gpt2Config;
use crate::precision::LinearScaling;
use crate::train::TrainConfig;
use octet_core::fs::write_atomic;

pub const STATE_VERSION: u32 = 1;

/// `state.json`: everything besides tensors that resuming needs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Completed optimizer steps; the next step to run.
    pub step: usize,
    pub model: Gpt2Config,
    pub train: TrainConfig,
    /// Number of training tokens in the shard the run trained on (a cheap data fingerprint).
    pub train_tokens: usize,
    pub last_loss: Option<f64>,
    /// FP8 scaling state of every block linear (amax histories and scales), for bit-identical resume.
    #[serde(default)]
    pub scaling: Vec<LinearScaling>,
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

/// Write a checkpoint `run_dir/ckpt-NNNNNN` atomically and point `run_dir/latest` at it; keep the
/// newest `keep` checkpoints.
pub fn save(
    run_dir: &Path,
    state: &State,
    params: &Slab<f32>,
    m: &Slab<f32>,
    v: &Slab<f32>,
    tokenizer_json: &Path,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("ckpt-{:06}", state.step);
    let final_dir = run_dir.join(&name);
    let tmp = run_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |p: &Path, e| Error::io(p, e);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let meta = HashMap::from([("format".to_string(), "octet-gpt2".to_string())]);
    write_atomic(&tmp.join("model.safetensors"), &to_safetensors(&[("", params)], meta.clone())?)?;
    write_atomic(&tmp.join("optimizer.safetensors"), &to_safetensors(&[("m.", m), ("v.", v)], meta)?)?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    write_atomic(&tmp.join("state.json"), json.as_bytes())?;
    std::fs::copy(tokenizer_json, tmp.join("tokenizer.json")).map_err(|e| io(tokenizer_json, e))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    // Prune older checkpoints (names sort by step).
    let mut old: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map_err(|e| io(run_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ckpt-")))
        .collect();
    old.sort();
    if old.len() > keep {
        for p in &old[..old.len() - keep] {
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
}

/// Load and validate a checkpoint; `with_optimizer` also reads m and v.
pub fn load(dir: &Path, with_optimizer: bool) -> Result<Loaded> {
    let dir = resolve(dir)?;
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| Error::format(&sp, "state", e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(Error::format(&sp, "version", format!("expected {STATE_VERSION}, found {}", state.version)));
    }
    state.model.validate().map_err(|e| Error::format(&sp, "model", e.to_string()))?;
    let layout = crate::gpt2::param_layout(&state.model);
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map(|b| (p.clone(), b)).map_err(|e| Error::io(&p, e))
    };
    let mut params = vec![0.0; layout.total()];
    let (p, b) = read("model.safetensors")?;
    load_into(&p, &b, "", &layout, &mut params)?;
    let (mut m, mut v) = (vec![], vec![]);
    if with_optimizer {
        let (p, b) = read("optimizer.safetensors")?;
        m = vec![0.0; layout.total()];
        v = vec![0.0; layout.total()];
        load_into(&p, &b, "m.", &layout, &mut m)?;
        load_into(&p, &b, "v.", &layout, &mut v)?;
    }
    Ok(Loaded { dir, state, params, m, v })
}
