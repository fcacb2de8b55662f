//! Scaled dot-product attention from differentiable ops, and the additive masks it takes.
//!
//! Masks are additive `(b, 1, Lq, Lk)` tensors: 0 where a query may attend, a large finite
//! negative where not. Finite, because `-inf` rows (a padded query that sees nothing) turn
//! softmax into NaN, and NaN spreads through `0 · NaN` into every gradient.

use candle_core::{D, DType, Device, Result, Tensor};

pub mod banded;
pub mod flash;
pub mod layout;

/// The masked-out score. Finite in f32, bf16 and f16 alike.
pub const MASKED: f32 = -1e4 * 6.5; // below any real score after scaling, above f16's minimum

/// `(b, kv_heads, L, d)` → `(b, kv_heads · n_rep, L, d)`, each kv head repeated `n_rep` times
/// (grouped-query attention).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, l, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, l, d))?
        .reshape((b, h * n_rep, l, d))
}

/// Options of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionOpts {
    /// Multiplies `q · kᵀ` (usually `1/sqrt(head_dim)`; Gemma 3 uses `query_pre_attn_scalar`).
    pub scale: f64,
    /// Gemma 2-style logit soft-capping: `cap · tanh(scores / cap)`.
    pub softcap: Option<f64>,
}

/// `softmax(q·kᵀ·scale + mask) · v` with `q (b, h, Lq, d)`, `k, v (b, h_kv, Lk, d)`.
/// Scores and softmax run in f32; the result has `q`'s dtype.
pub fn scaled_dot_product(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    opts: AttentionOpts,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k = repeat_kv(k, n_rep)?;
    let v = repeat_kv(v, n_rep)?;
    let q = q.to_dtype(DType::F32)?;
    let k = k.to_dtype(DType::F32)?;
    let probs = softmax_scores(&q, &k, mask, opts)?;
    probs
        .to_dtype(dtype)?
        .matmul(&v.contiguous()?)?
        .to_dtype(dtype)
}

/// `softmax(q·kᵀ·scale (soft-capped) + mask)` in f32.
fn softmax_scores(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    opts: AttentionOpts,
) -> Result<Tensor> {
    let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * opts.scale)?;
    if let Some(cap) = opts.softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    if let Some(m) = mask {
        scores = scores.broadcast_add(&m.to_dtype(DType::F32)?)?;
    }
    candle_nn::ops::softmax(&scores, D::Minus1)
}

/// Rounds to the nearest f16 value, kept in f32.
pub fn round_f16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

/// [`scaled_dot_product`] as llama.cpp's CPU backend computes it with its default f16 KV cache
/// (no flash attention): queries, keys and values rounded to f16, the softmax in f32, the
/// probabilities rounded to f16 before they weight the values; products accumulate in f32.
/// (llama.cpp scales queries before rounding them; for a power-of-two scale that is the same.)
/// Keys and values are taken as they are: round them ([`round_f16`]) as they enter the cache,
/// once, rather than the whole cache at every step.
pub fn scaled_dot_product_f16_kv(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    opts: AttentionOpts,
) -> Result<Tensor> {
    let dtype = q.dtype();
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k = repeat_kv(&k.to_dtype(DType::F32)?, n_rep)?;
    let v = repeat_kv(&v.to_dtype(DType::F32)?, n_rep)?;
    let probs = softmax_scores(&round_f16(q)?, &k, mask, opts)?;
    round_f16(&probs)?.matmul(&v.contiguous()?)?.to_dtype(dtype)
}

/// Which keys each query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// Every key (encoders).
    Bidirectional,
    /// Keys at or before the query (decoders).
    Causal,
}

