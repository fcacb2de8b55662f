//! Fused CPU kernels with their own backward passes: softmax over the last dimension, LayerNorm
//! without bias, RMSNorm, SwiGLU (`silu(g) · u`) and GeGLU (`gelu(a) · b`).
//!
//! Each replaces a chain of candle ops that each allocate and sweep the whole tensor (a
//! LayerNorm is eight of them) with one pass over rows that stay in cache. The forward runs in
//! f32 on CPU, row-parallel on `RAYON_NUM_THREADS` threads, in loops written to vectorise (lane
//! accumulators, a polynomial `exp` and `erfc` instead of libm calls), compiled for AVX-512 or
//! AVX2 when the CPU has them. The norm, SwiGLU and GeGLU backward passes are kernels of the
//! same kind (one pass per row; candle's op-by-op versions were ~10 passes over the tensor plus
//! a zero-filled gradient each); the softmax backward is built from differentiable candle ops.
//! Other dtypes and devices take the op-by-op path (forward and backward), which gives the same
//! values.

use std::mem::MaybeUninit;

use crate::cpu::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor};

/// Independent accumulators per row loop: a single float accumulator is a serial dependency the
/// compiler may not reorder, so the max and sum reductions would stay scalar.
const LANES: usize = 16;

/// Below this many elements, the work is not split across threads.
const PARALLEL_MIN: usize = 1 << 15;

/// Compiles `$portable` again with AVX-512 and with AVX2+FMA enabled, and picks the best at run
/// time (the binary targets baseline x86-64).
macro_rules! simd_dispatch {
    ($name:ident => $portable:ident ( $($arg:ident : $ty:ty),* )) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn v4($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// Runs `f(input row, output row)` over `rows` rows of `in_dim` → `out_dim` values on up to
/// `RAYON_NUM_THREADS` threads; `f` must write every output element.
fn map_rows(
    x: &[f32],
    in_dim: usize,
    out_dim: usize,
    f: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let rows = x.len().checked_div(in_dim).unwrap_or(0);
    let mut out: Vec<f32> = Vec::with_capacity(rows * out_dim);
    if rows == 0 || out_dim == 0 {
        return out;
    }
    let spare = &mut out.spare_capacity_mut()[..rows * out_dim];
    let threads = if x.len() < PARALLEL_MIN {
        1
    } else {
        candle_core::utils::get_num_threads().clamp(1, rows)
    };
    let per = rows.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        for (xs, os) in x.chunks(per * in_dim).zip(spare.chunks_mut(per * out_dim)) {
            let mut work = move || {
                for (xr, or) in xs.chunks_exact(in_dim).zip(os.chunks_exact_mut(out_dim)) {
                    f(xr, or);
                }
            };
            if threads == 1 {
                work();
            } else {
                scope.spawn(work);
            }
        }
    });
    // SAFETY: the chunks cover all `rows · out_dim` elements and `f` writes each of them.
    unsafe { out.set_len(rows * out_dim) };
    out
}

fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Reinterprets fully written output as initialised.
///
/// # Safety
/// Every element of `out` must have been written.
unsafe fn assume_init(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller guarantees initialisation.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

// ---------------------------------------------------------------------------------------------
// exp, erfc

/// `e^x` for `x <= 0`, branch-free and free of libm calls so loops vectorise: Cody–Waite
/// reduction `x = n·ln2 + r` (n rounded with the 1.5·2²³ trick: `round` is a libm call on
/// baseline x86-64), Cephes' degree-6 polynomial for `e^r` (relative error ~2e-7, like `expf`
/// within f32 rounding), `2^n` through the exponent bits. Below -87.3 the result is exactly 0
/// (masked attention scores).
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let xc = if x > -87.3 { x } else { -87.3 };
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n without a float→int conversion: the low bits of n + 2²³ + 127 are n + 127, which the
    // shift moves into the exponent field (n is in [-126, 0] here).
    let scale = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    if x < -87.3 { 0.0 } else { e * scale }
}

