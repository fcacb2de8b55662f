//! Linear layers over frozen weights whose backward reaches the input only.
//!
//! candle's autograd differentiates a matmul with respect to both operands, so a frozen weight
//! still costs a full `xᵀ·g` gemm and a weight-sized gradient per step (measured: 2× backward
//! time, 1.4 GB more memory on a Llama-1B-shaped stack). Here the product is computed without a
//! graph and re-attached to the input through a custom op whose backward is `dx = g · W` only.
//! The weight is captured by the backward closure, never an operand of the graph, so no
//! gradient is ever allocated for it. It works on every device: the forward uses candle's own
//! matmul (or ggml kernels), the re-attachment copies one output-sized buffer.
//!
//! Candle records a custom op only when one of its inputs is tracked: with an untracked input
//! (frozen embeddings feeding the first layer) the output is untracked as well, which is right
//! since nothing upstream can learn.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Device, Layout, MetalStorage, Result, Shape, Tensor,
};

use crate::cpu;
use crate::linear::LinearBase;
use crate::quant::nf4::Nf4Tensor;

/// The gradient of the input from the gradient of the output.
pub type InputGradFn = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;

/// Forwards a precomputed value; backward sends `bwd(grad)` to the first operand only.
struct InputGrad {
    name: &'static str,
    bwd: Arc<InputGradFn>,
}

fn check_contiguous(l: &Layout) -> Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("input-grad: the value must be contiguous from offset 0");
    }
    Ok(())
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        value: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_contiguous(l)?;
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        value: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        check_contiguous(l)?;
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        value: &MetalStorage,
        l: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        check_contiguous(l)?;
        Ok((value.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        _input: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.bwd)(grad)?), None))
    }
}

/// `value` (computed from `input` without a graph) as a differentiable function of `input`
/// whose input gradient is `bwd(grad_of_value)`.
pub fn attach_input_grad(
    name: &'static str,
    input: &Tensor,
    value: Tensor,
    bwd: Arc<InputGradFn>,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(value);
    }
    // The op hands the value's buffer over by one clone, which must hold exactly the value.
    let value = if value.is_contiguous() && value.layout().start_offset() == 0 {
        value
    } else {
        value.affine(1.0, 0.0)?
    };
    input.apply_op2(&value, InputGrad { name, bwd })
}

/// `x · Wᵀ` for `x (rows, in)` and a frozen dense `W (out, in)`.
pub fn dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear(x, &LinearBase::Frozen(w.clone()))
}

/// `x · Wᵀ` for an NF4 weight. On the CPU in f32, the weight is dequantised a tile of rows at
/// a time into a small reused buffer that the gemm reads while it is still in cache: no
/// weight-sized allocation (whose page faults alone cost as much as the dequantisation) and no
/// dense copy. Elsewhere: dequantise, gemm, drop. The backward dequantises again (QLoRA keeps
/// only the 4-bit weight between calls).
pub fn nf4(x: &Tensor, w: &Arc<Nf4Tensor>) -> Result<Tensor> {
    linear(x, &LinearBase::Nf4(w.clone()))
}

/// `x · Wᵀ` over the last dimension of `x` (any number of leading dims) for a frozen base,
/// differentiable with respect to `x` only. No reshape enters the graph: candle's backward
/// gives each one a zero-filled gradient buffer and an add.
pub fn linear(x: &Tensor, base: &LinearBase) -> Result<Tensor> {
    let (x2, out_dims) = as_rows(x, base_out_dim(base)?)?;
    let y = base_value(&x2, base)?.reshape(out_dims)?;
    let (base, in_shape) = (base.clone(), x.shape().clone());
    attach_input_grad(
        "frozen-linear",
        x,
        y,
        Arc::new(move |g: &Tensor| {
            let out = g.dim(candle_core::D::Minus1)?;
            let g2 = g.contiguous()?.reshape((g.elem_count() / out, out))?;
            base_input_grad(&g2, &base)?.reshape(&in_shape)
        }),
    )
}

