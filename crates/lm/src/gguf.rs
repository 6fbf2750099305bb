//! GGUF v3 reader: metadata, tensor infos, dequantisation (F32, F16, Q8_0, Q4_1), tokenizer from metadata.
