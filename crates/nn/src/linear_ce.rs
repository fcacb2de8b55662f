//! Cross-entropy over a vocabulary-sized linear head without vocabulary-sized tensors in the
//! graph ("fused linear cross-entropy", as Liger-Kernel's).
//!
//! For a causal LM's loss the LM head and the cross-entropy are one computation: logits
//! `z = x · Wᵀ` (optionally soft-capped), per row `w·(logsumexp(z) - z[t])`, and the only
//! gradient anyone needs is the one for `x`. Composed from graph ops this costs a `(rows,
//! vocab)` logits tensor, its gradient of the same size (zero-filled, then added to by candle's
//! backward), a transpose of each, and log-sum-exp twice. Here the rows go through in chunks of
//! a few MB of logits: a gemm writes the chunk's logits, one pass takes the row maxima, one the
//! exponentials and their sums (f64), one turns the buffer into `w·(softmax - onehot)`, and a
//! second gemm turns that into the chunk's `dx`, all before the next chunk reuses the buffer.
//! The backward pass is then a row scaling of the stored `dx`. Same products as the unfused
//! loss (the vocabulary-sized matmuls are the bulk of the work); what goes is the traffic around
//! them. Inputs that need no gradient skip the second gemm.
//!
//! CPU, f32. [`VocabHead`] is how a loss asks a head for this path and falls back to logits.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::with_slice;
use crate::fused::{exp_neg, simd_dispatch};

/// A vocabulary-sized output layer a token-level loss runs over.
pub trait VocabHead {
    /// Logits for `x (.., hidden)`.
    fn logits(&self, x: &Tensor) -> Result<Tensor>;