/// `(rows, in)` view of `x` without a graph, and the output dims `(.., out)`.
pub(crate) fn as_rows(x: &Tensor, out: usize) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims();
    let in_dim = *dims
        .last()
        .ok_or_else(|| candle_core::Error::msg("linear: a scalar input"))?;
    let x2 = x
        .detach()
        .contiguous()?
        .reshape((x.elem_count() / in_dim.max(1), in_dim))?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("checked above") = out;
    Ok((x2, out_dims))
}

fn base_out_dim(base: &LinearBase) -> Result<usize> {
    Ok(match base {
        LinearBase::Dense(w) | LinearBase::Frozen(w) => w.dim(0)?,
        LinearBase::Nf4(q) => q.shape().dims2()?.0,
        LinearBase::Quantized(q) => q.shape().dims2()?.0,
    })
}

/// `x (rows, in) · Wᵀ` for a frozen base, without a graph (fast CPU f32 paths where they
/// exist).
pub fn base_value(x: &Tensor, base: &LinearBase) -> Result<Tensor> {
    let x = x.detach();
    match base {
        LinearBase::Dense(w) | LinearBase::Frozen(w) => match dense_cpu(&x, w)? {
            Some(y) => Ok(y),
            None => x.matmul(&w.to_dtype(x.dtype())?.t()?),
        },
        LinearBase::Nf4(q) => match nf4_cpu(&x, q, Nf4Product::XWt)? {
            Some(y) => Ok(y),
            None => x.matmul(&q.dequantize()?.to_dtype(x.dtype())?.t()?),
        },
        LinearBase::Quantized(q) => ggml_value(&x, q),
    }
}

/// `g (rows, out) · W`, the input gradient of a frozen base.
pub fn base_input_grad(g: &Tensor, base: &LinearBase) -> Result<Tensor> {
    match base {
        LinearBase::Dense(w) | LinearBase::Frozen(w) => g.matmul(&w.to_dtype(g.dtype())?),
        LinearBase::Nf4(q) => match nf4_cpu(g, q, Nf4Product::GW)? {
            Some(dx) => Ok(dx),
            None => g.matmul(&q.dequantize()?.to_dtype(g.dtype())?),
        },
        LinearBase::Quantized(q) => match ggml_cpu(g, q, Nf4Product::GW)? {
            Some(dx) => Ok(dx),
            None => g.matmul(&q.dequantize(g.device())?.to_dtype(g.dtype())?),
        },
    }
}

/// The CPU f32 forward of [`dense`], `None` for other devices and dtypes.
fn dense_cpu(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let rows = x.dims2()?.0;
    let out_dim = w.dims2()?.0;
    dense_cpu_values(x, w)?
        .map(|v| Tensor::from_vec(v, (rows, out_dim), &Device::Cpu))
        .transpose()
}

/// Rows from which [`dense_cpu_values`] runs gemm on the row-major operands as they are. The
/// column-major path ([`xwt_colmajor`]) wins at 256 rows; from 512 on its two transposes eat
/// what it gains (`examples/gemm_shapes.rs --rows N --k 1024`, 2 threads, last line per shape:
/// the two within noise of each other at 512–1,024 rows). In the ModernBERT-large step at
/// 1,024 tokens the forward took 0.250–0.254 s row-major against 0.265–0.292 s column-major
/// (3 alternating runs each, `crates/train/examples/encoder_step.rs`).
const ROW_MAJOR_FROM: usize = 512;

