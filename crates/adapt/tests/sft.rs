//! SFT: chat rendering and the loss mask, packing, bad conversation files, the corpus builder, the
//! n-gram overlap check, and a masked run on a tiny Llama.

mod common;

use std::path::Path;

use octet_adapt::corpus::{Category, Split};
use octet_adapt::dapt::ModelTokens;
use octet_adapt::eval::verilog::Problem;
use octet_adapt::sft::{self, Conversation, Message, SftOptions};
use octet_adapt::sft_data::{self, BuildConfig, Overlap};
use octet_kernels::IGNORE_TARGET;
use octet_lm::chat::ChatMl;

fn model() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (c, m) = (tmp.path().join("corpus"), tmp.path().join("model"));
    std::fs::create_dir_all(&c).unwrap();
    std::fs::create_dir_all(&m).unwrap();
    common::corpus(&c);
    common::tiny_model(&m, &c);
    (tmp, m)
}

fn conv() -> Conversation {
    Conversation {
        messages: vec![
            Message { role: "system".into(), content: "You design hardware.".into() },
            Message { role: "user".into(), content: "Write a flop.".into() },
            Message { role: "assistant".into(), content: "module m0 (input logic clk);\nendmodule".into() },
            Message { role: "user".into(), content: "And prose?".into() },
            Message { role: "assistant".into(), content: "This is general prose.".into() },
        ],
    }
}

#[test]
fn rendering_by_pieces_equals_the_whole_and_learns_only_assistant_turns() {
    let (_tmp, m) = model();
    let mt = ModelTokens::of(&m, None).unwrap();
    let f = sft::chat_format(&mt, &m).unwrap();
    let c = conv();
    let (ids, learn) = sft::render(&c, &mt.tokenizer, &f, true).unwrap();
    let whole: String = sft::render_pieces(&c, &f.chat).into_iter().map(|(t, _)| t).collect();
    assert_eq!(ids, mt.tokenizer.encode(whole.as_str(), false).unwrap().get_ids(), "piecewise encoding differs");
    let learned: Vec<u32> = ids.iter().zip(&learn).filter(|(_, l)| **l).map(|(&t, _)| t).collect();
    assert_eq!(
        mt.tokenizer.decode(&learned, false).unwrap(),
        "module m0 (input logic clk);\nendmodule<|im_end|>This is general prose.<|im_end|>"
    );
    // The ablation learns everything.
    let (ids2, all) = sft::render(&c, &mt.tokenizer, &f, false).unwrap();
    assert_eq!((ids2, all.iter().all(|&l| l)), (ids, true));
}

#[test]
fn default_system_message_is_inserted_only_without_a_system_turn() {
    let chat = ChatMl { default_system: Some("SYS".into()) };
    let q = Conversation::qa("q", "a");
    let text: String = sft::render_pieces(&q, &chat).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        text,
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    );
    let text: String = sft::render_pieces(&conv(), &chat).into_iter().map(|(t, _)| t).collect();
    assert!(!text.contains("SYS"));
}

