//! Trained GNoME ensembles: the model directory format, loading, and inference.
//!
//! A model directory (what `octet materials train --out` writes and `predict --model` reads):
//! - `member-<k>.safetensors`, one per ensemble member (members differ only in seed);
//! - with `train --baseline`, `baseline/` holding the compositional ensemble whose median the members
//!   learned the residual of (`member-<k>.safetensors` again), and with `--elemental-zero` an empty
//!   `elemental-zero` marker file there (`ELEMENTAL_ZERO_MARKER`): the baseline of a single-element
//!   composition is then 0;
//! - `report.json` (training's summary; not read here).
//!
//! `--model` may also name one member file. `Ensemble::load` reads either; `Ensemble::predict` adds
//! the baseline back (stacking: prediction = members' median + baseline median, per atom).
//!
//! Member checkpoint: one safetensors file, tensors named as `GnnConfig::layout` (F32, or F16 as the
//! shipped default model stores them, widened to f32 on load), metadata `format` = `octet-gnome`,
//! `kind` (structural | compositional), `config` (GnnConfig as JSON), `cutoff` (A), `seed`,
//! `valid_mae`, `sha256` (of the tensors' stored bytes in layout order; a file whose data does not
//! match fails naming it; files written before it load unchecked). Written atomically.
//!
//! Predictions are the median over members and the interquartile range (q75 - q25, linear
//! interpolation) as uncertainty; with test-time augmentation each structure is also evaluated with
//! its cell scaled to several volumes and the lowest median energy is kept (GNoME, 80-120% of the
//! volume).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use octet_core::manifest::sha256_hex_parts;
use octet_core::{Error, Result};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::composition::Composition;
use crate::gnn::{Gnn, GnnConfig};
use crate::graph::{self, Graph, GraphBatch};
use crate::structure::Structure;

/// Which GNoME model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Structural,
    Compositional,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Structural => "structural",
            ModelKind::Compositional => "compositional",
        }
    }
    pub fn parse(s: &str) -> Result<ModelKind> {
        match s {
            "structural" => Ok(ModelKind::Structural),
            "compositional" => Ok(ModelKind::Compositional),
            _ => Err(Error::config("model", format!("`{s}`: expected structural or compositional"))),
        }
    }
    /// Edge basis width of this model's graphs.
    pub fn basis_dim(self) -> usize {
        match self {
            ModelKind::Structural => graph::NUM_BASIS,
            ModelKind::Compositional => 0,
        }
    }
}

/// Per-atom predictions for graphs, `batch` graphs at a time.
pub fn predict_graphs(model: &Gnn<f32>, graphs: &[&Graph], batch: usize) -> Result<Vec<f32>> {
    Ok(predict_members(&[model], graphs, batch)?.pop().expect("one model"))
}

/// Every model's per-atom predictions for graphs (outer index: model). Inference tables are built
/// once per model for the longest edge of all graphs; then per chunk of `batch` graphs, one
/// `GraphBatch` and the models in parallel (a pass's own kernels split further only when a thread
/// is idle), which on a few cores beats splitting every kernel of one pass at a time.
pub fn predict_members(models: &[&Gnn<f32>], graphs: &[&Graph], batch: usize) -> Result<Vec<Vec<f32>>> {
    let r_max = graphs.iter().flat_map(|g| g.distances.iter()).fold(0.0f32, |m, &r| m.max(r));
    let tables: Vec<_> = models.par_iter().map(|m| m.inference_tables(r_max as f64)).collect();
    let mut out: Vec<Vec<f32>> = models.iter().map(|_| Vec::with_capacity(graphs.len())).collect();
    for chunk in graphs.chunks(batch.max(1)) {
        let b = GraphBatch::new(chunk)?;
        let ys: Vec<Vec<f32>> =
            models.par_iter().zip(&tables).map(|(m, t)| m.predict_with(t, &b)).collect::<Result<_>>()?;
        for (o, y) in out.iter_mut().zip(ys) {
            o.extend(y);
        }
    }
    Ok(out)
}