    /// Per-row weighted cross-entropy `w·(logsumexp(zᵢ) - zᵢ[tᵢ])` of the logits of `x (n,
    /// hidden)`, differentiable in `x`, computed without materialising the logits in the graph;
    /// `None` when this head has no such path (the caller takes [`VocabHead::logits`]).
    fn fused_cross_entropy(
        &self,
        _x: &Tensor,
        _targets: &[u32],
        _row_weights: &[f32],
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Any logits function is a head without a fused path.
impl<F: Fn(&Tensor) -> Result<Tensor>> VocabHead for F {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self(x)
    }
}

/// Rows per chunk: the chunk's logits stay near 16M values (64 MB), at least 16 rows (the gemm
/// wants several), a multiple of 16 (one AVX-512 vector of lanes).
fn chunk_rows(rows: usize, vocab: usize) -> usize {
    let r = ((1usize << 24) / vocab.max(1)).clamp(16, 512) / 16 * 16;
    r.min(rows).max(1)
}

/// `dx (rows, hidden) = dz (rows, vocab) · W` with `dz` column-major (the chunk buffer) and
/// `W (vocab, hidden)`, as two gemms over the two halves of the vocabulary, side by side on
/// half the threads each, then summed. One gemm over all threads runs this shape (a small
/// output, an inner dimension of the vocabulary) at ~210 GFLOP/s on two cores, the two
/// halves at ~235. The halves do not depend on the thread count, so neither does `dx` (a
/// test checks this). (Splitting `dx` by columns instead runs as fast, but gemm's blocking
/// follows the slice width, so the values would change with the thread count.)
fn dz_times_w(dz: &[f32], rows: usize, w: &[f32], hidden: usize, dx: &mut [f32]) {
    let vocab = dz.len() / rows.max(1);
    let half = vocab / 2;
    let threads = (rayon::current_num_threads() / 2).max(1);
    let operands = |v0: usize| {
        (
            (&dz[v0 * rows..], (1, rows)),
            (&w[v0 * hidden..], (hidden, 1)),
        )
    };
    let par = gemm::Parallelism::Rayon(threads);
    let lower = |dx: &mut [f32], v1: usize| {
        let (lhs, rhs) = operands(0);
        crate::cpu::gemm_f32((rows, hidden, v1), (dx, hidden, false), lhs, rhs, 1.0, par);
    };
    if half == 0 {
        lower(dx, vocab);
        return;
    }
    let (_, upper) = rayon::join(
        || lower(dx, half),
        || {
            let (lhs, rhs) = operands(half);
            crate::cpu::gemm_f32_new((rows, hidden, vocab - half), lhs, rhs, 1.0, par)
        },
    );
    for (d, u) in dx.iter_mut().zip(&upper) {
        *d += u;
    }
}

/// Vocabulary entries per parallel task of the row passes.
const VOCAB_BLOCK: usize = 256;

/// Per-row losses `w·(logsumexp(zᵢ) - zᵢ[tᵢ])` for `z = softcap(x · Wᵀ)`, `x (n, hidden)` and
/// `weight (vocab, hidden)` f32 on the CPU, with `cap·tanh(z/cap)` soft-capping when `softcap`
/// is set; differentiable in `x` (never in `weight`). Rows with weight 0 give 0 and no gradient.
pub fn linear_cross_entropy(
    x: &Tensor,
    weight: &Tensor,
    targets: &[u32],
    row_weights: &[f32],
    softcap: Option<f64>,
) -> Result<Tensor> {
    let (n, hidden) = x.dims2()?;
    let (vocab, k) = weight.dims2()?;
    if k != hidden {
        candle_core::bail!("linear cross-entropy: input has {hidden} columns, the weight {k}");
    }
    if targets.len() != n || row_weights.len() != n {
        candle_core::bail!(
            "linear cross-entropy: {} targets and {} weights for {n} rows",
            targets.len(),
            row_weights.len()
        );
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("linear cross-entropy: target {t} out of range for {vocab} classes");
    }
    for t in [x, weight] {
        if !t.device().is_cpu() || t.dtype() != DType::F32 {
            candle_core::bail!("linear cross-entropy: f32 CPU tensors only");
        }
    }
    let want_grad = x.track_op();
    let problem = Problem {
        n,
        hidden,
        vocab,
        targets,
        row_weights,
        softcap: softcap.map(|c| c as f32),
    };
    let out = with_slice::<f32, _>(&x.detach(), |xs| {
        with_slice::<f32, _>(weight, |ws| problem.run(xs, ws, want_grad))
    })?
    .transpose()?
    .flatten()
    .ok_or_else(|| candle_core::Error::msg("linear cross-entropy: tensors left the CPU"))?;
    let (losses, dx) = out;
    let dx = dx
        .map(|d| Tensor::from_vec(d, (n, hidden), x.device()))
        .transpose()?;
    let losses = Tensor::from_vec(losses, n, x.device())?;
    if !want_grad {
        return Ok(losses);
    }
    x.apply_op1(LinearCe {
        losses: Mutex::new(Some(losses)),
        dx,
    })
}

struct Problem<'a> {
    n: usize,
    hidden: usize,
    vocab: usize,
    targets: &'a [u32],
    row_weights: &'a [f32],
    softcap: Option<f32>,
}

