//! Oracle protocol: the shipped EMT worker (single points checked against ASE called directly, a
//! cell relaxation with its trajectory), and fake workers that crash, hang, print garbage, return NaN
//! or never start: each bad frame is a failed result with its reason and the others still succeed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use octet_materials::oracle::{OracleConfig, OracleRequest, OracleResult, Task, run_oracle};
use octet_materials::{Element, Lattice, Structure};

fn emt_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/oracles/emt_worker.py")
}

/// EMT tests need ASE (`pip install ase==3.29.0`); without it they print why and pass.
fn have_ase() -> bool {
    let ok = Command::new("python3").args(["-c", "import ase"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipped: `python3 -c 'import ase'` failed (pip install ase==3.29.0)");
    }
    ok
}

fn el(s: &str) -> Element {
    Element::from_symbol(s).unwrap()
}

/// Conventional fcc cell (4 atoms) with lattice constant `a`, repeated `nx` times along x, species
/// in site order, each site displaced by `rattle` times a fixed pattern (A).
fn fcc(a: f64, nx: usize, species: &[&str], rattle: f64) -> Structure {
    let basis = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]];
    let lat = Lattice::new([[a * nx as f64, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]]).unwrap();
    let mut cart = Vec::new();
    for i in 0..nx {
        for b in basis {
            let k = cart.len() as f64;
            let d = [(k * 1.7).sin(), (k * 2.3).cos(), (k * 0.9).sin()];
            cart.push([(b[0] + i as f64) * a + rattle * d[0], b[1] * a + rattle * d[1], b[2] * a + rattle * d[2]]);
        }
    }
    Structure::from_cartesian(lat, species.iter().map(|s| el(s)).collect(), &cart).unwrap()
}

fn emt_config(workers: usize) -> OracleConfig {
    let mut c = OracleConfig::new(vec!["python3".into(), emt_worker().display().to_string()]);
    c.workers = workers;
    c.timeout = Duration::from_secs(120);
    c
}

/// ASE's EMT energy of the same structure, computed in a separate Python process.
fn ase_energy(s: &Structure) -> f64 {
    let m = s.lattice.matrix();
    let script = format!(
        "from ase import Atoms\nfrom ase.calculators.emt import EMT\n\
         a = Atoms({:?}, positions={:?}, cell={:?}, pbc=True)\na.calc = EMT()\nprint(repr(float(a.get_potential_energy())))",
        s.species.iter().map(|e| e.symbol()).collect::<String>(),
        s.cart_coords(),
        m
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn emt_single_points_match_ase_and_bad_element_fails_alone() {
    if !have_ase() {
        return;
    }
    let frames = [
        fcc(3.7, 1, &["Cu", "Ag", "Au", "Cu"], 0.0),
        fcc(3.9, 1, &["Au", "Au", "Ag", "Cu"], 0.05),
        fcc(3.6, 1, &["Fe", "Cu", "Cu", "Cu"], 0.0), // EMT has no Fe
        fcc(3.8, 2, &["Cu", "Ag", "Au", "Cu", "Ag", "Ag", "Cu", "Au"], 0.1),
    ];
    let reqs: Vec<OracleRequest> = frames
        .iter()
        .enumerate()
        .map(|(i, s)| OracleRequest { id: format!("sp{i}"), structure: s.clone(), task: Task::Single })
        .collect();
    let t = Instant::now();
    let res = run_oracle(&emt_config(2), &reqs).unwrap();
    println!("4 EMT single points on 2 workers (with worker start): {:.2} s", t.elapsed().as_secs_f64());
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r.id, format!("sp{i}"));
        if i == 2 {
            assert!(!r.ok);
            assert!(r.error.as_deref().unwrap().contains("No EMT-potential for Fe"), "{:?}", r.error);
            continue;
        }
        assert!(r.ok, "{i}: {:?}", r.error);
        let want = ase_energy(&frames[i]);
        assert!((r.energy - want).abs() < 1e-9, "{i}: {} vs ASE {want}", r.energy);
        assert!((r.energy_per_atom * frames[i].num_sites() as f64 - r.energy).abs() < 1e-9);
        assert_eq!(r.forces.len(), frames[i].num_sites());
        assert_eq!(r.steps, 0);
        // Single point: the cell and positions come back unchanged.
        for (p, q) in r.positions.iter().zip(frames[i].cart_coords()) {
            assert!((0..3).all(|k| (p[k] - q[k]).abs() < 1e-9));
        }
        // Forces of a periodic cell sum to zero (translation invariance).
        let fsum: f64 = (0..3).map(|k| r.forces.iter().map(|f| f[k]).sum::<f64>().abs()).sum();
        assert!(fsum < 1e-8, "{i}: net force {fsum}");
    }
}

