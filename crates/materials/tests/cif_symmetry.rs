//! CIFs that name their space group without listing its operations, as people write them: expansion
//! from a Hermann-Mauguin symbol, a Hall symbol or an International Tables number against pymatgen's
//! (tests/golden/cif/symmetry_expansion.json, written by tools/ref/cif_symmetry_golden.py: 118 cases
//! over triclinic to cubic, centred lattices, hexagonal and rhombohedral axes, both origin choices),
//! and the errors for symbols and numbers octet cannot use.

use std::path::{Path, PathBuf};

use octet_materials::Element;
use octet_materials::io::parse_cif;
use serde_json::Value;

/// Fractional coordinates against pymatgen's, per axis and periodically. Both apply exact rational
/// operations (moyo's translations are multiples of 1/12, pymatgen's parsed fractions) to the same
/// decimals, so they differ by round-off (~1e-16) plus the golden file's 12 printed decimals.
const FRAC_TOL: f64 = 1e-9;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/cif/symmetry_expansion.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn same_point(a: &[f64; 3], b: &[f64; 3]) -> bool {
    (0..3).all(|k| {
        let d = a[k] - b[k];
        (d - d.round()).abs() <= FRAC_TOL
    })
}

#[test]
fn space_group_expansion_matches_pymatgen_on_every_golden_case() {
    let g = golden();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let name = format!("{} `{}` ({})", c["tag"].as_str().unwrap(), c["symbol"].as_str().unwrap(), c["number"]);
        let s = match parse_cif(c["cif"].as_str().unwrap(), Path::new("golden.cif")) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let want: Vec<(Element, [f64; 3])> = c["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|site| {
                let v = site.as_array().unwrap();
                let e = Element::from_symbol(v[0].as_str().unwrap()).unwrap();
                (e, std::array::from_fn(|k| v[k + 1].as_f64().unwrap()))
            })
            .collect();
        if s.species.len() != want.len() {
            failures.push(format!("{name}: {} atoms, pymatgen {}", s.species.len(), want.len()));
            continue;
        }
        // Each of pymatgen's sites matched by a distinct site of octet's, same element.
        let mut used = vec![false; want.len()];
        for (e, f) in &want {
            let hit =
                (0..s.species.len()).find(|&i| !used[i] && s.species[i] == *e && same_point(&s.frac_coords[i], f));
            match hit {
                Some(i) => used[i] = true,
                None => {
                    failures.push(format!("{name}: pymatgen's {e} at {f:?} is not among octet's sites"));
                    break;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The CIF a new user writes for rock salt: the symbol and the two sites of the asymmetric unit.
const NACL: &str = "data_NaCl
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

/// Regression (issue 16, item 9): the symbol used to be refused ("expansion from the symbol alone is
/// unsupported"), and a CIF giving only the number was read as P1 (2 atoms, no error).
#[test]
fn hand_written_rock_salt_by_symbol_or_number_gives_the_8_atom_conventional_cell() {
    let p = Path::new("nacl.cif");
    let by_number_old = NACL.replace("_symmetry_space_group_name_H-M 'F m -3 m'", "_symmetry_Int_Tables_number 225");
    let by_number_new = NACL.replace("_symmetry_space_group_name_H-M 'F m -3 m'", "_space_group_IT_number 225");
    let both = NACL.replace("data_NaCl\n", "data_NaCl\n_symmetry_Int_Tables_number 225\n");
    for text in [NACL.to_string(), by_number_old, by_number_new, both] {
        let s = parse_cif(&text, p).unwrap();
        assert_eq!(s.species.len(), 8, "{text}");
        assert_eq!(s.reduced_formula(), "NaCl");
        let na: Vec<&[f64; 3]> =
            s.frac_coords.iter().zip(&s.species).filter(|(_, e)| e.symbol() == "Na").map(|(f, _)| f).collect();
        for want in [[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]] {
            assert!(na.iter().any(|f| same_point(f, &want)), "Na at {want:?} missing: {na:?}");
        }
    }
}

/// Listed operations win over the symbol: a file whose operations are P1's stays as written even
/// though its symbol says F m -3 m (pymatgen reads the operations first too).
#[test]
fn listed_operations_take_precedence_over_the_symbol() {
    let text = NACL
        .replace("loop_\n_atom_site_label", "loop_\n_symmetry_equiv_pos_as_xyz\n'x, y, z'\nloop_\n_atom_site_label");
    assert_eq!(parse_cif(&text, Path::new("t.cif")).unwrap().species.len(), 2);
}

#[test]
fn unknown_or_contradictory_space_groups_are_errors_naming_the_tag_and_line() {
    let p = Path::new("my.cif");
    let err = |t: String| parse_cif(&t, p).unwrap_err().to_string();
    let e = err(NACL.replace("F m -3 m", "F m -3 x"));
    assert!(e.contains("my.cif") && e.contains("line 2") && e.contains("`_symmetry_space_group_name_H-M`"), "{e}");
    assert!(e.contains("unknown space-group symbol `F m -3 x`"), "{e}");
    let e = err(NACL.replace("F m -3 m", "F m -3 m:2"));
    assert!(e.contains("unknown space-group symbol `F m -3 m:2`"), "{e}");
    let e = err(NACL.replace("_symmetry_space_group_name_H-M 'F m -3 m'", "_space_group_IT_number 231"));
    assert!(e.contains("line 2") && e.contains("`_space_group_IT_number`: `231` is not a space-group number"), "{e}");
    let e = err(NACL.replace("data_NaCl\n", "data_NaCl\n_symmetry_Int_Tables_number 221\n"));
    assert!(
        e.contains("line 3") && e.contains("is space group 225, but `_symmetry_Int_Tables_number` (line 2) says 221"),
        "{e}"
    );
    let e = err(NACL.replace("_symmetry_space_group_name_H-M 'F m -3 m'", "_space_group_name_Hall '-F 4vw 2vw x'"));
    assert!(e.contains("line 2") && e.contains("unknown Hall symbol `-F 4vw 2vw x`"), "{e}");
}

/// `?` and `.` are CIF's unknown values: no space group, the sites as written.
#[test]
fn unknown_values_mean_no_space_group() {
    for v in ["?", "."] {
        let text = NACL.replace("'F m -3 m'", v);
        assert_eq!(parse_cif(&text, Path::new("t.cif")).unwrap().species.len(), 2, "{v}");
    }
}

/// A short file naming a 192-operation group for many general sites in a small cell stops at close
/// packing with an error naming the site's line, before the quadratic duplicate search grows.
#[test]
fn expansion_denser_than_close_packing_is_refused_early() {
    let mut text = NACL.replace("5.64", "3.0");
    for k in 0..200 {
        text.push_str(&format!("X{k} 0.{:03} 0.{:03} 0.{:03}\n", 101 + k, 307 + k, 503 + k).replace('X', "Na"));
    }
    let e = parse_cif(&text, Path::new("dense.cif")).unwrap_err().to_string();
    assert!(e.contains("dense.cif") && e.contains("denser than the closest packing"), "{e}");
}
