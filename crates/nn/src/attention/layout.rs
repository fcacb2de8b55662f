//! The layout changes around attention as single parallel passes with written-out backward
//! passes:
//!
//! - [`split_heads`]: a projection's output `(b, L, parts·h·d)` → heads `(parts, b, h, L, d)`,
//!   with rope applied to the leading parts on the way (transformers' `rotate_half`
//!   convention, the same f32 arithmetic as [`crate::rope::apply_rotary`], so the values are
//!   bit-identical);
//! - [`merge_heads`]: attention's output `(b, h, L, d)` → `(b, L, h·d)` for the output
//!   projection.
//!
//! Composed from candle ops these are strided copies on one thread plus the five ops of the
//! rotation, each again in the backward: serial time that the two-thread LoRA step spent
//! with one core idle. CPU f32 only; both answer `None` elsewhere and the caller composes.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{contiguous_f32, with_f32_slices};

/// cos and sin rows for [`split_heads`]: `rows` tables of `(L, d)`, one per batch row, or one
/// shared by the batch. Holds the table tensors themselves (the kernels read their buffers),
/// so building one per layer copies nothing.
#[derive(Debug, Clone)]
pub struct RopeRows {
    cos: Tensor,
    sin: Tensor,
    rows: usize,
    len: usize,
    dim: usize,
}

impl RopeRows {
    /// From tables shaped `(rows, 1, L, d)` (as [`crate::rope::RotaryEmbedding::cos_sin`]
    /// makes them) or `(L, d)`. `None` when they are not f32 on the CPU.
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<Option<RopeRows>> {
        if cos.dims() != sin.dims() {
            candle_core::bail!("rope tables: cos {:?} and sin {:?}", cos.dims(), sin.dims());
        }
        let (rows, len, dim) = match *cos.dims() {
            [rows, 1, len, dim] => (rows, len, dim),
            [len, dim] => (1, len, dim),
            ref other => candle_core::bail!("rope tables: expected (b, 1, L, d), got {other:?}"),
        };
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !cpu_f32(cos) || !cpu_f32(sin) {
            return Ok(None);
        }
        Ok(Some(RopeRows {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            rows,
            len,
            dim,
        }))
    }

    /// Runs `f` on the tables' values (`None` without tables).
    fn read<R>(rope: Option<&RopeRows>, f: impl FnOnce(Option<&Tables>) -> R) -> Result<R> {
        let Some(r) = rope else {
            return Ok(f(None));
        };
        with_f32_slices(&[&r.cos, &r.sin], |t| {
            f(Some(&Tables {
                cos: t[0],
                sin: t[1],
                shared: r.rows == 1,
                n: r.len * r.dim,
            }))
        })?
        .ok_or_else(|| candle_core::Error::msg("rope tables: not on the CPU"))
    }
}

/// The values of a [`RopeRows`] while a kernel runs.
struct Tables<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    /// One table for the whole batch.
    shared: bool,
    /// Values per table, `L·d`.
    n: usize,
}

impl Tables<'_> {
    /// The tables `(L·d)` of batch row `bi`.
    fn of(&self, bi: usize) -> (&[f32], &[f32]) {
        let r = if self.shared { 0 } else { bi };
        (
            &self.cos[r * self.n..][..self.n],
            &self.sin[r * self.n..][..self.n],
        )
    }
}

/// Sizes of one layout change: `b` batch rows of `l` positions, `parts` groups of `h` heads of
/// width `d` (the heads side is `(parts, b, h, L, d)`, the rows side `(b, L, parts·h·d)`).
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    l: usize,
    parts: usize,
    h: usize,
    d: usize,
}

impl Dims {
    fn row(&self) -> usize {
        self.parts * self.h * self.d
    }
}

/// `x (b, L, parts·heads·d)` → `(parts, b, heads, L, d)` contiguous, with the first `rotated`
/// parts rotated by `rope`. Differentiable in `x`. `None` when `x` is not f32 on the CPU (or
/// `rope` is `None` while `rotated > 0`).
pub fn split_heads(
    x: &Tensor,
    parts: usize,
    heads: usize,
    rotated: usize,
    rope: Option<&RopeRows>,
) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || (rotated > 0 && rope.is_none()) {
        return Ok(None);
    }
    let (b, l, w) = x.dims3()?;
    if parts == 0 || heads == 0 || !w.is_multiple_of(parts * heads) || rotated > parts {
        candle_core::bail!("split heads: width {w} is not {parts} parts of {heads} heads");
    }
    let dims = Dims {
        b,
        l,
        parts,
        h: heads,
        d: w / (parts * heads),
    };
    if let Some(r) = rope.filter(|_| rotated > 0)
        && (r.dim != dims.d || r.len != l || (r.rows != 1 && r.rows != b))
    {
        candle_core::bail!(
            "split heads: rope tables of {} rows × {} positions × {}, input (b {b}, L {l}, d {})",
            r.rows,
            r.len,
            r.dim,
            dims.d
        );
    }
    let op = SplitHeads {
        dims,
        rotated,
        rope: rope.cloned(),
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

/// `y (b, heads, L, d)` → `(b, L, heads·d)` contiguous. Differentiable. `None` when `y` is not
/// f32 on the CPU.
pub fn merge_heads(y: &Tensor) -> Result<Option<Tensor>> {
    if !y.device().is_cpu() || y.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, h, l, d) = y.dims4()?;
    let dims = Dims {
        b,
        l,
        parts: 1,
        h,
        d,
    };
    Ok(Some(y.contiguous()?.apply_op1(MergeHeads { dims })?))
}

