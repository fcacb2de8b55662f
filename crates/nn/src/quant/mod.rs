//! Quantised weight formats for frozen bases: NF4 (QLoRA, bitsandbytes-compatible) with its
//! double-quantised constants. ggml block types (Q4_0, Q8_0, Q4_K, Q6_K, ...) come from candle's
//! `QTensor`; both are multiplied through [`crate::frozen`].

pub mod dynamic;
pub mod nf4;

pub use nf4::{Absmax, Nf4Config, Nf4Tensor};
