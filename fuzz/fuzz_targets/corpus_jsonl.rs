//! The adaptation corpus (`domain.jsonl`, `general.jsonl`) and VerilogEval-style JSON lines.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::as_file("domain.jsonl", data);
    let _ = octet_adapt::corpus::read_jsonl(&p);
    let _ = octet_adapt::eval::read_json_lines::<serde_json::Value>(&p);
});
