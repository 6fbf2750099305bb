//! `mpirun -np 2 octet train` end to end: the same training as one process on the same global batch,
//! output and run directory from rank 0 only, the FP8 wire's bytes, ZeRO's per-rank optimizer bytes,
//! a killed rank ending the job with an error in bounded time, and checkpoints that resume on another
//! number of ranks. Each test skips with a printed reason when the binary was built without MPI
//! (`--features octet-cli/mpi`) or `mpirun` is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mpirun() -> Option<PathBuf> {
    if !octet_dist::MPI_BUILT {
        println!("SKIPPED: octet built without MPI (cargo test --features octet-cli/mpi)");
        return None;
    }
    let found =
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("mpirun")).find(|p| p.is_file());
    if found.is_none() {
        println!("SKIPPED: no `mpirun` on PATH (apt-get install openmpi-bin)");
    }
    found
}

/// A small training text: the first 40 kB of the embedded corpus.
fn corpus(dir: &Path) -> PathBuf {
    let full = include_str!("../assets/python-docs.txt");
    let cut = full.char_indices().nth(40_000).map_or(full.len(), |(i, _)| i);
    let p = dir.join("corpus.txt");
    std::fs::write(&p, &full[..cut]).unwrap();
    p
}

/// `octet train` on `ranks` processes (1: without mpirun) into `dir/out`.
fn train(mpirun: &Path, ranks: usize, dir: &Path, out: &str, extra: &[&str]) -> Output {
    let data = corpus(dir);
    let mut args: Vec<String> =
        vec!["train", "--json", "--data", data.to_str().unwrap(), "--out"].into_iter().map(String::from).collect();
    args.push(dir.join(out).to_str().unwrap().to_string());
    for a in ["--model", "tiny", "--batch", "4", "--seq", "16", "--vocab-size", "320", "--eval-every", "0"] {
        args.push(a.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run(mpirun, ranks, &args)
}

fn run(mpirun: &Path, ranks: usize, args: &[String]) -> Output {
    let octet = env!("CARGO_BIN_EXE_octet");
    let out = if ranks == 1 {
        Command::new(octet).args(args).output()
    } else {
        Command::new(mpirun)
            .args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string(), octet])
            .args(args)
            .output()
    }
    .expect("run octet");
    assert!(out.status.success(), "octet on {ranks} ranks failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn losses(lines: &[serde_json::Value]) -> Vec<f64> {
    lines.iter().filter(|v| v["event"] == "step").map(|v| v["loss"].as_f64().unwrap()).collect()
}

fn summary(lines: &[serde_json::Value]) -> &serde_json::Value {
    let s: Vec<_> = lines.iter().filter(|v| v["event"] == "summary").collect();
    assert_eq!(s.len(), 1, "one summary: rank 0 alone reports");
    s[0]
}

/// Relative 1e-5: the summation order of two half-batch means is the only difference (see
/// crates/lm/tests/dist_mpi.rs, which checks gradients and weights too).
fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: step counts");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * y.abs(), "{what}: step {} loss {x} vs {y}", i + 1);
    }
}

#[test]
fn two_ranks_train_like_one_on_the_same_global_batch_and_only_rank_0_writes() {
    let Some(mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let one = json_lines(&train(&mpi, 1, dir.path(), "one", &["--steps", "20"]));
    let two = json_lines(&train(&mpi, 2, dir.path(), "two", &["--steps", "20", "--check-weights-every", "5"]));
    assert_close(&losses(&two), &losses(&one), "fp32, 2 ranks vs 1");
    let s = summary(&two);
    assert_eq!(s["comm"]["ranks"], 2);
    assert_eq!(s["comm"]["wire_format"], "f32");
    // The run directory holds what one process writes: its lock, data, checkpoints, `latest`;
    // nothing else.
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("two"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".lock", "ckpt-000020", "data", "latest"]);
}