/// `erfc(z)` for `z >= 0`: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, and
/// relative accuracy kept in the tail, where `1 - erf` would cancel).
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let p = 1.061_405_4_f32;
    let p = p * t - 1.453_152;
    let p = p * t + 1.421_413_8;
    let p = p * t - 0.284_496_74;
    let p = p * t + 0.254_829_6;
    p * t * exp_neg(-z * z)
}

/// The exact (erf-based) GELU, `x · Φ(x)`.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    let c = erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = if x >= 0.0 { 1.0 - 0.5 * c } else { 0.5 * c };
    x * cdf
}

// ---------------------------------------------------------------------------------------------
// softmax

/// Softmax over the last dimension, differentiable. candle's fused `softmax_last_dim` has no
/// backward (it silently cuts gradients) and the generic `softmax` makes five allocating passes.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fast_path(x) {
        x.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "clinstruct-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "softmax")?;
        let dim = *layout.dims().last().unwrap_or(&1);
        let out = map_rows(x, dim, dim, softmax_row);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `dx = y · (dy - Σ dy·y)`.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let gy = (grad * res)?;
        let dot = gy.sum_keepdim(D::Minus1)?;
        Ok(Some((gy - res.broadcast_mul(&dot)?)?))
    }
}

simd_dispatch!(softmax_row => softmax_row_portable(x: &[f32], out: &mut [MaybeUninit<f32>]));

/// The max, then the exponentials and their sum, then the normalisation in place; the row
/// stays in cache.
#[inline(always)]
fn softmax_row_portable(x: &[f32], out: &mut [MaybeUninit<f32>]) {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks.clone() {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut sums = [0f32; LANES];
    let (body, rest) = out.split_at_mut(x.len() - tail.len());
    for (o, c) in body.chunks_exact_mut(LANES).zip(chunks) {
        for i in 0..LANES {
            let e = exp_neg(c[i] - max);
            o[i].write(e);
            sums[i] += e;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for (o, &v) in rest.iter_mut().zip(tail) {
        sum += *o.write(exp_neg(v - max));
    }
    // SAFETY: the two loops above wrote every element (body and rest cover `out`).
    let out = unsafe { assume_init(out) };
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// `(x - mean) / sqrt(var + eps) · weight` over the last dimension (biased variance, as torch),
/// differentiable in `x` and `weight`; `None` when the fast path does not apply (then the caller
/// computes it op by op).
pub fn layer_norm_no_bias(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !(fast_path(x) && weight.dtype() == DType::F32 && weight.device().is_cpu()) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )?))
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp2 for LayerNormOp {
    fn name(&self) -> &'static str {
        "clinstruct-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer norm")?;
        let w = contiguous_f32(s2, l2, "layer norm")?;
        let dim = *l1.dims().last().unwrap_or(&1);
        if w.len() != dim {
            candle_core::bail!("layer norm: weight of {} for rows of {dim}", w.len());
        }
        let eps = self.eps;
        let out = map_rows(x, dim, dim, |xr, or| layer_norm_row(xr, w, eps, or));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `x̂ = (x - mean)·rstd` and `ĝ = dy·w`: `dx = rstd·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂))`,
    /// `dw = Σ_rows dy·x̂`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let eps = self.eps;
        norm_backward(
            "layer norm",
            x,
            w,
            grad,
            <[f32]>::to_vec,
            |xr, w, gr, dxr, dw| layer_norm_bwd_row(xr, w, gr, eps, dxr, dw),
        )
    }
}

/// Rows per task of the norm backward passes: each task sums its rows' share of `dw`, and the
/// task sums are added in order, so `dw` does not depend on the thread count.
const NORM_ROWS_PER_TASK: usize = 64;

