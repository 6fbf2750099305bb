//! Oracle protocol: energies, forces, stresses and relaxations of structures from an external
//! command (EMT, an ML potential, DFT), run as N persistent worker processes in parallel.
//!
//! A worker reads extended-XYZ frames on stdin, the options in the comment line
//! (`id="..." task=single|relax fmax= steps= relax_cell=T|F trajectory=T|F`), and writes one JSON
//! line per frame on stdout: `id, ok, energy, energy_per_atom, forces, stress, cell, positions,
//! steps, converged, wall_s, error` and, for a relaxation asked for it, `trajectory`
//! (`[{energy, cell, positions}]`). Its first line is `{"ready": true}` (`{"ready": false, "error"}`
//! when it cannot start); anything else it says goes to stderr. Units: eV, A, eV/A, eV/A^3 (stress
//! 3 x 3, ASE's sign: positive is tensile); cells are rows of lattice vectors.
//! `tools/oracles/emt_worker.py` is the shipped EMT adapter.
//!
//! One frame in flight per worker. A bad frame never stops a run; it becomes a failed result
//! (`ok = false`) whose `error` says why:
//! - `timeout`: no answer within the per-frame limit; the worker's process group is killed and a
//!   fresh worker takes the next frame;
//! - `worker exited`: the worker died (crash, segfault, `exit`) on the frame; restarted likewise;
//! - `garbage output`: a line that is not a JSON object; the worker is restarted, since its stream
//!   can no longer be trusted to answer the next frame; likewise `out of step`, an answer whose
//!   string `id` is another frame's;
//! - `non-finite`: NaN or Infinity anywhere in the answer, or a missing/inconsistent field
//!   (`bad result`); the worker stays, it kept the protocol;
//! - the worker's own `error` when it reports `ok: false` (an unsupported element, a failed SCF);
//! - `worker failed to start` when spawning or the ready line fails; after two consecutive failed
//!   starts a worker slot stops trying and fails the frames it takes at once.
//!
//! Results come back in input order. Workers run in their own process group so that a shell
//! wrapper and everything it started die together on a kill.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use octet_core::{Error, Result};
use serde_json::Value;

use crate::element::Element;
use crate::io::extxyz::extxyz_string;
use crate::lattice::Lattice;
use crate::structure::Structure;

/// Lines of a worker's stderr kept for the reason of a crash.
const STDERR_TAIL: usize = 20;
/// Consecutive failed starts after which a worker slot gives up.
const MAX_FAILED_STARTS: usize = 2;

/// How to run the oracle.
#[derive(Clone, Debug)]
pub struct OracleConfig {
    /// Program and arguments of one worker, e.g. `["python3", "tools/oracles/emt_worker.py"]`.
    pub command: Vec<String>,
    /// Worker processes run in parallel.
    pub workers: usize,
    /// Per-frame limit, from writing the frame to reading its line.
    pub timeout: Duration,
    /// Limit for a worker to print its ready line (Python imports of torch take seconds).
    pub startup_timeout: Duration,
    /// Extra environment for the workers. `new` sets `OMP_NUM_THREADS=1`: N single-threaded workers
    /// beat threads inside one (ORACLES.md: 2 OpenMP threads were 4-10x slower for CHGNet).
    pub env: Vec<(String, String)>,
}

impl OracleConfig {
    pub fn new(command: Vec<String>) -> OracleConfig {
        OracleConfig {
            command,
            workers: 1,
            timeout: Duration::from_secs(600),
            startup_timeout: Duration::from_secs(120),
            env: vec![("OMP_NUM_THREADS".into(), "1".into())],
        }
    }
}

/// What to compute for a frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Task {
    /// Energy, forces and stress of the structure as given.
    Single,
    /// Relax positions (and the cell when `relax_cell`) until the largest force is below `fmax`
    /// (eV/A) or `steps` optimiser steps; `trajectory` keeps every step.
    Relax { fmax: f64, steps: usize, relax_cell: bool, trajectory: bool },
}

