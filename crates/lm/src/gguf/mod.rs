//! GGUF, llama.cpp's model format: the reader (file, metadata, tensor table), the ggml block formats
//! (dequantisation of what people publish, F16/Q8_0 encoding of what octet exports), GGUF <-> HF
//! tokenizer conversion and the writer. The public paths (`octet_lm::gguf::GgufFile`, `dequantize`,
//! ...) are re-exported here.

pub mod dequant;
pub mod reader;
pub mod tokenizer;
pub mod writer;

pub use dequant::{QK_K, dequantize, quantize, quantize_q8_0};
pub use reader::{
    DEFAULT_ALIGNMENT, GGML_TYPES, GGUF_MAGIC, GGUF_VERSION, GgmlType, GgmlTypeInfo, GgufFile, MAX_ARRAY_DEPTH,
    MAX_DIMS, TensorInfo, Value, ValueType,
};
pub use tokenizer::{GgufTokenizer, GgufVocab, PreSplit, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
pub use writer::GgufWriter;