/// The backward of a row norm op (`dx`, `dw`): `weights` turns the stored weight into the
/// per-column multiplier, `row` is the kernel (see [`norm_bwd_rows`]). The norm ops are only
/// built for CPU f32 tensors ([`fast_path`]), so their gradients are CPU f32 too.
fn norm_backward(
    op: &str,
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
    weights: impl FnOnce(&[f32]) -> Vec<f32>,
    row: impl Fn(&[f32], &[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let w_d = w.detach();
    let out = crate::cpu::with_f32_slices(&[x, &w_d, grad], |s| {
        norm_bwd_rows(s[0], &weights(s[1]), s[2], row)
    })?;
    let Some((dx, dw)) = out else {
        candle_core::bail!("{op}: the backward needs f32 CPU tensors");
    };
    Ok((
        Some(Tensor::from_vec(dx, x.shape(), x.device())?),
        Some(Tensor::from_vec(dw, w.shape(), w.device())?),
    ))
}

/// A norm's backward over rows of `w.len()` values: `row(x, w, dy, dx, dw)` writes a row's `dx`
/// and adds its share to `dw`. Returns `(dx, dw)`.
fn norm_bwd_rows(
    xs: &[f32],
    ws: &[f32],
    gs: &[f32],
    row: impl Fn(&[f32], &[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let dim = ws.len();
    let mut dx = vec![0f32; xs.len()];
    let block = NORM_ROWS_PER_TASK * dim;
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(block)
        .zip(xs.par_chunks(block))
        .zip(gs.par_chunks(block))
        .map(|((dxb, xb), gb)| {
            let mut dw = vec![0f32; dim];
            for ((dxr, xr), gr) in dxb
                .chunks_exact_mut(dim)
                .zip(xb.chunks_exact(dim))
                .zip(gb.chunks_exact(dim))
            {
                row(xr, ws, gr, dxr, &mut dw);
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; dim];
    for p in &partial {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    (dx, dw)
}

simd_dispatch!(layer_norm_bwd_row => layer_norm_bwd_row_portable(x: &[f32], w: &[f32], g: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]));

/// One row: statistics again (as the forward), then `dx = rstd·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂))`
/// with `ĝ = dy·w`, and `dw += dy·x̂`.
#[inline(always)]
fn layer_norm_bwd_row_portable(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let n = x.len() as f32;
    let (mean, rstd) = mean_rstd(x, eps);
    let (mut m1, mut m2) = ([0f32; LANES], [0f32; LANES]);
    let body = x.len() - x.len() % LANES;
    for j in (0..body).step_by(LANES) {
        for i in 0..LANES {
            let xh = (x[j + i] - mean) * rstd;
            let gh = g[j + i] * w[j + i];
            m1[i] += gh;
            m2[i] += gh * xh;
        }
    }
    let (mut s1, mut s2) = (m1.iter().sum::<f32>(), m2.iter().sum::<f32>());
    for j in body..x.len() {
        let xh = (x[j] - mean) * rstd;
        let gh = g[j] * w[j];
        s1 += gh;
        s2 += gh * xh;
    }
    let (m1, m2) = (s1 / n, s2 / n);
    for j in 0..x.len() {
        let xh = (x[j] - mean) * rstd;
        dx[j] = rstd * (g[j] * w[j] - m1 - xh * m2);
        dw[j] += g[j] * xh;
    }
}

/// A row's mean and `1/sqrt(var + eps)` (biased variance), in lane accumulators; the forward
/// and backward kernels inline it, so both get the same numbers.
#[inline(always)]
fn mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut sums = [0f32; LANES];
    for c in chunks.clone() {
        for i in 0..LANES {
            sums[i] += c[i];
        }
    }
    let mean = (sums.iter().sum::<f32>() + tail.iter().sum::<f32>()) / n;
    let mut sq = [0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            sq[i] += d * d;
        }
    }
    let var =
        (sq.iter().sum::<f32>() + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_dispatch!(layer_norm_row => layer_norm_row_portable(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]));

#[inline(always)]
fn layer_norm_row_portable(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let (mean, rstd) = mean_rstd(x, eps);
    for ((o, &v), &wi) in out.iter_mut().zip(x).zip(w) {
        o.write((v - mean) * rstd * wi);
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension (`· (1 + w)` with `unit_offset`,
/// Gemma's), differentiable in `x` and `w`; `None` when the fast path does not apply.
pub fn rms_norm(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    unit_offset: bool,
) -> Result<Option<Tensor>> {
    if !(fast_path(x) && fast_path(weight)) || weight.elem_count() != x.dim(D::Minus1)? {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        RmsNormOp {
            eps: eps as f32,
            unit_offset,
        },
    )?))
}

struct RmsNormOp {
    eps: f32,
    unit_offset: bool,
}

impl RmsNormOp {
    /// The multiplier of each column: `w` or `1 + w`.
    fn scale(&self, w: &[f32]) -> Vec<f32> {
        let off = if self.unit_offset { 1.0 } else { 0.0 };
        w.iter().map(|v| v + off).collect()
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "clinstruct-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "rms norm")?;
        let w = self.scale(contiguous_f32(s2, l2, "rms norm")?);
        let dim = w.len();
        let eps = self.eps;
        let out = map_rows(x, dim, dim, |xr, or| rms_norm_row(xr, &w, eps, or));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// With `x̂ = x·rstd` and `ĝ = dy·w`: `dx = rstd·(ĝ - x̂·mean(ĝ·x̂))`, `dw = Σ_rows dy·x̂`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let eps = self.eps;
        norm_backward(
            "rms norm",
            x,
            w,
            grad,
            |w| self.scale(w),
            |xr, w, gr, dxr, dw| rms_norm_bwd_row(xr, w, gr, eps, dxr, dw),
        )
    }
}

/// `1/sqrt(mean(x²) + eps)`, in lane accumulators.
#[inline(always)]
fn rms_rstd(x: &[f32], eps: f32) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut sq = [0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            sq[i] += c[i] * c[i];
        }
    }
    let ms = (sq.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>()) / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

simd_dispatch!(rms_norm_row => rms_norm_row_portable(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]));

#[inline(always)]
fn rms_norm_row_portable(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let rstd = rms_rstd(x, eps);
    for ((o, &v), &wi) in out.iter_mut().zip(x).zip(w) {
        o.write(v * rstd * wi);
    }
}

simd_dispatch!(rms_norm_bwd_row => rms_norm_bwd_row_portable(x: &[f32], w: &[f32], g: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]));

#[inline(always)]
fn rms_norm_bwd_row_portable(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let rstd = rms_rstd(x, eps);
    let mut m = [0f32; LANES];
    let body = x.len() - x.len() % LANES;
    for j in (0..body).step_by(LANES) {
        for i in 0..LANES {
            m[i] += g[j + i] * w[j + i] * x[j + i];
        }
    }
    let mut dot = m.iter().sum::<f32>();
    for j in body..x.len() {
        dot += g[j] * w[j] * x[j];
    }
    // mean(ĝ·x̂) = rstd · mean(ĝ·x)
    let c = rstd * rstd * dot / x.len() as f32;
    for j in 0..x.len() {
        dx[j] = rstd * (g[j] * w[j] - x[j] * c);
        dw[j] += g[j] * x[j] * rstd;
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(gate) · up` (Llama's MLP), differentiable in both; `None` when the fast path does not
/// apply.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if !(fast_path(gate) && fast_path(up)) || gate.shape() != up.shape() {
        return Ok(None);
    }
    Ok(Some(
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?,
    ))
}

struct SwiGlu;

/// `σ(g)` for any sign through `exp_neg(-|g|)`.
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    let e = exp_neg(-g.abs());
    let r = 1.0 / (1.0 + e);
    if g >= 0.0 { r } else { e * r }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "clinstruct-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let g = contiguous_f32(s1, l1, "swiglu")?;
        let u = contiguous_f32(s2, l2, "swiglu")?;
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(PARALLEL_MIN)
            .zip(g.par_chunks(PARALLEL_MIN))
            .zip(u.par_chunks(PARALLEL_MIN))
            .for_each(|((o, g), u)| swiglu_chunk(g, u, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// `dg = dy·u·σ(g)·(1 + g·(1 - σ(g)))`, `du = dy·g·σ(g)`.
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let out = crate::cpu::with_f32_slices(&[gate, up, grad], |s| {
            let (g, u, dy) = (s[0], s[1], s[2]);
            let mut dg = vec![0f32; g.len()];
            let mut du = vec![0f32; g.len()];
            dg.par_chunks_mut(PARALLEL_MIN)
                .zip(du.par_chunks_mut(PARALLEL_MIN))
                .zip(g.par_chunks(PARALLEL_MIN))
                .zip(u.par_chunks(PARALLEL_MIN).zip(dy.par_chunks(PARALLEL_MIN)))
                .for_each(|(((dg, du), g), (u, dy))| swiglu_bwd_chunk(g, u, dy, dg, du));
            (dg, du)
        })?;
        let Some((dg, du)) = out else {
            candle_core::bail!("swiglu: the backward needs f32 CPU tensors");
        };
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

simd_dispatch!(swiglu_chunk => swiglu_chunk_portable(g: &[f32], u: &[f32], out: &mut [f32]));

#[inline(always)]
fn swiglu_chunk_portable(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &gi), &ui) in out.iter_mut().zip(g).zip(u) {
        *o = gi * sigmoid(gi) * ui;
    }
}

simd_dispatch!(swiglu_bwd_chunk => swiglu_bwd_chunk_portable(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]));

#[inline(always)]
fn swiglu_bwd_chunk_portable(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..g.len() {
        let s = sigmoid(g[i]);
        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        du[i] = dy[i] * g[i] * s;
    }
}

// ---------------------------------------------------------------------------------------------
// GeGLU

/// `gelu(a) · b` for `h = [a, b]` split in halves along the last dimension (ModernBERT's MLP with
/// the exact, erf-based GELU), differentiable; `None` when the fast path does not apply.
pub fn geglu_erf(h: &Tensor) -> Result<Option<Tensor>> {
    if !fast_path(h) || h.dim(D::Minus1)? % 2 != 0 {
        return Ok(None);
    }
    Ok(Some(h.contiguous()?.apply_op1(GeGlu)?))
}

struct GeGlu;

impl CustomOp1 for GeGlu {
    fn name(&self) -> &'static str {
        "clinstruct-geglu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = contiguous_f32(storage, layout, "geglu")?;
        let dims = layout.dims();
        let two_i = *dims.last().unwrap_or(&0);
        let out = map_rows(h, two_i, two_i / 2, geglu_row);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = two_i / 2;
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    /// `da = dy · b · (Φ(a) + a·φ(a))`, `db = dy · a·Φ(a)`.
    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The op is only built for CPU f32 tensors (`geglu_erf`), so its gradient is too.
        let two_i = h.dim(D::Minus1)?;
        let dh = crate::cpu::with_f32_slices(&[h, grad], |s| {
            use rayon::prelude::*;
            let (hs, gs) = (s[0], s[1]);
            let mut dh = vec![0f32; hs.len()];
            dh.par_chunks_mut(two_i)
                .zip(hs.par_chunks(two_i))
                .zip(gs.par_chunks(two_i / 2))
                .with_min_len(16)
                .for_each(|((d, hr), gr)| geglu_bwd_row(hr, gr, d));
            dh
        })?;
        let Some(dh) = dh else {
            candle_core::bail!("geglu: the backward needs f32 CPU tensors");
        };
        Ok(Some(Tensor::from_vec(dh, h.shape(), h.device())?))
    }
}

simd_dispatch!(geglu_bwd_row => geglu_bwd_row_portable(h: &[f32], g: &[f32], dh: &mut [f32]));

#[inline(always)]
fn geglu_bwd_row_portable(h: &[f32], g: &[f32], dh: &mut [f32]) {
    let (a, b) = h.split_at(g.len());
    let (da, db) = dh.split_at_mut(g.len());
    // φ(a) = e^(-a²/2) / √(2π)
    let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    for ((((&x, &y), &gi), dai), dbi) in a.iter().zip(b).zip(g).zip(da).zip(db) {
        let c = erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
        let cdf = if x >= 0.0 { 1.0 - 0.5 * c } else { 0.5 * c };
        let pdf = exp_neg(-0.5 * x * x) * inv_sqrt_2pi;
        *dai = gi * y * (cdf + x * pdf);
        *dbi = gi * x * cdf;
    }
}

simd_dispatch!(geglu_row => geglu_row_portable(h: &[f32], out: &mut [MaybeUninit<f32>]));

#[inline(always)]
fn geglu_row_portable(h: &[f32], out: &mut [MaybeUninit<f32>]) {
    let (a, b) = h.split_at(out.len());
    for ((o, &x), &g) in out.iter_mut().zip(a).zip(b) {
        o.write(gelu_erf(x) * g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap()
    }

    /// Values and gradients of `fused` against `reference` for a random input of `shape`
    /// (large enough to take the multi-threaded path).
    fn check(
        shape: &[usize],
        scale: f64,
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor) -> Result<Tensor>,
        tol: f32,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, scale as f32, shape, &dev)?;
        let a = fused(x.as_tensor())?;
        let b = reference(x.as_tensor())?;
        assert_eq!(a.dims(), b.dims());
        // Relative to the largest magnitude: products of large values round in the last bit.
        let rel = |a: &Tensor, b: &Tensor| {
            let m = b
                .abs()
                .and_then(|t| t.flatten_all()?.max(0)?.to_scalar::<f32>());
            max_abs_diff(a, b) / m.unwrap().max(1.0)
        };
        assert!(rel(&a, &b) < tol, "values: {}", rel(&a, &b));
        let w = Tensor::randn(0f32, 1., a.shape(), &dev)?;
        let ga = (&a * &w)?.sum_all()?.backward()?;
        let gb = (&b * &w)?.sum_all()?.backward()?;
        let (ga, gb) = (
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        assert!(rel(ga, gb) < tol * 10.0, "grads: {}", rel(ga, gb));
        Ok(())
    }

    #[test]
    fn softmax_matches_the_generic_op() -> Result<()> {
        let dev = Device::Cpu;
        // Masked entries and a fully masked row, on a row length with a tail.
        let mut m = vec![0f32; 3 * 5 * 37];
        for (i, v) in m.iter_mut().enumerate() {
            if i % 7 == 0 || (74..111).contains(&i) {
                *v = crate::attention::MASKED;
            }
        }
        let m = Tensor::from_vec(m, (3, 5, 37), &dev)?;
        check(
            &[3, 5, 37],
            4.0,
            |x| softmax_last_dim(&x.broadcast_add(&m)?),
            |x| candle_nn::ops::softmax(&x.broadcast_add(&m)?, D::Minus1),
            1e-6,
        )?;
        check(
            &[64, 700],
            3.0,
            softmax_last_dim,
            |x| candle_nn::ops::softmax(x, D::Minus1),
            1e-6,
        )
    }

    #[test]
    fn exp_and_gelu_accuracy() {
        for v in [-87.0f32, -20.5, -3.3, -1e-3, 0.0] {
            let rel = (exp_neg(v) - v.exp()).abs() / v.exp();
            assert!(rel < 5e-7, "exp({v}): {rel}");
        }
        assert_eq!(exp_neg(-100.0), 0.0);
        assert_eq!(exp_neg(crate::attention::MASKED), 0.0);
        for i in -800..=800 {
            let x = i as f32 / 100.0;
            let exact = 0.5 * x as f64 * (1.0 + erf_f64(x as f64 / std::f64::consts::SQRT_2));
            let err = (gelu_erf(x) as f64 - exact).abs();
            assert!(err < 4e-7 * (1.0 + x.abs() as f64), "gelu({x}): {err}");
        }
    }

    /// erf in f64 (candle's op), the reference for the f32 polynomial.
    fn erf_f64(x: f64) -> f64 {
        let t = Tensor::new(&[x], &Device::Cpu).unwrap();
        t.erf().unwrap().to_vec1::<f64>().unwrap()[0]
    }

    /// Largest difference between the weight gradients of `fused` and `reference` for a random
    /// input of `shape` and a random upstream gradient.
    fn weight_grad_diff(
        w: &Var,
        shape: (usize, usize),
        fused: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<f32> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2., shape, &dev)?;
        let r = Tensor::randn(0f32, 1., shape, &dev)?;
        let grad = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| -> Result<Tensor> {
            let g = (f(&x, w.as_tensor())? * &r)?.sum_all()?.backward()?;
            Ok(g.get(w.as_tensor()).expect("weight gradient").clone())
        };
        Ok(max_abs_diff(&grad(&fused)?, &grad(&reference)?))
    }

    #[test]
    fn layer_norm_matches_ops() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::randn(1f32, 0.3, 96, &dev)?;
        let reference = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            let mean = x.mean_keepdim(D::Minus1)?;
            let c = x.broadcast_sub(&mean)?;
            let var = c.sqr()?.mean_keepdim(D::Minus1)?;
            c.broadcast_div(&(var + 1e-5)?.sqrt()?)?.broadcast_mul(w)
        };
        let wt = w.as_tensor().clone();
        check(
            &[4, 100, 96],
            2.0,
            |x| Ok(layer_norm_no_bias(x, &wt, 1e-5)?.unwrap()),
            |x| reference(x, &wt),
            2e-5,
        )?;
        // The weight's gradient too.
        let d = weight_grad_diff(
            &w,
            (7, 96),
            |x, w| Ok(layer_norm_no_bias(x, w, 1e-5)?.unwrap()),
            reference,
        )?;
        assert!(d < 1e-4, "dw: {d}");
        Ok(())
    }

    #[test]
    fn rms_norm_matches_ops() -> Result<()> {
        let dev = Device::Cpu;
        for unit_offset in [false, true] {
            let w = Var::randn(0.5f32, 0.3, 96, &dev)?;
            let reference = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                let w = if unit_offset { (w + 1.0)? } else { w.clone() };
                x.broadcast_div(&(ms + 1e-6)?.sqrt()?)?.broadcast_mul(&w)
            };
            let wt = w.as_tensor().clone();
            check(
                &[4, 100, 96],
                2.0,
                |x| Ok(rms_norm(x, &wt, 1e-6, unit_offset)?.unwrap()),
                |x| reference(x, &wt),
                2e-5,
            )?;
            // 70 rows: two backward tasks.
            let d = weight_grad_diff(
                &w,
                (70, 96),
                |x, w| Ok(rms_norm(x, w, 1e-6, unit_offset)?.unwrap()),
                reference,
            )?;
            assert!(d < 1e-4, "dw: {d}");
        }
        Ok(())
    }

    #[test]
    fn swiglu_matches_ops() -> Result<()> {
        let dev = Device::Cpu;
        let up = Var::randn(0f32, 1.5, (300, 170), &dev)?;
        let ut = up.as_tensor().clone();
        check(
            &[300, 170],
            4.0,
            |g| Ok(swiglu(g, &ut)?.unwrap()),
            |g| g.silu()? * &ut,
            2e-6,
        )?;
        // The gradient of `up`.
        let g = Tensor::randn(0f32, 4., (300, 170), &dev)?;
        let r = Tensor::randn(0f32, 1., (300, 170), &dev)?;
        let ga = (swiglu(&g, up.as_tensor())?.unwrap() * &r)?
            .sum_all()?
            .backward()?;
        let gb = ((g.silu()? * up.as_tensor())? * &r)?
            .sum_all()?
            .backward()?;
        let d = max_abs_diff(
            ga.get(up.as_tensor()).unwrap(),
            gb.get(up.as_tensor()).unwrap(),
        );
        assert!(d < 1e-5, "dup: {d}");
        Ok(())
    }

    #[test]
    fn geglu_matches_ops() -> Result<()> {
        let reference = |h: &Tensor| -> Result<Tensor> {
            let i = h.dim(D::Minus1)? / 2;
            h.narrow(D::Minus1, 0, i)?.gelu_erf()? * h.narrow(D::Minus1, i, i)?
        };
        check(
            &[3, 5, 2 * 41],
            2.0,
            |h| Ok(geglu_erf(h)?.unwrap()),
            reference,
            2e-6,
        )?;
        check(
            &[300, 2 * 160],
            3.0,
            |h| Ok(geglu_erf(h)?.unwrap()),
            reference,
            2e-6,
        )
    }
}