#[test]
fn fp8_wire_moves_a_quarter_of_fp32s_bytes_and_zero_shards_the_optimizer() {
    let Some(mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let per_step = |out: &str, extra: &[&str]| {
        let mut a = vec!["--steps", "5"];
        a.extend_from_slice(extra);
        let lines = json_lines(&train(&mpi, 2, dir.path(), out, &a));
        summary(&lines).clone()
    };
    let f32s = per_step("f32", &[]);
    let fp8 = per_step("fp8", &["--precision", "fp8-o2"]);
    let zero = per_step("zero", &["--precision", "fp8-o2", "--zero"]);
    let ar = |s: &serde_json::Value| s["comm"]["all_reduce_per_step"].as_f64().unwrap();
    let ratio = ar(&fp8) / ar(&f32s);
    assert!(ratio <= 0.27, "E4M3 all-reduce moves {ratio:.3}x the bytes of f32");
    assert_eq!(fp8["comm"]["wire_format"], "e4m3");
    // ZeRO: each rank holds its shard of m and v; together they are the unsharded state.
    let bytes = |s: &serde_json::Value| -> Vec<u64> {
        s["comm"]["adam_bytes_per_rank"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect()
    };
    let (full, shards) = (bytes(&fp8), bytes(&zero));
    assert_eq!(full[0], full[1]);
    // The tiny model's token embedding is 56% of its parameters: a whole-tensor partition of two
    // ranks cannot split it, so the larger shard is that tensor (plus scales).
    assert!(shards.iter().all(|&b| b < full[0] * 6 / 10), "shards {shards:?} of {}", full[0]);
    assert!(shards.iter().sum::<u64>().abs_diff(full[0]) <= 64, "shards {shards:?} add up to {}", full[0]);
    assert_eq!(zero["final_loss"], fp8["final_loss"], "ZeRO changes where the state lives, not the result");
}

#[test]
fn checkpoints_written_by_two_ranks_resume_on_one_and_back() {
    let Some(mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let straight = losses(&json_lines(&train(&mpi, 1, dir.path(), "straight", &["--steps", "20"])));
    let resume = |ranks: usize, out: &str, steps: &str| {
        let run_dir = dir.path().join(out).to_str().unwrap().to_string();
        let args: Vec<String> =
            ["train", "--json", "--resume", &run_dir, "--steps", steps].iter().map(|s| s.to_string()).collect();
        losses(&json_lines(&run(&mpi, ranks, &args)))
    };
    for (first, then) in [(2, 1), (1, 2)] {
        let out = format!("from{first}");
        let head = losses(&json_lines(&train(&mpi, first, dir.path(), &out, &["--steps", "20", "--until", "10"])));
        let tail = resume(then, &out, "20");
        let all: Vec<f64> = head.into_iter().chain(tail).collect();
        assert_close(&all, &straight, &format!("{first} ranks to step 10, then {then}"));
    }
    // ZeRO checkpoints are unsharded (rank 0 gathers m and v): they resume on one rank.
    let z = train(&mpi, 2, dir.path(), "zero", &["--steps", "12", "--until", "6", "--precision", "fp8-o2", "--zero"]);
    assert_eq!(losses(&json_lines(&z)).len(), 6);
    assert_eq!(resume(1, "zero", "12").len(), 6);
}

#[test]
fn a_killed_rank_ends_the_job_with_an_error_in_bounded_time() {
    let Some(mpi) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let out = dir.path().join("killed");
    let mut child = Command::new(&mpi)
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_octet"), "train", "--json"])
        .args(["--model", "tiny", "--batch", "4", "--seq", "16", "--vocab-size", "320", "--steps", "1000000"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mpirun");
    // Wait for training to run (rank 0 prints step lines).
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines.by_ref().map_while(Result::ok).any(|l| l.contains("\"event\":\"step\""));
    assert!(started, "the job trained a step");
    std::thread::spawn(move || lines.for_each(drop));
    let victim = rank_pid(&out, 1).expect("rank 1's process");
    let t0 = Instant::now();
    assert!(Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    // Bounded: mpirun must end the job, not leave rank 0 waiting in an all-reduce.
    let limit = Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("the job still runs {limit:?} after rank 1 was killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "a job with a dead rank fails");
    assert!(err.contains("signal 9") || err.contains("Killed"), "mpirun names the cause:\n{err}");
    println!("killed rank 1: job ended after {:.1} s with {status}", t0.elapsed().as_secs_f64());
}

/// The pid of the `octet` process of MPI rank `rank` training into `out` (from /proc).
fn rank_pid(out: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let out = out.to_str()?;
    for _ in 0..100 {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let has = |hay: &[u8], needle: &str| hay.split(|&b| b == 0).any(|w| w == needle.as_bytes());
            if has(&cmd, out) && has(&env, &want) && !String::from_utf8_lossy(&cmd).contains("mpirun") {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