/// One ensemble member as stored on disk.
#[derive(Clone, Debug)]
pub struct Member {
    pub kind: ModelKind,
    pub cutoff: f64,
    pub seed: u64,
    pub valid_mae: f64,
    pub model: Gnn<f32>,
}

/// How a checkpoint stores its tensors: F32 (what training writes) or F16 (half the bytes; the
/// shipped default model, `default_model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
}

/// Writes a member checkpoint atomically, F32 (format in the module doc).
pub fn save_member(
    path: &Path,
    kind: ModelKind,
    cutoff: f64,
    seed: u64,
    valid_mae: f64,
    model: &Gnn<f32>,
) -> Result<()> {
    save_member_as(path, &Member { kind, cutoff, seed, valid_mae, model: model.clone() }, Storage::F32)
}

/// Writes a member checkpoint atomically with its tensors stored as `storage` (F16 rounds to nearest).
pub fn save_member_as(path: &Path, member: &Member, storage: Storage) -> Result<()> {
    let Member { kind, cutoff, seed, valid_mae, ref model } = *member;
    let meta = HashMap::from([
        ("format".to_string(), "octet-gnome".to_string()),
        ("kind".to_string(), kind.name().to_string()),
        ("config".to_string(), serde_json::to_string(&model.cfg).map_err(|e| Error::Other(e.to_string()))?),
        ("cutoff".to_string(), cutoff.to_string()),
        ("seed".to_string(), seed.to_string()),
        ("valid_mae".to_string(), valid_mae.to_string()),
    ]);
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .params
        .iter()
        .map(|(s, v)| {
            let bytes = match storage {
                Storage::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Storage::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            };
            (s.name.clone(), s.shape.clone(), bytes)
        })
        .collect();
    let mut meta = meta;
    meta.insert("sha256".to_string(), sha256_hex_parts(owned.iter().map(|(_, _, b)| &b[..])));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, b)| {
            let dtype = match storage {
                Storage::F32 => Dtype::F32,
                Storage::F16 => Dtype::F16,
            };
            (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).expect("shape matches"))
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    octet_core::fs::write_atomic(path, &bytes)
}

/// Reads a member checkpoint; every missing or inconsistent field is an error naming it.
pub fn load_member(path: &Path) -> Result<Member> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_member(&bytes, path)
}

/// A member checkpoint from its bytes; `path` names it in errors.
pub fn parse_member(bytes: &[u8], path: &Path) -> Result<Member> {
    let (_, md) = SafeTensors::read_metadata(bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).ok_or_else(|| Error::format(path, k, "missing from the safetensors metadata"));
    if get("format")? != "octet-gnome" {
        return Err(Error::format(path, "format", format!("`{}`, expected octet-gnome", get("format")?)));
    }
    let kind = ModelKind::parse(get("kind")?).map_err(|e| Error::format(path, "kind", e.to_string()))?;
    let cfg: GnnConfig =
        serde_json::from_str(get("config")?).map_err(|e| Error::format(path, "config", e.to_string()))?;
    let num = |k: &str| get(k)?.parse::<f64>().map_err(|_| Error::format(path, k, "not a number"));
    let (cutoff, valid_mae) = (num("cutoff")?, num("valid_mae")?);
    let seed = get("seed")?.parse::<u64>().map_err(|_| Error::format(path, "seed", "not an integer"))?;
    if cfg.basis_dim != kind.basis_dim() {
        return Err(Error::format(path, "config", format!("basis_dim {} for a {} model", cfg.basis_dim, kind.name())));
    }
    let layout = cfg.layout();
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
    let mut data = vec![0.0f32; layout.total()];
    let mut raw: Vec<&[u8]> = vec![];
    for spec in layout.specs() {
        let t = st.tensor(&spec.name).map_err(|_| Error::format(path, &spec.name, "tensor missing"))?;
        raw.push(t.data());
        let width = match t.dtype() {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
            _ => 0,
        };
        if width == 0 || t.shape() != spec.shape.as_slice() {
            return Err(Error::format(
                path,
                &spec.name,
                format!("expected F32 or F16 {:?}, found {:?} {:?}", spec.shape, t.dtype(), t.shape()),
            ));
        }
        for (o, b) in data[spec.range()].iter_mut().zip(t.data().chunks_exact(width)) {
            *o = match width {
                4 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
                _ => half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32(),
            };
        }
    }
    // Files written before checksums (no `sha256`) load unchecked.
    if let Some(want) = meta.get("sha256") {
        let got = sha256_hex_parts(raw);
        if &got != want {
            return Err(Error::format(
                path,
                "sha256",
                format!("tensor data hashes to {got}, the metadata records {want}: the file is damaged"),
            ));
        }
    }
    Ok(Member { kind, cutoff, seed, valid_mae, model: Gnn::from_params(cfg, data)? })
}