impl Problem<'_> {
    /// The losses, and `dx` for an upstream gradient of 1 per row when `want_grad`.
    fn run(&self, x: &[f32], w: &[f32], want_grad: bool) -> (Vec<f32>, Option<Vec<f32>>) {
        let (n, hidden, vocab) = (self.n, self.hidden, self.vocab);
        let rc = chunk_rows(n, vocab);
        let mut losses = vec![0f32; n];
        let mut dx = want_grad.then(|| vec![0f32; n * hidden]);
        // The chunk's logits, transposed: entry `v` of row `r` at `v·rows + r`, so each pass
        // runs over contiguous lanes of rows (and gemm reads `W` in place, see
        // `frozen::xwt_colmajor`).
        let mut buf: Vec<f32> = Vec::with_capacity(rc * vocab);
        for r0 in (0..n).step_by(rc) {
            let rows = rc.min(n - r0);
            let xs = &x[r0 * hidden..(r0 + rows) * hidden];
            let dst = buf.spare_capacity_mut().as_mut_ptr() as *mut f32;
            // SAFETY: `xs` is rows × hidden, `w` vocab × hidden, `buf` has room for vocab ×
            // rows and the gemm writes every element without reading it.
            unsafe {
                crate::frozen::xwt_colmajor(xs, rows, hidden, w.as_ptr(), vocab, dst);
                buf.set_len(rows * vocab);
            }
            let targets = &self.targets[r0..r0 + rows];
            let weights = &self.row_weights[r0..r0 + rows];
            let (z_max, z_target, sums) = self.softmax_stats(&mut buf, rows, targets);
            for r in 0..rows {
                let lse = f64::from(z_max[r]) + sums[r].ln();
                losses[r0 + r] = (f64::from(weights[r]) * (lse - f64::from(z_target[r]))) as f32;
            }
            let Some(dx) = dx.as_mut() else {
                continue;
            };
            // d loss / d z = w·(softmax - onehot); `buf` holds exp(z - max) (or z with a cap).
            let coef: Vec<f32> = (0..rows)
                .map(|r| (f64::from(weights[r]) / sums[r]) as f32)
                .collect();
            self.logit_grads(&mut buf, rows, &z_max, &coef);
            for (r, (&t, &wr)) in targets.iter().zip(weights).enumerate() {
                let i = t as usize * rows + r;
                let tanh_grad = match self.softcap {
                    Some(cap) => 1.0 - (z_target[r] / cap) * (z_target[r] / cap),
                    None => 1.0,
                };
                buf[i] -= wr * tanh_grad;
            }
            dz_times_w(
                &buf,
                rows,
                w,
                hidden,
                &mut dx[r0 * hidden..(r0 + rows) * hidden],
            );
            buf.clear();
        }
        (losses, dx)
    }

    /// Soft-caps `buf` in place (when set), then per row the maximum, the target's logit and
    /// `Σ exp(z - max)` in f64; without a cap `buf` then holds `exp(z - max)`. The partial
    /// results of the vocabulary blocks are combined in block order, so the sums do not
    /// depend on the thread count or on scheduling.
    fn softmax_stats(
        &self,
        buf: &mut [f32],
        rows: usize,
        targets: &[u32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
        let block = VOCAB_BLOCK * rows;
        let softcap = self.softcap;
        let maxima: Vec<Vec<f32>> = buf
            .par_chunks_mut(block)
            .map(|b| {
                let mut m = vec![f32::NEG_INFINITY; rows];
                if let Some(cap) = softcap {
                    for z in b.iter_mut() {
                        *z = cap * (*z / cap).tanh();
                    }
                }
                block_max(b, &mut m);
                m
            })
            .collect();
        let mut z_max = vec![f32::NEG_INFINITY; rows];
        for m in &maxima {
            for (a, &b) in z_max.iter_mut().zip(m) {
                *a = a.max(b);
            }
        }
        let z_target: Vec<f32> = targets
            .iter()
            .enumerate()
            .map(|(r, &t)| buf[t as usize * rows + r])
            .collect();
        let store = softcap.is_none();
        let partial: Vec<Vec<f64>> = buf
            .par_chunks_mut(block)
            .map(|b| {
                let mut s = vec![0f64; rows];
                block_exp_sum(b, &z_max, &mut s, store);
                s
            })
            .collect();
        let mut sums = vec![0f64; rows];
        for p in &partial {
            for (a, &b) in sums.iter_mut().zip(p) {
                *a += b;
            }
        }
        (z_max, z_target, sums)
    }

    /// `buf ← coef·exp(z - max)` (times `1 - (z/cap)²` with a cap, whose `buf` still holds z).
    fn logit_grads(&self, buf: &mut [f32], rows: usize, z_max: &[f32], coef: &[f32]) {
        let softcap = self.softcap;
        buf.par_chunks_mut(VOCAB_BLOCK * rows)
            .for_each(|b| match softcap {
                None => block_scale(b, coef),
                Some(cap) => block_capped_grad(b, z_max, coef, cap),
            });
    }
}

