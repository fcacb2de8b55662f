//! Quantised weight formats for frozen bases: NF4 (QLoRA, bitsandbytes-compatible) with its
//! double-quantised constants, and a Q8_0 kernel that multiplies ggml Q8_0 weights as llama.cpp
//! does. ggml block types (Q4_0, Q8_0, Q4_K, Q6_K, ...) come from candle's `QTensor`; all are
//! multiplied through [`crate::frozen`].

pub mod dynamic;
pub mod nf4;
pub mod q8_0;

pub use nf4::{Absmax, Nf4Config, Nf4Tensor};
pub use q8_0::Q8_0Matrix;