/// The values of `x (rows, in) · Wᵀ` on the CPU in f32 (row-major), `None` for other devices
/// and dtypes.
pub(crate) fn dense_cpu_values(x: &Tensor, w: &Tensor) -> Result<Option<Vec<f32>>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return Ok(None);
    }
    let (rows, in_dim) = x.dims2()?;
    let (out_dim, k) = w.dims2()?;
    if k != in_dim {
        candle_core::bail!("frozen linear: input has {in_dim} columns, the weight {k}");
    }
    let x = x.detach().contiguous()?;
    Ok(cpu::with_slice::<f32, _>(&x, |xs| {
        cpu::with_slice::<f32, _>(&w.detach(), |ws| {
            if rows >= ROW_MAJOR_FROM {
                return cpu::gemm_f32_new(
                    (rows, out_dim, in_dim),
                    (xs, (in_dim, 1)),
                    (ws, (1, in_dim)),
                    1.0,
                    gemm::Parallelism::Rayon(rayon::current_num_threads()),
                );
            }
            let mut yt: Vec<f32> = Vec::with_capacity(rows * out_dim);
            let dst = yt.spare_capacity_mut().as_mut_ptr() as *mut f32;
            // SAFETY: `xs` is rows × in, `ws` out × in and `yt` out × rows; the gemm writes
            // every element of `yt` without reading it.
            unsafe {
                xwt_colmajor(xs, rows, in_dim, ws.as_ptr(), out_dim, dst);
                yt.set_len(rows * out_dim);
            }
            transpose(&yt, out_dim, rows)
        })
    })?
    .transpose()?
    .flatten())
}

/// `x (rows, k) · Wᵀ` for `n` weight rows at `w (n, k)`, written column-major: element `(i, j)`
/// of the product at `dst[j · rows + i]`, i.e. `dst` holds `(x · Wᵀ)ᵀ (n, rows)` row-major.
///
/// A row-major destination makes gemm pack `W` (its left operand after transposing the
/// problem) from a strided layout on every call; column-major, `Wᵀ` is the right operand and
/// is read in place. Measured for 256 rows (2 threads): 8192×2048 92 against 69 GFLOP/s,
/// 2048×8192 153–169 against 71–102; the transpose back costs a few percent.
///
/// # Safety
/// `x` holds `rows · k` values, `w` points to `n · k` and `dst` to `n · rows` writable values.
pub(crate) unsafe fn xwt_colmajor(
    x: &[f32],
    rows: usize,
    k: usize,
    w: *const f32,
    n: usize,
    dst: *mut f32,
) {
    let xt = x_colmajor(x, rows, k);
    // SAFETY: the caller's sizes; `xt` holds the same rows · k values.
    unsafe { xt_wt_colmajor(&xt, rows, k, w, n, dst) }
}

/// `x (rows, k)` stored column-major (`xᵀ` row-major), on all threads, for
/// [`xt_wt_colmajor`]. A row-major left operand makes gemm pack it on the calling thread
/// before the parallel part starts; column-major it is packed inside the threads (256 rows,
/// 2 threads: 2048×2048 weight 248 against 225 GFLOP/s, 4096 314 against 237, 512 217
/// against 111; `examples/gemm_shapes.rs`).
pub(crate) fn x_colmajor(x: &[f32], rows: usize, k: usize) -> std::borrow::Cow<'_, [f32]> {
    if rows <= 1 {
        std::borrow::Cow::Borrowed(x)
    } else {
        std::borrow::Cow::Owned(transpose(x, rows, k))
    }
}

/// [`xwt_colmajor`] for `x` given column-major ([`x_colmajor`]).
///
/// # Safety
/// As [`xwt_colmajor`].
pub(crate) unsafe fn xt_wt_colmajor(
    xt: &[f32],
    rows: usize,
    k: usize,
    w: *const f32,
    n: usize,
    dst: *mut f32,
) {
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
    // SAFETY: the caller's sizes; element (i, p) of x at p · rows + i.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            dst,
            rows as isize,
            1,
            false,
            xt.as_ptr(),
            rows as isize,
            1,
            w,
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            threads,
        );
    }
}

