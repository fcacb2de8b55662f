//! Model architectures, checkpoint loading, tokenizers and generation.
//!
//! One file per architecture (candle-transformers style): a serde `Config` that mirrors HF
//! `config.json`, small structs with `load(w.pp("hf_name"))` and `forward`, HF weight names.
//! Unlike candle-transformers' models, every forward path is differentiable and returns
//! full-sequence outputs, so the same code serves inference and training.

pub mod checkpoint;
pub mod lm;
pub mod modernbert;
pub mod runtime;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use lm::{CausalLm, LmCache, LmInfo};
