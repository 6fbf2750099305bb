//! `octet materials discover --oracle emt`, CI size, SIGKILLed at random moments and resumed: the
//! run finishes, and no journaled oracle result is ever recomputed (every request id has exactly
//! one `oracle` line in the journal). Skipped, with the reason printed, when ASE is missing.
//!
//! `OCTET_DISCOVER_KILLS` sets the number of kills (default 3, CI-cheap; the bar is 20:
//! `OCTET_DISCOVER_KILLS=20 cargo test --release -p octet-cli --test discover_kill -- --nocapture`).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn ase_available() -> bool {
    Command::new("python3")
        .args(["-c", "import ase.calculators.emt, ase.filters"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn discover(dir: &std::path::Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_octet"));
    c.args(["materials", "discover", "--oracle", "emt", "--elements", "Cu,Ag,Au,Pd"]);
    c.args(["--rounds", "2", "--candidates", "30", "--select", "6", "--control", "6", "--bootstrap", "10"]);
    c.args(["--max-atoms", "4", "--ensemble", "2", "--width", "16", "--epochs", "4", "--finetune-epochs", "2"]);
    c.args(["--relax-steps", "60", "--workers", "2", "--quiet", "--dir"]);
    c.arg(dir);
    if resume {
        c.arg("--resume");
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Oracle lines per id in the journal (ignoring a torn last line).
fn oracle_counts(dir: &std::path::Path) -> (HashMap<String, usize>, usize) {
    let text = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    let mut counts = HashMap::new();
    let mut planned = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        match v["kind"].as_str() {
            Some("oracle") => *counts.entry(v["result"]["id"].as_str().unwrap().to_string()).or_insert(0) += 1,
            Some("plan") => planned += v["items"].as_array().unwrap().len(),
            _ => {}
        }
    }
    (counts, planned)
}

#[test]
fn discover_survives_sigkill_and_recomputes_nothing() {
    if !ase_available() {
        eprintln!("skipped: python3 cannot import ase (pip install ase==3.29.0)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let t0 = Instant::now();
    let mut state: u64 = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1;
    let mut kills = Vec::new();
    // Kill k of n once the journal holds a random number of lines in the k-th n-th of a whole
    // run's ~47 (config, 3 plans, 38 results, 3 trained, 2 rounds), plus a random 0-400 ms: kills
    // land among oracle calls, planning and training.
    let n: u64 = match std::env::var("OCTET_DISCOVER_KILLS") {
        Ok(v) => v.parse().ok().filter(|&n| n >= 1).expect("OCTET_DISCOVER_KILLS: a number >= 1"),
        Err(_) => 3,
    };
    let span = 43 / n + 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for k in 0..n {
        let mut child = discover(&run, k > 0).spawn().unwrap();
        let target = 4 + 43 * k / n + next() % span;
        let ms = next() % 400;
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(60) {
            let lines = std::fs::read_to_string(run.join("journal.jsonl")).map_or(0, |t| t.lines().count() as u64);
            if lines >= target {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(ms));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        let (counts, planned) = oracle_counts(&run);
        kills.push((target, ms, finished, counts.values().sum::<usize>(), planned));
        assert!(counts.values().all(|&n| n == 1), "a result was recomputed after kill {k}: {counts:?}");
    }
    let out = discover(&run, true).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "final resume failed: {stderr}");
    let (counts, planned) = oracle_counts(&run);
    eprintln!(
        "kills (journal lines waited for, then ms, had finished, oracle lines, planned): {kills:?}; final {} / {planned}",
        counts.len()
    );
    eprintln!("{stderr}");
    assert!(counts.values().all(|&n| n == 1), "a result was recomputed: {counts:?}");
    assert_eq!(counts.len(), planned, "every planned request has exactly one result");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    assert!(std::fs::metadata(run.join("metrics.png")).unwrap().len() > 100);
    let before_end = kills.iter().filter(|k| !k.2).count();
    eprintln!(
        "{n} kills ({before_end} before the run had finished); kill test wall time {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