#[test]
fn emt_relaxation_converges_and_keeps_its_trajectory() {
    if !have_ase() {
        return;
    }
    let s = fcc(3.75, 2, &["Cu", "Ag", "Au", "Cu", "Cu", "Au", "Ag", "Cu"], 0.15);
    let fmax = 0.05;
    let req = OracleRequest {
        id: "relax".into(),
        structure: s.clone(),
        task: Task::Relax { fmax, steps: 400, relax_cell: true, trajectory: true },
    };
    let t = Instant::now();
    let r = run_oracle(&emt_config(1), &[req]).unwrap().remove(0);
    println!(
        "EMT relaxation of 8 atoms (cell too): {} steps, {:.2} s in the worker, {:.2} s with start",
        r.steps,
        r.wall_s,
        t.elapsed().as_secs_f64()
    );
    assert!(r.ok, "{:?}", r.error);
    assert!(r.converged && r.steps > 0 && r.steps < 400);
    let max_f = r.forces.iter().map(|f| (f[0] * f[0] + f[1] * f[1] + f[2] * f[2]).sqrt()).fold(0.0, f64::max);
    // FIRE stops on the cell filter's forces, the atomic ones mapped through the cell's deformation
    // gradient (a strain of a few %), so the atomic forces themselves may exceed fmax by as much.
    assert!(max_f < 1.1 * fmax, "largest force {max_f}");
    // Start plus one entry per step; the last is the final state; relaxing lowered the energy.
    assert_eq!(r.trajectory.len(), r.steps + 1);
    assert!((r.trajectory.last().unwrap().energy - r.energy).abs() < 1e-12);
    assert!((r.trajectory[0].energy - ase_energy(&s)).abs() < 1e-9);
    assert!(r.energy < r.trajectory[0].energy);
    let relaxed = r.structure(&s.species).unwrap();
    assert_ne!(relaxed.lattice.matrix(), s.lattice.matrix(), "the cell relaxed");
    assert!((ase_energy(&relaxed) - r.energy).abs() < 1e-8);
}

