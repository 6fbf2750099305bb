//! CIF text -> structure -> neighbour graph and symmetry (what `materials predict` and `discover` do).
#![no_main]
use libfuzzer_sys::fuzz_target;
use octet_materials::{graph, io::cif, symmetry};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = cif::parse_cif(text, "fuzz.cif".as_ref()) {
        let _ = graph::structure_graph(&s, graph::CUTOFF);
        let _ = symmetry::analyse(&s, 1e-3);
    }
});
