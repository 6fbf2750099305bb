//! octet-lm: GPT-2 model, data pipeline (tokenizer, token shards, batches), trainer, checkpoints and
//! generation.

pub mod gpt2;

pub use gpt2::{Gpt2, Gpt2Config};
pub mod data;