/// One frame for the oracle; `id` comes back in its result.
#[derive(Clone, Debug)]
pub struct OracleRequest {
    pub id: String,
    pub structure: Structure,
    pub task: Task,
}

/// One step of a relaxation.
#[derive(Clone, Debug, PartialEq)]
pub struct TrajectoryStep {
    pub energy: f64,
    pub cell: [[f64; 3]; 3],
    pub positions: Vec<[f64; 3]>,
}

/// The oracle's answer for one frame; on failure (`ok == false`) only `id`, `wall_s` and `error`
/// are meaningful.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OracleResult {
    pub id: String,
    pub ok: bool,
    pub energy: f64,
    pub energy_per_atom: f64,
    pub forces: Vec<[f64; 3]>,
    pub stress: [[f64; 3]; 3],
    /// Final (relaxed) cell and Cartesian positions; the input ones for `Task::Single`.
    pub cell: [[f64; 3]; 3],
    pub positions: Vec<[f64; 3]>,
    pub steps: usize,
    pub converged: bool,
    /// Seconds from sending the frame to reading its answer (or to the failure).
    pub wall_s: f64,
    pub error: Option<String>,
    pub trajectory: Vec<TrajectoryStep>,
}

impl OracleResult {
    fn failed(id: &str, wall_s: f64, error: String) -> OracleResult {
        OracleResult { id: id.to_string(), ok: false, wall_s, error: Some(error), ..Default::default() }
    }

    /// The final structure (relaxed for `Task::Relax`) with the request's species.
    pub fn structure(&self, species: &[Element]) -> Result<Structure> {
        if !self.ok {
            return Err(Error::Other(format!("oracle frame `{}` failed: no structure", self.id)));
        }
        Structure::from_cartesian(Lattice::new(self.cell)?, species.to_vec(), &self.positions)
    }
}

/// Runs every request through `config.workers` workers; results in input order. Fails only when
/// the configuration is unusable (no command, no workers); every per-frame failure is a result.
pub fn run_oracle(config: &OracleConfig, requests: &[OracleRequest]) -> Result<Vec<OracleResult>> {
    run_oracle_each(config, requests, &|_, _| {})
}

/// `run_oracle`, calling `on_result(index, result)` for each frame as its answer arrives (from the
/// worker threads, in completion order): the discovery loop journals each result there.
pub fn run_oracle_each(
    config: &OracleConfig,
    requests: &[OracleRequest],
    on_result: &(dyn Fn(usize, &OracleResult) + Sync),
) -> Result<Vec<OracleResult>> {
    if config.command.is_empty() || config.workers == 0 {
        return Err(Error::Config { field: "oracle".into(), msg: "needs a command and at least one worker".into() });
    }
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<OracleResult>>> = Mutex::new(vec![None; requests.len()]);
    std::thread::scope(|s| {
        for _ in 0..config.workers.min(requests.len()) {
            s.spawn(|| {
                let mut slot = Slot { config, worker: None, failed_starts: 0, last_start_error: String::new() };
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(req) = requests.get(i) else { break };
                    let r = slot.compute(req);
                    on_result(i, &r);
                    results.lock().unwrap()[i] = Some(r);
                }
                if let Some(w) = slot.worker.take() {
                    w.shutdown();
                }
            });
        }
    });
    Ok(results.into_inner().unwrap().into_iter().map(|r| r.expect("every frame is taken")).collect())
}

/// The frame text sent to a worker: `extxyz_string`'s frame with the options added to its comment.
pub fn request_frame(req: &OracleRequest) -> String {
    let text = extxyz_string(&req.structure, None);
    let (count, rest) = text.split_once('\n').expect("extxyz frame has a count line");
    let id: String = req.id.replace(['\n', '\r'], " ").replace('\\', "\\\\").replace('"', "\\\"");
    let opts = match req.task {
        Task::Single => format!("id=\"{id}\" task=single"),
        Task::Relax { fmax, steps, relax_cell, trajectory } => {
            let tf = |b: bool| if b { "T" } else { "F" };
            format!(
                "id=\"{id}\" task=relax fmax={fmax} steps={steps} relax_cell={} trajectory={}",
                tf(relax_cell),
                tf(trajectory)
            )
        }
    };
    format!("{count}\n{opts} {rest}")
}

