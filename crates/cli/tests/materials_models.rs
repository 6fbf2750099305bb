//! `octet materials train` / `predict` / `octet bench materials` end to end on a small synthetic
//! structure data set in a temporary directory: an ensemble trains, writes its members and report,
//! predicts a CIF written by hand (CSV and JSON, with volume augmentation), and bad input is an
//! error naming the file and field.

use std::path::Path;
use std::process::{Command, Output};

use octet_materials::bench::synthetic_structures;
use octet_materials::dataset::{DatasetHeader, Entry, write_dataset};
use serde_json::Value;

fn octet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octet")).args(args).env("OCTET_CACHE", "/nonexistent").output().expect("run octet")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// 80 synthetic crystals; target = a smooth function of composition (mean atomic number).
fn write_data(path: &Path) {
    let entries: Vec<Entry> = synthetic_structures(80)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mean_z = s.species.iter().map(|e| e.z() as f64).sum::<f64>() / s.num_sites() as f64;
            Entry { id: format!("syn-{i}"), target: -0.5 + 0.02 * mean_z, structure: s }
        })
        .collect();
    write_dataset(path, &DatasetHeader::new("formation_energy_per_atom", "eV/atom", "synthetic"), &entries).unwrap();
}

const NACL_CIF: &str = "data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 0 0 0
Na2 0.5 0.5 0
Na3 0.5 0 0.5
Na4 0 0.5 0.5
Cl1 0.5 0 0
Cl2 0 0.5 0
Cl3 0 0 0.5
Cl4 0.5 0.5 0.5
";

