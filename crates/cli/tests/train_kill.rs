//! `octet train` SIGKILLed at random moments (during steps, data preparation and checkpoint writes,
//! which happen every step here) and restarted until it finishes: the final weights and optimizer
//! state are bit-identical to an uninterrupted run, and no temporary is left behind. At fp32 and at
//! fp8-o2 (narrow weights and moments, FP8 scaling state). `OCTET_KILLS=N` raises the number of
//! kills per run for a longer soak (default 12); the seed is printed so a failure can be replayed
//! with `OCTET_KILL_SEED`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

const STEPS: &str = "150";

fn corpus(dir: &Path) -> PathBuf {
    let full = include_str!("../assets/python-docs.txt");
    let cut = full.char_indices().nth(20_000).map_or(full.len(), |(i, _)| i);
    let p = dir.join("corpus.txt");
    std::fs::write(&p, &full[..cut]).unwrap();
    p
}

fn train_cmd(data: &Path, out: &Path, precision: &str, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_octet"));
    if resume {
        c.args(["train", "--resume", out.to_str().unwrap()]);
    } else {
        c.args(["train", "--overwrite", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        c.args(["--model", "tiny", "--batch", "2", "--seq", "16", "--vocab-size", "300", "--steps", STEPS]);
        c.args(["--eval-every", "10", "--checkpoint-every", "1", "--precision", precision]);
    }
    c.arg("--json").stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// A safetensors file as data: its metadata and each tensor's dtype, shape and bytes (the header's
/// metadata order is a hash map's, so files with equal content may differ byte for byte).
type Tensors = (BTreeMap<String, String>, BTreeMap<String, (String, Vec<usize>, Vec<u8>)>);

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = md.metadata().clone().unwrap_or_default().into_iter().collect();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    (meta, tensors)
}

/// The latest checkpoint's name and tensors (state.json differs in its `out` path).
fn final_tensors(run: &Path) -> (String, Tensors, Tensors) {
    let name = std::fs::read_to_string(run.join("latest")).unwrap().trim().to_string();
    let ck = run.join(&name);
    (name, read_tensors(&ck.join("model.safetensors")), read_tensors(&ck.join("optimizer.safetensors")))
}

fn killed_run_matches_uninterrupted(precision: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let whole = dir.path().join("whole");
    let o = train_cmd(&data, &whole, precision, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let kills: usize = std::env::var("OCTET_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let mut seed: u64 = std::env::var("OCTET_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1);
    let seed0 = seed;
    eprintln!("{precision}: kill seed {seed} (replay with OCTET_KILL_SEED={seed})");
    let run = dir.path().join("killed");
    let (mut killed, mut starts, mut torn) = (0, 0, 0);
    loop {
        starts += 1;
        assert!(starts < kills + 20, "the run never finished after {starts} starts");
        let resume = run.join("latest").is_file();
        let mut child = train_cmd(&data, &run, precision, resume).spawn().unwrap();
        if killed < kills {
            // xorshift: 10-400 ms, so kills land in start-up, data preparation, steps and checkpoint writes.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(10 + seed % 390));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                killed += 1;
            }
        }
        let o = child.wait_with_output().unwrap();
        // A start after a kill inside a checkpoint write finds that write's temporary directory.
        torn +=
            String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("note") && l.contains(".ckpt-")).count();
        if o.status.success() {
            if run.join(format!("ckpt-{:06}", STEPS.parse::<usize>().unwrap())).is_dir() {
                break;
            }
        } else if o.status.code().is_some() {
            panic!("a restart failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    eprintln!("{precision}: {killed} kills ({torn} inside a checkpoint write), {starts} starts");
    assert!(killed > 0, "no kill landed");
    // Not assert_eq!: a failure would print megabytes of tensor bytes.
    let (a, b) = (final_tensors(&run), final_tensors(&whole));
    assert_eq!(a.0, b.0);
    assert!(a == b, "killed and resumed must end bit-identical (seed {seed0})");
    let temps: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "temporaries left: {temps:?}");
}

#[test]
fn train_killed_at_random_moments_resumes_bit_identical_at_fp32() {
    killed_run_matches_uninterrupted("fp32");
}

#[test]
fn train_killed_at_random_moments_resumes_bit_identical_at_fp8_o2() {
    killed_run_matches_uninterrupted("fp8-o2");
}
