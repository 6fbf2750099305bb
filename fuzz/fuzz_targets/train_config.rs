//! A TOML training configuration -> validation -> the model it describes and that model's layout
//! (everything `octet train --config` does before allocating).
#![no_main]
use libfuzzer_sys::fuzz_target;
use octet_lm::config::TrainConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = toml::from_str::<TrainConfig>(text) else { return };
    if cfg.validate().is_err() {
        return;
    }
    if let Ok(spec) = cfg.model_spec(cfg.vocab_size) {
        let _ = spec.param_layout().total();
    }
});
