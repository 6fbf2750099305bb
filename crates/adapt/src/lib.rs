//! octet-adapt: ChipNeMo-style domain adaptation of a pretrained Llama (SmolLM2) to chip design — the
//! domain corpus built from registry packages (`corpus`, `dedup`, `sources`) and tokenizer augmentation
//! with the matching model resize (`augment`, `resize`); evaluation (`eval`: VerilogEval by simulation,
//! held-out bits per byte, a domain cloze set); DAPT (`dapt`), SFT with the loss on assistant tokens
//! and LoRA (`sft`), SFT sets built from the corpus and their n-gram overlap with VerilogEval
//! (`sft_data`); retrieval (`retrieval`) and retrieval-augmented answers (`rag`).

pub mod augment;
pub mod corpus;
pub mod dapt;
pub mod dedup;
pub mod eval;
pub mod extend;
pub mod rag;
pub mod resize;
pub mod retrieval;
pub mod sft;
pub mod sft_data;
pub mod sources;
