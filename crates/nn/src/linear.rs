//! The linear layer of every model. Weights use PyTorch's `(out, in)` layout and HF names
//! (`weight`, `bias`), so checkpoints load unchanged. The base is dense or a ggml-quantized
//! tensor (GGUF checkpoints); the training engine adds its own bases and adapters here.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Result, Tensor};

use crate::weights::Weights;

#[derive(Debug, Clone)]
pub enum LinearBase {
    Dense(Tensor),
    /// A ggml block-quantized weight, multiplied without dequantising (inference only: candle's
    /// quantized matmul has no backward).
    Quantized(Arc<QTensor>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    base: LinearBase,
    bias: Option<Tensor>,
    out_dim: usize,
    in_dim: usize,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let (out_dim, in_dim) = weight.dims2()?;
        Ok(Linear {
            base: LinearBase::Dense(weight),
            bias,
            out_dim,
            in_dim,
        })
    }

    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Linear> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        Ok(Linear {
            base: LinearBase::Quantized(weight),
            bias,
            out_dim,
            in_dim,
        })
    }

    /// Loads `weight` (and `bias` when `bias` is true) from `w`, keeping a GGUF tensor quantized.
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, w: &Weights) -> Result<Linear> {
        let bias = if bias {
            Some(w.get(out_dim, "bias")?)
        } else {
            None
        };
        match w.get_quantized((out_dim, in_dim), "weight")? {
            Some(q) => Linear::quantized(q, bias),
            None => Linear::new(w.get((out_dim, in_dim), "weight")?, bias),
        }
    }

    pub fn base(&self) -> &LinearBase {
        &self.base
    }

    /// The dense weight `(out, in)`, dequantised when the base is quantized.
    pub fn weight(&self) -> Result<Tensor> {
        match &self.base {
            LinearBase::Dense(w) => Ok(w.clone()),
            LinearBase::Quantized(q) => q.dequantize(&q.device()),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x · Wᵀ + b` over the last dimension of `x` (any number of leading dimensions).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.contiguous()?.reshape((rows, self.in_dim))?;
        // One 2-D matmul is much faster than a broadcast batched matmul on CPU and CUDA.
        let y = match &self.base {
            LinearBase::Dense(w) => x2.matmul(&w.t()?)?,
            LinearBase::Quantized(q) => {
                let dtype = x2.dtype();
                x2.to_dtype(DType::F32)?
                    .apply_op1_no_bwd(q.as_ref())?
                    .to_dtype(dtype)?
            }
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("x has at least one dimension") = self.out_dim;
        y.reshape(out_dims)
    }
}
