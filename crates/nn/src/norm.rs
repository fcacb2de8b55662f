//! Normalisation layers, computed in f32 whatever the model dtype (as transformers does), from
//! differentiable ops only.

use candle_core::{D, DType, Result, Tensor};
use candle_nn::VarBuilder;

/// RMSNorm: `x / sqrt(mean(x²) + eps) · scale`, where scale is `w` (Llama, Mistral) or `1 + w`
/// (Gemma, whose checkpoints store the offset from one).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    unit_offset: bool,
}

impl RmsNorm {
    pub fn load(dim: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: vb.get(dim, "weight")?,
            eps,
            unit_offset: false,
        })
    }

    /// Gemma's variant: the stored weight is the offset from one.
    pub fn load_gemma(dim: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
        Ok(RmsNorm {
            unit_offset: true,
            ..RmsNorm::load(dim, eps, vb)?
        })
    }

    pub fn new(weight: Tensor, eps: f64, unit_offset: bool) -> RmsNorm {
        RmsNorm {
            weight,
            eps,
            unit_offset,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One pass per row with its own backward on CPU f32 (candle's op chain is six nodes).
        if let Some(y) = crate::fused::rms_norm(x, &self.weight, self.eps, self.unit_offset)? {
            return Ok(y);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        let w = self.weight.to_dtype(DType::F32)?;
        let w = if self.unit_offset { (w + 1.0)? } else { w };
        // Gemma multiplies in f32 before casting back; Llama casts first. The difference is
        // below f32 rounding for f32 models and within bf16 noise otherwise.
        normed.broadcast_mul(&w)?.to_dtype(dtype)
    }
}

/// LayerNorm with an optional bias (ModernBERT's norms have none).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(dim: usize, eps: f64, bias: bool, vb: VarBuilder) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: vb.get(dim, "weight")?,
            bias: if bias {
                Some(vb.get(dim, "bias")?)
            } else {
                None
            },
            eps,
        })
    }

    /// From tensors already loaded (e.g. through [`crate::Weights`], which has no `VarBuilder`).
    pub fn new(weight: Tensor, bias: Option<Tensor>, eps: f64) -> LayerNorm {
        LayerNorm { weight, bias, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One fused pass on CPU in f32 (eight allocating ops otherwise), same values.
        if let Some(y) = crate::fused::layer_norm_no_bias(x, &self.weight, self.eps)? {
            return match &self.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            };
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let mean = xf.mean_keepdim(D::Minus1)?;
        let centered = xf.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut y = normed.broadcast_mul(&self.weight.to_dtype(DType::F32)?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(DType::F32)?)?;
        }
        y.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[1f32, 2., 3., 4.]], &dev)?;
        let w = Var::new(&[0.5f32, 1., 1.5, 2.], &dev)?;
        let norm = RmsNorm::new(w.as_tensor().clone(), 1e-6, false);
        let y = norm.forward(x.as_tensor())?;
        let rms = (30f32 / 4.).sqrt();
        let expect = [0.5 / rms, 2. / rms, 4.5 / rms, 8. / rms];
        for (a, b) in y.flatten_all()?.to_vec1::<f32>()?.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5);
        }
        let grads = y.sqr()?.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(w.as_tensor()).is_some());
        let gemma = RmsNorm::new(Tensor::zeros(4, DType::F32, &dev)?, 1e-6, true);
        let y = gemma
            .forward(x.as_tensor())?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(
            (y[0] - 1. / rms).abs() < 1e-5,
            "zero offset weight is identity scale"
        );
        Ok(())
    }

    #[test]
    fn layer_norm_without_bias() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3., 4.]], &dev)?;
        let ln = LayerNorm {
            weight: Tensor::ones(4, DType::F32, &dev)?,
            bias: None,
            eps: 1e-5,
        };
        let y = ln.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let std = (1.25f32 + 1e-5).sqrt();
        assert!((y[0] + 1.5 / std).abs() < 1e-5);
        assert!((y.iter().sum::<f32>()).abs() < 1e-5);
        Ok(())
    }
}
