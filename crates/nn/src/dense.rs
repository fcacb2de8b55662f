//! A trainable dense linear `x · Wᵀ` on the CPU as one graph node with its backward written
//! out (full fine-tuning: the ModernBERT encoder, trainable heads).
//!
//! Through candle's ops the product is a transpose node and a matmul node: the forward runs
//! gemm with a row-major destination (it then packs `W` on every call, see
//! `frozen::xwt_colmajor`), and the backward hands `dW` through the transpose node, so each
//! weight gradient is zero-filled and added to twice before it reaches the weight. Here the
//! value takes the column-major path and the backward writes `dx = g·W` and `dW = gᵀ·x` with
//! one gemm each (`dx` only when the input is tracked).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::cpu::with_f32_slices;

/// `x (rows, in) · Wᵀ` for a tracked `w (out, in)`; the one-node CPU path for contiguous f32
/// operands, candle's ops elsewhere.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    // `None` off the CPU or for other dtypes.
    let value = match (x.rank(), w.rank()) {
        (2, 2) => crate::frozen::dense_cpu_values(x, w)?,
        _ => None,
    };
    match value {
        Some(y) => x.apply_op2(
            w,
            DenseMatmulT {
                value: Mutex::new(Some(y)),
            },
        ),
        None => x.matmul(&w.t()?),
    }
}

/// The graph node; the value is computed before the node exists and moved in once.
struct DenseMatmulT {
    value: Mutex<Option<Vec<f32>>>,
}

impl CustomOp2 for DenseMatmulT {
    fn name(&self) -> &'static str {
        "dense-matmul-t"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        x: &Layout,
        _: &CpuStorage,
        w: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = self
            .value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| candle_core::Error::msg("dense-matmul-t: forward ran twice"))?;
        let shape = Shape::from((x.dims()[0], w.dims()[0]));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, in_dim) = x.dims2()?;
        let out_dim = w.dim(0)?;
        let track_x = x.track_op();
        let g = g.detach();
        let x = &x.detach();
        let dx = if track_x {
            // dx (rows, in) = g (rows, out) · W (out, in), all row-major.
            with_f32_slices(&[&g, &w.detach()], |s| {
                product(rows, in_dim, out_dim, (s[0], out_dim, 1), (s[1], in_dim, 1))
            })?
            .map(|v| Tensor::from_vec(v, (rows, in_dim), x.device()))
            .transpose()?
        } else {
            None
        };
        // dW (out, in) = gᵀ (out, rows) · x (rows, in); gᵀ is g read column-major.
        let dw = with_f32_slices(&[&g, x], |s| {
            product(out_dim, in_dim, rows, (s[0], 1, out_dim), (s[1], in_dim, 1))
        })?
        .map(|v| Tensor::from_vec(v, (out_dim, in_dim), w.device()))
        .transpose()?;
        Ok((dx, dw))
    }
}

/// A new row-major `m × n` matrix `lhs · rhs` for `m × k` and `k × n` operands given as
/// `(values, row stride, column stride)`, on all threads.
fn product(
    m: usize,
    n: usize,
    k: usize,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
) -> Vec<f32> {
    crate::cpu::gemm_f32_new(
        (m, n, k),
        (lhs.0, (lhs.1, lhs.2)),
        (rhs.0, (rhs.1, rhs.2)),
        1.0,
        gemm::Parallelism::Rayon(rayon::current_num_threads()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: (usize, usize)) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d: Vec<f32> = (a - b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        d.iter().fold(0f32, |m, v| m.max(v.abs()))
    }

    /// Value and both gradients equal candle's composed `x.matmul(w.t())`, for an input that
    /// is tracked and one that is not.
    #[test]
    fn equals_the_composed_product() -> Result<()> {
        let (rows, inp, out) = (37, 70, 51);
        let w = Var::from_tensor(&randn((out, inp)))?;
        let r = randn((rows, out));
        for tracked in [true, false] {
            let x0 = randn((rows, inp));
            let x = Var::from_tensor(&x0)?;
            let xin = if tracked {
                x.as_tensor().clone()
            } else {
                x0.clone()
            };
            let ours = matmul_t(&xin, w.as_tensor())?;
            let theirs = xin.matmul(&w.as_tensor().t()?)?;
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let go = (&ours * &r)?.sum_all()?.backward()?;
            let gt = (&theirs * &r)?.sum_all()?.backward()?;
            assert!(max_diff(go.get(&w).unwrap(), gt.get(&w).unwrap()) < 1e-5);
            if tracked {
                assert!(max_diff(go.get(&x).unwrap(), gt.get(&x).unwrap()) < 1e-5);
            } else {
                assert!(go.get(&x).is_none());
            }
        }
        Ok(())
    }
}