/// `src (r, c)` row-major → `(c, r)` row-major, through 16 × 16 tiles: each tile is read
/// as 16 row pieces and written as 16 whole 64-byte lines. (Scattering single elements with
/// a stride of `r` floats put every write of a tile in the same cache set when `r` is a power
/// of two: the `(8192, 256)` → `(256, 8192)` transpose of an MLP output took 5-10 ms.)
pub fn transpose(src: &[f32], r: usize, c: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const T: usize = 16;
    assert_eq!(
        src.len(),
        r * c,
        "transpose: {} values for {r} × {c}",
        src.len()
    );
    let mut out: Vec<f32> = Vec::with_capacity(r * c);
    if r * c == 0 {
        return out;
    }
    // One task per band of T output rows (T source columns).
    out.spare_capacity_mut()
        .par_chunks_mut(T * r)
        .enumerate()
        .for_each(|(bi, band)| {
            let j0 = bi * T;
            let jn = band.len() / r;
            let mut tile = [[0f32; T]; T];
            for i0 in (0..r).step_by(T) {
                let im = T.min(r - i0);
                for (ii, t) in tile.iter_mut().enumerate().take(im) {
                    t[..jn].copy_from_slice(&src[(i0 + ii) * c + j0..][..jn]);
                }
                for jj in 0..jn {
                    let dst = &mut band[jj * r + i0..][..im];
                    for (ii, d) in dst.iter_mut().enumerate() {
                        d.write(tile[ii][jj]);
                    }
                }
            }
        });
    // SAFETY: the bands cover all r · c values and every value of every band is written.
    unsafe { out.set_len(r * c) };
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nf4Product {
    /// `x (rows, in) · Wᵀ` → `(rows, out)`.
    XWt,
    /// `g (rows, out) · W` → `(rows, in)`.
    GW,
}

/// Weight rows per tile. Each tile is one gemm whose weight-side dimension is the tile's rows,
/// and gemm needs about a thousand of them to run at speed (256 rows × 2048 at 2 threads, one
/// tile of N rows: N = 64 47 GFLOP/s, 256 105, 1024 206, 8192 242; `examples/gemm_shapes.rs`);
/// 2 MB tiles (256 rows of 2048, 64 of 8192) made the NF4 step's forward 1.4–1.7 s against
/// 1.1 s dense. 1024 rows is 8 MB of f32 for a 2048-wide weight, 32 MB for 8192: a large
/// cache's worth, dequantised and used right away.
fn tile_rows(rows: usize) -> usize {
    1024.min(rows.max(1))
}

thread_local! {
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The tiled CPU f32 product over an NF4 weight, `None` when the operands are not CPU f32.
fn nf4_cpu(a: &Tensor, w: &Nf4Tensor, product: Nf4Product) -> Result<Option<Tensor>> {
    if !a.device().is_cpu() || a.dtype() != DType::F32 || !w.device().is_cpu() {
        return Ok(None);
    }
    let (out_dim, in_dim) = w.shape().dims2()?;
    let bs = w.block_size();
    let a = a.detach().contiguous()?;
    cpu::with_slice::<f32, _>(&a, |a| {
        w.with_cpu_parts(|packed, absmax| {
            tiled_product(a, (out_dim, in_dim), product, |r0, tile| {
                crate::quant::nf4::dequantize_range_cpu(packed, absmax, bs, r0 * in_dim, tile)
            })
        })
    })?
    .transpose()?
    .flatten()
    .transpose()
}

/// The tiled CPU f32 product over a ggml block-quantized weight (rows of whole blocks, a
/// type [`ggml_rows`] knows), `None` elsewhere. candle's `dequantize` writes the whole weight
/// on one thread; here tiles are dequantised on all threads and used while in cache.
fn ggml_cpu(a: &Tensor, w: &QTensor, product: Nf4Product) -> Result<Option<Tensor>> {
    if !a.device().is_cpu() || a.dtype() != DType::F32 || !w.device().is_cpu() {
        return Ok(None);
    }
    let (out_dim, in_dim) = w.shape().dims2()?;
    if !in_dim.is_multiple_of(w.dtype().block_size()) || !ggml_rows_supported(w.dtype()) {
        return Ok(None);
    }
    let data = w.data()?;
    let dtype = w.dtype();
    let a = a.detach().contiguous()?;
    cpu::with_slice::<f32, _>(&a, |a| {
        tiled_product(a, (out_dim, in_dim), product, |r0, tile| {
            ggml_rows(dtype, &data, in_dim, r0, tile)
        })
    })?
    .transpose()
}

/// `a · Wᵀ` (XWt) or `a · W` (GW) for a weight `(out_dim, in_dim)` that `dequantize(r0,
/// tile)` writes [`tile_rows`] rows at a time (`tile` holds whole rows from row `r0`).
fn tiled_product(
    a: &[f32],
    (out_dim, in_dim): (usize, usize),
    product: Nf4Product,
    dequantize: impl Fn(usize, &mut [f32]),
) -> Result<Tensor> {
    let k_want = match product {
        Nf4Product::XWt => in_dim,
        Nf4Product::GW => out_dim,
    };
    let n_out = match product {
        Nf4Product::XWt => out_dim,
        Nf4Product::GW => in_dim,
    };
    if k_want == 0 || !a.len().is_multiple_of(k_want) {
        candle_core::bail!(
            "quantized linear: operand of {} values does not have {k_want} columns",
            a.len()
        );
    }
    let rows = a.len() / k_want;
    let mut out: Vec<f32> = Vec::with_capacity(rows * n_out);
    let dst = out.spare_capacity_mut().as_mut_ptr() as *mut f32;
    let tile = tile_rows(out_dim);
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
    let at = match product {
        Nf4Product::XWt => x_colmajor(a, rows, in_dim),
        Nf4Product::GW => std::borrow::Cow::Borrowed(a),
    };
    let with_buf = |buf: &mut Vec<f32>| {
        buf.resize(tile * in_dim, 0.0);
        for (t, r0) in (0..out_dim).step_by(tile).enumerate() {
            let r = tile.min(out_dim - r0);
            let wt = &mut buf[..r * in_dim];
            dequantize(r0, wt);
            // SAFETY: every pointer stays inside its buffer for the given sizes and strides
            // (`a` is rows × k, the tile r × in, `out` rows × n_out); the first write of each
            // output element does not read it (`read_dst` false).
            unsafe {
                match product {
                    // Column-major, see `xwt_colmajor`: tile rows r0.. of `(x·Wᵀ)ᵀ`.
                    Nf4Product::XWt => {
                        xt_wt_colmajor(&at, rows, in_dim, wt.as_ptr(), r, dst.add(r0 * rows))
                    }
                    Nf4Product::GW => gemm::gemm(
                        rows,
                        in_dim,
                        r,
                        dst,
                        1,
                        in_dim as isize,
                        t > 0,
                        a.as_ptr().add(r0),
                        1,
                        out_dim as isize,
                        wt.as_ptr(),
                        1,
                        in_dim as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        threads,
                    ),
                }
            }
        }
    };
    // A nested call on the same thread (a forward inside a rayon task) gets its own buffer.
    TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => with_buf(&mut buf),
        Err(_) => with_buf(&mut Vec::new()),
    });
    // SAFETY: the tiles cover every output column (XWt) or the first tile wrote every output
    // element (GW), so all `rows · n_out` values are initialised.
    unsafe { out.set_len(rows * n_out) };
    let out = match product {
        Nf4Product::XWt => transpose(&out, n_out, rows),
        Nf4Product::GW => out,
    };
    Tensor::from_vec(out, (rows, n_out), &Device::Cpu)
}

