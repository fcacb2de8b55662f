//! Rotary position embeddings in the transformers convention (`rotate_half`: the two halves of
//! the head dimension form the pairs), with the frequency scalings our checkpoints use.
//! Tables are computed in f32 from position ids, so left-padded batches and KV-cached decoding
//! use the same code; rotation is built from differentiable ops (candle's fused `rope` has no
//! backward and silently zeroes Q/K gradients). On the CPU in f32 the models rotate inside
//! `attention::layout::split_heads` instead: the same arithmetic in one pass, with its own
//! backward.

use candle_core::{D, DType, Device, Result, Tensor};
use serde::Deserialize;

/// How the inverse frequencies are scaled (transformers' `rope_type`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    Default,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: Option<usize>,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: Option<bool>,
    },
}

#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    /// `dim / 2` inverse frequencies.
    inv_freq: Vec<f32>,
    /// YaRN scales cos and sin by this; 1 otherwise.
    attention_factor: f64,
}

fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

impl RotaryEmbedding {
    /// `dim`: rotated head dimension; `base`: rope theta; `max_position_embeddings`: the
    /// model's context (YaRN's default original context).
    pub fn new(
        dim: usize,
        base: f64,
        scaling: &RopeScaling,
        max_position_embeddings: usize,
    ) -> RotaryEmbedding {
        let half = dim / 2;
        let plain: Vec<f64> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
            .collect();
        let mut attention_factor = 1.0;
        let inv_freq: Vec<f64> = match scaling {
            RopeScaling::Default => plain,
            RopeScaling::Linear { factor } => plain.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old_ctx = *original_max_position_embeddings as f64;
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor: given,
                truncate,
            } => {
                let original = original_max_position_embeddings.unwrap_or(max_position_embeddings);
                attention_factor = match (given, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        yarn_mscale(*factor, *m) / yarn_mscale(*factor, *ma)
                    }
                    _ => yarn_mscale(*factor, 1.0),
                };
                let correction_dim = |rotations: f64| {
                    dim as f64 * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * base.ln())
                };
                // transformers reads these as `get(..) or default`: 0 means unset too.
                let set = |b: &Option<f64>| b.filter(|&v| v != 0.0);
                let (mut low, mut high) = (
                    correction_dim(set(beta_fast).unwrap_or(32.0)),
                    correction_dim(set(beta_slow).unwrap_or(1.0)),
                );
                if truncate.unwrap_or(true) {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim as f64 - 1.0);
                if low == high {
                    high += 0.001;
                }
                plain
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (f / factor) * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect()
            }
        };
        RotaryEmbedding {
            inv_freq: inv_freq.iter().map(|&f| f as f32).collect(),
            attention_factor,
        }
    }

    pub fn attention_factor(&self) -> f64 {
        self.attention_factor
    }

    /// cos and sin tables `(b, 1, L, dim)` for position ids `(b, L)`, in `dtype`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let device = positions.device();
        let (b, l) = positions.dims2()?;
        let half = self.inv_freq.len();
        let inv = Tensor::from_slice(&self.inv_freq, (1, 1, half), device)?;
        let pos = positions.to_dtype(DType::F32)?.reshape((b, l, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        let cos = (emb.cos()? * self.attention_factor)?;
        let sin = (emb.sin()? * self.attention_factor)?;
        Ok((
            cos.unsqueeze(1)?.to_dtype(dtype)?,
            sin.unsqueeze(1)?.to_dtype(dtype)?,
        ))
    }

    /// Position ids `0..len` shifted by `offset`, for every row of a batch.
    pub fn positions(batch: usize, len: usize, offset: usize, device: &Device) -> Result<Tensor> {
        Tensor::arange(offset as u32, (offset + len) as u32, device)?
            .unsqueeze(0)?
            .repeat((batch, 1))
    }
}

