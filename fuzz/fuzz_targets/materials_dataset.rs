//! The materials data sets' JSON-lines formats (structures and compositions with energies).
#![no_main]
use libfuzzer_sys::fuzz_target;
use octet_materials::{composition_data, dataset};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = dataset::parse_dataset(text, "fuzz.jsonl".as_ref());
    let _ = composition_data::parse_composition_dataset(text, "fuzz.jsonl".as_ref());
});