fn ggml_rows_supported(dtype: GgmlDType) -> bool {
    use GgmlDType as G;
    matches!(
        dtype,
        G::Q4_0
            | G::Q4_1
            | G::Q5_0
            | G::Q5_1
            | G::Q8_0
            | G::Q2K
            | G::Q3K
            | G::Q4K
            | G::Q5K
            | G::Q6K
    )
}

/// Dequantises weight rows `r0..` (as many as `out` holds) of a CPU ggml tensor's bytes, in
/// parallel over groups of rows.
fn ggml_rows(dtype: GgmlDType, bytes: &[u8], in_dim: usize, r0: usize, out: &mut [f32]) {
    use candle_core::quantized::k_quants::*;
    fn rows_of<T: GgmlType>(bytes: &[u8], in_dim: usize, r0: usize, out: &mut [f32]) {
        use rayon::prelude::*;
        assert!(
            (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()),
            "ggml blocks are aligned (candle keeps them in a Vec of blocks)"
        );
        // SAFETY: candle's CPU storage of a `T` tensor is a `Vec<T>` whose bytes these are
        // (`QTensor::data`), aligned as checked; block structs are plain old data.
        let blocks: &[T] = unsafe {
            std::slice::from_raw_parts(
                bytes.as_ptr() as *const T,
                bytes.len() / std::mem::size_of::<T>(),
            )
        };
        let per_row = in_dim / T::BLCK_SIZE;
        let rows = out.len() / in_dim;
        let src = &blocks[r0 * per_row..(r0 + rows) * per_row];
        // 16 rows per task: large enough to amortise the task, small enough to share a tile.
        out.par_chunks_mut(16 * in_dim)
            .zip(src.par_chunks(16 * per_row))
            .for_each(|(o, s)| T::to_float(s, o));
    }
    use GgmlDType as G;
    match dtype {
        G::Q4_0 => rows_of::<BlockQ4_0>(bytes, in_dim, r0, out),
        G::Q4_1 => rows_of::<BlockQ4_1>(bytes, in_dim, r0, out),
        G::Q5_0 => rows_of::<BlockQ5_0>(bytes, in_dim, r0, out),
        G::Q5_1 => rows_of::<BlockQ5_1>(bytes, in_dim, r0, out),
        G::Q8_0 => rows_of::<BlockQ8_0>(bytes, in_dim, r0, out),
        G::Q2K => rows_of::<BlockQ2K>(bytes, in_dim, r0, out),
        G::Q3K => rows_of::<BlockQ3K>(bytes, in_dim, r0, out),
        G::Q4K => rows_of::<BlockQ4K>(bytes, in_dim, r0, out),
        G::Q5K => rows_of::<BlockQ5K>(bytes, in_dim, r0, out),
        G::Q6K => rows_of::<BlockQ6K>(bytes, in_dim, r0, out),
        other => unreachable!("{other:?} is not in ggml_rows_supported"),
    }
}

