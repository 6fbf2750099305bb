//! octet-lm: GPT-2 model, data pipeline (tokenizer, token shards, batches), trainer, checkpoints and
//! generation.

mod acts;
pub mod bench;
pub mod blocks;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod decoder;
pub mod dist;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod infer;
pub mod llama;
pub mod llama_hf;
pub mod lora;
pub mod memory;
pub mod model;
pub mod narrow;
pub mod precision;
pub mod spec;
pub mod step;
pub mod train;

pub use gpt2::{Gpt2, Gpt2Config};
pub use train::{Event, Source, Start, Summary, TrainConfig};
