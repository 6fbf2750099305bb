//! Interoperability: ASE (the reference Python reader) must read the CIF, POSCAR and extended XYZ
//! files octet writes and see the same species order, cell and fractional positions (and the
//! energy in XYZ). Skipped, with a message, when `python3 -c "import ase"` fails.

use std::path::Path;
use std::process::Command;

use octet_materials::io::{self, Frame};
use octet_materials::{Element, Lattice, Structure};

/// ASE recomputes cell parameters and scaled positions from what it parsed; both formats carry
/// shortest round-trip decimals, so only a few ulps of difference are expected.
const TOL: f64 = 1e-9;

const SCRIPT: &str = r#"
import json, sys
import ase.io
out = {}
for path, fmt in zip(sys.argv[1::2], sys.argv[2::2]):
    a = ase.io.read(path, format=fmt)
    try:
        e = a.get_potential_energy()
    except Exception:
        e = a.info.get("energy")
    out[path] = dict(symbols=a.get_chemical_symbols(), cellpar=[float(x) for x in a.cell.cellpar()],
                     frac=a.get_scaled_positions(wrap=False).tolist(), energy=e)
print(json.dumps(out))
"#;

fn ase_available() -> bool {
    Command::new("python3").args(["-c", "import ase"]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn el(s: &str) -> Element {
    Element::from_symbol(s).unwrap()
}

fn structures() -> Vec<(&'static str, Structure)> {
    let tri = Structure::new(
        Lattice::from_parameters(4.1, 5.3, 6.7, 81.0, 97.5, 112.25).unwrap(),
        vec![el("Si"), el("O"), el("O"), el("Si"), el("Fe")],
        vec![[0.1, 0.2, 0.3], [0.6, 0.1, 0.9], [-0.2, 0.55, 0.45], [1.3, 0.8, 0.05], [0.45, 0.45, 0.7]],
    )
    .unwrap();
    let si = io::read_cif(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/Si_diamond_icsd.cif")).unwrap();
    vec![("triclinic", tri), ("si", si)]
}

#[test]
fn ase_reads_what_octet_writes() {
    if !ase_available() {
        println!("skipping ase_reads_what_octet_writes: python3 cannot import ase (pip install ase)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let energy = -7.123456789;
    let mut args = Vec::new();
    let mut expected = Vec::new();
    for (name, s) in structures() {
        let cif = dir.path().join(format!("{name}.cif"));
        io::write_cif(&cif, &s).unwrap();
        let poscar = dir.path().join(format!("{name}.vasp"));
        io::write_poscar(&poscar, &s).unwrap();
        let xyz = dir.path().join(format!("{name}.extxyz"));
        io::write_extxyz(&xyz, &[Frame { structure: s.clone(), energy: Some(energy) }]).unwrap();
        for (path, fmt) in [(cif, "cif"), (poscar, "vasp"), (xyz, "extxyz")] {
            let p = path.to_str().unwrap().to_string();
            args.push(p.clone());
            args.push(fmt.to_string());
            expected.push((p, fmt, s.clone()));
        }
    }
    let out = Command::new("python3").arg("-c").arg(SCRIPT).args(&args).output().unwrap();
    assert!(out.status.success(), "ase failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    for (path, fmt, s) in expected {
        let g = &got[&path];
        let symbols: Vec<String> = serde_json::from_value(g["symbols"].clone()).unwrap();
        let want: Vec<&str> = s.species.iter().map(|e| e.symbol()).collect();
        assert_eq!(symbols, want, "{path}");
        let cellpar: Vec<f64> = serde_json::from_value(g["cellpar"].clone()).unwrap();
        let mine: Vec<f64> = s.lattice.lengths().into_iter().chain(s.lattice.angles()).collect();
        for (a, b) in cellpar.iter().zip(&mine) {
            assert!((a - b).abs() < TOL * (1.0 + b.abs()), "{path}: cell {cellpar:?} vs {mine:?}");
        }
        let frac: Vec<[f64; 3]> = serde_json::from_value(g["frac"].clone()).unwrap();
        for (a, b) in frac.iter().zip(&s.frac_coords) {
            for k in 0..3 {
                // ASE's CIF reader wraps into [0, 1); compare modulo lattice translations there.
                let d = a[k] - b[k];
                let d = if fmt == "cif" { d - d.round() } else { d };
                assert!(d.abs() < TOL, "{path}: {a:?} vs {b:?}");
            }
        }
        if fmt == "extxyz" {
            assert_eq!(g["energy"].as_f64(), Some(energy), "{path}");
        }
    }
}
