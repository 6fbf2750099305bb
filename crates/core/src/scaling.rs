//! Per-tensor FP8 scaling metadata (format, scale, scale_inv, amax history) and FP8-LM recipes.
