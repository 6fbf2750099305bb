//! A token shard (`train.bin`) -> header checks -> batches (what training reads every step).
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use octet_lm::data::{Batches, Shard};

fuzz_target!(|data: &[u8]| {
    let p = common::as_file("train.bin", data);
    let Ok(shard) = Shard::open(&p) else { return };
    if let Ok(b) = Batches::new(shard, 2, 4, 7) {
        let _ = b.train_batch(3);
        let _ = b.eval_batch(1);
    }
});