/// Median, 25th and 75th percentile (linear interpolation between order statistics).
pub fn quartiles(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    (q(0.5), q(0.25), q(0.75))
}

/// An ensemble's prediction for one input.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    /// Median over members of the per-atom energy (eV/atom).
    pub energy_per_atom: f64,
    /// Atoms in the cell (1 for a composition).
    pub atoms: f64,
    /// atoms * energy_per_atom (eV).
    pub energy: f64,
    /// Interquartile range over members (eV/atom).
    pub iqr: f64,
    /// Volume factor of the kept augmentation (1 without augmentation).
    pub volume_factor: f64,
    /// Every member's per-atom prediction at that volume.
    pub members: Vec<f64>,
}

/// Ensemble predictions for graphs: the members' per-atom outputs, median and IQR.
pub fn ensemble_predict(members: &[Member], graphs: &[&Graph], batch: usize) -> Result<Vec<Prediction>> {
    let models: Vec<&Gnn<f32>> = members.iter().map(|m| &m.model).collect();
    let per_member = predict_members(&models, graphs, batch)?;
    Ok((0..graphs.len())
        .map(|i| {
            let v: Vec<f64> = per_member.iter().map(|p| p[i] as f64).collect();
            let (med, q25, q75) = quartiles(&v);
            let atoms = graphs[i].atoms as f64;
            Prediction {
                energy_per_atom: med,
                atoms,
                energy: med * atoms,
                iqr: q75 - q25,
                volume_factor: 1.0,
                members: v,
            }
        })
        .collect())
}

/// Marker file in a stacked model's `baseline/` directory: the baseline is `baseline_predict` with
/// `elemental_zero` (training and prediction must agree).
pub const ELEMENTAL_ZERO_MARKER: &str = "elemental-zero";

/// A compositional ensemble's per-atom baseline for compositions: the ensemble median, or with
/// `elemental_zero` exactly 0 for a single element. Formation energies are measured from the
/// elements' reference phases, so an element's lowest-energy phase has 0 by definition, and a
/// composition-only model can say nothing more about an element; the structural residual then
/// learns how far a polymorph lies above it. (A compositional model trained on compounds alone
/// extrapolates to an element it never saw pure, e.g. 1.4 eV/atom for C.)
pub fn baseline_predict(
    members: &[Member],
    comps: &[crate::Composition],
    elemental_zero: bool,
    batch: usize,
) -> Result<Vec<f64>> {
    let graphs = comps.iter().map(graph::composition_graph).collect::<Result<Vec<_>>>()?;
    let preds = ensemble_predict(members, &graphs.iter().collect::<Vec<_>>(), batch)?;
    Ok(preds
        .iter()
        .zip(comps)
        .map(|(p, c)| if elemental_zero && c.fractional().len() == 1 { 0.0 } else { p.energy_per_atom })
        .collect())
}

