//! Writes a trained model directory as the default model octet ships (`Ensemble::default_model`):
//! every member and the baseline's members with F16 tensors (half the bytes; the held-out MAE of
//! the shipped weights is measured after this, with `octet materials predict --data ... --held-out`),
//! the `elemental-zero` marker copied.
//!
//!     cargo run --release -p octet-materials --example ship_default_model -- MODEL_DIR crates/materials/data/default_model

use std::path::PathBuf;

use octet_materials::ensemble::{Baseline, Ensemble, Storage, save_member_as};

fn main() -> octet_core::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [src, dst] = args.as_slice() else {
        eprintln!("usage: ship_default_model MODEL_DIR OUT_DIR");
        std::process::exit(2);
    };
    let model = Ensemble::load(src)?;
    for (k, m) in model.members.iter().enumerate() {
        save_member_as(&dst.join(format!("member-{k}.safetensors")), m, Storage::F16)?;
    }
    if let Some(Baseline { members, elemental_zero }) = &model.baseline {
        let dir = dst.join(octet_materials::ensemble::BASELINE_DIR);
        for (k, m) in members.iter().enumerate() {
            save_member_as(&dir.join(format!("member-{k}.safetensors")), m, Storage::F16)?;
        }
        if *elemental_zero {
            octet_core::fs::write_atomic(&dir.join(octet_materials::ensemble::ELEMENTAL_ZERO_MARKER), b"")?;
        }
    }
    println!(
        "{} members (+ {} baseline) -> {}",
        model.members.len(),
        model.baseline.map_or(0, |b| b.members.len()),
        dst.display()
    );
    Ok(())
}
