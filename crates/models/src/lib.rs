//! Model architectures, checkpoint loading, tokenizers and generation.
//!
//! One file per architecture (candle-transformers style): a serde `Config` that mirrors HF
//! `config.json`, small structs with `load(w.pp("hf_name"))` and `forward`, HF weight names.
//! Unlike candle-transformers' models, every forward path is differentiable and returns
//! full-sequence outputs, so the same code serves inference and training.

pub mod auto;
pub mod chat_template;
pub mod checkpoint;
pub mod decoder;
pub mod gemma3;
pub mod generation;
pub mod gguf;
pub mod llama;
pub mod lm;
pub mod ministral3;
pub mod mistral;
pub mod modernbert;
pub mod runtime;
pub mod tokenizer;

pub use auto::{AnyCausalLm, AnyConfig, SUPPORTED_ARCHITECTURES};
pub use chat_template::{
    ChatMessage, ChatTemplate, ChatTemplateError, ChatTemplates, RenderOptions,
};
pub use checkpoint::{Checkpoint, CheckpointError};
pub use decoder::DecoderLm;
pub use lm::{CausalLm, LmCache, LmInfo};
pub use tokenizer::{DecodeStream, SpecialTokens, Tokenizer, TokenizerError};