/// Structural ensemble prediction with test-time volume augmentation: each structure at every
/// volume factor (a factor whose cell makes atoms overlap is skipped), keeping the lowest median.
pub fn predict_structures(
    members: &[Member],
    structures: &[Structure],
    factors: &[f64],
    batch: usize,
) -> Result<Vec<Prediction>> {
    let cutoff = members.first().map_or(graph::CUTOFF, |m| m.cutoff);
    let mut best: Vec<Option<Prediction>> = vec![None; structures.len()];
    for &f in factors {
        let graphs: Vec<Option<Graph>> = structures
            .par_iter()
            .map(|s| {
                let scaled = if f == 1.0 { Ok(s.clone()) } else { s.with_volume_scaled(f) };
                scaled.ok().map(|s| graph::structure_graph(&s, cutoff)).transpose()
            })
            .collect::<Result<_>>()?;
        let idx: Vec<usize> = (0..structures.len()).filter(|&i| graphs[i].is_some()).collect();
        let refs: Vec<&Graph> = idx.iter().map(|&i| graphs[i].as_ref().expect("filtered")).collect();
        for (p, &i) in ensemble_predict(members, &refs, batch)?.into_iter().zip(&idx) {
            if best[i].as_ref().is_none_or(|b| p.energy_per_atom < b.energy_per_atom) {
                best[i] = Some(Prediction { volume_factor: f, ..p });
            }
        }
    }
    best.into_iter()
        .enumerate()
        .map(|(i, p)| p.ok_or_else(|| Error::Other(format!("structure {i}: every volume factor made atoms overlap"))))
        .collect()
}

/// Every member of a model: a directory's `member-*.safetensors` (all `*.safetensors` directly in
/// it, sorted by name; `baseline/` is not searched) or one member file. All must be of one kind.
pub fn load_members(path: &Path) -> Result<Vec<Member>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        return Err(Error::format(path, "model", "no *.safetensors ensemble members in this directory"));
    }
    let members = files.iter().map(|f| load_member(f)).collect::<Result<Vec<_>>>()?;
    check_one_kind(path, &members)?;
    Ok(members)
}

fn check_one_kind(path: &Path, members: &[Member]) -> Result<()> {
    if let Some(m) = members.iter().find(|m| m.kind != members[0].kind) {
        return Err(Error::format(
            path,
            "kind",
            format!("mixes {} and {} members", members[0].kind.name(), m.kind.name()),
        ));
    }
    Ok(())
}

/// A compositional ensemble whose median a stacked model learned the residual of (`train
/// --baseline`), stored as the model directory's `baseline/`.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub members: Vec<Member>,
    /// A single-element composition's baseline is 0 (`baseline_predict`).
    pub elemental_zero: bool,
}

impl Baseline {
    /// A trained compositional ensemble (directory or file) as a baseline.
    pub fn load(path: &Path, elemental_zero: bool) -> Result<Baseline> {
        let members = load_members(path)?;
        if members[0].kind != ModelKind::Compositional {
            return Err(Error::format(path, "kind", "the baseline must be a compositional ensemble"));
        }
        Ok(Baseline { members, elemental_zero })
    }

    /// The `baseline/` of a model directory (with its `elemental-zero` marker), if it has one.
    pub fn of_model_dir(dir: &Path) -> Result<Option<Baseline>> {
        let b = dir.join(BASELINE_DIR);
        if !dir.is_dir() || !b.is_dir() {
            return Ok(None);
        }
        Ok(Some(Baseline { members: load_members(&b)?, elemental_zero: b.join(ELEMENTAL_ZERO_MARKER).exists() }))
    }

    /// Writes `<model_dir>/baseline/`: every member and the marker (a stale marker is removed).
    pub fn save(&self, model_dir: &Path) -> Result<()> {
        let dir = model_dir.join(BASELINE_DIR);
        for (k, m) in self.members.iter().enumerate() {
            save_member(&dir.join(format!("member-{k}.safetensors")), m.kind, m.cutoff, m.seed, m.valid_mae, &m.model)?;
        }
        let marker = dir.join(ELEMENTAL_ZERO_MARKER);
        if self.elemental_zero {
            octet_core::fs::write_atomic(&marker, b"")?;
        } else if marker.exists() {
            std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
        }
        Ok(())
    }

    /// Per-atom baseline of compositions.
    pub fn predict(&self, comps: &[Composition], batch: usize) -> Result<Vec<f64>> {
        baseline_predict(&self.members, comps, self.elemental_zero, batch)
    }
}

/// The directory of a stacked model's baseline, inside the model directory.
pub const BASELINE_DIR: &str = "baseline";

