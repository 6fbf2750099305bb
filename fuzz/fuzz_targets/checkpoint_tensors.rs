//! A checkpoint's `model.safetensors` and `optimizer.safetensors` beside a valid `state.json` of a
//! tiny model, at fp32 and fp8-o2 (narrow buffers). Input: a selector byte (bit 0: fp8-o2, bit 1:
//! weights only), the model file's length (u32 LE), the model file, the optimizer file.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

const STATE_FP32: &str = include_str!("../seeds/state_fp32.json");
const STATE_O2: &str = include_str!("../seeds/state_fp8o2.json");

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let dir = common::scratch().join("ckpt-tensors");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state.json"), if which & 1 == 0 { STATE_FP32 } else { STATE_O2 }).unwrap();
    let Some((len, rest)) = rest.split_first_chunk::<4>() else { return };
    let (model, opt) = rest.split_at((u32::from_le_bytes(*len) as usize).min(rest.len()));
    std::fs::write(dir.join("model.safetensors"), model).unwrap();
    std::fs::write(dir.join("optimizer.safetensors"), opt).unwrap();
    let _ = octet_lm::checkpoint::load(&dir, which & 2 == 0);
});
