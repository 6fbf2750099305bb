//! VerilogEval spec-to-RTL (Pinckney et al., VerilogEval v2): problems read from a directory of
//! `<name>_prompt.txt` / `<name>_ref.sv` / `<name>_test.sv` triples, candidate extraction, the sandboxed
//! iverilog + vvp check against the reference and testbench, and pass@k (HumanEval's unbiased
//! estimator).
//!
//! A sample passes when `iverilog -g2012 -s tb` accepts the candidate's `module TopModule ... endmodule`
//! with the reference (`RefModule`) and testbench, and `vvp` exits (status 0) within its wall-clock limit
//! printing `Mismatches: 0 in M samples` with M > 0. iverilog runs with VerilogEval's flags
//! (`-Wall -Winfloop -Wno-timescale -g2012 -s tb`); `-Winfloop` makes an `always` without any delay a
//! compile error. Each check runs in its own temporary directory (the testbenches write
//! `wave.vcd` to the working directory); iverilog and vvp run in their own process group, killed whole
//! when the limit expires, their output drained by a thread and kept to the last [`OUTPUT_KEEP`] bytes.
//! A hanging, crashing or non-compiling candidate is a failed sample, never a hung or failed run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use octet_core::{Error, Result};
use serde::Serialize;

/// The Debian/Ubuntu package that provides `iverilog` and `vvp`.
pub const IVERILOG_PACKAGE: &str = "iverilog";
/// Bytes of a tool's combined output kept (the end, where the testbench prints its verdict).
pub const OUTPUT_KEEP: usize = 64 * 1024;

/// One problem: its name (`Prob001_zero`) and the three files.
#[derive(Clone, Debug)]
pub struct Problem {
    pub name: String,
    pub prompt: String,
    pub reference: String,
    pub testbench: String,
}

/// Every problem in `dir` (any directory laid out like VerilogEval's `spec-to-rtl/`), sorted by name.
/// A problem missing one of its three files, an unreadable file or a directory without problems is an
/// error naming the file.
pub fn load_problems(dir: &Path) -> Result<Vec<Problem>> {
    const SUFFIXES: [&str; 3] = ["_prompt.txt", "_ref.sv", "_test.sv"];
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = std::collections::BTreeSet::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = SUFFIXES.iter().find_map(|s| file.strip_suffix(s)) {
            names.insert(name.to_string());
        }
    }
    if names.is_empty() {
        return Err(Error::format(dir, "problems", "no <name>_prompt.txt / _ref.sv / _test.sv files"));
    }
    let read = |name: &str, suffix: &str| -> Result<String> {
        let p = dir.join(format!("{name}{suffix}"));
        if !p.is_file() {
            return Err(Error::format(&p, "problem", format!("missing: problem {name} needs {name}{suffix}")));
        }
        std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
    };
    names
        .into_iter()
        .map(|name| {
            Ok(Problem {
                prompt: read(&name, SUFFIXES[0])?,
                reference: read(&name, SUFFIXES[1])?,
                testbench: read(&name, SUFFIXES[2])?,
                name,
            })
        })
        .collect()
}

/// The instruction wrapped around a problem's spec (one user turn of the chat template).
pub fn instruction(spec: &str) -> String {
    format!(
        "{}\n\nAnswer with the complete SystemVerilog code of one module named TopModule, with exactly the \
         interface described above, in a ```verilog code block: module TopModule ... endmodule.",
        spec.trim_end()
    )
}

/// The first `module TopModule ... endmodule` in `answer` (inside ``` fences or not): from the word
/// `module` to the end of the first `endmodule` after it. None when there is none.
pub fn extract_module(answer: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(at) = answer[from..].find("module") {
        let start = from + at;
        from = start + "module".len();
        let before_ok = answer[..start].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let rest = answer[from..].trim_start();
        let name_ok = rest
            .strip_prefix("TopModule")
            .is_some_and(|r| r.chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$')));
        if before_ok && name_ok {
            let end = answer[from..].find("endmodule")? + from + "endmodule".len();
            return Some(&answer[start..end]);
        }
    }
    None
}

/// The reference solution as a candidate: `RefModule` renamed `TopModule`.
pub fn reference_as_candidate(p: &Problem) -> String {
    p.reference.replace("RefModule", "TopModule")
}

/// Wall-clock limits of one check.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Limits {
    pub compile: Duration,
    pub simulate: Duration,
}

