//! Losses with PyTorch semantics, computed in f32 (or f64) with log-sum-exp.
//!
//! - [`cross_entropy`]: ignore mask (any negative label: -1, -100) and optional per-class
//!   weights. [`Reduction::Mean`] is `F.cross_entropy(weight=w, ignore_index=-100,
//!   reduction="mean")`: `Σ w[yᵢ]·ℓᵢ / Σ w[yᵢ]` over the kept targets.
//! - [`masked_multi_head_loss`]: the seed system's partial-label loss, per head
//!   `Σ maskᵢ·w[yᵢ]·ℓᵢ / Σ maskᵢ`, a head with no label contributing 0, summed over heads.
//! - [`causal_lm_loss`]: next-token loss on completion tokens only (shifted labels, -100 on the
//!   prompt and padding), the mean over kept tokens, as transformers' causal-LM loss.
//! - [`inverse_frequency_weights`]: sklearn's `"balanced"` class weights.
//!
//! On the CPU the per-row loss is one fused op (log-sum-exp per row, backward
//! `g·w·(softmax - onehot)`), so a `(tokens, vocab)` logits matrix costs one gradient buffer
//! instead of the five intermediate ones of `log_softmax` + `gather`. Other devices compose
//! candle ops.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Result, Shape, Tensor};
use clinstruct_nn::VocabHead;
use clinstruct_nn::cpu::with_slice;

/// How per-sample losses become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// `Σ wᵢℓᵢ / Σ wᵢ` over kept targets (PyTorch's `mean` with class weights). 0 without
    /// gradients when nothing is kept (PyTorch gives NaN).
    Mean,
    /// `Σ wᵢℓᵢ / (number of kept targets)` (the seed system's per-head normalisation).
    MeanOverCount,
    /// `Σ wᵢℓᵢ`.
    Sum,
}

/// Label value PyTorch and transformers use for ignored targets; every negative label is ignored.
pub const IGNORE_INDEX: i64 = -100;

/// Weighted per-row cross-entropy `w[yᵢ]·(logsumexp(xᵢ) - xᵢ[yᵢ])`, 0 for ignored rows, as a
/// differentiable `(n,)` tensor for `logits (n, C)` (any leading dims are flattened).
pub fn per_sample_cross_entropy(
    logits: &Tensor,
    targets: &[i64],
    class_weights: Option<&[f32]>,
) -> Result<Tensor> {
    let classes = logits.dim(D::Minus1)?;
    let n = logits.elem_count() / classes.max(1);
    if targets.len() != n {
        candle_core::bail!("cross_entropy: {} targets for {n} rows", targets.len());
    }
    if let Some(w) = class_weights
        && w.len() != classes
    {
        candle_core::bail!(
            "cross_entropy: {} class weights for {classes} classes",
            w.len()
        );
    }
    let mut safe = Vec::with_capacity(n);
    let mut weight = Vec::with_capacity(n);
    for &t in targets {
        if t < 0 {
            safe.push(0u32);
            weight.push(0f32);
        } else if (t as usize) < classes {
            safe.push(t as u32);
            weight.push(class_weights.map_or(1.0, |w| w[t as usize]));
        } else {
            candle_core::bail!("cross_entropy: target {t} out of range for {classes} classes");
        }
    }
    let logits = logits.reshape((n, classes))?;
    let logits = match logits.dtype() {
        DType::F32 | DType::F64 => logits,
        _ => logits.to_dtype(DType::F32)?,
    };
    if logits.device().is_cpu() {
        logits.contiguous()?.apply_op1(FusedCe {
            targets: Arc::new(safe),
            weights: Arc::new(weight),
        })
    } else {
        let device = logits.device().clone();
        let t = Tensor::from_vec(safe, (n, 1), &device)?;
        let w = Tensor::from_vec(weight, n, &device)?.to_dtype(logits.dtype())?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        logp.gather(&t, 1)?.squeeze(1)?.neg()? * w
    }
}

/// Cross-entropy over `logits (.., C)` and `targets` (one per row; negative = ignored).
pub fn cross_entropy(
    logits: &Tensor,
    targets: &[i64],
    class_weights: Option<&[f32]>,
    reduction: Reduction,
) -> Result<Tensor> {
    let per = per_sample_cross_entropy(logits, targets, class_weights)?;
    let sum = per.sum_all()?;
    let denom: f64 = match reduction {
        Reduction::Sum => return Ok(sum),
        Reduction::Mean => targets
            .iter()
            .filter(|&&t| t >= 0)
            .map(|&t| class_weights.map_or(1.0, |w| f64::from(w[t as usize])))
            .sum(),
        Reduction::MeanOverCount => targets.iter().filter(|&&t| t >= 0).count() as f64,
    };
    if denom == 0.0 {
        // 0 without gradients instead of PyTorch's NaN: the optimiser then skips these
        // parameters, as torch skips parameters whose `.grad` is None.
        return sum.zeros_like();
    }
    sum / denom
}