/// Up to this many rows candle's ggml kernels (which quantise the activations to 8 bits and
/// work row by row) beat dequantise + gemm for every type; above, only the repacked kernels do
/// (see [`ggml_kernel_scales`]). Measured with `examples/linear_paths.rs` (8192×2048 weight,
/// 2 threads): Q4_0 kernel 3 / 23 / 78 / 193 / 1256 ms at 1 / 4 / 16 / 32 / 256 rows against
/// 85 / 125 / 156 / 124 / 350 ms dequantise + gemm.
pub const GGML_KERNEL_MAX_ROWS: usize = 16;

/// Whether candle 0.11 runs this weight through its repacked x86 tiles (Q4_K and Q6_K with
/// AVX2, Q8_0 with VNNI; rows of a multiple of 256, outputs of 16), which beat dequantise +
/// gemm at every row count measured: Q4_K 72 ms against 238 ms at 256 rows, Q6_K 81 against
/// 177, Q8_0 131 against 343.
pub fn ggml_kernel_scales(w: &QTensor) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Ok((n, k)) = w.shape().dims2() else {
            return false;
        };
        if !k.is_multiple_of(256) || !n.is_multiple_of(16) {
            return false;
        }
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let vnni = (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || is_x86_feature_detected!("avxvnni");
        match w.dtype() {
            GgmlDType::Q4K | GgmlDType::Q6K => avx2,
            GgmlDType::Q8_0 => vnni,
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = w;
        false
    }
}