/// A worker slot: restarts its worker as needed.
struct Slot<'a> {
    config: &'a OracleConfig,
    worker: Option<Worker>,
    failed_starts: usize,
    last_start_error: String,
}

impl Slot<'_> {
    fn compute(&mut self, req: &OracleRequest) -> OracleResult {
        let t0 = Instant::now();
        if self.worker.is_none() {
            if self.failed_starts >= MAX_FAILED_STARTS {
                return OracleResult::failed(
                    &req.id,
                    0.0,
                    format!("worker failed to start (gave up after {MAX_FAILED_STARTS}): {}", self.last_start_error),
                );
            }
            match Worker::start(self.config) {
                Ok(w) => {
                    self.worker = Some(w);
                    self.failed_starts = 0;
                }
                Err(e) => {
                    self.failed_starts += 1;
                    self.last_start_error = e.clone();
                    return OracleResult::failed(
                        &req.id,
                        t0.elapsed().as_secs_f64(),
                        format!("worker failed to start: {e}"),
                    );
                }
            }
        }
        let worker = self.worker.as_mut().expect("started above");
        let outcome = worker.ask(&request_frame(req), self.config.timeout);
        let wall_s = t0.elapsed().as_secs_f64();
        match outcome {
            Answer::Line(line) => match line.get("id").and_then(Value::as_str) {
                // An answer for another frame: the stream is out of step, so every later answer
                // would be misfiled too. Restart.
                Some(id) if id != req.id => {
                    self.worker.take().expect("worker").kill();
                    OracleResult::failed(&req.id, wall_s, format!("out of step: answer for id `{}`", clip(id)))
                }
                _ => parse_result(req, &line, wall_s),
            },
            Answer::Timeout => {
                self.worker.take().expect("worker").kill();
                OracleResult::failed(
                    &req.id,
                    wall_s,
                    format!("timeout after {:.1} s", self.config.timeout.as_secs_f64()),
                )
            }
            Answer::Exited => {
                let w = self.worker.take().expect("worker");
                let tail = w.stderr_tail();
                let status = w.kill();
                OracleResult::failed(&req.id, wall_s, format!("worker exited ({status}) on this frame; stderr: {tail}"))
            }
            Answer::Garbage(line) => {
                self.worker.take().expect("worker").kill();
                OracleResult::failed(&req.id, wall_s, format!("garbage output (not a JSON object): {}", clip(&line)))
            }
        }
    }
}

enum Answer {
    Line(Value),
    Timeout,
    Exited,
    Garbage(String),
}

