//! The discovery loop end to end on EMT in miniature (one round): its journal, metrics and figure;
//! then the resume contract: a torn last journal line is dropped and nothing journaled is redone,
//! another configuration is refused naming the field, and a second run in the same directory
//! without `resume` is refused. Skipped, with the reason printed, when ASE is missing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use octet_materials::discover::{DiscoverConfig, DiscoverEvent, discover};
use octet_materials::oracle::OracleConfig;

fn ase_available() -> bool {
    Command::new("python3")
        .args(["-c", "import ase.calculators.emt, ase.filters"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn oracle() -> OracleConfig {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/oracles/emt_worker.py");
    let mut c = OracleConfig::new(vec!["python3".into(), script.display().to_string()]);
    c.workers = 2;
    c
}

fn tiny() -> DiscoverConfig {
    let mut c = DiscoverConfig::new(&["Cu", "Au"]);
    c.rounds = 1;
    c.candidates = 12;
    c.select = 4;
    c.control = 4;
    c.bootstrap = 6;
    c.max_atoms = 4;
    c.ensemble = 2;
    c.width = 8;
    c.epochs = 2;
    c.finetune_epochs = 1;
    c.relax_steps = 40;
    c
}

fn kinds(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn emt_round_journal_metrics_and_resume() {
    if !ase_available() {
        eprintln!("skipped: python3 cannot import ase (pip install ase==3.29.0)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let notes = Mutex::new(Vec::new());
    let on = |e: &DiscoverEvent| {
        if let DiscoverEvent::Note(s) | DiscoverEvent::Summary(s) = e {
            notes.lock().unwrap().push(s.clone());
        }
    };
    let cfg = tiny();
    let metrics = discover(&dir, &cfg, &oracle(), false, &on).unwrap();
    assert_eq!(metrics.len(), 1);
    let m = &metrics[0];
    assert_eq!((m["selected"].as_u64(), m["control"].as_u64()), (Some(4), Some(4)));
    for key in ["hit_rate", "hit_rate_25mev", "prevalence", "precision", "recall"] {
        let v = &m[key];
        assert!(v["n"].as_u64().is_some(), "{key}: {v}");
        if let Some(ci) = v["ci95"].as_array() {
            let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
            let x = v["value"].as_f64().unwrap();
            assert!((0.0..=x).contains(&lo) && (x..=1.0).contains(&hi), "{key}: {v}");
        }
    }
    assert!(m["mae_before_training"].as_f64().unwrap().is_finite());
    let k = kinds(&dir);
    assert_eq!(k[0], "config");
    // 2 references + 6 bootstrap, then 4 + 4 (round 1).
    assert_eq!(k.iter().filter(|k| *k == "oracle").count(), 16, "{k:?}");
    assert_eq!(k.iter().filter(|k| *k == "trained").count(), 2);
    assert_eq!(k.last().unwrap(), "round");
    let png = std::fs::read(dir.join("metrics.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().count(), 1);

    // A second run without resume is refused.
    let e = discover(&dir, &cfg, &oracle(), false, &on).err().unwrap().to_string();
    assert!(e.contains("--resume") && e.contains("journal.jsonl"), "{e}");

    // Another configuration is refused, naming the field.
    let mut other = cfg.clone();
    other.select = 5;
    let e = discover(&dir, &other, &oracle(), true, &on).err().unwrap().to_string();
    assert!(e.contains("config.select"), "{e}");

    // A torn last line is dropped; the finished run recomputes nothing.
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("journal.jsonl")).unwrap();
    f.write_all(b"{\"kind\":\"oracle\",\"round\":1,\"res").unwrap();
    drop(f);
    let again = discover(&dir, &cfg, &oracle(), true, &on).unwrap();
    assert_eq!(again, metrics);
    assert_eq!(kinds(&dir), k, "resuming a finished run appends nothing");
    assert!(notes.lock().unwrap().iter().any(|n| n.contains("torn last line")), "{:?}", notes.lock().unwrap());
}

/// `known` + `holdout`: the known structures of the system (and only those) are relaxed in round 0
/// and join the hull; their data-set targets give `dft_mae_*`; held-out candidates give
/// `heldout_mae_*`.
#[test]
fn emt_known_structures_and_held_out_labels() {
    use octet_materials::dataset::{DatasetHeader, Entry, write_dataset};
    use octet_materials::element::Element;
    use octet_materials::lattice::Lattice;
    use octet_materials::structure::Structure;
    if !ase_available() {
        eprintln!("skipped: python3 cannot import ase (pip install ase==3.29.0)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cu, au, pd) =
        (Element::from_symbol("Cu").unwrap(), Element::from_symbol("Au").unwrap(), Element::from_symbol("Pd").unwrap());
    let l1_0 = |a: Element, b: Element| {
        Structure::new(
            Lattice::new([[2.8, 0.0, 0.0], [0.0, 2.8, 0.0], [0.0, 0.0, 3.8]]).unwrap(),
            vec![a, b],
            vec![[0.0; 3], [0.5, 0.5, 0.5]],
        )
        .unwrap()
    };
    let entries = vec![
        Entry { id: "k-CuAu".into(), structure: l1_0(cu, au), target: -0.05 },
        Entry { id: "k-CuPd".into(), structure: l1_0(cu, pd), target: -0.1 }, // not in Cu-Au: skipped
    ];
    let known = tmp.path().join("known.jsonl");
    write_dataset(&known, &DatasetHeader::new("formation_energy_per_atom", "eV/atom", "test"), &entries).unwrap();
    let mut cfg = tiny();
    cfg.known = Some(known);
    cfg.holdout = 0.5;
    let dir = tmp.path().join("run");
    let m = discover(&dir, &cfg, &oracle(), false, &|_| {}).unwrap();
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    assert!(journal.contains("\"known-k-CuAu\"") && !journal.contains("known-k-CuPd"));
    let m = &m[0];
    assert_eq!(m["dft_n"], 1, "{m}");
    assert!(m["dft_mae_after"].as_f64().is_some_and(f64::is_finite), "{m}");
    assert!(m["oracle_vs_dft_n"] == 1, "{m}");
    let held = m["heldout_n"].as_u64().unwrap();
    assert!(held > 0, "half the candidates are held out: {m}");
    assert!(m["heldout_mae_before"].as_f64().is_some() && m["heldout_mae_after"].as_f64().is_some(), "{m}");
}
