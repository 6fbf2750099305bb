//! One line of an oracle worker's answer for a two-atom relaxation request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use octet_materials::oracle::{OracleRequest, Task, answer_from_line};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else { return };
    let structure = octet_materials::io::poscar::parse_poscar(include_str!("../seeds/cu2.poscar"), "POSCAR".as_ref())
        .expect("seed structure parses");
    let req = OracleRequest { id: "x".into(), structure, task: Task::Single };
    let _ = answer_from_line(&req, line);
});
