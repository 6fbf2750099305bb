//! The discovery journal (`journal.jsonl`): torn last lines, bad JSON, odd records.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::as_file("journal.jsonl", data);
    let _ = octet_materials::journal::Journal::open(&p);
});