#[test]
fn packing_ignores_prompt_targets_pads_rows_and_drops_long_examples() {
    // Example A: 5 tokens, learned from token 3; B: 4 tokens all learned; C: too long for T = 6.
    let a = (vec![1, 2, 3, 4, 5], vec![false, false, false, true, true]);
    let b = (vec![6, 7, 8, 9], vec![false, true, true, true]);
    let c = (vec![1; 9], vec![true; 9]);
    let (rows, st) = sft::pack_rows(&[a, b, c], 6, 0);
    assert_eq!((st.examples, st.dropped, st.rows, st.learned, st.filled), (2, 1, 2, 5, 7));
    let (mut x, mut y) = (vec![], vec![]);
    rows.row(0, &mut x, &mut y);
    rows.row(1, &mut x, &mut y);
    let i = IGNORE_TARGET;
    // A fills 4 of row 0 (B's 3 positions do not fit: padding), B starts row 1.
    assert_eq!(x, [1, 2, 3, 4, 0, 0, 6, 7, 8, 0, 0, 0]);
    assert_eq!(y, [i, i, 4, 5, i, i, 7, 8, 9, i, i, i]);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_conversation_files_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}"#;
    let cases = [
        (format!("{ok}\n{{\"messages\": [\n"), "line 2"),
        (format!("{ok}\n\n{}\n", r#"{"messages":[{"role":"user","content":"q"}]}"#), "line 3"),
        (
            format!("{}\n", r#"{"messages":[{"role":"robot","content":"q"},{"role":"assistant","content":"a"}]}"#),
            "robot",
        ),
        ("\n".to_string(), "no conversations"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = write(tmp.path(), &format!("c{i}.jsonl"), text);
        let e = sft::read_conversations(&p).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(&format!("c{i}.jsonl")), "case {i}: {e}");
    }
    let e = sft::read_conversations(&write(
        tmp.path(),
        "n.jsonl",
        &format!("{ok}\n{}\n", r#"{"messages":[{"role":"user","content":"q"}]}"#),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("no assistant turn"), "{e}");
}

fn problem(name: &str, prompt: &str, reference: &str) -> Problem {
    Problem { name: name.into(), prompt: prompt.into(), reference: reference.into(), testbench: String::new() }
}

#[test]
fn overlap_flags_copied_reference_text_and_decontamination_drops_it() {
    let reference = "module RefModule ( input a, input b, output out ); assign out = a & b & a & b & a; endmodule";
    let o = Overlap::of_problems(&[problem("Prob1_and", "I would like you to implement an and gate", reference)], 8);
    let mut convs = vec![
        Conversation::qa("Write it", format!("```verilog\n{reference}\n```")),
        Conversation::qa("What is Python?", "A programming language with dynamic types and a large standard library."),
    ];
    let texts: Vec<String> = convs.iter().map(sft_data::conversation_text).collect();
    let r = o.report("set", texts.iter().enumerate().map(|(i, t)| (i.to_string(), t.as_str())));
    assert_eq!((r.items, r.overlapping_items), (2, 1));
    assert_eq!(r.problems.keys().collect::<Vec<_>>(), ["Prob1_and"]);
    assert_eq!(sft_data::decontaminate(&mut convs, &o), 1);
    assert_eq!(convs.len(), 1);
}

#[test]
fn builder_makes_top_module_tasks_and_faq_answers_from_training_documents_only() {
    let module = "// A one-bit register with enable.\nmodule flop_en (\n  input clk,\n  input en,\n  input d,\n  output reg q\n);\n  always @(posedge clk) if (en) q <= d;\nendmodule\n";
    let held = "module secret_m (input a, output b);\n  assign b = a;\nendmodule\n";
    let pkg = "module uses_pkg (input a);\n  import foo_pkg::*;\nendmodule\n";
    let mut domain = vec![
        common::doc(1, Category::Design, Split::Train, module.into()),
        common::doc(2, Category::Design, Split::Heldout, held.into()),
        common::doc(3, Category::Design, Split::Train, pkg.into()),
        common::doc(4, Category::Documentation, Split::Train, "# Clock gating\n\nThe clock gate holds the enable in a latch while the clock is low, so that the gated clock never glitches.\n".into()),
    ];
    domain[3].path = "doc/clock_gate.md".into();
    let cfg = BuildConfig { compile_check: false, ..BuildConfig::default() };
    let convs = sft_data::domain_examples(&domain, &cfg, &mut |_| {});
    assert_eq!(convs.len(), 2, "{convs:?}");
    let (q, a) = (&convs[0].messages[0].content, &convs[0].messages[1].content);
    assert!(q.starts_with("A one-bit register with enable.") && q.contains("module TopModule ("), "{q}");
    assert!(a.starts_with("```verilog\nmodule TopModule (") && a.ends_with("endmodule\n```"), "{a}");
    assert!(convs[1].messages[0].content.contains("\"Clock gating\""));
    let mut general = vec![common::doc(
        9,
        Category::General,
        Split::Train,
        "Why is the sky blue?\n--------------------\n\nBecause of Rayleigh scattering of sunlight in the atmosphere.\n\nNot a question\n==============\n\ntext\n"
            .into(),
    )];
    general[0].path = "faq/general.rst.txt".into();
    let faq = sft_data::general_examples(&general, &cfg);
    assert_eq!(
        faq,
        vec![Conversation::qa("Why is the sky blue?", "Because of Rayleigh scattering of sunlight in the atmosphere.")]
    );
}

#[test]
fn masked_sft_trains_a_tiny_llama_and_resumes() {
    let (tmp, m) = model();
    let convs: Vec<Conversation> = (0..12)
        .map(|i| Conversation::qa(format!("Write module m{i}."), format!("module m{i} (input logic clk);\nendmodule")))
        .collect();
    let data = tmp.path().join("c.jsonl");
    sft::write_conversations(&data, &convs).unwrap();
    let out = tmp.path().join("run");
    let mut o = SftOptions::new(m, vec![data], out.clone());
    (o.steps, o.batch, o.seq, o.lr, o.warmup, o.eval_every, o.val_every, o.checkpoint_every) =
        (6, 2, 96, 3e-3, 1, 3, 4, 3);
    o.precision = octet_lm::precision::Precision::Fp32;
    let mut vals = vec![];
    let s = sft::run(Some(o), &out, None, &mut |r| {
        if let sft::Report::Train(octet_lm::train::Event::Eval { val_loss, .. }) = r {
            vals.push(val_loss.to_owned())
        }
    })
    .unwrap();
    assert_eq!(s.steps, 6);
    assert_eq!(vals.len(), 3, "step 0, 3, 6");
    assert!(vals[2] < vals[0], "validation loss on assistant tokens falls: {vals:?}");
    let s2 = sft::run(None, &out, Some(8), &mut |_| {}).unwrap();
    assert_eq!(s2.steps, 8);
}

#[test]
fn lora_sft_keeps_adapter_only_optimizer_state_and_checkpoints_merged_weights() {
    let (tmp, m) = model();
    let convs: Vec<Conversation> = (0..8)
        .map(|i| Conversation::qa(format!("Write module m{i}."), format!("module m{i} (input logic clk);\nendmodule")))
        .collect();
    let data = tmp.path().join("c.jsonl");
    sft::write_conversations(&data, &convs).unwrap();
    let out = tmp.path().join("lora");
    let mut o = SftOptions::new(m.clone(), vec![data], out.clone());
    (o.steps, o.batch, o.seq, o.lr, o.warmup, o.eval_every, o.val_every, o.checkpoint_every) =
        (3, 2, 96, 1e-2, 1, 0, 4, 0);
    (o.lora_rank, o.precision) = (2, octet_lm::precision::Precision::Bf16);
    let s = sft::run(Some(o), &out, None, &mut |_| {}).unwrap();
    assert!(s.trainable_params * 10 < s.params, "{} of {}", s.trainable_params, s.params);
    assert_eq!(s.memory["bytes"]["adam_m"], 4 * s.trainable_params);
    // The checkpoint holds merged weights: loadable as a plain model, and changed by training.
    let (_, base) = octet_lm::llama_hf::import_hf(&m).unwrap();
    let ck = octet_lm::checkpoint::load(&out, false).unwrap();
    assert_eq!(ck.params.len(), base.len());
    assert!(ck.params.iter().zip(&base).any(|(a, b)| a != b));
    // Resuming a LoRA run is refused clearly.
    let e = sft::run(None, &out, Some(4), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("LoRA run does not resume"), "{e}");
}
