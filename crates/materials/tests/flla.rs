//! matminer flla_2015 conversion, the JSON-lines data set format and the formula-hash split: an
//! always-on test on 3 committed rows, bad rows reported with line and reason, and the full CSV when
//! `OCTET_FLLA_CSV` points at it (skipped with a message otherwise).

use std::path::{Path, PathBuf};

use octet_materials::dataset::{
    self, DatasetHeader, Split, convert_flla_csv, read_dataset, read_flla_csv, split_indices, split_of, write_dataset,
};
use octet_materials::{Composition, Element};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flla_2015_3rows.csv")
}

fn header() -> DatasetHeader {
    DatasetHeader::new("formation_energy_per_atom", "eV/atom", "matminer 0.3.9 flla_2015.csv")
}

#[test]
fn three_committed_rows_convert_with_targets_and_formulas() {
    let c = read_flla_csv(&fixture()).unwrap();
    assert!(c.bad.is_empty(), "{}", c.report());
    let ids: Vec<&str> = c.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["mp-10", "mp-10000", "mp-18937"]);
    let formulas: Vec<String> = c.entries.iter().map(|e| e.structure.reduced_formula()).collect();
    // Hf (Pauling 1.3) before S (2.58): the CSV formula column is {'S': 1.0, 'Hf': 2.0}.
    assert_eq!(formulas, ["As", "Hf2S", "V2O3"]);
    assert_eq!(c.entries[0].target, 0.1074050600000005);
    assert_eq!(c.entries[1].target, -1.2533515846874994);
    // mp-10: rhombohedral As, 2 sites, matrix row 0 as stored in the CSV.
    let s = &c.entries[0].structure;
    assert_eq!(s.num_sites(), 2);
    assert_eq!(s.lattice.matrix()[0], [3.35275227, 0.0, 1.93571242]);
    assert_eq!(s.frac_coords[1], [0.75, 0.75, 0.75]);
    assert_eq!(c.entries[2].structure.num_sites(), 10);
}

#[test]
fn bad_rows_are_reported_with_line_and_reason_never_dropped() {
    let text = std::fs::read_to_string(fixture()).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Lines 1-2 comments, 3 header, 4-6 rows. Break rows 5 and 6 in different ways, add a 7th.
    lines[4] = lines[4].replace("-1.2533515846874994,", "n/a,");
    lines[5] = lines[5].replacen("'occu': 1", "'occu': 0.5", 1);
    lines.push(lines[3].replace("'sites': [", "'sites': [[").to_string());
    let c = convert_flla_csv(&lines.join("\n"), Path::new("flla.csv")).unwrap();
    assert_eq!(c.entries.len(), 1, "{}", c.report());
    assert_eq!(c.bad.len(), 3, "{}", c.report());
    assert_eq!((c.bad[0].line, c.bad[0].id.as_str()), (5, "mp-10000"));
    assert!(c.bad[0].reason.contains("`n/a`"), "{}", c.bad[0].reason);
    assert_eq!(c.bad[1].line, 6);
    assert!(c.bad[1].reason.contains("partial occupancy"), "{}", c.bad[1].reason);
    assert_eq!(c.bad[2].line, 7);
    assert!(c.bad[2].reason.contains("structure column"), "{}", c.bad[2].reason);
    assert!(c.report().starts_with("4 rows: 1 converted, 3 bad"), "{}", c.report());
    // A missing required column is an error for the whole file, naming the column.
    let e = convert_flla_csv("a,b\n1,2\n", Path::new("x.csv")).unwrap_err();
    assert!(e.to_string().contains("`structure`"), "{e}");
}

