//! The VerilogEval harness: pass@k against hand-computed values, module extraction, the problem
//! directory's bad inputs, and the harness validated on the real problems — every reference solution
//! (renamed `TopModule`) passes, a candidate that never finishes simulating fails within the limit, and
//! one iverilog rejects is a failed, non-compiling sample. Tests that simulate print
//! `SKIPPED <test>: <reason>` and return when iverilog (Debian package `iverilog`) or the problems
//! (`../shared/data/verilog-eval/spec-to-rtl`) are absent.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use octet_adapt::eval::Generated;
use octet_adapt::eval::verilog::{
    Limits, Outcome, VerilogConfig, check, check_tools, evaluate, evaluate_references, extract_module, load_problems,
    parse_mismatches, pass_at_k,
};
use octet_core::Tolerance;

/// pass@k in f64: a product of at most a few hundred factors, each rounded once (2^-53 ~ 1.1e-16), and
/// one subtraction.
const PRODUCT_F64: Tolerance = Tolerance { atol: 1e-13, rtol: 1e-13 };

fn problems_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/verilog-eval/spec-to-rtl")
}

/// The problem directory when it and iverilog are here, else None (with the reason printed).
fn ready(test: &str) -> Option<PathBuf> {
    if let Err(e) = check_tools() {
        eprintln!("SKIPPED {test}: {e}");
        return None;
    }
    let d = problems_dir();
    if !d.is_dir() {
        eprintln!("SKIPPED {test}: no problem directory {}", d.display());
        return None;
    }
    Some(d)
}

#[test]
fn pass_at_k_matches_hand_computed_values() {
    let tol = PRODUCT_F64;
    // 1 - C(n-c, k) / C(n, k)
    assert!(tol.close(pass_at_k(10, 0, 1), 0.0));
    assert!(tol.close(pass_at_k(10, 1, 1), 0.1));
    assert!(tol.close(pass_at_k(10, 10, 1), 1.0));
    assert!(tol.close(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0)); // C(7,5)=21, C(10,5)=252
    assert!(tol.close(pass_at_k(5, 2, 2), 1.0 - 3.0 / 10.0)); // C(3,2)=3, C(5,2)=10
    assert!(tol.close(pass_at_k(10, 2, 10), 1.0)); // fewer than k failures
    assert!(tol.close(pass_at_k(10, 8, 5), 1.0));
    assert!(tol.close(pass_at_k(200, 1, 100), 0.5)); // C(199,100)/C(200,100) = 100/200
}

#[test]
fn extracts_the_first_top_module() {
    let fenced = "Here:\n```verilog\nmodule helper(); endmodule\nmodule TopModule(input a, output b);\n  assign b = a;\nendmodule\n```\nmodule TopModule(); endmodule";
    assert_eq!(extract_module(fenced), Some("module TopModule(input a, output b);\n  assign b = a;\nendmodule"));
    assert_eq!(
        extract_module("module TopModule (output z); assign z = 0; endmodule"),
        Some("module TopModule (output z); assign z = 0; endmodule")
    );
    // No module, an unfinished one, a different name, `endmodule` is not `module`.
    assert_eq!(extract_module("I cannot do that."), None);
    assert_eq!(extract_module("module TopModule(output z);\n assign z = 0;"), None);
    assert_eq!(extract_module("module TopModule2(); endmodule"), None);
    assert_eq!(extract_module("endmodule TopModule endmodule"), None);
}

#[test]
fn parses_the_testbench_verdict() {
    assert_eq!(parse_mismatches("Hint: ...\nMismatches: 0 in 20 samples\n"), Some((0, 20)));
    assert_eq!(parse_mismatches("Mismatches: 3 in 20 samples\nMismatches: 1 in 9 samples"), Some((1, 9)));
    assert_eq!(parse_mismatches("TIMEOUT"), None);
}

