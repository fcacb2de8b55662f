//! Differentiable building blocks for clinstruct's models, on candle-core/candle-nn.
//!
//! Why our own: several of candle's fused ops (`rope`, `rms_norm`, `layer_norm`,
//! `softmax_last_dim`, `sdpa`) are forward-only and silently cut gradients
//! (shared/docs/candle-findings.md). Every block here is built from ops with a backward pass, so
//! the same model code serves inference and training. Fused fast paths, where they are added,
//! come with their own backward.
//!
//! - [`linear`]: the linear layer every model uses (dense, frozen, NF4 or ggml base, optional
//!   LoRA adapter).
//! - [`linear_ce`]: cross-entropy over a vocabulary-sized head, fused with the head's matmuls.
//! - [`dense`]: the trainable dense product as one node with a written-out backward.
//! - [`frozen`]: matmuls over frozen weights with an input-only backward.
//! - [`quant`]: NF4 (QLoRA) quantisation, bitsandbytes-compatible.
//! - [`lora`]: LoRA adapters, the load-time plan that puts them on models, PEFT files, merging.
//! - [`norm`]: RMSNorm (plain and Gemma's `1 + w`) and LayerNorm with optional bias.
//! - [`rope`]: rotary embeddings with default, linear, llama3 and YaRN frequency scaling.
//! - [`attention`]: scaled dot-product attention with GQA, soft-capping and mask builders; the
//!   memory-efficient kernel with its own backward (`flash`), and the head layout changes around
//!   it, rope included, as single passes (`layout`).
//! - [`fused`]: fused CPU kernels with backward passes (softmax, LayerNorm, GeGLU).
//! - [`checkpoint`]: gradient checkpointing of blocks (recompute in the backward pass).
//! - [`dropout`]: dropout with masks that a checkpointed block replays.
//! - [`kv_cache`]: the key/value cache for generation.
//! - [`weights`]: one way for model code to get tensors from safetensors, a `VarMap` or GGUF.

pub mod attention;
pub mod checkpoint;
pub mod cpu;
pub mod dense;
pub mod dropout;
pub mod frozen;
pub mod fused;
pub mod kv_cache;
pub mod linear;
pub mod linear_ce;
pub mod lora;
pub mod norm;
pub mod quant;
pub mod rope;
pub mod weights;

pub use candle_core::{DType, Device, Result, Tensor};
pub use linear::{Linear, LinearBase, LinearHook};
pub use linear_ce::VocabHead;
pub use lora::{LinearPlan, Lora, LoraConfig, Targets};
pub use weights::Weights;