/// Builds the additive mask `(b, 1, Lq, Lk)`.
///
/// - `kind`: bidirectional or causal; queries are the last `Lq` of `Lk` positions
///   (`offset = Lk - Lq` cached keys precede them).
/// - `window`: keep only keys with `|q - k| < window` for causal sliding windows (Mistral,
///   Gemma 3: a query sees itself and `window - 1` keys before), or `|q - k| <= window` for
///   bidirectional local attention (ModernBERT passes `local_attention / 2`).
/// - `key_padding`: `(b, Lk)` with 1 for real tokens and 0 for padding.
pub fn build_mask(
    batch: usize,
    q_len: usize,
    k_len: usize,
    kind: MaskKind,
    window: Option<usize>,
    key_padding: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    let offset = k_len.saturating_sub(q_len);
    let mut data = vec![0f32; q_len * k_len];
    for i in 0..q_len {
        let qpos = i + offset;
        for j in 0..k_len {
            let visible = match kind {
                MaskKind::Causal => j <= qpos && window.is_none_or(|w| qpos - j < w),
                MaskKind::Bidirectional => window.is_none_or(|w| qpos.abs_diff(j) <= w),
            };
            if !visible {
                data[i * k_len + j] = MASKED;
            }
        }
    }
    let mask = Tensor::from_vec(data, (1, 1, q_len, k_len), device)?;
    let mask = mask.broadcast_as((batch, 1, q_len, k_len))?;
    match key_padding {
        None => mask.contiguous(),
        Some(pad) => {
            // (1 - keep) · MASKED, added once: a key is masked whether the window or padding hides it.
            let pad = pad.to_dtype(DType::F32)?.reshape((batch, 1, 1, k_len))?;
            let pad_bias = ((pad.ones_like()? - pad)? * MASKED as f64)?;
            let both = mask.broadcast_add(&pad_bias)?;
            // Clamp so doubly-masked keys stay finite in low precision.
            both.clamp(MASKED, 0f32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn causal_sliding_and_padding_masks() -> Result<()> {
        let dev = Device::Cpu;
        let m = build_mask(1, 4, 4, MaskKind::Causal, Some(2), None, &dev)?;
        let v: Vec<Vec<f32>> = m.squeeze(0)?.squeeze(0)?.to_vec2()?;
        let visible: Vec<Vec<u8>> = v
            .iter()
            .map(|r| r.iter().map(|&x| u8::from(x == 0.0)).collect())
            .collect();
        assert_eq!(
            visible,
            vec![
                vec![1, 0, 0, 0],
                vec![1, 1, 0, 0],
                vec![0, 1, 1, 0],
                vec![0, 0, 1, 1]
            ]
        );
        let pad = Tensor::new(&[[0u32, 1, 1]], &dev)?;
        let m = build_mask(1, 1, 3, MaskKind::Causal, None, Some(&pad), &dev)?;
        let v: Vec<f32> = m.flatten_all()?.to_vec1()?;
        assert_eq!(
            v,
            vec![MASKED, 0.0, 0.0],
            "one new query after two cached keys"
        );
        let m = build_mask(1, 5, 5, MaskKind::Bidirectional, Some(1), None, &dev)?;
        let row: Vec<f32> = m.squeeze(0)?.squeeze(0)?.get(2)?.to_vec1()?;
        assert_eq!(row, vec![MASKED, 0.0, 0.0, 0.0, MASKED]);
        Ok(())
    }

    #[test]
    fn f16_kv_attention_rounds_q_k_v_and_probabilities() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 3, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 1, 5, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, 1, 5, 8), &dev)?;
        let opts = AttentionOpts {
            scale: 0.25,
            softcap: None,
        };
        let mask = build_mask(1, 3, 5, MaskKind::Causal, None, None, &dev)?;
        let got =
            scaled_dot_product_f16_kv(&q, &round_f16(&k)?, &round_f16(&v)?, Some(&mask), opts)?;
        let r = |t: &Tensor| t.to_dtype(DType::F16)?.to_dtype(DType::F32);
        let (kk, vv) = (repeat_kv(&r(&k)?, 2)?, repeat_kv(&r(&v)?, 2)?);
        let scores = (r(&q)?.matmul(&kk.t()?)? * 0.25)?.broadcast_add(&mask)?;
        let want = r(&candle_nn::ops::softmax(&scores, D::Minus1)?)?.matmul(&vv)?;
        let d = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6, "{d}");
        // f16 roundings: close to the f32 attention, not equal to it.
        let plain = scaled_dot_product(&q, &k, &v, Some(&mask), opts)?;
        let d = (&got - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d > 0.0 && d < 1e-2, "{d}");
        Ok(())
    }

    #[test]
    fn attention_matches_manual_softmax_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let q = Var::randn(0f32, 1., (1, 4, 3, 8), &dev)?;
        let k = Var::randn(0f32, 1., (1, 2, 3, 8), &dev)?;
        let v = Var::randn(0f32, 1., (1, 2, 3, 8), &dev)?;
        let opts = AttentionOpts {
            scale: 1.0 / 8f64.sqrt(),
            softcap: None,
        };
        let mask = build_mask(1, 3, 3, MaskKind::Causal, None, None, &dev)?;
        let y = scaled_dot_product(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Some(&mask),
            opts,
        )?;
        // The first query sees only the first key, so its output is v[0] of its kv head.
        let y0 = y.get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?;
        let v0 = v.as_tensor().get(0)?.get(0)?.get(0)?.to_vec1::<f32>()?;
        for (a, b) in y0.iter().zip(&v0) {
            assert!((a - b).abs() < 1e-5);
        }
        let g = y.sqr()?.sum_all()?.backward()?;
        for t in [&q, &k, &v] {
            let n = g
                .get(t.as_tensor())
                .unwrap()
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            assert!(n > 0.0);
        }
        Ok(())
    }
}
