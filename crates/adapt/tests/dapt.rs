//! DAPT on a tiny Llama (a HuggingFace directory written here, with a byte-level BPE trained on the
//! fixture corpus): the packed stream's blend and its exclusion of held-out documents, a run at bf16
//! and fp8-o2 with held-out bits per byte at the start, every N steps and the end, and resume.

mod common;

use common::{corpus, tiny_model};
use octet_adapt::dapt::{self, DaptOptions, DaptStart, Report};
use octet_lm::precision::Precision;

fn setup() -> (tempfile::TempDir, DaptOptions) {
    let tmp = tempfile::tempdir().unwrap();
    let (c, m) = (tmp.path().join("corpus"), tmp.path().join("model"));
    std::fs::create_dir_all(&c).unwrap();
    std::fs::create_dir_all(&m).unwrap();
    corpus(&c);
    tiny_model(&m, &c);
    let mut o = DaptOptions::new(m, c, tmp.path().join("run"));
    // 4 steps of 2 x 16 tokens; evaluation every 2 steps on 2 + 2 held-out documents.
    (o.tokens, o.batch, o.seq, o.warmup, o.lr) = (128, 2, 16, 1, 3e-3);
    (o.eval_every, o.eval_docs, o.eval_context, o.checkpoint_every, o.max_doc_tokens) = (2, 2, 16, 2, 64);
    (tmp, o)
}

#[test]
fn packed_stream_holds_only_training_documents_with_the_replay_share() {
    let (_tmp, o) = setup();
    let (tok, _, eos) = dapt::tokenizer_of(&o.init).unwrap();
    let domain = octet_adapt::corpus::read_jsonl(&o.corpus.join("domain.jsonl")).unwrap();
    let general = octet_adapt::corpus::read_jsonl(&o.corpus.join("general.jsonl")).unwrap();
    let (stream, blend) = dapt::pack(&domain, &general, &tok, eos, 400, 0.25, 64, 3).unwrap();
    let text = tok.decode(&stream, false).unwrap();
    assert!(!text.contains("HELDOUTWORD"), "a held-out document was packed");
    assert!(text.contains("general prose") && text.contains("module m"));
    // One EOS after each document.
    let seps = stream.iter().filter(|&&t| t == eos).count();
    assert_eq!(seps, blend.domain_documents + blend.general_documents);
    assert!(blend.domain_tokens >= 300 - 1 - 64 && blend.general_tokens >= 100 - 1 - 64, "{blend:?}");
    assert!(blend.replay_fraction > 0.1 && blend.replay_fraction < 0.5, "{blend:?}");
    // Deterministic in the seed.
    assert_eq!(dapt::pack(&domain, &general, &tok, eos, 400, 0.25, 64, 3).unwrap().0, stream);
}

fn run(start: DaptStart) -> (octet_lm::train::Summary, Vec<dapt::BpbPoint>, Option<dapt::Plan>) {
    let (mut points, mut plan) = (vec![], None);
    let s = dapt::run(start, &mut |r| match r {
        Report::Bpb(p) => points.push(p.clone()),
        Report::Plan(p) => plan = Some(p.clone()),
        _ => {}
    })
    .unwrap();
    (s, points, plan)
}

#[test]
fn dapt_evaluates_every_n_steps_and_resumes_to_a_larger_budget() {
    let (_tmp, o) = setup();
    let (s, points, plan) = run(DaptStart::Fresh(o.clone()));
    let plan = plan.expect("the plan is reported before training");
    assert_eq!((plan.steps, plan.start_step), (4, 0));
    assert!(plan.estimate_seconds > 0.0);
    assert_eq!(s.steps, 4);
    let steps: Vec<usize> = points.iter().map(|p| p.step).collect();
    assert_eq!(steps, [0, 2, 4]);
    assert!(points.iter().all(|p| p.domain_bpb.is_finite() && p.general_bpb.is_finite() && p.domain_bpb > 0.0));
    // Training at a large LR on this tiny corpus lowers the held-out domain bits per byte.
    assert!(points[2].domain_bpb < points[0].domain_bpb, "{points:?}");
    let logged = std::fs::read_to_string(o.out.join("bpb.jsonl")).unwrap();
    assert_eq!(logged.lines().count(), 3);

    let (s2, points2, plan2) = run(DaptStart::Resume { out: o.out.clone(), tokens: Some(192) });
    assert_eq!((plan2.unwrap().start_step, s2.steps), (4, 6));
    assert_eq!(points2.iter().map(|p| p.step).collect::<Vec<_>>(), [6]);
    assert_eq!(std::fs::read_to_string(o.out.join("bpb.jsonl")).unwrap().lines().count(), 4);
}

#[test]
fn dapt_trains_at_fp8_o2() {
    let (_tmp, mut o) = setup();
    o.precision = Precision::Fp8O2;
    o.eval_every = 0;
    let (s, points, _) = run(DaptStart::Fresh(o));
    assert_eq!(s.precision, Precision::Fp8O2);
    assert_eq!(points.iter().map(|p| p.step).collect::<Vec<_>>(), [0, 4]);
    assert!(points.iter().all(|p| p.domain_bpb.is_finite()));
}