#[test]
fn a_problem_missing_a_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Prob001_zero_prompt.txt"), "spec").unwrap();
    std::fs::write(dir.path().join("Prob001_zero_ref.sv"), "module RefModule(); endmodule").unwrap();
    let e = load_problems(dir.path()).unwrap_err().to_string();
    assert!(e.contains("Prob001_zero_test.sv"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = load_problems(empty.path()).unwrap_err().to_string();
    assert!(e.contains("no <name>_prompt.txt"), "{e}");
    let e = load_problems(&empty.path().join("absent")).unwrap_err().to_string();
    assert!(e.contains("absent"), "{e}");
}

/// Problems of `../shared/data/verilog-eval/spec-to-rtl` whose reference cannot pass here, and why
/// (checked against the tool output, so a different failure is still a test failure):
/// - Prob099_m2014_q6c: the data are inconsistent — `_ref.sv` and the prompt declare outputs Y1, Y3,
///   the testbench connects Y2, Y4 (the prompt's last paragraph is garbled too);
/// - Prob151_review2015_fsm: the reference casts to an enum (`States'(...)`), which iverilog 11 (the
///   Debian bookworm package) does not support ("sorry: This cast operation is not yet supported");
///   VerilogEval v2 asks for iverilog 12.
const KNOWN_BAD: [(&str, &str); 2] = [
    ("Prob099_m2014_q6c", "port ``Y2'' is not a port of good1"),
    ("Prob151_review2015_fsm", "ref.sv:21: sorry: This cast operation is not yet supported"),
];

#[test]
fn reference_solutions_score_100_percent() {
    let Some(dir) = ready("reference_solutions_score_100_percent") else { return };
    let problems = load_problems(&dir).unwrap();
    assert_eq!(problems.len(), 78);
    let mut failed = Vec::new();
    let s = evaluate_references(&problems, &Limits::default(), &mut |r| {
        if !r.greedy.passed {
            failed.push((r.problem.clone(), r.greedy.outcome, r.greedy_log.clone()));
        }
        Ok(())
    })
    .unwrap();
    for (name, outcome, log) in &failed {
        let why = KNOWN_BAD.iter().find(|k| k.0 == name).map(|k| k.1);
        assert!(why.is_some_and(|w| log.contains(w)), "{name}: {outcome:?}\n{log}");
        eprintln!("known bad problem {name}: {outcome:?}: {}", why.unwrap());
    }
    // 100% of the problems whose data are consistent and that iverilog 11 can compile.
    assert!(failed.len() <= KNOWN_BAD.len());
    assert_eq!(s.problems, 78);
    assert_eq!(s.pass_at_1_greedy, (78 - failed.len()) as f64 / 78.0);
}

#[test]
fn a_candidate_that_never_finishes_fails_within_the_limit() {
    let Some(dir) = ready("a_candidate_that_never_finishes_fails_within_the_limit") else { return };
    let p = load_problems(&dir).unwrap().into_iter().find(|p| p.name == "Prob001_zero").unwrap();
    // A zero-delay loop at time 0: simulation time never advances.
    let hang =
        "module TopModule(output zero);\n  reg x = 0;\n  initial while (1) x = ~x;\n  assign zero = 1'b0;\nendmodule";
    let limits = Limits { compile: Duration::from_secs(10), simulate: Duration::from_secs(2) };
    let t0 = Instant::now();
    let c = check(&p, extract_module(hang), &limits).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(c.outcome, Outcome::SimTimeout, "{}", c.log);
    assert!(c.outcome.compiled() && !c.outcome.passed());
    assert!(secs < 2.0 + 3.0, "took {secs:.1} s against a 2 s limit");
    // An `always` without delay is refused at compile time (-Winfloop).
    let always = "module TopModule(output zero);\n  reg x = 0;\n  always x = ~x;\n  assign zero = 1'b0;\nendmodule";
    assert_eq!(check(&p, Some(always), &limits).unwrap().outcome, Outcome::CompileError);
}

#[test]
fn broken_and_wrong_candidates_fail() {
    let Some(dir) = ready("broken_and_wrong_candidates_fail") else { return };
    let p = load_problems(&dir).unwrap().into_iter().find(|p| p.name == "Prob001_zero").unwrap();
    let limits = Limits::default();
    let syntax = check(&p, Some("module TopModule(output zero); assign zero = ; endmodule"), &limits).unwrap();
    assert_eq!(syntax.outcome, Outcome::CompileError);
    assert!(!syntax.outcome.compiled());
    let wrong = check(&p, Some("module TopModule(output zero); assign zero = 1'b1; endmodule"), &limits).unwrap();
    assert_eq!(wrong.outcome, Outcome::Mismatch);
    assert!(wrong.mismatches.unwrap() > 0);
    assert_eq!(check(&p, None, &limits).unwrap().outcome, Outcome::NoModule);
    // Null bytes and garbage: iverilog errors, the harness does not.
    let garbage = check(&p, Some("module TopModule\0\u{1}\u{fffd} endmodule"), &limits).unwrap();
    assert_eq!(garbage.outcome, Outcome::CompileError);
}

#[test]
fn pass_at_k_and_compile_rate_over_samples() {
    let Some(dir) = ready("pass_at_k_and_compile_rate_over_samples") else { return };
    let problems: Vec<_> = load_problems(&dir).unwrap().into_iter().take(2).collect();
    // A fake model: every answer is the reference in a code block, except every fifth call
    // (a temperature sample here), which is text without a module.
    let mut count = 0usize;
    let mut answer = |p: &octet_adapt::eval::verilog::Problem, sc: &octet_lm::generate::SampleConfig| {
        count += 1;
        let good = sc.temperature == 0.0 || !count.is_multiple_of(5);
        let text =
            if good { format!("```\n{}\n```", p.reference.replace("RefModule", "TopModule")) } else { "no".into() };
        Ok(Generated { text, tokens: 1, seconds: 0.0, stopped: true })
    };
    let cfg = VerilogConfig { samples: 4, ks: vec![1, 4], ..Default::default() };
    let mut lines = Vec::new();
    let s = evaluate(&problems, &cfg, &mut answer, &mut |r| {
        lines.push(serde_json::to_string(r).unwrap());
        Ok(())
    })
    .unwrap();
    // Calls 1..10: greedy at 1 and 6; samples 2,3,4,5 (5 fails) and 7,8,9,10 (10 fails).
    assert_eq!(s.pass_at_1_greedy, 1.0);
    let tol = PRODUCT_F64;
    assert!(tol.close(s.pass_at_k["1"], 0.75));
    assert!(tol.close(s.pass_at_k["4"], 1.0));
    assert!(tol.close(s.compile_rate, 8.0 / 10.0));
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!((v["n"].as_u64(), v["c"].as_u64()), (Some(4), Some(3)));
    // k above the samples is refused.
    let bad = VerilogConfig { samples: 4, ks: vec![5], ..Default::default() };
    assert!(evaluate(&problems, &bad, &mut answer, &mut |_| Ok(())).unwrap_err().to_string().contains("pass@5"));
}