/// `x · cos + rotate_half(x) · sin` for `x (b, heads, L, dim)` and tables `(b, 1, L, dim)`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dim = x.dim(D::Minus1)?;
    let half = dim / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, dim - half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn rotation_preserves_norm_and_passes_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let rope = RotaryEmbedding::new(8, 10_000.0, &RopeScaling::Default, 128);
        let pos = RotaryEmbedding::positions(1, 5, 3, &dev)?;
        let (cos, sin) = rope.cos_sin(&pos, DType::F32)?;
        let x = Var::randn(0f32, 1., (1, 2, 5, 8), &dev)?;
        let y = apply_rotary(x.as_tensor(), &cos, &sin)?;
        let nx = x.sqr()?.sum_all()?.to_scalar::<f32>()?;
        let ny = y.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!((nx - ny).abs() < 1e-3);
        let g = (y.sum_all()?).backward()?;
        let gx = g.get(x.as_tensor()).unwrap();
        assert!(gx.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = RotaryEmbedding::new(64, 500_000.0, &RopeScaling::Default, 131072);
        let scaled = RotaryEmbedding::new(64, 500_000.0, &s, 131072);
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((plain.inv_freq[last] / 32.0 - scaled.inv_freq[last]).abs() < 1e-12);
    }

    fn assert_close(got: &[f32], want: &[(usize, f64)]) {
        for &(i, w) in want {
            let g = got[i] as f64;
            assert!(
                (g - w).abs() <= 1e-6 * w.abs(),
                "inv_freq[{i}] = {g}, transformers {w}"
            );
        }
    }

    /// Values from transformers 5.23 `_compute_llama3_parameters` for Llama-3.2-1B's config.
    #[test]
    fn llama3_matches_transformers() {
        let s = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let r = RotaryEmbedding::new(64, 500_000.0, &s, 131072);
        assert_eq!(r.attention_factor(), 1.0);
        assert_close(
            &r.inv_freq,
            &[
                (0, 1.0),
                (10, 0.016560440883040428),
                (16, 0.000429556705057621),
                (20, 8.570255886297673e-06),
                (31, 9.418306490260875e-08),
            ],
        );
    }

    /// Values from transformers 5.23 `_compute_yarn_parameters`: Ministral-3's defaults
    /// (mscale = mscale_all_dim = 1, so no cos/sin scaling), and a small case whose attention
    /// factor comes from `factor` alone.
    #[test]
    fn yarn_matches_transformers() {
        let ministral = RopeScaling::Yarn {
            factor: 16.0,
            original_max_position_embeddings: Some(16384),
            beta_fast: Some(32.0),
            beta_slow: Some(1.0),
            mscale: Some(1.0),
            mscale_all_dim: Some(1.0),
            attention_factor: None,
            truncate: None,
        };
        let r = RotaryEmbedding::new(128, 1_000_000.0, &ministral, 262144);
        assert_eq!(r.attention_factor(), 1.0);
        assert_close(
            &r.inv_freq,
            &[
                (0, 1.0),
                (20, 0.01333521492779255),
                (30, 0.0006907022907398641),
                (40, 1.1114246262877714e-05),
                (63, 7.75586102008674e-08),
            ],
        );
        let small = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: Some(64),
            beta_fast: Some(16.0),
            beta_slow: Some(0.0), // unset, as in transformers: 1
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: None,
        };
        let r = RotaryEmbedding::new(16, 10_000.0, &small, 256);
        assert!((r.attention_factor() - 1.138629436111989).abs() < 1e-12);
        let want = [
            1.0,
            0.23717081546783447,
            0.04999999701976776,
            0.007905694656074047,
            0.0024999999441206455,
            0.0007905694656074047,
            0.0002500000118743628,
            7.905694656074047e-05,
        ];
        assert_close(
            &r.inv_freq,
            &want.iter().copied().enumerate().collect::<Vec<_>>(),
        );
    }

    #[test]
    fn config_spellings() {
        let s: RopeScaling = serde_json::from_str(
            r#"{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#,
        )
        .unwrap();
        assert!(matches!(s, RopeScaling::Llama3 { .. }));
    }
}
