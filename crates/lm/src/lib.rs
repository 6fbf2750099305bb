//! octet-lm: GPT-2 model, data pipeline, trainer, checkpoints and generation.
