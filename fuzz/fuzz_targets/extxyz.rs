//! Extended XYZ frames (datasets, oracle input and trajectories) -> neighbour graphs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use octet_materials::{graph, io::extxyz};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frames) = extxyz::parse_extxyz(text, "fuzz.extxyz".as_ref()) {
        for f in frames.iter().take(4) {
            let _ = graph::structure_graph(&f.structure, graph::CUTOFF);
        }
    }
});
