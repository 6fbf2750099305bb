//! FP8 GEMMs on the CPU: FP8 bytes + scale operands, f32 accumulation over exactly dequantised values.
