//! The linear layer of every model. Weights use PyTorch's `(out, in)` layout and HF names
//! (`weight`, `bias`), so checkpoints load unchanged.
//!
//! The base is one of:
//! - `Dense`: plain autograd (a `Var` weight trains; a plain tensor gets a wasted gradient);
//! - `Frozen`: a dense weight with an input-only backward ([`crate::frozen`]);
//! - `Nf4`: a 4-bit NF4 weight (QLoRA), dequantised per call, input-only backward;
//! - `Quantized`: a ggml block-quantized weight (GGUF), input-only backward.
//!
//! An optional LoRA adapter adds `(dropout(x)·Aᵀ·Bᵀ)·scale` to the base output. The training
//! engine sets bases and adapters without model code knowing: a [`LinearHook`] attached to the
//! [`Weights`] (see [`crate::lora::LinearPlan`]) sees every `Linear::load` with the layer's HF
//! module path and may replace the layer.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Result, Tensor};

use crate::frozen;
use crate::lora::Lora;
use crate::quant::Q8_0Matrix;
use crate::quant::nf4::{Nf4Config, Nf4Tensor};
use crate::weights::Weights;

#[derive(Debug, Clone)]
pub enum LinearBase {
    /// Differentiated by candle's autograd with respect to the weight too.
    Dense(Tensor),
    /// A dense weight that never gets a gradient.
    Frozen(Tensor),
    /// An NF4 weight (frozen).
    Nf4(Arc<Nf4Tensor>),
    /// A ggml block-quantized weight (frozen).
    Quantized(Arc<QTensor>),
}

/// Sees each linear layer as `Linear::load` builds it, with its HF module path
/// (`model.layers.0.self_attn.q_proj`), and returns the layer to use.
pub trait LinearHook: Send + Sync {
    fn on_load(&self, path: &str, linear: Linear) -> Result<Linear>;
}

#[derive(Debug, Clone)]
pub struct Linear {
    base: LinearBase,
    bias: Option<Tensor>,
    lora: Option<Lora>,
    /// A CPU Q8_0 base prepared for [`frozen::q8_0`] (f32 block scales).
    q8_0: Option<Arc<Q8_0Matrix>>,
    out_dim: usize,
    in_dim: usize,
}

