//! Structure file format tests: round trips for CIF, POSCAR and extended XYZ, symmetry expansion of
//! hand-written ICSD- and pymatgen-dialect CIFs, and malformed inputs whose errors must name the
//! offending line.

use std::path::{Path, PathBuf};

use octet_core::Error;
use octet_materials::io::{self, cif_string, extxyz_string, parse_cif, parse_extxyz, parse_poscar, poscar_string};
use octet_materials::{Element, Lattice, Structure};

/// Lattice parameters recomputed from a matrix (CIF stores only a, b, c, alpha, beta, gamma):
/// relative error of a few ulps through sqrt and acos.
const PARAM_TOL: f64 = 1e-10;
/// Fractional coordinates through Cartesian and back (XYZ stores positions in A): a few ulps times
/// the condition number of a mildly skewed cell.
const FRAC_TOL: f64 = 1e-12;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn el(s: &str) -> Element {
    Element::from_symbol(s).unwrap()
}

/// A triclinic cell with species out of order and coordinates outside [0, 1).
fn triclinic() -> Structure {
    let l = Lattice::from_parameters(4.1, 5.3, 6.7, 81.0, 97.5, 112.25).unwrap();
    Structure::new(
        l,
        vec![el("Si"), el("O"), el("O"), el("Si"), el("Fe")],
        vec![[0.1, 0.2, 0.3], [0.6, 0.1, 0.9], [-0.2, 0.55, 0.45], [1.3, 0.8, 0.05], [0.45, 0.45, 0.7]],
    )
    .unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn assert_same_params(a: &Lattice, b: &Lattice) {
    for (x, y) in a.lengths().iter().zip(b.lengths()).chain(a.angles().iter().zip(b.angles())) {
        assert!(close(*x, y, PARAM_TOL), "{x} vs {y}");
    }
}

/// The error must be a format error at `line`, with `needle` in its message.
fn assert_line_error(err: Error, line: usize, needle: &str) {
    let text = err.to_string();
    match &err {
        Error::Format { field, .. } => assert_eq!(field, &format!("line {line}"), "{text}"),
        _ => panic!("not a format error: {text}"),
    }
    assert!(text.contains(needle), "`{needle}` not in: {text}");
}

// ---- CIF ----

#[test]
fn cif_round_trip_keeps_species_order_and_exact_fractions() {
    let s = triclinic();
    let back = parse_cif(&cif_string(&s), Path::new("t.cif")).unwrap();
    assert_eq!(back.species, s.species);
    assert_eq!(back.frac_coords, s.frac_coords);
    assert_same_params(&back.lattice, &s.lattice);
}

#[test]
fn icsd_si_diamond_expands_192_operations_to_8_atoms() {
    let s = io::read_cif(&data("Si_diamond_icsd.cif")).unwrap();
    assert_eq!(s.num_sites(), 8);
    assert_eq!(s.reduced_formula(), "Si");
    assert!(close(s.lattice.lengths()[0], 5.4307, 1e-15));
    // Every atom has 4 neighbours at a sqrt(3) / 4 and none closer.
    let nl = s.neighbor_list(2.5).unwrap();
    assert_eq!(nl.len(), 8 * 4);
    let bond = 5.4307 * 3f64.sqrt() / 4.0;
    assert!(nl.distances.iter().all(|d| (d - bond).abs() < 1e-9));
    // All coordinates wrapped into [0, 1) and on the 1/8 grid.
    for f in &s.frac_coords {
        for x in f {
            assert!((0.0..1.0).contains(x));
            assert!(((x * 8.0) - (x * 8.0).round()).abs() < 1e-12);
        }
    }
}

#[test]
fn pymatgen_rutile_with_oxidation_states_expands_to_six_atoms() {
    let s = io::read_cif(&data("TiO2_rutile_pymatgen.cif")).unwrap();
    assert_eq!(s.num_sites(), 6);
    assert_eq!(s.reduced_formula(), "TiO2");
    assert_eq!(s.species, [el("Ti"), el("Ti"), el("O"), el("O"), el("O"), el("O")]);
}

#[test]
fn space_group_symop_tags_are_read_like_symmetry_equiv_tags() {
    let text = std::fs::read_to_string(data("TiO2_rutile_pymatgen.cif")).unwrap();
    for new_tag in ["_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz"] {
        let t = text
            .replace("_symmetry_equiv_pos_as_xyz", new_tag)
            .replace("_symmetry_equiv_pos_site_id", "_space_group_symop_id");
        let s = parse_cif(&t, Path::new("t.cif")).unwrap();
        assert_eq!(s.num_sites(), 6, "{new_tag}");
    }
}

#[test]
fn cif_without_type_symbols_falls_back_to_labels() {
    let text = "data_x\n_cell_length_a 4.0\n_cell_length_b 4.0\n_cell_length_c 4.0\n\
                _cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n\
                loop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n\
                Na1 0 0 0\nCl1a 0.5 0.5 0.5\n";
    let s = parse_cif(text, Path::new("t.cif")).unwrap();
    assert_eq!(s.species, [el("Na"), el("Cl")]);
}

const CIF_HEAD: &str = "data_x\n_cell_length_a 4.0\n_cell_length_b 4.0\n_cell_length_c 4.0(1)\n\
_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n\
loop_\n_atom_site_type_symbol\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n\
_atom_site_occupancy\n";
// CIF_HEAD is 14 lines, so the first atom row is line 15.

#[test]
fn cif_partial_occupancy_is_an_unsupported_error_at_its_line() {
    let text = format!("{CIF_HEAD}Na Na1 0 0 0 1.0\nCl Cl1 0.5 0.5 0.5 0.5\n");
    assert_line_error(parse_cif(&text, Path::new("t.cif")).unwrap_err(), 16, "partial occupancy");
}

#[test]
fn cif_malformed_inputs_name_the_line() {
    let p = Path::new("bad.cif");
    // Bad number in the cell.
    let t = CIF_HEAD.replace("_cell_length_b 4.0", "_cell_length_b 4.O") + "Na Na1 0 0 0 1\n";
    assert_line_error(parse_cif(&t, p).unwrap_err(), 3, "_cell_length_b");
    // Incomplete loop row.
    let t = format!("{CIF_HEAD}Na Na1 0 0 0 1\nCl Cl1 0.5 0.5\n");
    assert_line_error(parse_cif(&t, p).unwrap_err(), 16, "incomplete row");
    // Unknown element.
    let t = format!("{CIF_HEAD}Na Na1 0 0 0 1\nXx3+ X1 0.5 0.5 0.5 1\n");
    assert_line_error(parse_cif(&t, p).unwrap_err(), 16, "Xx3+");
    // Bad coordinate.
    let t = format!("{CIF_HEAD}Na Na1 0 0 0 1\nCl Cl1 0.5 half 0.5 1\n");
    assert_line_error(parse_cif(&t, p).unwrap_err(), 16, "half");
    // Unclosed quote.
    let t = format!("{CIF_HEAD}Na 'Na1 0 0 0 1\n");
    assert_line_error(parse_cif(&t, p).unwrap_err(), 15, "never closed");
    // Overlapping atoms: names both rows.
    let t = format!("{CIF_HEAD}Na Na1 0 0 0 1\nCl Cl1 0.01 0 0 1\n");
    let e = parse_cif(&t, p).unwrap_err();
    assert!(e.to_string().contains("line 15") && e.to_string().contains("`Cl1`"), "{e}");
    assert_line_error(e, 16, "closer than 0.5 A");
    // An unknown space-group symbol (no operations listed): names the tag and the symbol.
    let t = CIF_HEAD.replace("data_x\n", "data_x\n_symmetry_space_group_name_H-M 'F m -3 q'\n") + "Na Na1 0 0 0 1\n";
    assert_line_error(
        parse_cif(&t, p).unwrap_err(),
        2,
        "_symmetry_space_group_name_H-M`: unknown space-group symbol `F m -3 q`",
    );
    // Unparseable symmetry operation.
    let t = CIF_HEAD.replace("data_x\n", "data_x\nloop_\n_symmetry_equiv_pos_as_xyz\n'x,y,z'\n'x,y,q'\n")
        + "Na Na1 0 0 0 1\n";
    assert_line_error(parse_cif(&t, p).unwrap_err(), 5, "x,y,q");
    // No atom sites at all.
    assert!(parse_cif("data_x\n_cell_length_a 4\n", p).unwrap_err().to_string().contains("_atom_site_fract_x"));
}

// ---- POSCAR ----

#[test]
fn poscar_round_trip_is_exact_and_keeps_site_order() {
    let s = triclinic();
    let text = poscar_string(&s);
    assert!(text.contains("\nSi O Si Fe\n1 2 1 1\nDirect\n"), "{text}");
    let back = parse_poscar(&text, Path::new("POSCAR")).unwrap();
    assert_eq!(back, s);
}

const POSCAR: &str = "NaCl test\n1.0\n4.0 0.0 0.0\n0.0 4.0 0.0\n0.0 0.0 4.0\nNa Cl\n1 1\nDirect\n0 0 0\n0.5 0.5 0.5\n";

#[test]
fn poscar_negative_scale_is_the_volume_and_cartesian_is_scaled() {
    let t =
        POSCAR.replace("\n1.0\n", "\n-125.0\n").replace("Direct\n0 0 0\n0.5 0.5 0.5", "Cartesian\n0 0 0\n2.0 2.0 2.0");
    let s = parse_poscar(&t, Path::new("POSCAR")).unwrap();
    assert!(close(s.lattice.volume(), 125.0, 1e-12));
    // Scale 5/4 applied to the lattice and to Cartesian positions alike: still the cell centre.
    for x in s.frac_coords[1] {
        assert!(close(x, 0.5, 1e-12));
    }
}

#[test]
fn poscar_selective_dynamics_and_potcar_suffixes_are_accepted() {
    let t = POSCAR
        .replace("Na Cl\n", "Na_pv Cl/a1b2c3\n")
        .replace("Direct\n0 0 0\n0.5 0.5 0.5", "Selective dynamics\nDirect\n0 0 0 T T F\n0.5 0.5 0.5 F F F Cl");
    let s = parse_poscar(&t, Path::new("CONTCAR")).unwrap();
    assert_eq!(s.species, [el("Na"), el("Cl")]);
}

#[test]
fn poscar_vasp4_uses_comment_symbols_or_fails_clearly() {
    let t = POSCAR.replace("NaCl test", "Na Cl").replace("Na Cl\n1 1\n", "1 1\n");
    assert_eq!(parse_poscar(&t, Path::new("POSCAR")).unwrap().species, [el("Na"), el("Cl")]);
    let t = POSCAR.replace("Na Cl\n1 1\n", "1 1\n");
    assert_line_error(parse_poscar(&t, Path::new("POSCAR")).unwrap_err(), 6, "VASP 4");
}

#[test]
fn poscar_malformed_inputs_name_the_line() {
    let p = Path::new("POSCAR");
    assert_line_error(parse_poscar(&POSCAR.replace("\n1.0\n", "\none\n"), p).unwrap_err(), 2, "scaling");
    assert_line_error(parse_poscar(&POSCAR.replace("0.0 4.0 0.0", "0.0 4.0"), p).unwrap_err(), 4, "three numbers");
    assert_line_error(parse_poscar(&POSCAR.replace("0.0 0.0 4.0", "0.0 4.0 0.0"), p).unwrap_err(), 3, "degenerate");
    assert_line_error(parse_poscar(&POSCAR.replace("Na Cl\n", "Na Qq\n"), p).unwrap_err(), 6, "Qq");
    assert_line_error(parse_poscar(&POSCAR.replace("1 1\n", "1 1 1\n"), p).unwrap_err(), 7, "3 counts for 2 species");
    assert_line_error(parse_poscar(&POSCAR.replace("0.5 0.5 0.5", "0.5 x 0.5"), p).unwrap_err(), 10, "0.5 x 0.5");
    assert_line_error(parse_poscar(&POSCAR.replace("\n0.5 0.5 0.5\n", "\n"), p).unwrap_err(), 10, "file ends");
    let e = parse_poscar(&POSCAR.replace("0.5 0.5 0.5", "0.01 0 0"), p).unwrap_err();
    assert!(e.to_string().contains("lines 9 and 10"), "{e}");
    let t = POSCAR.replace("Direct\n0 0 0\n", "Selective dynamics\nDirect\n0 0 0 T T\n");
    assert_line_error(parse_poscar(&t, p).unwrap_err(), 10, "T/F");
}

// ---- extended XYZ ----

#[test]
fn extxyz_round_trip_keeps_lattice_and_energy() {
    let s = triclinic();
    let text = extxyz_string(&s, Some(-12.345678901234)) + &extxyz_string(&s, None);
    let frames = parse_extxyz(&text, Path::new("t.xyz")).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].energy, Some(-12.345678901234));
    assert_eq!(frames[1].energy, None);
    let back = &frames[0].structure;
    assert_eq!(back.lattice, s.lattice);
    assert_eq!(back.species, s.species);
    for (a, b) in back.frac_coords.iter().zip(&s.frac_coords) {
        for k in 0..3 {
            assert!((a[k] - b[k]).abs() < FRAC_TOL, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn extxyz_finds_columns_among_extra_properties() {
    let t = "2\nenergy=-1.5 Properties=Z:I:1:species:S:1:forces:R:3:pos:R:3 Lattice=\"4 0 0 0 4 0 0 0 4\" pbc=\"T T T\"\n\
             11 Na 0 0 0 0 0 0\n17 Cl 0 0 0 2 2 2\n";
    let f = parse_extxyz(t, Path::new("t.xyz")).unwrap();
    assert_eq!(f[0].energy, Some(-1.5));
    assert_eq!(f[0].structure.species, [el("Na"), el("Cl")]);
    assert_eq!(f[0].structure.frac_coords[1], [0.5, 0.5, 0.5]);
}

#[test]
fn extxyz_malformed_inputs_name_the_line() {
    let p = Path::new("t.xyz");
    let good = "2\nLattice=\"4 0 0 0 4 0 0 0 4\" Properties=species:S:1:pos:R:3 energy=-1.0\nNa 0 0 0\nCl 2 2 2\n";
    assert_line_error(parse_extxyz(&good.replacen("2\n", "two\n", 1), p).unwrap_err(), 1, "atom count");
    assert_line_error(
        parse_extxyz(&good.replace("Lattice=\"4 0 0 0 4 0 0 0 4\" ", ""), p).unwrap_err(),
        2,
        "non-periodic",
    );
    assert_line_error(
        parse_extxyz(&good.replace("4 0 0 0 4 0 0 0 4", "4 0 0 0 4 0 0 0"), p).unwrap_err(),
        2,
        "9 numbers",
    );
    assert_line_error(parse_extxyz(&good.replace("-1.0", "low"), p).unwrap_err(), 2, "energy");
    assert_line_error(parse_extxyz(&good.replace("Cl 2 2 2", "Cl 2 2"), p).unwrap_err(), 4, "columns");
    assert_line_error(parse_extxyz(&good.replace("Cl 2 2 2", "Cx 2 2 2"), p).unwrap_err(), 4, "Cx");
    assert_line_error(parse_extxyz(&good.replace("Cl 2 2 2", "Cl 2 y 2"), p).unwrap_err(), 4, "`y`");
    assert_line_error(parse_extxyz(&good.replace("\nCl 2 2 2", ""), p).unwrap_err(), 4, "file ends");
    let t = good.replace("energy=-1.0", "pbc=\"T T F\"");
    assert_line_error(parse_extxyz(&t, p).unwrap_err(), 2, "periodic");
    let e = parse_extxyz(&good.replace("Cl 2 2 2", "Cl 0.1 0 0"), p).unwrap_err();
    assert!(e.to_string().contains("lines 3 and 4"), "{e}");
}

// ---- hostile inputs (issue 19): a clear error, never a panic, an abort or a hang ----

/// Generous wall-clock bound for refusing a hostile file (the fix makes these microseconds).
const REFUSE_SECONDS: f64 = 2.0;

#[test]
fn cif_loop_without_values_is_an_error() {
    let p = Path::new("empty_loop.cif");
    let cell = CIF_HEAD.split("loop_\n").next().unwrap();
    // Line 8 is the `loop_`.
    assert_line_error(parse_cif(&format!("{cell}loop_\n_atom_site_fract_x\n"), p).unwrap_err(), 8, "no values");
    let t = format!("{cell}loop_\n_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n");
    assert_line_error(parse_cif(&t, p).unwrap_err(), 8, "`_atom_site_fract_x`");
    // The atom loop itself empty, another loop after it.
    assert_line_error(parse_cif(&format!("{CIF_HEAD}loop_\n_x\n1\n"), p).unwrap_err(), 8, "no values");
}

#[test]
fn cif_absurd_cell_lengths_are_refused() {
    let p = Path::new("huge.cif");
    let row = "Na Na1 0 0 0 1\n";
    // Was a capacity overflow in the neighbour list.
    let t = CIF_HEAD.replace("_cell_length_a 4.0", "_cell_length_a 1e300") + row;
    assert_line_error(parse_cif(&t, p).unwrap_err(), 7, "lattice vector a is 1.000e300 A long");
    // Was an allocation abort (1e12 neighbour bins).
    let t = CIF_HEAD.replace("_cell_length_c 4.0(1)", "_cell_length_c 1.8e19") + row;
    assert_line_error(parse_cif(&t, p).unwrap_err(), 7, "lattice vector c is 1.800e19 A long");
}

#[test]
fn poscar_huge_atom_counts_are_errors_not_allocations() {
    let p = Path::new("POSCAR");
    let max = u64::MAX.to_string();
    for counts in [format!("0 {max}"), "4294967296 1".to_string(), "1 100000000000".to_string()] {
        let t = POSCAR.replace("\n1 1\n", &format!("\n{counts}\n"));
        assert_line_error(parse_poscar(&t, p).unwrap_err(), 11, "file ends");
    }
    // A total that overflows usize.
    let t = POSCAR.replace("\n1 1\n", &format!("\n{max} {max}\n"));
    assert_line_error(parse_poscar(&t, p).unwrap_err(), 7, "overflow");
}

#[test]
fn extxyz_huge_atom_counts_are_errors_not_allocations() {
    let p = Path::new("t.xyz");
    let good = "2\nLattice=\"4 0 0 0 4 0 0 0 4\" Properties=species:S:1:pos:R:3\nNa 0 0 0\nCl 2 2 2\n";
    for n in [u64::MAX.to_string(), "100000000000".to_string()] {
        let t = good.replacen("2\n", &format!("{n}\n"), 1);
        assert_line_error(parse_extxyz(&t, p).unwrap_err(), 5, "file ends at atom 3");
    }
}

#[test]
fn poscar_huge_lattice_vector_is_refused_quickly() {
    let p = Path::new("POSCAR");
    // Rutile-like cell; the sheared vector made the image search take 15.7 s (1e8) and over a
    // minute (1e10); as the first vector it is simply too long.
    let base = "TiO2\n1.0\n4.594 0 0\n0 4.594 0\n0 0 2.959\nTi O\n2 4\nDirect\n0 0 0\n0.5 0.5 0.5\n\
                0.3 0.3 0\n0.7 0.7 0\n0.8 0.2 0.5\n0.2 0.8 0.5\n";
    assert!(parse_poscar(base, p).is_ok());
    for (line, row, needle) in [
        (3, "1e8 4.594 0", "lattice vector a is 1.000e8 A long"),
        (3, "1e10 4.594 0", "lattice vector a is 1.000e10 A long"),
        (4, "1e8 4.594 0", "lattice vector b is 1.000e8 A long"),
        (4, "1e10 4.594 0", "lattice vector b is 1.000e10 A long"),
        // Short enough, but so sheared that the image search would visit 200 times too many images.
        (4, "1000 4.594 0", "too sheared"),
    ] {
        let t = if line == 3 { base.replacen("4.594 0 0", row, 1) } else { base.replacen("0 4.594 0", row, 1) };
        let t0 = std::time::Instant::now();
        let e = parse_poscar(&t, p).unwrap_err();
        let dt = t0.elapsed().as_secs_f64();
        assert!(dt < REFUSE_SECONDS, "{row} on line {line}: {dt} s");
        // Lattice problems are reported at the first lattice line.
        assert_line_error(e, 3, needle);
    }
}

#[test]
fn structures_denser_than_close_packing_are_refused_before_the_overlap_search() {
    // 20,000 atoms in a 4 A cube: the overlap search would visit 4e8 pairs.
    let n = 20_000;
    let mut t = format!("dense\n1.0\n4 0 0\n0 4 0\n0 0 4\nNa\n{n}\nDirect\n");
    for i in 0..n {
        t.push_str(&format!("{} 0.5 0.5\n", i as f64 / n as f64));
    }
    let t0 = std::time::Instant::now();
    let e = parse_poscar(&t, Path::new("POSCAR")).unwrap_err();
    assert!(t0.elapsed().as_secs_f64() < REFUSE_SECONDS);
    assert!(e.to_string().contains("denser than"), "{e}");
}

// ---- dispatch by file name ----

#[test]
fn read_and_write_structure_choose_the_format_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = triclinic();
    for name in ["x.cif", "POSCAR", "x.vasp", "x.extxyz"] {
        let path = dir.path().join(name);
        io::write_structure(&path, &s).unwrap();
        let back = io::read_structure(&path).unwrap();
        assert_eq!(back.species, s.species, "{name}");
        assert_same_params(&back.lattice, &s.lattice);
    }
    let e = io::write_structure(&dir.path().join("x.txt"), &s).unwrap_err();
    assert!(e.to_string().contains("unknown structure format"), "{e}");
    let e = io::read_structure(&dir.path().join("missing.cif")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    // Writers leave no temporary files behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
}