simd_dispatch!(block_max => block_max_portable(b: &[f32], m: &mut [f32]));

#[inline(always)]
fn block_max_portable(b: &[f32], m: &mut [f32]) {
    for row in b.chunks_exact(m.len()) {
        for (a, &z) in m.iter_mut().zip(row) {
            *a = if z > *a { z } else { *a };
        }
    }
}

simd_dispatch!(block_exp_sum => block_exp_sum_portable(b: &mut [f32], z_max: &[f32], s: &mut [f64], store: bool));

#[inline(always)]
fn block_exp_sum_portable(b: &mut [f32], z_max: &[f32], s: &mut [f64], store: bool) {
    for row in b.chunks_exact_mut(z_max.len()) {
        for ((z, &m), acc) in row.iter_mut().zip(z_max).zip(s.iter_mut()) {
            let e = exp_neg(*z - m);
            *acc += f64::from(e);
            if store {
                *z = e;
            }
        }
    }
}

simd_dispatch!(block_scale => block_scale_portable(b: &mut [f32], coef: &[f32]));

#[inline(always)]
fn block_scale_portable(b: &mut [f32], coef: &[f32]) {
    for row in b.chunks_exact_mut(coef.len()) {
        for (e, &c) in row.iter_mut().zip(coef) {
            *e *= c;
        }
    }
}

fn block_capped_grad(b: &mut [f32], z_max: &[f32], coef: &[f32], cap: f32) {
    for row in b.chunks_exact_mut(coef.len()) {
        for ((z, &c), &m) in row.iter_mut().zip(coef).zip(z_max) {
            let t = *z / cap;
            *z = c * exp_neg(*z - m) * (1.0 - t * t);
        }
    }
}

/// The graph node: argument `x`, value the precomputed losses, backward `g ⊙ dx` by row.
struct LinearCe {
    losses: Mutex<Option<Tensor>>,
    dx: Option<Tensor>,
}