/// The Q8_0 kernel's view of a base, where it applies (CPU Q8_0).
fn prepare_q8_0(base: &LinearBase) -> Option<Arc<Q8_0Matrix>> {
    match base {
        LinearBase::Quantized(q) if q.dtype() == GgmlDType::Q8_0 && q.device().is_cpu() => {
            Q8_0Matrix::new(q.clone()).ok().map(Arc::new)
        }
        _ => None,
    }
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        Linear::from_base(LinearBase::Dense(weight), bias)
    }

    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Linear> {
        Linear::from_base(LinearBase::Quantized(weight), bias)
    }

    pub fn from_base(base: LinearBase, bias: Option<Tensor>) -> Result<Linear> {
        let (out_dim, in_dim) = match &base {
            LinearBase::Dense(w) | LinearBase::Frozen(w) => w.dims2()?,
            LinearBase::Nf4(q) => q.shape().dims2()?,
            LinearBase::Quantized(q) => q.shape().dims2()?,
        };
        Ok(Linear {
            q8_0: prepare_q8_0(&base),
            base,
            bias,
            lora: None,
            out_dim,
            in_dim,
        })
    }

    /// The same layer (bias, adapter) over another base of the same shape.
    fn with_base(self, base: LinearBase) -> Linear {
        Linear {
            q8_0: prepare_q8_0(&base),
            base,
            ..self
        }
    }

    /// Loads `weight` (and `bias` when `bias` is true) from `w`, keeping a GGUF tensor quantized,
    /// then hands the layer to the hook of `w` if it has one.
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, w: &Weights) -> Result<Linear> {
        let bias = if bias {
            Some(w.get(out_dim, "bias")?)
        } else {
            None
        };
        let linear = match w.get_quantized((out_dim, in_dim), "weight")? {
            Some(q) => Linear::quantized(q, bias)?,
            None => Linear::new(w.get((out_dim, in_dim), "weight")?, bias)?,
        };
        match w.linear_hook() {
            Some(hook) => hook.on_load(&w.path(), linear),
            None => Ok(linear),
        }
    }

    pub fn base(&self) -> &LinearBase {
        &self.base
    }

    /// The dense weight `(out, in)` (without the adapter), dequantised when the base is
    /// quantized.
    pub fn weight(&self) -> Result<Tensor> {
        match &self.base {
            LinearBase::Dense(w) | LinearBase::Frozen(w) => Ok(w.clone()),
            LinearBase::Nf4(q) => q.dequantize(),
            LinearBase::Quantized(q) => q.dequantize(&q.device()),
        }
    }

    /// The f32 CPU weight of a layer that is a plain frozen product (no bias, no adapter, a
    /// base that never gets a gradient), dequantised when the base is quantized; `None`
    /// otherwise. What a fused kernel over the layer's product (the LM-head loss) needs.
    pub fn frozen_f32_weight(&self) -> Result<Option<Tensor>> {
        if self.bias.is_some() || self.lora.is_some() {
            return Ok(None);
        }
        let w = match &self.base {
            LinearBase::Dense(w) if w.track_op() => return Ok(None),
            LinearBase::Dense(w) | LinearBase::Frozen(w) => w.clone(),
            LinearBase::Nf4(_) | LinearBase::Quantized(_) => self.weight()?,
        };
        if !w.device().is_cpu() {
            return Ok(None);
        }
        Ok(Some(w.to_dtype(DType::F32)?.contiguous()?))
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

    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// Adds (or replaces) the adapter.
    pub fn with_lora(mut self, lora: Lora) -> Result<Linear> {
        if lora.in_dim() != self.in_dim || lora.out_dim() != self.out_dim {
            candle_core::bail!(
                "lora ({} -> {}) does not fit a linear {} -> {}",
                lora.in_dim(),
                lora.out_dim(),
                self.in_dim,
                self.out_dim
            );
        }
        self.lora = Some(lora);
        Ok(self)
    }

    pub fn without_lora(mut self) -> Linear {
        self.lora = None;
        self
    }

    /// A dense base becomes frozen (input-only backward); other bases are frozen already. The
    /// bias is detached too.
    pub fn freeze(mut self) -> Linear {
        if let LinearBase::Dense(w) = &self.base {
            // A dense base has no Q8_0 view to reset.
            self.base = LinearBase::Frozen(w.detach());
        }
        self.bias = self.bias.map(|b| b.detach());
        self
    }

    /// Quantises the base to NF4 (frozen). A ggml base is dequantised first.
    pub fn quantize_nf4(self, cfg: Nf4Config) -> Result<Linear> {
        let w = self.weight()?;
        let q = Nf4Tensor::quantize(&w, cfg)?;
        Ok(self.freeze().with_base(LinearBase::Nf4(Arc::new(q))))
    }

    /// Quantises the base to a ggml block type (frozen), e.g. `GgmlDType::Q4K`.
    pub fn quantize_ggml(self, dtype: GgmlDType) -> Result<Linear> {
        let w = self.weight()?.to_dtype(DType::F32)?;
        let q = QTensor::quantize(&w, dtype)?;
        Ok(self.freeze().with_base(LinearBase::Quantized(Arc::new(q))))
    }

    /// Replaces a quantized base by its dequantised dense weight (frozen), trading memory for
    /// speed where the weight is used many times (evaluation, generation). Quantized bases do
    /// not otherwise keep a dense copy between calls.
    pub fn dequantize_base(self) -> Result<Linear> {
        match &self.base {
            LinearBase::Nf4(_) | LinearBase::Quantized(_) => {
                let w = self.weight()?;
                Ok(self.with_base(LinearBase::Frozen(w)))
            }
            LinearBase::Dense(_) | LinearBase::Frozen(_) => Ok(self),
        }
    }

    /// Folds the adapter into the weight: `W + scale·B·A` in the weight's dtype, as a frozen
    /// dense base (a quantized base is dequantised; QLoRA merges are exported dense).
    pub fn merge_lora(&self) -> Result<Linear> {
        let Some(lora) = &self.lora else {
            return Ok(self.clone());
        };
        let w = self.weight()?;
        let merged = (w.to_dtype(DType::F32)? + lora.delta_weight()?.to_dtype(DType::F32)?)?
            .to_dtype(match &self.base {
                LinearBase::Dense(w) | LinearBase::Frozen(w) => w.dtype(),
                _ => lora.dtype(),
            })?;
        Linear::from_base(LinearBase::Frozen(merged), self.bias.clone())
    }

    /// `x · Wᵀ + b (+ lora(x))` over the last dimension of `x` (any number of leading dims).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // A plain dense weight (not a variable, not computed from one) can never receive a
        // gradient: it takes the frozen path, which skips the weight-sized `xᵀ·g` autograd
        // would compute anyway (for a tied 128k-vocabulary LM head as costly as its forward).
        let trainable = matches!(&self.base, LinearBase::Dense(w) if w.track_op());
        let y = match &self.lora {
            _ if trainable => return self.forward_composed(x),
            // One graph node for base and adapter (see `Lora::forward_with_base`).
            Some(lora) if lora.dtype() == x.dtype() => lora.forward_with_base(x, &self.base)?,
            Some(_) => return self.forward_composed(x),
            None => {
                let rows = x.elem_count() / self.in_dim.max(1);
                let x2 = x.contiguous()?.reshape((rows, self.in_dim))?;
                match self.q8_0_value(&x2, rows)? {
                    Some(y) => {
                        let mut out_dims = x.dims().to_vec();
                        *out_dims.last_mut().expect("x has at least one dimension") = self.out_dim;
                        y.reshape(out_dims)?
                    }
                    None => frozen::linear(x, &self.base)?,
                }
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x2 (rows, in) · Wᵀ` through the llama.cpp-equivalent Q8_0 kernel, where it applies
    /// (a CPU Q8_0 base, decode-sized or gradient-free inputs); `None` elsewhere.
    fn q8_0_value(&self, x2: &Tensor, rows: usize) -> Result<Option<Tensor>> {
        match &self.q8_0 {
            Some(m) if x2.device().is_cpu() && frozen::q8_0_kernel_applies(x2, rows) => {
                Ok(Some(frozen::q8_0(x2, m)?))
            }
            _ => Ok(None),
        }
    }

    /// The same from candle ops: a trainable dense weight, or an adapter in another dtype.
    fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.contiguous()?.reshape((rows, self.in_dim))?;
        // One 2-D matmul is much faster than a broadcast batched matmul on CPU and CUDA.
        let y = match &self.base {
            LinearBase::Dense(w) if w.track_op() => crate::dense::matmul_t(&x2, w)?,
            base => match self.q8_0_value(&x2, rows)? {
                Some(y) => y,
                None => frozen::linear(&x2, base)?,
            },
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match &self.lora {
            Some(lora) => (y + lora.forward(&x2)?)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("x has at least one dimension") = self.out_dim;
        y.reshape(out_dims)
    }
}