/// A running worker process: stdin for frames, a thread turning stdout into lines, another keeping
/// the tail of stderr.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `None` marks the end of stdout.
    lines: Receiver<Option<String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    fn start(config: &OracleConfig) -> std::result::Result<Worker, String> {
        let mut cmd = Command::new(&config.command[0]);
        cmd.args(&config.command[1..])
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot run `{}`: {e}", config.command.join(" ")))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr_pipe = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Bytes, not `lines()`: invalid UTF-8 is garbage to report, not the end of the stream.
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                buf.clear();
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr_pipe);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let mut t = tail.lock().unwrap();
                t.push_back(String::from_utf8_lossy(&buf).trim_end().to_string());
                if t.len() > STDERR_TAIL {
                    t.pop_front();
                }
                buf.clear();
            }
        });
        let stdin = child.stdin.take();
        let w = Worker { child, stdin, lines, stderr };
        let ready = match w.lines.recv_timeout(config.startup_timeout) {
            Ok(Some(l)) => match serde_json::from_str::<Value>(&l) {
                Ok(v) if v.get("ready") == Some(&Value::Bool(true)) => Ok(()),
                Ok(v) => Err(format!(
                    "not ready: {}",
                    v.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| clip(&l))
                )),
                Err(_) => Err(format!("first line is not the ready line: {}", clip(&l))),
            },
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                // Give the stderr thread a moment to collect the reason.
                std::thread::sleep(Duration::from_millis(50));
                Err(format!("exited before its ready line; stderr: {}", w.stderr_tail()))
            }
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("no ready line within {:.1} s", config.startup_timeout.as_secs_f64()))
            }
        };
        match ready {
            Ok(()) => Ok(w),
            Err(e) => {
                w.kill();
                Err(e)
            }
        }
    }

    /// Sends one frame and waits for one non-empty line.
    fn ask(&mut self, frame: &str, timeout: Duration) -> Answer {
        let deadline = Instant::now() + timeout;
        let sent = self.stdin.as_mut().is_some_and(|s| s.write_all(frame.as_bytes()).and_then(|_| s.flush()).is_ok());
        if !sent {
            return Answer::Exited;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Some(l)) if l.trim().is_empty() => continue,
                Ok(Some(l)) => return parse_line(l),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => return Answer::Exited,
                Err(RecvTimeoutError::Timeout) => return Answer::Timeout,
            }
        }
    }

    fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().unwrap();
        let s: Vec<&str> = t.iter().map(String::as_str).collect();
        clip(&s.join(" | "))
    }

    /// Kills the worker's process group and reaps the worker; returns its exit status.
    fn kill(mut self) -> String {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group `pid`, which the worker
        // leads (`process_group(0)`); no memory is touched.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        drop(self.stdin.take());
        match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }

    /// Closes stdin (a worker exits at end of input), then kills whatever is left.
    fn shutdown(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

/// What one line of a worker's output means for `req`: the result, or why the frame failed (what
/// the oracle loop does with each answer; public for the fuzz target).
pub fn answer_from_line(req: &OracleRequest, line: &str) -> OracleResult {
    match parse_line(line.to_string()) {
        Answer::Line(v) => parse_result(req, &v, 0.0),
        _ => OracleResult::failed(&req.id, 0.0, format!("not a JSON object: {}", clip(line))),
    }
}

/// A JSON object, or NaN/Infinity in an otherwise valid line (which serde_json refuses), or garbage.
fn parse_line(line: String) -> Answer {
    match serde_json::from_str::<Value>(&line) {
        Ok(v) if v.is_object() => Answer::Line(v),
        _ => {
            // Python's json writes NaN, Infinity, -Infinity; with those as null the line parses.
            let patched = line.replace("-Infinity", "null").replace("Infinity", "null").replace("NaN", "null");
            match serde_json::from_str::<Value>(&patched) {
                Ok(v) if v.is_object() => {
                    let mut v = v;
                    v["__non_finite__"] = Value::Bool(true);
                    Answer::Line(v)
                }
                _ => Answer::Garbage(line),
            }
        }
    }
}

/// Checks and converts a worker's JSON answer.
fn parse_result(req: &OracleRequest, v: &Value, wall_s: f64) -> OracleResult {
    let fail = |why: String| OracleResult::failed(&req.id, wall_s, why);
    if v.get("__non_finite__").is_some() {
        return fail("non-finite number (NaN or Infinity) in the oracle's answer".into());
    }
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => {}
        Some(false) => {
            let e = v.get("error").and_then(Value::as_str).unwrap_or("no reason given");
            return fail(format!("oracle error: {e}"));
        }
        None => return fail(format!("bad result: no boolean `ok` in {}", clip(&v.to_string()))),
    }
    let n = req.structure.num_sites();
    match read_fields(v, n) {
        Ok(mut r) => {
            r.id = req.id.clone();
            r.wall_s = wall_s;
            r
        }
        Err(why) => fail(why),
    }
}

