//! A checkpoint's `state.json` (no manifest: versions 1-2 load unchecked) -> parse, validate the
//! model, size its layout, then fail on the missing tensor files (`checkpoint::load`).
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("ckpt-state");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state.json"), data).unwrap();
    let _ = octet_lm::checkpoint::load(&dir, true);
});