impl CustomOp1 for LinearCe {
    fn name(&self) -> &'static str {
        "linear-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let losses = self
            .losses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| candle_core::Error::msg("linear cross-entropy: forward ran twice"))?;
        let v = losses.to_vec1::<f32>()?;
        let n = v.len();
        Ok((CpuStorage::F32(v), Shape::from(n)))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(dx) = &self.dx else {
            return Ok(None);
        };
        let n = dx.dim(0)?;
        Ok(Some(dx.broadcast_mul(&grad.reshape((n, 1))?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                // Two uniforms from an LCG, Box–Muller.
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u1 = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u2 = ((s >> 11) as f64) / (1u64 << 53) as f64;
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The same loss composed from f64 graph ops.
    fn reference(
        x: &Tensor,
        w: &Tensor,
        targets: &[u32],
        weights: &[f32],
        softcap: Option<f64>,
    ) -> Result<Tensor> {
        let z = x
            .to_dtype(DType::F64)?
            .matmul(&w.to_dtype(DType::F64)?.t()?)?;
        let z = match softcap {
            Some(c) => ((z / c)?.tanh()? * c)?,
            None => z,
        };
        let lse = z.exp()?.sum_keepdim(1)?.log()?.squeeze(1)?;
        let t = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), x.device())?;
        let zt = z.gather(&t, 1)?.squeeze(1)?;
        let w =
            Tensor::from_vec(weights.to_vec(), weights.len(), x.device())?.to_dtype(DType::F64)?;
        (lse - zt)? * w
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let a: Vec<f64> = a
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f64> = b
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
            / scale
    }

    /// Losses and input gradients equal the composed f64 loss: several chunks (the last one
    /// short), a row with weight 0, class weights other than 1, with and without soft-capping.
    #[test]
    fn equals_the_composed_loss() -> Result<()> {
        // 2^24 / 40_000 = 419 rows per chunk → 400 (multiple of 16): 1000 rows take 3 chunks.
        let (n, h, vocab) = (1000, 24, 40_000);
        let w = randn(&[vocab, h], 0.3, 1);
        let xv = Var::from_tensor(&randn(&[n, h], 1.0, 2))?;
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7919) % vocab) as u32).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| {
                if i == 3 {
                    0.0
                } else {
                    0.5 + (i % 3) as f32 * 0.25
                }
            })
            .collect();
        // A per-row upstream gradient that is not uniform.
        let g = Tensor::from_vec(
            (0..n).map(|i| 1.0 + (i % 5) as f32).collect(),
            n,
            &Device::Cpu,
        )?;
        for softcap in [None, Some(3.0)] {
            let ours = linear_cross_entropy(xv.as_tensor(), &w, &targets, &weights, softcap)?;
            let xr = Var::from_tensor(&xv.as_tensor().to_dtype(DType::F64)?)?;
            let theirs = reference(xr.as_tensor(), &w, &targets, &weights, softcap)?;
            assert!(
                max_rel(&ours, &theirs) < 1e-5,
                "losses differ ({softcap:?})"
            );
            assert_eq!(ours.to_vec1::<f32>()?[3], 0.0);
            let go = (ours * &g)?.sum_all()?.backward()?;
            let gt = (theirs * g.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            let (a, b) = (go.get(&xv).unwrap(), gt.get(&xr).unwrap());
            let rel = max_rel(a, b);
            assert!(rel < 1e-5, "dx differs by {rel} ({softcap:?})");
            let zero_row: Vec<f32> = a.get(3)?.to_vec1()?;
            assert!(zero_row.iter().all(|&v| v == 0.0));
        }
        Ok(())
    }

    /// Untracked input: the losses, no node, and the same values; results do not depend on
    /// the number of threads.
    #[test]
    fn untracked_input_and_thread_count() -> Result<()> {
        let (n, h, vocab) = (40, 16, 3000);
        let w = randn(&[vocab, h], 0.3, 3);
        let x = randn(&[n, h], 1.0, 4);
        let targets: Vec<u32> = (0..n).map(|i| (i * 31 % vocab) as u32).collect();
        let weights = vec![1f32; n];
        let a = linear_cross_entropy(&x, &w, &targets, &weights, None)?;
        assert!(!a.track_op());
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = one.install(|| linear_cross_entropy(&x, &w, &targets, &weights, None))?;
        assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        // dx too, with hidden sizes that split into uneven column slices.
        for h in [16, 200, 520] {
            let w = randn(&[vocab, h], 0.3, 7);
            let x = Var::from_tensor(&randn(&[n, h], 1.0, 8))?;
            let dx = |threads: usize| -> Result<Vec<f32>> {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let l = pool.install(|| linear_cross_entropy(&x, &w, &targets, &weights, None))?;
                let g = l.sum_all()?.backward()?;
                g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()
            };
            let one = dx(1)?;
            assert!(one.iter().any(|&v| v != 0.0));
            for threads in [2, 3, 5] {
                let other = dx(threads)?;
                let same = one.iter().zip(&other).all(|(a, b)| a == b);
                assert!(same, "hidden {h}, {threads} threads: dx differs");
            }
        }
        Ok(())
    }

    #[test]
    fn bad_targets_are_errors() {
        let w = randn(&[10, 4], 0.3, 5);
        let x = randn(&[2, 4], 1.0, 6);
        let e = linear_cross_entropy(&x, &w, &[1, 10], &[1.0, 1.0], None).unwrap_err();
        assert!(e.to_string().contains("target 10 out of range"), "{e}");
        let e = linear_cross_entropy(&x, &w, &[1], &[1.0], None).unwrap_err();
        assert!(e.to_string().contains("1 targets"), "{e}");
    }
}