/// `x · Wᵀ` for a ggml block-quantized weight (Q4_0, Q8_0, Q4_K, Q6_K, ...): candle's kernel
/// for few rows or where it scales, otherwise dequantise + gemm; the backward dequantises.
pub fn ggml(x: &Tensor, w: &Arc<QTensor>) -> Result<Tensor> {
    linear(x, &LinearBase::Quantized(w.clone()))
}

/// The forward value of [`ggml`] for `x (rows, in)`, without a graph.
fn ggml_value(x: &Tensor, w: &Arc<QTensor>) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let dtype = x.dtype();
    let kernel = rows <= GGML_KERNEL_MAX_ROWS || (x.device().is_cpu() && ggml_kernel_scales(w));
    if kernel {
        x.detach()
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(w.as_ref())?
            .to_dtype(dtype)
    } else {
        let dense = w.dequantize(x.device())?.to_dtype(dtype)?;
        x.detach().matmul(&dense.t()?)
    }
}

/// Up to this many rows of an untracked input (inference: prompts, generation) a CPU Q8_0
/// weight goes through [`crate::quant::q8_0`], which quantises activations as llama.cpp does
/// for every batch size; above, through [`ggml`].
pub const Q8_0_KERNEL_MAX_ROWS: usize = 256;

/// Whether a Q8_0 product of `rows` rows of `x` takes [`q8_0`]: inference up to
/// [`Q8_0_KERNEL_MAX_ROWS`] rows; a tracked input (training) only where [`ggml`] would take
/// candle's kernel too ([`GGML_KERNEL_MAX_ROWS`]), so larger training batches keep the exactly
/// linear dequantise + gemm forward.
pub fn q8_0_kernel_applies(x: &Tensor, rows: usize) -> bool {
    rows <= GGML_KERNEL_MAX_ROWS || (!x.track_op() && rows <= Q8_0_KERNEL_MAX_ROWS)
}

/// `x · Wᵀ` for a CPU Q8_0 weight through the llama.cpp-equivalent kernel; the backward
/// dequantises, as [`ggml`]'s does.
pub fn q8_0(x: &Tensor, w: &Arc<crate::quant::Q8_0Matrix>) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    if k != w.k() {
        candle_core::bail!("Q8_0 linear: input has {k} columns, weight {}", w.k());
    }
    let dtype = x.dtype();
    let xf = x.detach().to_dtype(DType::F32)?;
    let y = match cpu::with_slice::<f32, _>(&xf, |xs| w.matmul(xs, rows))? {
        Some(y) => Tensor::from_vec(y?, (rows, w.rows()), &Device::Cpu)?.to_dtype(dtype)?,
        None => candle_core::bail!("Q8_0 linear: the input is not on the CPU"),
    };
    let q = w.qtensor().clone();
    attach_input_grad(
        "q8_0-linear",
        x,
        y,
        Arc::new(move |g: &Tensor| g.matmul(&q.dequantize(g.device())?.to_dtype(g.dtype())?)),
    )
}

#[cfg(test)]
mod tests {
    use super::transpose;

    /// Every shape class: empty, single row or column, partial tiles on both sides, and a
    /// power-of-two width.
    #[test]
    fn transpose_matches_the_definition() {
        for (r, c) in [
            (0, 5),
            (1, 1),
            (1, 37),
            (37, 1),
            (16, 16),
            (17, 33),
            (40, 256),
            (256, 48),
        ] {
            let src: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
            let t = transpose(&src, r, c);
            assert_eq!(t.len(), r * c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], src[i * c + j], "({r}, {c}) at ({i}, {j})");
                }
            }
        }
    }
}