struct SplitHeads {
    dims: Dims,
    rotated: usize,
    rope: Option<RopeRows>,
}

struct MergeHeads {
    dims: Dims,
}

/// Rows side → heads side: one task per `(part, batch, head)` block of `L·d` values, the
/// first `rotated` parts rotated by `rope`.
fn to_heads(x: &[f32], g: Dims, rotated: usize, rope: Option<&Tables>) -> Vec<f32> {
    let (l, d, row) = (g.l, g.d, g.row());
    let half = d / 2;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(l * d)
        .enumerate()
        .for_each(|(blk, dst)| {
            let (part, rest) = (blk / (g.b * g.h), blk % (g.b * g.h));
            let (bi, hi) = (rest / g.h, rest % g.h);
            let col = (part * g.h + hi) * d;
            let table = rope.filter(|_| part < rotated).map(|r| r.of(bi));
            for (t, dst) in dst.chunks_exact_mut(d).enumerate() {
                let src = &x[(bi * l + t) * row + col..][..d];
                let Some((cos, sin)) = table else {
                    dst.copy_from_slice(src);
                    continue;
                };
                let (c, s) = (&cos[t * d..][..d], &sin[t * d..][..d]);
                let (lo, hi_half) = dst.split_at_mut(half);
                // x·cos + rotate_half(x)·sin, rotate_half([x1, x2]) = [-x2, x1]; the product
                // order matches `apply_rotary`'s `x·cos + (-x2)·sin`.
                for j in 0..half {
                    let (x1, x2) = (src[j], src[j + half]);
                    lo[j] = x1 * c[j] + -x2 * s[j];
                    hi_half[j] = x2 * c[j + half] + x1 * s[j + half];
                }
            }
        });
    out
}

/// Heads side → rows side: one task per `(batch, position)` row. With `rope`, the first
/// `rotated` parts get the transposed rotation `g·cos + rotate_halfᵀ(g·sin)`,
/// `rotate_halfᵀ([z1, z2]) = [z2, -z1]` (the gradient of [`to_heads`]' rotation).
fn to_rows(y: &[f32], g: Dims, rotated: usize, rope: Option<&Tables>) -> Vec<f32> {
    let (l, d, row) = (g.l, g.d, g.row());
    let half = d / 2;
    let mut out = vec![0f32; y.len()];
    out.par_chunks_mut(row).enumerate().for_each(|(bt, dst)| {
        let (bi, t) = (bt / l, bt % l);
        for (ph, dst) in dst.chunks_exact_mut(d).enumerate() {
            let (part, hi) = (ph / g.h, ph % g.h);
            let src = &y[(((part * g.b + bi) * g.h + hi) * l + t) * d..][..d];
            let Some((cos, sin)) = rope.filter(|_| part < rotated).map(|r| r.of(bi)) else {
                dst.copy_from_slice(src);
                continue;
            };
            let (c, s) = (&cos[t * d..][..d], &sin[t * d..][..d]);
            let (lo, hi_half) = dst.split_at_mut(half);
            for j in 0..half {
                let (g1, g2) = (src[j], src[j + half]);
                lo[j] = g1 * c[j] + g2 * s[j + half];
                hi_half[j] = g2 * c[j + half] - g1 * s[j];
            }
        }
    });
    out
}