/// One input to `Ensemble::predict`.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Structure(&'a Structure),
    /// Compositional models only.
    Composition(&'a Composition),
}

impl Input<'_> {
    fn composition(&self) -> Composition {
        match self {
            Input::Structure(s) => s.composition(),
            Input::Composition(c) => (*c).clone(),
        }
    }
}

/// A trained model as `predict` runs it: the members and, for a stacked model, its baseline.
#[derive(Clone, Debug)]
pub struct Ensemble {
    pub members: Vec<Member>,
    pub baseline: Option<Baseline>,
}

impl Ensemble {
    /// A model directory (members and `baseline/`) or one member file (no baseline).
    pub fn load(path: &Path) -> Result<Ensemble> {
        Ok(Ensemble { members: load_members(path)?, baseline: Baseline::of_model_dir(path)? })
    }

    pub fn kind(&self) -> ModelKind {
        self.members[0].kind
    }

    /// Predictions per input: the members' median (and IQR) plus the baseline's median for the
    /// input's composition when the model is stacked. A structural model takes structures only
    /// (each at every volume factor of `factors`, keeping the lowest median: `predict_structures`);
    /// a compositional one takes both and uses a structure's composition. An input a structural
    /// model cannot take is an error naming its index.
    pub fn predict(&self, inputs: &[Input], factors: &[f64], batch: usize) -> Result<Vec<Prediction>> {
        let mut preds = match self.kind() {
            ModelKind::Structural => {
                let structures = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, x)| match x {
                        Input::Structure(s) => Ok((*s).clone()),
                        Input::Composition(_) => Err(Error::config(
                            "data",
                            format!("input {i} is a composition; a structural model needs structures"),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?;
                predict_structures(&self.members, &structures, factors, batch)?
            }
            ModelKind::Compositional => {
                let graphs =
                    inputs.iter().map(|x| graph::composition_graph(&x.composition())).collect::<Result<Vec<_>>>()?;
                ensemble_predict(&self.members, &graphs.iter().collect::<Vec<_>>(), batch)?
            }
        };
        if let Some(b) = &self.baseline {
            let comps: Vec<Composition> = inputs.iter().map(Input::composition).collect();
            for (p, base) in preds.iter_mut().zip(b.predict(&comps, 2 * batch)?) {
                p.energy_per_atom += base;
                p.energy = p.energy_per_atom * p.atoms;
                p.members.iter_mut().for_each(|m| *m += base);
            }
        }
        Ok(preds)
    }
}

/// The model octet ships, used by `octet materials predict` without `--model`: a structural ensemble
/// of 3 members stacked on a 1-member compositional baseline with elemental zero, F16 weights
/// (4.8 MB, `crates/materials/data/default_model/`, written by `examples/ship_default_model.rs`).
/// Recipe (a smaller version of BENCHMARKS.md's best, sized to ship):
/// `train --model compositional --data oqmd_form_enthalpy.jsonl --epochs 12 --patience 12 --batch 128
/// --lr 2e-3 --out oqmd2`; `train --model compositional --data mp_e_form.jsonl --epochs 24 --patience
/// 24 --batch 128 --lr 2e-3 --init-from oqmd2 --out mp1m`; `train --model structural --epochs 60
/// --patience 20 --batch 32 --lr 1e-3 --init-from mp1m --baseline mp1m --elemental-zero --ensemble 3`.
/// Trained on Materials Project data (flla_2015 via matminer, matbench mp_e_form via crabnet; CC BY
/// 4.0) and OQMD (via crabnet; CC BY 4.0): see the LICENSE note beside the weights.
pub const DEFAULT_MODEL_NOTE: &str = include_str!("../data/default_model/LICENSE.md");

/// Held-out MAE of the shipped default model (eV/atom): flla_2015's 588 held-out-formula structures,
/// `octet materials predict --data flla_2015.jsonl --held-out` with the F16 weights (the F32 weights
/// before conversion: 0.081487; median error 0.030, mean IQR 0.014).
pub const DEFAULT_MODEL_HELD_OUT_MAE: f64 = 0.081485;

const DEFAULT_MEMBERS: [&[u8]; 3] = [
    include_bytes!("../data/default_model/member-0.safetensors"),
    include_bytes!("../data/default_model/member-1.safetensors"),
    include_bytes!("../data/default_model/member-2.safetensors"),
];
const DEFAULT_BASELINE: [&[u8]; 1] = [include_bytes!("../data/default_model/baseline/member-0.safetensors")];
/// The shipped baseline was trained with `--elemental-zero` (its directory has the marker; a test
/// checks the two agree).
const DEFAULT_ELEMENTAL_ZERO: bool = true;

impl Ensemble {
    /// The model octet ships (see `DEFAULT_MODEL_NOTE`), from the weights compiled into the binary.
    pub fn default_model() -> Result<Ensemble> {
        let parse =
            |bytes: &[u8], name: String| parse_member(bytes, Path::new(&format!("<built-in default model>/{name}")));
        let members = DEFAULT_MEMBERS
            .iter()
            .enumerate()
            .map(|(k, b)| parse(b, format!("member-{k}.safetensors")))
            .collect::<Result<Vec<_>>>()?;
        let base = DEFAULT_BASELINE
            .iter()
            .enumerate()
            .map(|(k, b)| parse(b, format!("{BASELINE_DIR}/member-{k}.safetensors")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Ensemble { members, baseline: Some(Baseline { members: base, elemental_zero: DEFAULT_ELEMENTAL_ZERO }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_in_a_members_tensor_data_fails_naming_the_file() {
        let cfg = GnnConfig { width: 8, steps: 2, basis_dim: 0, avg_adjacency: 2.0, scale: 1.0, shift: 0.0 };
        let model = Gnn::<f32>::init(cfg, 3).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("member-0.safetensors");
        save_member(&p, ModelKind::Compositional, graph::CUTOFF, 3, 0.1, &model).unwrap();
        let m = load_member(&p).unwrap();
        assert!(m.model.params.iter().zip(model.params.iter()).all(|(a, b)| a.1 == b.1));
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x10; // inside the last tensor's data
        std::fs::write(&p, &bytes).unwrap();
        let e = load_member(&p).unwrap_err().to_string();
        assert!(e.contains("member-0.safetensors") && e.contains("damaged"), "{e}");
    }

    /// With `elemental_zero` a pure element's baseline is exactly 0 and every compound's is the
    /// ensemble median; without it, the median everywhere.
    #[test]
    fn elemental_baseline_is_zero_and_compounds_unchanged() {
        let members = compositional(0..3, 0.7);
        let comps: Vec<crate::Composition> =
            ["C", "Fe2O3", "O2"].iter().map(|f| crate::Composition::parse(f).unwrap()).collect();
        let plain = baseline_predict(&members, &comps, false, 2).unwrap();
        let zeroed = baseline_predict(&members, &comps, true, 2).unwrap();
        assert!(plain[0] != 0.0 && plain[2] != 0.0);
        assert_eq!((zeroed[0], zeroed[1], zeroed[2]), (0.0, plain[1], 0.0));
    }

    fn compositional(seeds: std::ops::Range<u64>, shift: f64) -> Vec<Member> {
        let cfg = GnnConfig { width: 8, steps: 2, basis_dim: 0, avg_adjacency: 2.0, scale: 1.0, shift };
        seeds
            .map(|seed| Member {
                kind: ModelKind::Compositional,
                cutoff: graph::CUTOFF,
                seed,
                valid_mae: 0.0,
                model: Gnn::<f32>::init(cfg.clone(), seed).unwrap(),
            })
            .collect()
    }

    /// F16 storage halves the tensor bytes and loads as the f16-rounded weights, checksum included.
    #[test]
    fn f16_members_load_as_their_rounded_weights() {
        let m = compositional(0..1, 0.3).remove(0);
        let d = tempfile::tempdir().unwrap();
        let (p32, p16) = (d.path().join("a.safetensors"), d.path().join("b.safetensors"));
        save_member_as(&p32, &m, Storage::F32).unwrap();
        save_member_as(&p16, &m, Storage::F16).unwrap();
        let n = m.model.params.data.len();
        let (s32, s16) = (std::fs::metadata(&p32).unwrap().len(), std::fs::metadata(&p16).unwrap().len());
        // 2 bytes fewer per weight; the headers differ only in offsets' digits and 8-byte padding.
        assert!(s16 < s32 && s32 - s16 + 8 >= 2 * n as u64, "{s32} vs {s16} for {n} weights");
        let back = load_member(&p16).unwrap();
        for (a, b) in back.model.params.data.iter().zip(&m.model.params.data) {
            assert_eq!(*a, half::f16::from_f32(*b).to_f32());
        }
        assert_eq!((back.kind, back.seed), (m.kind, m.seed));
    }

    /// A stacked model's prediction is the members' median plus the baseline's, which `save` and
    /// `of_model_dir` carry through the model directory with its elemental-zero marker.
    #[test]
    fn stacked_prediction_adds_the_saved_baseline_back() {
        let d = tempfile::tempdir().unwrap();
        let members = compositional(0..3, 0.1);
        for (k, m) in members.iter().enumerate() {
            save_member(&d.path().join(format!("member-{k}.safetensors")), m.kind, m.cutoff, m.seed, 0.0, &m.model)
                .unwrap();
        }
        let base = Baseline { members: compositional(7..9, -1.0), elemental_zero: true };
        base.save(d.path()).unwrap();
        let stacked = Ensemble::load(d.path()).unwrap();
        let loaded = stacked.baseline.as_ref().unwrap();
        assert!(loaded.elemental_zero && loaded.members.len() == 2);
        let comps: Vec<Composition> = ["Fe2O3", "Cu"].iter().map(|f| Composition::parse(f).unwrap()).collect();
        let inputs: Vec<Input> = comps.iter().map(Input::Composition).collect();
        let alone = Ensemble { members: members.clone(), baseline: None }.predict(&inputs, &[1.0], 4).unwrap();
        let with = stacked.predict(&inputs, &[1.0], 4).unwrap();
        let b = base.predict(&comps, 4).unwrap();
        assert_eq!(b[1], 0.0);
        for i in 0..2 {
            assert!((with[i].energy_per_atom - (alone[i].energy_per_atom + b[i])).abs() < 1e-12);
            assert!((with[i].iqr - alone[i].iqr).abs() < 1e-12);
        }
        // Without the marker the baseline is the plain median.
        Baseline { elemental_zero: false, ..base }.save(d.path()).unwrap();
        assert!(!Ensemble::load(d.path()).unwrap().baseline.unwrap().elemental_zero);
    }

    /// The compiled-in default model is the one in `data/default_model/` (marker included), and it
    /// predicts: rock salt's formation energy is negative, with a spread over members.
    #[test]
    fn default_model_is_the_shipped_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/default_model");
        let (built_in, on_disk) = (Ensemble::default_model().unwrap(), Ensemble::load(&dir).unwrap());
        assert_eq!(built_in.kind(), ModelKind::Structural);
        assert_eq!(on_disk.baseline.as_ref().unwrap().elemental_zero, DEFAULT_ELEMENTAL_ZERO);
        let cif = "data_NaCl\n_symmetry_space_group_name_H-M 'F m -3 m'\n_cell_length_a 5.64\n_cell_length_b 5.64\n\
                   _cell_length_c 5.64\n_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\nloop_\n\
                   _atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\nNa1 0 0 0\nCl1 0.5 0.5 0.5\n";
        let nacl = crate::io::parse_cif(cif, Path::new("nacl.cif")).unwrap();
        assert_eq!(nacl.species.len(), 8);
        let a = built_in.predict(&[Input::Structure(&nacl)], &[1.0], 4).unwrap();
        let b = on_disk.predict(&[Input::Structure(&nacl)], &[1.0], 4).unwrap();
        assert_eq!(a[0].members, b[0].members);
        assert!(a[0].energy_per_atom < 0.0 && a[0].members.len() == 3, "{:?}", a[0]);
        assert!(DEFAULT_MODEL_NOTE.contains("CC BY 4.0"));
    }
}