/// One classification head of [`masked_multi_head_loss`].
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// `(n, C)` logits.
    pub logits: &'a Tensor,
    /// One label per sample; negative = missing (the seed system's -1 sentinel).
    pub labels: &'a [i64],
    pub class_weights: Option<&'a [f32]>,
}

/// The normalisation of each head's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadNorm {
    /// `Σ maskᵢ·w[yᵢ]·ℓᵢ / Σ maskᵢ` (the seed system's formula).
    #[default]
    Count,
    /// `Σ maskᵢ·w[yᵢ]·ℓᵢ / Σ maskᵢ·w[yᵢ]` (PyTorch's weighted mean per head).
    WeightSum,
}

/// The summed loss and each head's share (`None`: the head had no labelled sample).
#[derive(Debug, Clone)]
pub struct MultiHeadLoss {
    pub total: Tensor,
    pub per_head: Vec<Option<f32>>,
}

/// The seed system's partial-label loss: per head the masked (optionally class-weighted) mean
/// cross-entropy over samples whose label is present, a head without labels contributing 0,
/// summed over heads (T, N, M).
pub fn masked_multi_head_loss(heads: &[Head<'_>], norm: HeadNorm) -> Result<MultiHeadLoss> {
    let reduction = match norm {
        HeadNorm::Count => Reduction::MeanOverCount,
        HeadNorm::WeightSum => Reduction::Mean,
    };
    let mut total: Option<Tensor> = None;
    let mut per_head = Vec::with_capacity(heads.len());
    for h in heads {
        if h.labels.iter().all(|&y| y < 0) {
            per_head.push(None);
            continue;
        }
        let l = cross_entropy(h.logits, h.labels, h.class_weights, reduction)?;
        per_head.push(Some(l.to_dtype(DType::F32)?.to_scalar::<f32>()?));
        total = Some(match total {
            None => l,
            Some(t) => (t + l)?,
        });
    }
    let total = match total {
        Some(t) => t,
        // No labels at all: 0 without gradients (the step skips these parameters).
        None => match heads.first() {
            Some(h) => Tensor::zeros((), h.logits.dtype(), h.logits.device())?,
            None => candle_core::bail!("masked_multi_head_loss: no heads"),
        },
    };
    Ok(MultiHeadLoss { total, per_head })
}

/// Labelled samples per class (negative labels skipped).
pub fn label_counts(labels: &[i64], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for &y in labels {
        if y >= 0 && (y as usize) < num_classes {
            counts[y as usize] += 1;
        }
    }
    counts
}

/// Inverse class frequency, sklearn's `"balanced"`: `w_c = n / (k · count_c)` with `n` the
/// labelled samples and `k` the classes present (`compute_class_weight("balanced",
/// classes=np.unique(y), y=y)`); the mean weight over samples is 1. Absent classes get 0 (no
/// sample can use them).
pub fn inverse_frequency_weights(counts: &[usize]) -> Vec<f32> {
    let n: usize = counts.iter().sum();
    let k = counts.iter().filter(|&&c| c > 0).count();
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                (n as f64 / (k as f64 * c as f64)) as f32
            }
        })
        .collect()
}

/// Next-token targets for `labels (batch, len)` (row-major): position `t` predicts
/// `labels[t + 1]`, the last position of each row is ignored. Equals transformers' shift
/// (`labels[..., 1:]` against `logits[..., :-1, :]`) without copying the logits.
pub fn shift_labels(labels: &[i64], batch: usize, len: usize) -> Result<Vec<i64>> {
    if labels.len() != batch * len {
        candle_core::bail!("shift_labels: {} labels for {batch}×{len}", labels.len());
    }
    let mut out = vec![IGNORE_INDEX; batch * len];
    for b in 0..batch {
        for t in 0..len.saturating_sub(1) {
            out[b * len + t] = labels[b * len + t + 1];
        }
    }
    Ok(out)
}

/// Labels for training on the completion only: the token id where `keep`, -100 on the first
/// `prompt_len` tokens and wherever `attention_mask` is 0 (padding).
pub fn completion_labels(input_ids: &[u32], prompt_len: usize, attention_mask: &[u8]) -> Vec<i64> {
    input_ids
        .iter()
        .zip(attention_mask)
        .enumerate()
        .map(|(i, (&id, &m))| {
            if i < prompt_len || m == 0 {
                IGNORE_INDEX
            } else {
                i64::from(id)
            }
        })
        .collect()
}

/// Causal-LM loss for `logits (batch, len, vocab)` and unshifted `labels (batch, len)` with -100
/// on prompt and padding: mean next-token cross-entropy over kept targets.
pub fn causal_lm_loss(logits: &Tensor, labels: &[i64]) -> Result<Tensor> {
    let (b, l, _) = logits.dims3()?;
    let targets = shift_labels(labels, b, l)?;
    cross_entropy(logits, &targets, None, Reduction::Mean)
}