#[test]
fn ensemble_trains_and_predicts_a_handwritten_cif() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("syn.jsonl");
    write_data(&data);
    let out = dir.path().join("run");
    let o = octet(&[
        "materials",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--ensemble",
        "2",
        "--epochs",
        "2",
        "--width",
        "8",
        "--steps",
        "2",
        "--batch",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let last: Value = serde_json::from_str(text(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "summary");
    assert!(last["ensemble_test_mae"].as_f64().unwrap().is_finite());
    assert!(out.join("member-0.safetensors").exists() && out.join("member-1.safetensors").exists());
    assert!(out.join("report.json").exists());

    let cif = dir.path().join("nacl.cif");
    std::fs::write(&cif, NACL_CIF).unwrap();
    let o = octet(&["materials", "predict", "--model", out.to_str().unwrap(), cif.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let csv = text(&o.stdout);
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), "id,formula,atoms,energy_per_atom,energy,iqr,volume_factor,target");
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!((row[1], row[2]), ("NaCl", "8"));
    let (e, total): (f64, f64) = (row[3].parse().unwrap(), row[4].parse().unwrap());
    assert!(e.is_finite() && (total - 8.0 * e).abs() < 1e-4, "{csv}");

    let o = octet(&[
        "materials",
        "predict",
        "--model",
        out.to_str().unwrap(),
        cif.to_str().unwrap(),
        "--augment",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    let f = v["volume_factor"].as_f64().unwrap();
    assert!((0.8..=1.2).contains(&f));
}

#[test]
fn bad_inputs_name_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    // A composition data set cannot train a structural model.
    let comp = dir.path().join("comp.jsonl");
    std::fs::write(
        &comp,
        "{\"format\":\"octet-compositions\",\"version\":1,\"target\":\"t\",\"unit\":\"eV/atom\",\"source\":\"s\"}\n{\"id\":\"a:2\",\"formula\":\"NaCl\",\"target\":-2.0,\"split\":\"train\"}\n",
    )
    .unwrap();
    let o = octet(&[
        "materials",
        "train",
        "--data",
        comp.to_str().unwrap(),
        "--out",
        dir.path().join("r").to_str().unwrap(),
    ]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("comp.jsonl") && err.contains("format"), "{err}");
    // No members in the model directory.
    let o = octet(&["materials", "predict", "--model", dir.path().to_str().unwrap(), comp.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("model"), "{err}");
    // A corrupt checkpoint names the file and what is wrong.
    let member = dir.path().join("m.safetensors");
    std::fs::write(&member, b"not safetensors").unwrap();
    let o = octet(&["materials", "predict", "--model", member.to_str().unwrap(), comp.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert!(!o.status.success() && err.contains("m.safetensors") && err.contains("header"), "{err}");
}

#[test]
fn bench_materials_reports_throughput_as_json() {
    let o = octet(&[
        "bench",
        "materials",
        "--structures",
        "40",
        "--width",
        "16",
        "--ensemble",
        "2",
        "--train-steps",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(v["source"], "synthetic supercells");
    for k in ["structures_per_s", "passes_per_s", "graph_structures_per_s", "train_graphs_per_s"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
}

/// Regression (issue 16, items 9 and 10): a hand-written rock-salt CIF that gives only its space-group
/// symbol (or only its number) is expanded to the 8-atom conventional cell, and `predict` without
/// `--model` runs the model that ships with octet (3 members, stacked on a baseline).
#[test]
fn predict_without_model_uses_the_shipped_default_on_a_symbol_only_cif() {
    let dir = tempfile::tempdir().unwrap();
    let by_symbol = dir.path().join("nacl.cif");
    std::fs::write(&by_symbol, NACL_BY_SYMBOL).unwrap();
    let by_number = dir.path().join("nacl_225.cif");
    let numbered =
        NACL_BY_SYMBOL.replace("_symmetry_space_group_name_H-M 'F m -3 m'", "_symmetry_Int_Tables_number 225");
    std::fs::write(&by_number, numbered).unwrap();
    let o =
        octet(&["materials", "predict", by_symbol.to_str().unwrap(), by_number.to_str().unwrap(), "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rows: Vec<Value> = text(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    for v in &rows {
        assert_eq!((v["formula"].as_str(), v["atoms"].as_f64()), (Some("NaCl"), Some(8.0)), "{v}");
        assert_eq!(v["members"].as_array().unwrap().len(), 3);
        // Rock salt is stable: a clearly negative formation energy (MP: -2.1 eV/atom).
        let e = v["energy_per_atom"].as_f64().unwrap();
        assert!((-3.0..-1.0).contains(&e), "{v}");
    }
    assert_eq!(rows[0]["energy_per_atom"], rows[1]["energy_per_atom"]);
    // --held-out selects from a data set only.
    let o = octet(&["materials", "predict", by_symbol.to_str().unwrap(), "--held-out"]);
    assert!(!o.status.success() && text(&o.stderr).contains("held_out"), "{}", text(&o.stderr));
    // The help states the default model's held-out MAE and its data's licence.
    let help = text(&octet(&["materials", "predict", "--help"]).stdout);
    let mae = format!("held-out MAE {:.1} meV/atom", 1e3 * octet_materials::ensemble::DEFAULT_MODEL_HELD_OUT_MAE);
    assert!(help.contains(&mae) && help.contains("CC BY 4.0"), "`{mae}` not in {help}");
}

const NACL_BY_SYMBOL: &str = "data_NaCl
_symmetry_space_group_name_H-M 'F m -3 m'
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 0 0 0
Cl1 0.5 0.5 0.5
";

/// `train --baseline --elemental-zero` copies the compositional ensemble into `<out>/baseline/` with
/// its marker, and `predict` on the directory adds the baseline back: the stacked prediction is the
/// member's residual (the member file alone) plus the baseline's prediction.
#[test]
fn stacked_training_saves_the_baseline_and_predict_adds_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("syn.jsonl");
    write_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (comp, run) = (dir.path().join("comp"), dir.path().join("run"));
    let tiny = ["--epochs", "2", "--width", "8", "--steps", "2", "--batch", "8", "--json"];
    let mut args = vec!["materials", "train", "--model", "compositional"];
    let (d, c, r) = (s(&data), s(&comp), s(&run));
    args.extend(["--data", &d, "--out", &c]);
    args.extend(tiny);
    let o = octet(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut args = vec!["materials", "train", "--data", &d, "--out", &r, "--baseline", &c, "--elemental-zero"];
    args.extend(tiny);
    let o = octet(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(run.join("baseline/member-0.safetensors").exists() && run.join("baseline/elemental-zero").exists());

    let cif = dir.path().join("nacl.cif");
    std::fs::write(&cif, NACL_BY_SYMBOL).unwrap();
    let energy = |model: &Path| {
        let o = octet(&[
            "materials",
            "predict",
            "--model",
            model.to_str().unwrap(),
            cif.to_str().unwrap(),
            "--format",
            "json",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
        v["energy_per_atom"].as_f64().unwrap()
    };
    let (stacked, residual, base) = (energy(&run), energy(&run.join("member-0.safetensors")), energy(&comp));
    assert!((stacked - (residual + base)).abs() < 1e-9, "{stacked} != {residual} + {base}");
}