#[test]
fn dataset_write_read_round_trip_is_exact() {
    let c = read_flla_csv(&fixture()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flla.jsonl");
    write_dataset(&path, &header(), &c.entries).unwrap();
    let (h, back) = read_dataset(&path).unwrap();
    assert_eq!(h, header());
    assert_same_entries(&back, &c.entries);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.lines().nth(1).unwrap().starts_with(r#"{"id":"mp-10","formula":"As","lattice":"#), "{text}");
}

#[test]
fn dataset_errors_name_the_line() {
    let c = read_flla_csv(&fixture()).unwrap();
    let text = dataset::dataset_string(&header(), &c.entries).unwrap();
    let bad = text.replacen("\"formula\":\"Hf2S\"", "\"formula\":\"HfS3\"", 1);
    let e = dataset::parse_dataset(&bad, Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("HfS3"), "{e}");
    let bad = text.replacen("\"As\"", "\"Qq\"", 1);
    let e = dataset::parse_dataset(&bad, Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("Qq"), "{e}");
    let e = dataset::parse_dataset("{\"format\":\"other\"}\n", Path::new("d.jsonl")).unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn split_is_by_formula_hash_and_pinned() {
    // Pinned: changing the hash, the bucket rule or the formula ordering must fail this test.
    let pinned: Vec<(&str, Split)> =
        ["Si", "NaCl", "Fe2O3", "LiFePO4", "Hf2S", "V2O3", "As", "SiO2", "Fe", "BaTiO3", "C"]
            .into_iter()
            .map(|f| (f, split_of(f)))
            .collect();
    let valid: Vec<&str> = pinned.iter().filter(|(_, s)| *s == Split::Valid).map(|(f, _)| *f).collect();
    assert_eq!(valid, PINNED_VALID, "{pinned:?}");
    // About 15% of many distinct formulas land in validation.
    let els: Vec<Element> = Element::all().take(86).collect();
    let mut n_valid = 0;
    let mut n = 0;
    for (i, a) in els.iter().enumerate() {
        for b in &els[i + 1..] {
            for k in 1..4 {
                let f = Composition::from_amounts([(*a, 1.0), (*b, k as f64)]).unwrap().reduced_formula();
                n += 1;
                n_valid += (split_of(&f) == Split::Valid) as usize;
            }
        }
    }
    let frac = n_valid as f64 / n as f64;
    // n ~ 11,000: binomial standard deviation sqrt(0.15 * 0.85 / n) ~ 0.0034; allow 4 sigma.
    assert!((frac - 0.15).abs() < 0.014, "validation fraction {frac} over {n} formulas");
}

/// FNV-1a 64 mod 10,000: Fe 164, C 1170 (< 1500); BaTiO3 1573 and the rest above (checked
/// independently in Python).
const PINNED_VALID: &[&str] = &["Fe", "C"];

#[test]
fn full_flla_csv_converts_every_row() {
    let Ok(path) = std::env::var("OCTET_FLLA_CSV") else {
        println!(
            "skipping full_flla_csv_converts_every_row: set OCTET_FLLA_CSV to matminer 0.3.9's \
             matminer/datasets/flla_2015.csv (pip download matminer==0.3.9 --no-deps --no-binary :all:)"
        );
        return;
    };
    let t = std::time::Instant::now();
    let c = read_flla_csv(Path::new(&path)).unwrap();
    println!("{} in {:.2} s", c.report(), t.elapsed().as_secs_f64());
    assert_eq!(c.entries.len() + c.bad.len(), 3938, "{}", c.report());
    assert!(c.bad.is_empty(), "{}", c.report());

    let (train, valid) = split_indices(&c.entries);
    let formulas: std::collections::HashSet<String> = c.entries.iter().map(|e| e.structure.reduced_formula()).collect();
    println!(
        "split: {} train / {} valid entries ({:.1}% valid), {} distinct formulas",
        train.len(),
        valid.len(),
        100.0 * valid.len() as f64 / c.entries.len() as f64,
        formulas.len()
    );
    let side = |idx: &[usize]| -> std::collections::HashSet<String> {
        idx.iter().map(|&i| c.entries[i].structure.reduced_formula()).collect()
    };
    let (train_f, valid_f) = (side(&train), side(&valid));
    assert!(train_f.is_disjoint(&valid_f), "a formula on both sides of the split");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("flla.jsonl");
    write_dataset(&out, &header(), &c.entries).unwrap();
    let (_, back) = read_dataset(&out).unwrap();
    assert_same_entries(&back, &c.entries);
}

/// Equality with a short message naming the first differing entry (the full Debug is huge).
fn assert_same_entries(a: &[dataset::Entry], b: &[dataset::Entry]) {
    assert_eq!(a.len(), b.len());
    if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
        panic!("entry {i} ({}) differs:\n{:?}\n{:?}", b[i].id, a[i], b[i]);
    }
}