impl Default for Limits {
    /// 10 s to compile, 10 s to simulate (the VerilogEval testbenches finish in well under a second).
    fn default() -> Self {
        Limits { compile: Duration::from_secs(10), simulate: Duration::from_secs(10) }
    }
}

/// What became of one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No `module TopModule ... endmodule` in the answer.
    NoModule,
    /// iverilog rejected it (or crashed).
    CompileError,
    /// iverilog ran past its limit.
    CompileTimeout,
    /// vvp ran past its limit (e.g. a zero-delay loop).
    SimTimeout,
    /// vvp failed or printed no `Mismatches:` line.
    SimError,
    /// The testbench counted mismatches.
    Mismatch,
    Pass,
}

impl Outcome {
    pub fn passed(self) -> bool {
        self == Outcome::Pass
    }
    /// iverilog accepted the candidate.
    pub fn compiled(self) -> bool {
        matches!(self, Outcome::SimTimeout | Outcome::SimError | Outcome::Mismatch | Outcome::Pass)
    }
}

/// The result of one check, with the end of the tool output that decided it.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub outcome: Outcome,
    /// Mismatches the testbench reported.
    pub mismatches: Option<u64>,
    pub seconds: f64,
    /// The last lines of the deciding tool's output (at most 2,000 bytes).
    pub log: String,
}

/// Fail early, naming the package, when iverilog or vvp is not installed.
pub fn check_tools() -> Result<()> {
    for tool in ["iverilog", "vvp"] {
        let ok = Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
        if !ok {
            return Err(Error::config(
                tool,
                format!(
                    "`{tool}` not found on PATH: install the `{IVERILOG_PACKAGE}` package (apt-get install -y {IVERILOG_PACKAGE})"
                ),
            ));
        }
    }
    Ok(())
}

/// Compile `candidate` (a `TopModule`, or any text) with the problem's reference and testbench and
/// simulate it, in a fresh temporary directory, within `limits`.
pub fn check(p: &Problem, candidate: Option<&str>, limits: &Limits) -> Result<Check> {
    let t0 = Instant::now();
    let done = |outcome, mismatches, log: &str| Check {
        outcome,
        mismatches,
        seconds: t0.elapsed().as_secs_f64(),
        log: tail(log, 2000).to_string(),
    };
    let Some(code) = candidate else { return Ok(done(Outcome::NoModule, None, "")) };
    let dir = tempfile::Builder::new().prefix("octet-verilog-").tempdir().map_err(|e| Error::io("tempdir", e))?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    };
    write("TopModule.sv", code)?;
    write("ref.sv", &p.reference)?;
    write("test.sv", &p.testbench)?;
    let mut cc = Command::new("iverilog");
    cc.args(["-Wall", "-Winfloop", "-Wno-timescale", "-g2012", "-s", "tb", "-o", "sim"]);
    cc.args(["test.sv", "TopModule.sv", "ref.sv"]);
    let c = run_limited(cc, dir.path(), limits.compile, "iverilog")?;
    if c.timed_out {
        return Ok(done(Outcome::CompileTimeout, None, &c.output));
    }
    if !c.success || !dir.path().join("sim").is_file() {
        return Ok(done(Outcome::CompileError, None, &c.output));
    }
    let mut sim = Command::new("vvp");
    sim.args(["-n", "sim"]);
    let s = run_limited(sim, dir.path(), limits.simulate, "vvp")?;
    if s.timed_out {
        return Ok(done(Outcome::SimTimeout, None, &s.output));
    }
    // A run that compared no samples (killed early, or a testbench cut short) tested nothing.
    let verdict = parse_mismatches(&s.output);
    let outcome = match verdict {
        Some((0, m)) if s.success && m > 0 => Outcome::Pass,
        Some((n, _)) if s.success && n > 0 => Outcome::Mismatch,
        _ => Outcome::SimError,
    };
    Ok(done(outcome, verdict.map(|v| v.0), &s.output))
}