impl CustomOp1 for SplitHeads {
    fn name(&self) -> &'static str {
        "clinstruct-split-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "split heads")?;
        let g = self.dims;
        let out = RopeRows::read(self.rope.as_ref(), |t| to_heads(x, g, self.rotated, t))?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.parts, g.b, g.h, g.l, g.d)),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.dims;
        let dx = with_f32_slices(&[grad], |s| {
            RopeRows::read(self.rope.as_ref(), |t| to_rows(s[0], g, self.rotated, t))
        })?
        .ok_or_else(|| candle_core::Error::msg("split heads: gradient off the CPU"))??;
        Ok(Some(Tensor::from_vec(
            dx,
            (g.b, g.l, g.row()),
            grad.device(),
        )?))
    }
}

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "clinstruct-merge-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(storage, layout, "merge heads")?;
        let g = self.dims;
        Ok((
            CpuStorage::F32(to_rows(y, g, 0, None)),
            Shape::from((g.b, g.l, g.row())),
        ))
    }

    fn bwd(&self, _y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = self.dims;
        let dy = with_f32_slices(&[grad], |s| to_heads(s[0], g, 0, None))?
            .ok_or_else(|| candle_core::Error::msg("merge heads: gradient off the CPU"))?;
        Ok(Some(Tensor::from_vec(
            dy,
            (g.b, g.h, g.l, g.d),
            grad.device(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rope::{RopeScaling, RotaryEmbedding, apply_rotary};
    use candle_core::{Device, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Against the composed ops (reshape, transpose, `apply_rotary`): forward bit-identical,
    /// gradient within f32 rounding, for per-row and shared tables, GQA-sized and 3-part
    /// (ModernBERT's Wqkv) inputs.
    #[test]
    fn equals_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let rope = RotaryEmbedding::new(8, 10_000.0, &RopeScaling::Default, 64);
        for (b, l, parts, h, rotated, shared) in [
            (2, 5, 1, 3, 1, false),
            (2, 7, 1, 2, 0, false),
            (1, 6, 3, 2, 2, true),
        ] {
            let d = 8;
            let pos = if shared {
                RotaryEmbedding::positions(b, l, 0, &dev)?
            } else {
                // Left padding: batch rows start at different positions.
                Tensor::from_vec(
                    (0..b * l).map(|i| (i % l + 3 * (i / l)) as u32).collect(),
                    (b, l),
                    &dev,
                )?
            };
            let (cos, sin) = rope.cos_sin(&pos, DType::F32)?;
            let (cos, sin) = if shared {
                (cos.get(0)?.squeeze(0)?, sin.get(0)?.squeeze(0)?)
            } else {
                (cos, sin)
            };
            let rows = RopeRows::new(&cos, &sin)?.unwrap();
            let x = Var::randn(0f32, 1., (b, l, parts * h * d), &dev)?;
            let y = split_heads(x.as_tensor(), parts, h, rotated, Some(&rows))?.unwrap();
            let composed = x
                .as_tensor()
                .reshape((b, l, parts, h, d))?
                .permute((2, 0, 3, 1, 4))?;
            let (cb, sb) = if shared {
                (
                    cos.unsqueeze(0)?.unsqueeze(0)?,
                    sin.unsqueeze(0)?.unsqueeze(0)?,
                )
            } else {
                (cos.clone(), sin.clone())
            };
            let want: Vec<Tensor> = (0..parts)
                .map(|p| {
                    let part = composed.get(p)?;
                    if p < rotated {
                        apply_rotary(&part, &cb, &sb)
                    } else {
                        part.contiguous()
                    }
                })
                .collect::<Result<_>>()?;
            let want = Tensor::stack(&want, 0)?;
            assert_eq!(max_abs(&(&y - &want)?), 0.0, "forward, {parts} parts");
            let w = Tensor::randn(0f32, 1., y.shape(), &dev)?;
            let gf = (&y * &w)?.sum_all()?.backward()?;
            let gc = (&want * &w)?.sum_all()?.backward()?;
            let (a, r) = (gf.get(&x).unwrap(), gc.get(&x).unwrap());
            assert!(max_abs(&(a - r)?) < 1e-6, "backward, {parts} parts");
            assert!(max_abs(a) > 0.0);
        }
        Ok(())
    }

    #[test]
    fn merge_heads_is_the_transpose() -> Result<()> {
        let dev = Device::Cpu;
        let y = Var::randn(0f32, 1., (2, 3, 5, 4), &dev)?;
        let m = merge_heads(y.as_tensor())?.unwrap();
        let want = y.as_tensor().transpose(1, 2)?.reshape((2, 5, 12))?;
        assert_eq!(max_abs(&(&m - &want)?), 0.0);
        let w = Tensor::randn(0f32, 1., m.shape(), &dev)?;
        let g = (&m * &w)?.sum_all()?.backward()?;
        let want_g = w.reshape((2, 5, 3, 4))?.transpose(1, 2)?;
        assert_eq!(max_abs(&(g.get(&y).unwrap() - want_g)?), 0.0);
        Ok(())
    }

    #[test]
    fn rejects_mismatched_tables() -> Result<()> {
        let dev = Device::Cpu;
        let rope = RotaryEmbedding::new(8, 10_000.0, &RopeScaling::Default, 64);
        let (cos, sin) = rope.cos_sin(&RotaryEmbedding::positions(1, 4, 0, &dev)?, DType::F32)?;
        let rows = RopeRows::new(&cos, &sin)?.unwrap();
        let x = Tensor::zeros((1, 5, 16), DType::F32, &dev)?;
        let err = split_heads(&x, 1, 2, 1, Some(&rows)).unwrap_err();
        assert!(err.to_string().contains("4 positions"), "{err}");
        Ok(())
    }
}