/// A fake worker whose behaviour is chosen by the frame id's prefix.
const FAKE: &str = r#"
import json, re, sys, time
print(json.dumps({"ready": True}), flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    if not line.strip():
        continue
    n = int(line)
    comment = sys.stdin.readline()
    atoms = [sys.stdin.readline().split() for _ in range(n)]
    fid = re.search(r'id="([^"]*)"', comment).group(1)
    lat = [float(x) for x in re.search(r'Lattice="([^"]*)"', comment).group(1).split()]
    if fid.startswith("crash"):
        sys.stderr.write("fake worker: segfault in the potential\n")
        sys.stderr.flush()
        sys.exit(3)
    if fid.startswith("hang"):
        time.sleep(600)
    if fid.startswith("garbage"):
        print("WARNING: something printed to stdout", flush=True)
        continue
    if fid.startswith("stray"):
        fid = "someone-else"
    e = float("nan") if fid.startswith("nan") else -1.0 * n
    print(json.dumps({"id": fid, "ok": True, "energy": e, "forces": [[0.0, 0.0, 0.0]] * n,
                      "stress": [[0.0] * 3] * 3, "cell": [lat[0:3], lat[3:6], lat[6:9]],
                      "positions": [[float(x) for x in a[1:4]] for a in atoms],
                      "steps": 0, "converged": True}), flush=True)
"#;

fn fake_config(dir: &Path, workers: usize, timeout: Duration) -> OracleConfig {
    let script = dir.join("fake_worker.py");
    std::fs::write(&script, FAKE).unwrap();
    let mut c = OracleConfig::new(vec!["python3".into(), script.display().to_string()]);
    c.workers = workers;
    c.timeout = timeout;
    c.startup_timeout = Duration::from_secs(30);
    c
}

fn requests(ids: &[&str]) -> Vec<OracleRequest> {
    let s = fcc(3.6, 1, &["Cu", "Cu", "Cu", "Cu"], 0.0);
    ids.iter().map(|id| OracleRequest { id: id.to_string(), structure: s.clone(), task: Task::Single }).collect()
}

fn reason(r: &OracleResult) -> &str {
    r.error.as_deref().unwrap_or("")
}

#[test]
fn crash_hang_garbage_and_nan_each_fail_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["ok0", "crash1", "ok2", "hang3", "ok4", "garbage5", "ok6", "nan7", "ok8", "stray9", "ok10"];
    let timeout = Duration::from_secs(2);
    let t = Instant::now();
    let res = run_oracle(&fake_config(dir.path(), 2, timeout), &requests(&ids)).unwrap();
    let took = t.elapsed();
    println!("11 fake frames, 5 bad, 2 workers: {:.2} s", took.as_secs_f64());
    for (r, id) in res.iter().zip(ids) {
        assert_eq!(r.id, id);
        println!("{id}: ok={} error={:?}", r.ok, r.error);
        if id.starts_with("ok") {
            assert!(r.ok, "{id}: {:?}", r.error);
            assert_eq!(r.energy, -4.0);
            assert_eq!(r.positions.len(), 4);
        } else {
            assert!(!r.ok, "{id}");
        }
    }
    assert!(reason(&res[1]).starts_with("worker exited (exit status: 3)"), "{}", reason(&res[1]));
    assert!(reason(&res[1]).contains("segfault in the potential"), "stderr tail kept: {}", reason(&res[1]));
    assert!(reason(&res[3]).starts_with("timeout after 2.0 s"));
    assert!(res[3].wall_s >= 2.0 && res[3].wall_s < 4.0, "{}", res[3].wall_s);
    assert!(reason(&res[5]).starts_with("garbage output") && reason(&res[5]).contains("WARNING: something"));
    assert!(reason(&res[7]).starts_with("non-finite"), "{}", reason(&res[7]));
    assert!(reason(&res[9]).starts_with("out of step: answer for id `someone-else`"), "{}", reason(&res[9]));
    // The hang costs one timeout; three restarts of a Python worker cost well under a second each.
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn shell_worker_that_never_starts_or_dies_at_start() {
    let sh = |script: &str, startup: Duration| {
        let mut c = OracleConfig::new(vec!["sh".into(), "-c".into(), script.into()]);
        c.startup_timeout = startup;
        c.timeout = Duration::from_secs(2);
        c
    };
    let t = Instant::now();
    let res = run_oracle(
        &sh("echo 'no potential for this' >&2; exit 1", Duration::from_secs(10)),
        &requests(&["a", "b", "c"]),
    )
    .unwrap();
    assert!(res.iter().all(|r| !r.ok));
    assert!(reason(&res[0]).contains("exited before its ready line") && reason(&res[0]).contains("no potential"));
    assert!(reason(&res[2]).contains("gave up after 2"), "{}", reason(&res[2]));

    // Never ready: its `sleep` child dies with it (process group), so this returns promptly.
    let res = run_oracle(&sh("sleep 600", Duration::from_millis(500)), &requests(&["a"])).unwrap();
    assert!(reason(&res[0]).contains("no ready line within 0.5 s"), "{}", reason(&res[0]));

    // Ready, then hangs in a child process on the first frame.
    let res =
        run_oracle(&sh("echo '{\"ready\": true}'; sleep 600", Duration::from_secs(10)), &requests(&["h"])).unwrap();
    assert!(reason(&res[0]).starts_with("timeout"));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    let res =
        run_oracle(&sh("echo '{\"ready\": false, \"error\": \"no GPU\"}'", Duration::from_secs(10)), &requests(&["x"]))
            .unwrap();
    assert!(reason(&res[0]).contains("not ready: no GPU"), "{}", reason(&res[0]));

    let missing = OracleConfig::new(vec!["/nonexistent/oracle".into()]);
    let res = run_oracle(&missing, &requests(&["m"])).unwrap();
    assert!(reason(&res[0]).contains("cannot run `/nonexistent/oracle`"), "{}", reason(&res[0]));
}