/// [`causal_lm_loss`] from hidden states `(batch, len, hidden)`: only the positions with a
/// kept next-token target go through `head` (the LM head), so prompt and padding positions
/// never get vocabulary-sized logits (for a 128k vocabulary that is the largest matmul of a
/// small model, forward and backward). A head with a fused path (a frozen LM head on the CPU,
/// see `clinstruct_nn::linear_ce`) computes the cross-entropy with its matmuls and no logits
/// tensor; any other head (or a closure giving logits) goes through [`cross_entropy`]. Same
/// value and gradients as the full-logits loss.
pub fn causal_lm_loss_on_hidden(
    hidden: &Tensor,
    labels: &[i64],
    head: &impl VocabHead,
) -> Result<Tensor> {
    let (b, l, h) = hidden.dims3()?;
    let targets = shift_labels(labels, b, l)?;
    let (rows, kept): (Vec<u32>, Vec<i64>) = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| **t >= 0)
        .map(|(i, &t)| (i as u32, t))
        .unzip();
    if rows.is_empty() {
        // As `cross_entropy` with nothing kept: 0 without gradients.
        return Tensor::zeros((), DType::F32, hidden.device());
    }
    let flat = hidden.reshape((b * l, h))?;
    // A contiguous run (completion-only training) is a narrow, which copies nothing.
    let first = rows[0] as usize;
    let picked = if rows.len() == rows[rows.len() - 1] as usize - first + 1 {
        flat.narrow(0, first, rows.len())?
    } else {
        let n = rows.len();
        flat.index_select(&Tensor::from_vec(rows, n, hidden.device())?, 0)?
    };
    let n = kept.len();
    let ids: Vec<u32> = kept.iter().map(|&t| t as u32).collect();
    if let Some(per_row) = head.fused_cross_entropy(&picked, &ids, &vec![1.0; n])? {
        return per_row.sum_all()? / n as f64;
    }
    let logits = head.logits(&picked)?;
    cross_entropy(&logits, &kept, None, Reduction::Mean)
}

/// The fused per-row weighted cross-entropy on CPU.
struct FusedCe {
    targets: Arc<Vec<u32>>,
    weights: Arc<Vec<f32>>,
}

trait Real: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// `max + ln Σ exp(x - max)`, accumulated in f64.
fn logsumexp<T: Real>(row: &[T]) -> f64 {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x.to_f64()));
    let s: f64 = row.iter().map(|&x| (x.to_f64() - m).exp()).sum();
    m + s.ln()
}

impl FusedCe {
    fn forward<T: Real>(&self, x: &[T], classes: usize) -> Vec<T> {
        use rayon::prelude::*;
        x.par_chunks(classes)
            .enumerate()
            .map(|(i, row)| {
                let w = self.weights[i];
                if w == 0.0 {
                    return T::from_f64(0.0);
                }
                let lse = logsumexp(row);
                T::from_f64(f64::from(w) * (lse - row[self.targets[i] as usize].to_f64()))
            })
            .collect()
    }

    fn backward<T: Real>(&self, x: &[T], g: &[T], classes: usize) -> Vec<T> {
        use rayon::prelude::*;
        let mut out = vec![T::from_f64(0.0); x.len()];
        out.par_chunks_mut(classes)
            .zip(x.par_chunks(classes))
            .enumerate()
            .for_each(|(i, (dst, row))| {
                let scale = f64::from(self.weights[i]) * g[i].to_f64();
                if scale == 0.0 {
                    return;
                }
                let lse = logsumexp(row);
                for (d, &v) in dst.iter_mut().zip(row) {
                    *d = T::from_f64(scale * (v.to_f64() - lse).exp());
                }
                let t = self.targets[i] as usize;
                dst[t] = T::from_f64(dst[t].to_f64() - scale);
            });
        out
    }
}

fn contiguous_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    if !l.is_contiguous() {
        candle_core::bail!("fused cross-entropy: logits must be contiguous");
    }
    let data = s.as_slice::<T>()?;
    Ok(&data[l.start_offset()..l.start_offset() + l.shape().elem_count()])
}

impl CustomOp1 for FusedCe {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c) = l.shape().dims2()?;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward(contiguous_slice::<f32>(s, l)?, c)),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward(contiguous_slice::<f64>(s, l)?, c)),
            _ => candle_core::bail!("fused cross-entropy: f32 or f64 logits"),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, c) = arg.dims2()?;
        let grad = grad.to_dtype(arg.dtype())?;
        // Reads the logits in place: the gradient is the only logits-sized allocation.
        let dx = match arg.dtype() {
            DType::F32 => {
                let g = grad.to_vec1::<f32>()?;
                with_slice::<f32, _>(arg, |x| self.backward(x, &g, c))?
                    .map(|d| Tensor::from_vec(d, (n, c), arg.device()))
            }
            DType::F64 => {
                let g = grad.to_vec1::<f64>()?;
                with_slice::<f64, _>(arg, |x| self.backward(x, &g, c))?
                    .map(|d| Tensor::from_vec(d, (n, c), arg.device()))
            }
            dt => candle_core::bail!("fused cross-entropy: {dt:?} logits"),
        };
        match dx {
            Some(dx) => Ok(Some(dx?)),
            None => candle_core::bail!("fused cross-entropy: logits left the CPU"),
        }
    }
}
