//! Tokenizer augmentation on tiny texts made here: a base BPE trained on general prose is extended
//! with tokens from SystemVerilog; every new token is a vocabulary entry produced by a merge of two
//! existing tokens, domain text gets shorter, general text does not change, decoding round-trips.

use octet_adapt::augment::{AugmentConfig, BpeTables, augment, count_tokens, tokenizer_json, train_domain_bpe};
use tokenizers::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

fn general_text(i: usize) -> String {
    format!(
        "Chapter {i}. The quick brown fox jumps over the lazy dog, and the reader turns the page. \
         It was the best of times, it was the worst of times; the people of the town went about \
         their work in the morning and came home in the evening to eat and to sleep. Number {}.\n",
        i * 37
    )
}

fn domain_text(i: usize) -> String {
    format!(
        "module fifo_{i} #(parameter int unsigned Depth = {}) (\n  input  logic clk_i,\n  input  logic rst_ni,\n  \
         output logic full_o\n);\n  always_ff @(posedge clk_i or negedge rst_ni) begin\n    if (!rst_ni) wptr_q <= '0;\n    \
         else if (wvalid_i && wready_o) wptr_q <= wptr_d;\n  end\n  assign full_o = (wptr_q == Depth);\nendmodule\n",
        4 << (i % 5)
    )
}

fn base_tokenizer(general: &[&str]) -> Tokenizer {
    let mut t = Tokenizer::new(BPE::default());
    t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    t.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    train_domain_bpe(&t, general, 420).unwrap()
}

#[test]
fn new_tokens_come_with_merges_and_shorten_domain_text_only() {
    let general: Vec<String> = (0..200).map(general_text).collect();
    let domain: Vec<String> = (0..200).map(domain_text).collect();
    let g: Vec<&str> = general.iter().map(String::as_str).collect();
    let d: Vec<&str> = domain.iter().map(String::as_str).collect();
    let base = base_tokenizer(&g);
    let cfg = AugmentConfig { domain_vocab: 600, max_new_tokens: 40, max_general_per_mb: 0.0, min_domain_count: 5 };
    let aug = augment(&base, &d[..150], &g[..150], &cfg, &mut |_| {}).unwrap();
    let s = &aug.stats;
    assert!(s.added > 10, "{s:?}");
    assert_eq!(s.extended_vocab, s.base_vocab + s.added);
    assert_eq!(s.extended_merges, s.base_merges + s.added);

    // Every new token: id after the base vocabulary, made by a merge of two tokens that existed before it.
    let ext = tokenizer_json(&aug.tokenizer).unwrap();
    let tables = BpeTables::from_model_json(&ext["model"]).unwrap();
    for (k, t) in aug.new_tokens.iter().enumerate() {
        assert_eq!(t.id as usize, s.base_vocab + k);
        assert_eq!(format!("{}{}", t.merge.0, t.merge.1), t.token);
        for part in [&t.merge.0, &t.merge.1] {
            assert!(tables.vocab[part] < t.id, "`{part}` exists before `{}`", t.token);
        }
        assert_eq!(tables.segment(&t.token), vec![t.token.clone()], "reachable");
        assert!(t.base_pieces.len() >= 2 && t.base_pieces.iter().all(|&p| (p as usize) < s.base_vocab));
    }

    // Held-out texts: domain shorter, general unchanged, decoding exact.
    let (bd, _) = count_tokens(&base, &d[150..]).unwrap();
    let (ed, _) = count_tokens(&aug.tokenizer, &d[150..]).unwrap();
    let (bg, _) = count_tokens(&base, &g[150..]).unwrap();
    let (eg, _) = count_tokens(&aug.tokenizer, &g[150..]).unwrap();
    assert!((ed as f64) < 0.97 * bd as f64, "domain {bd} -> {ed}");
    assert_eq!(eg, bg, "general text tokenizes as before");
    for text in &d[150..] {
        let ids = aug.tokenizer.encode(*text, false).unwrap();
        assert_eq!(aug.tokenizer.decode(ids.get_ids(), false).unwrap(), *text);
    }
}

#[test]
fn segment_follows_merge_ranks() {
    let model = serde_json::json!({
        "type": "BPE",
        "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5},
        "merges": [["b", "c"], ["a", "b"], ["a", "bc"]],
    });
    let t = BpeTables::from_model_json(&model).unwrap();
    assert_eq!(t.segment("abc"), ["abc"]);
    assert_eq!(t.segment("abab"), ["ab", "ab"]);
    assert_eq!(t.segment("cab"), ["c", "ab"]);
}
