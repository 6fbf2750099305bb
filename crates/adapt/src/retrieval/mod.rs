//! Domain-adapted retrieval (ChipNeMo section 2.4): a BERT sentence encoder (MiniLM-L6) written on the
//! engine's kernels (`encoder`, `ops`, `embed`), passages and an exact cosine index on disk (`index`),
//! a BM25 baseline on tantivy (`bm25`), and the held-out evaluation set and metrics (`evalset`).

pub mod bm25;
pub mod contrastive;
pub mod embed;
pub mod encoder;
pub mod evalset;
pub mod index;
pub mod ops;
pub mod pipeline;
pub mod retriever;