fn read_fields(v: &Value, n: usize) -> std::result::Result<OracleResult, String> {
    let num = |k: &str| -> std::result::Result<f64, String> {
        match v.get(k) {
            Some(Value::Null) => Err(format!("non-finite `{k}` (null) in the oracle's answer")),
            Some(x) => x.as_f64().ok_or_else(|| format!("bad result: `{k}` is not a number")),
            None => Err(format!("bad result: no `{k}`")),
        }
    };
    let energy = num("energy")?;
    let energy_per_atom = match v.get("energy_per_atom") {
        None => energy / n as f64,
        Some(_) => num("energy_per_atom")?,
    };
    let forces = rows(v.get("forces"), "forces", Some(n))?;
    let positions = rows(v.get("positions"), "positions", Some(n))?;
    let cell = mat3(v.get("cell"), "cell")?;
    let stress = match v.get("stress") {
        None => [[0.0; 3]; 3],
        s => mat3(s, "stress")?,
    };
    let steps = v.get("steps").and_then(Value::as_u64).unwrap_or(0) as usize;
    let converged = v.get("converged").and_then(Value::as_bool).unwrap_or(false);
    let mut trajectory = Vec::new();
    if let Some(t) = v.get("trajectory") {
        let t = t.as_array().ok_or("bad result: `trajectory` is not a list")?;
        for (k, step) in t.iter().enumerate() {
            let energy = step
                .get("energy")
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("bad result: trajectory step {k} has no numeric energy"))?;
            trajectory.push(TrajectoryStep {
                energy,
                cell: mat3(step.get("cell"), "trajectory cell")?,
                positions: rows(step.get("positions"), "trajectory positions", Some(n))?,
            });
        }
    }
    Ok(OracleResult {
        ok: true,
        energy,
        energy_per_atom,
        forces,
        stress,
        cell,
        positions,
        steps,
        converged,
        trajectory,
        ..Default::default()
    })
}

/// A list of 3-vectors (`n` of them when given); nulls (from NaN) are reported as non-finite.
fn rows(v: Option<&Value>, what: &str, n: Option<usize>) -> std::result::Result<Vec<[f64; 3]>, String> {
    let a = v.and_then(Value::as_array).ok_or_else(|| format!("bad result: no `{what}` list"))?;
    if let Some(n) = n
        && a.len() != n
    {
        return Err(format!("bad result: {} rows of `{what}` for {n} atoms", a.len()));
    }
    a.iter()
        .map(|r| {
            let r = r
                .as_array()
                .filter(|r| r.len() == 3)
                .ok_or_else(|| format!("bad result: a `{what}` row is not 3 numbers"))?;
            let mut out = [0.0; 3];
            for (o, x) in out.iter_mut().zip(r) {
                *o = x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("non-finite value in `{what}`"))?;
            }
            Ok(out)
        })
        .collect()
}

fn mat3(v: Option<&Value>, what: &str) -> std::result::Result<[[f64; 3]; 3], String> {
    let r = rows(v, what, Some(3))?;
    Ok([r[0], r[1], r[2]])
}

/// At most 200 characters of a line, for error messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_lines_are_answers_and_text_is_garbage() {
        assert!(
            matches!(parse_line(r#"{"ok": true, "energy": NaN}"#.into()), Answer::Line(v) if v.get("__non_finite__").is_some())
        );
        assert!(matches!(parse_line(r#"{"ok": true, "energy": -Infinity}"#.into()), Answer::Line(_)));
        assert!(matches!(parse_line("Segmentation fault".into()), Answer::Garbage(_)));
        assert!(matches!(parse_line("[1, 2]".into()), Answer::Garbage(_)));
    }

    #[test]
    fn frame_carries_options_and_escaped_id() {
        let l = Lattice::cubic(3.6).unwrap();
        let s = Structure::new(l, vec![Element::from_symbol("Cu").unwrap()], vec![[0.0; 3]]).unwrap();
        let req = OracleRequest {
            id: "a\"b".into(),
            structure: s,
            task: Task::Relax { fmax: 0.05, steps: 10, relax_cell: true, trajectory: false },
        };
        let f = request_frame(&req);
        let comment = f.lines().nth(1).unwrap();
        assert!(
            comment.starts_with(r#"id="a\"b" task=relax fmax=0.05 steps=10 relax_cell=T trajectory=F Lattice="#),
            "{comment}"
        );
        let frames = crate::io::extxyz::parse_extxyz(&f, std::path::Path::new("frame")).unwrap();
        assert_eq!(frames[0].structure.num_sites(), 1);
    }
}