/// Whether `code` compiles on its own (`iverilog -g2012`, no testbench), within `limit`: the filter of
/// the SFT builder's modules (a timeout counts as no).
pub fn compiles_alone(code: &str, limit: Duration) -> Result<bool> {
    let dir = tempfile::Builder::new().prefix("octet-verilog-").tempdir().map_err(|e| Error::io("tempdir", e))?;
    let path = dir.path().join("m.sv");
    std::fs::write(&path, code).map_err(|e| Error::io(&path, e))?;
    let mut cc = Command::new("iverilog");
    cc.args(["-g2012", "-o", "out", "m.sv"]);
    let c = run_limited(cc, dir.path(), limit, "iverilog")?;
    Ok(c.success && !c.timed_out && dir.path().join("out").is_file())
}

/// (N, M) of the testbench's last `Mismatches: N in M samples` line.
pub fn parse_mismatches(output: &str) -> Option<(u64, u64)> {
    let line = output.lines().rev().find_map(|l| l.trim().strip_prefix("Mismatches:"))?;
    let w: Vec<&str> = line.split_whitespace().collect();
    match w[..] {
        [n, "in", m, ..] => Some((n.parse().ok()?, m.parse().ok()?)),
        _ => None,
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut at = s.len().saturating_sub(max);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

struct Ran {
    success: bool,
    timed_out: bool,
    /// stdout and stderr, interleaved, the last OUTPUT_KEEP bytes.
    output: String,
}

/// Run `cmd` in `dir` in its own process group with stdin closed and stdout+stderr drained by threads;
/// on expiry of `limit` kill the whole group (iverilog runs ivlpp and ivl as children).
fn run_limited(mut cmd: Command, dir: &Path, limit: Duration, what: &str) -> Result<Ran> {
    use std::os::unix::process::CommandExt;
    cmd.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::config(
                what,
                format!("`{what}` not found on PATH: install the `{IVERILOG_PACKAGE}` package (apt-get install -y {IVERILOG_PACKAGE})"),
            )
        } else {
            Error::io(what, e)
        }
    })?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            if let Some(mut r) = r {
                let mut buf = [0u8; 8192];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * OUTPUT_KEEP {
                        kept.drain(..kept.len() - OUTPUT_KEEP);
                    }
                }
            }
            kept
        })
    };
    let out = drain(child.stdout.take().map(|x| Box::new(x) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|x| Box::new(x) as Box<dyn Read + Send>));
    let t0 = Instant::now();
    let pgid = child.id() as i32;
    let (status, timed_out) = loop {
        if let Some(st) = child.try_wait().map_err(|e| Error::io(what, e))? {
            break (Some(st), false);
        }
        if t0.elapsed() >= limit {
            // SAFETY: kill(2) on the child's own process group (process_group(0) made it the leader).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut bytes = out.join().unwrap_or_default();
    bytes.extend(err.join().unwrap_or_default());
    let output = String::from_utf8_lossy(tail_bytes(&bytes, OUTPUT_KEEP)).into_owned();
    Ok(Ran { success: status.is_some_and(|s| s.success()), timed_out, output })
}

fn tail_bytes(b: &[u8], max: usize) -> &[u8] {
    &b[b.len().saturating_sub(max)..]
}

/// HumanEval's unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k), computed as
/// 1 - prod_{i=n-c+1}^{n} (1 - k/i) (no large binomials). 1 when fewer than k samples fail.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(c <= n && k >= 1 && k <= n, "pass@k needs c <= n and 1 <= k <= n (n={n}, c={c}, k={k})");
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// How a VerilogEval run samples and scores.
#[derive(Clone, Debug)]
pub struct VerilogConfig {
    /// Temperature samples per problem for pass@k (0: the greedy sample only).
    pub samples: usize,
    /// The k of pass@k reported (each <= samples).
    pub ks: Vec<usize>,
    /// Sampling of the pass@k samples (temperature, top-p, token limit, seed); the greedy sample uses
    /// the same token limit at temperature 0.
    pub sample: octet_lm::generate::SampleConfig,
    pub limits: Limits,
}

impl Default for VerilogConfig {
    /// HumanEval / VerilogEval's settings: n = 10 samples at temperature 0.8, top-p 0.95, at most 512
    /// new tokens; pass@1, @5, @10.
    fn default() -> Self {
        VerilogConfig {
            samples: 10,
            ks: vec![1, 5, 10],
            sample: octet_lm::generate::SampleConfig {
                max_new_tokens: 512,
                temperature: 0.8,
                top_k: 0,
                top_p: 0.95,
                seed: 0,
            },
            limits: Limits::default(),
        }
    }
}

/// One sample's answer as the harness saw it.
#[derive(Clone, Debug, Serialize)]
pub struct SampleResult {
    pub outcome: Outcome,
    pub passed: bool,
    pub compiled: bool,
    pub mismatches: Option<u64>,
    /// Tokens generated (0 for a candidate that was not generated).
    pub tokens: usize,
    pub generate_seconds: f64,
    pub check_seconds: f64,
}

/// One problem's line of the per-problem JSON-lines report.
#[derive(Clone, Debug, Serialize)]
pub struct ProblemResult {
    pub problem: String,
    pub greedy: SampleResult,
    /// The greedy answer, as generated.
    pub greedy_answer: String,
    /// The end of the deciding tool's output for the greedy sample.
    pub greedy_log: String,
    /// Temperature samples: n, passed c, compiled.
    pub n: usize,
    pub c: usize,
    pub compiled: usize,
    /// pass@k of this problem from its n samples (k as a string key: "1", "5", ...).
    pub pass_at: std::collections::BTreeMap<String, f64>,
    pub samples: Vec<SampleResult>,
}

/// The run's totals.
#[derive(Clone, Debug, Serialize)]
pub struct VerilogSummary {
    pub problems: usize,
    /// Share of problems whose greedy sample passes.
    pub pass_at_1_greedy: f64,
    /// Share of greedy samples iverilog accepts.
    pub greedy_compile_rate: f64,
    /// Share of all samples (greedy and temperature) iverilog accepts.
    pub compile_rate: f64,
    /// Share of greedy answers with a `module TopModule ... endmodule`.
    pub greedy_module_rate: f64,
    /// Mean over problems of the unbiased pass@k from the n temperature samples.
    pub pass_at_k: std::collections::BTreeMap<String, f64>,
    pub samples_per_problem: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub generated_tokens: usize,
    pub generate_seconds: f64,
    pub check_seconds: f64,
}

/// Score `problems`: for each, a greedy answer and `cfg.samples` temperature answers from
/// `answer(problem, sampling)`, each checked by simulation. `on_problem` sees each problem's result as
/// it is done (for streaming JSON lines).
pub fn evaluate(
    problems: &[Problem],
    cfg: &VerilogConfig,
    answer: &mut dyn FnMut(&Problem, &octet_lm::generate::SampleConfig) -> Result<super::Generated>,
    on_problem: &mut dyn FnMut(&ProblemResult) -> Result<()>,
) -> Result<VerilogSummary> {
    if let Some(&k) = cfg.ks.iter().find(|&&k| k == 0 || (cfg.samples > 0 && k > cfg.samples)) {
        return Err(Error::config("k", format!("pass@{k} needs 1 <= k <= samples ({})", cfg.samples)));
    }
    if problems.is_empty() {
        return Err(Error::config("problems", "no problems to evaluate"));
    }
    check_tools()?;
    let greedy_sc = octet_lm::generate::SampleConfig { temperature: 0.0, top_k: 0, top_p: 1.0, ..cfg.sample };
    let mut run_one = |p: &Problem, sc: &octet_lm::generate::SampleConfig| -> Result<(SampleResult, String, String)> {
        let g = answer(p, sc)?;
        let ck = check(p, extract_module(&g.text), &cfg.limits)?;
        let r = SampleResult {
            outcome: ck.outcome,
            passed: ck.outcome.passed(),
            compiled: ck.outcome.compiled(),
            mismatches: ck.mismatches,
            tokens: g.tokens,
            generate_seconds: g.seconds,
            check_seconds: ck.seconds,
        };
        Ok((r, g.text, ck.log))
    };
    let mut results = Vec::with_capacity(problems.len());
    for (i, p) in problems.iter().enumerate() {
        let (greedy, greedy_answer, greedy_log) = run_one(p, &greedy_sc)?;
        let mut samples = Vec::with_capacity(cfg.samples);
        for s in 0..cfg.samples {
            let seed = octet_core::Rng::new(cfg.sample.seed ^ ((i as u64) << 20) ^ (s as u64)).next_u64();
            let sc = octet_lm::generate::SampleConfig { seed, ..cfg.sample };
            samples.push(run_one(p, &sc)?.0);
        }
        let (n, c) = (samples.len(), samples.iter().filter(|s| s.passed).count());
        let pass_at = if n == 0 {
            Default::default()
        } else {
            cfg.ks.iter().map(|&k| (k.to_string(), pass_at_k(n, c, k))).collect()
        };
        let r = ProblemResult {
            problem: p.name.clone(),
            compiled: samples.iter().filter(|s| s.compiled).count(),
            greedy,
            greedy_answer,
            greedy_log,
            n,
            c,
            pass_at,
            samples,
        };
        on_problem(&r)?;
        results.push(r);
    }
    let np = results.len() as f64;
    let share = |f: &dyn Fn(&ProblemResult) -> bool| results.iter().filter(|r| f(r)).count() as f64 / np;
    let all = || results.iter().flat_map(|r| std::iter::once(&r.greedy).chain(&r.samples));
    let total = all().count() as f64;
    let pass_at_k = if cfg.samples == 0 {
        Default::default()
    } else {
        cfg.ks
            .iter()
            .map(|&k| (k.to_string(), results.iter().map(|r| r.pass_at[&k.to_string()]).sum::<f64>() / np))
            .collect()
    };
    Ok(VerilogSummary {
        problems: results.len(),
        pass_at_1_greedy: share(&|r| r.greedy.passed),
        greedy_compile_rate: share(&|r| r.greedy.compiled),
        compile_rate: all().filter(|s| s.compiled).count() as f64 / total,
        greedy_module_rate: share(&|r| r.greedy.outcome != Outcome::NoModule),
        pass_at_k,
        samples_per_problem: cfg.samples,
        temperature: cfg.sample.temperature,
        top_p: cfg.sample.top_p,
        max_new_tokens: cfg.sample.max_new_tokens,
        generated_tokens: all().map(|s| s.tokens).sum(),
        generate_seconds: all().map(|s| s.generate_seconds).sum(),
        check_seconds: all().map(|s| s.check_seconds).sum(),
    })
}

/// `evaluate` with `model` answering: the instruction as one chat turn, generation stopped once the
/// answer holds a complete `module TopModule ... endmodule` (or at EOS / end of turn / the token limit).
pub fn evaluate_model(
    model: &mut super::EvalModel,
    problems: &[Problem],
    cfg: &VerilogConfig,
    on_problem: &mut dyn FnMut(&ProblemResult) -> Result<()>,
) -> Result<VerilogSummary> {
    let mut answer = |p: &Problem, sc: &octet_lm::generate::SampleConfig| {
        let prompt = model.chat_prompt(&instruction(&p.prompt))?;
        model.generate_until(&prompt, sc, |text| extract_module(text).is_some())
    };
    evaluate(problems, cfg, &mut answer, on_problem)
}

/// The harness's self-check: every reference solution, renamed `TopModule`, as the only answer.
pub fn evaluate_references(
    problems: &[Problem],
    limits: &Limits,
    on_problem: &mut dyn FnMut(&ProblemResult) -> Result<()>,
) -> Result<VerilogSummary> {
    let cfg = VerilogConfig { samples: 0, ks: vec![], limits: *limits, ..Default::default() };
    let mut answer = |p: &Problem, _: &octet_lm::generate::SampleConfig| {
        Ok(super::Generated { text: reference_as_candidate(p), tokens: 0, seconds: 0.0, stopped: true })
    };
    evaluate(problems, &cfg, &mut answer, on_problem)
}
