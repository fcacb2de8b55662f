//! Direct access to the buffers of CPU tensors, for the fused kernels that candle's op-by-op
//! API would make allocate (dequantisation, the optimiser, the loss).

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, WithDType};

/// Runs `f` on the elements of `t` when it lives on the CPU (`None` on other devices).
/// Non-contiguous tensors are made contiguous first (one copy).
pub fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<Option<R>> {
    if !t.device().is_cpu() {
        return Ok(None);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let data = cpu.as_slice::<T>()?;
    let start = layout.start_offset();
    Ok(Some(f(&data[start..start + layout.shape().elem_count()])))
}

/// Runs `f` on the f32 elements of several tensors when all live on the CPU in f32 (`None`
/// otherwise); non-contiguous ones are made contiguous first.
pub fn with_f32_slices<R>(ts: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> Result<Option<R>> {
    if ts
        .iter()
        .any(|t| !t.device().is_cpu() || t.dtype() != candle_core::DType::F32)
    {
        return Ok(None);
    }
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else {
            return Ok(None);
        };
        let data = cpu.as_slice::<f32>()?;
        let start = layout.start_offset();
        slices.push(&data[start..start + layout.shape().elem_count()]);
    }
    Ok(Some(f(&slices)))
}

/// The f32 data of a contiguous CPU tensor, as custom ops receive it; `op` names the op in the
/// errors.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only");
    };
    Ok(&data[start..end])
}

/// The elements of `t` as a `Vec` (any device), without going through a rank-specific getter.
pub fn to_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// `dst (m, n) = alpha·lhs·rhs` (or `+=` with `accumulate`) for f32 matrices given by
/// `(row stride, column stride)` (`dst` with column stride 1), checked to stay inside their
/// slices.
pub(crate) fn gemm_f32(
    mnk: (usize, usize, usize),
    (dst, dst_rs, accumulate): (&mut [f32], usize, bool),
    lhs: (&[f32], (usize, usize)),
    rhs: (&[f32], (usize, usize)),
    alpha: f32,
    threads: gemm::Parallelism,
) {
    // SAFETY: `dst` is an initialised, exclusively borrowed slice of `dst.len()` values.
    unsafe {
        gemm_raw(
            mnk,
            (dst.as_mut_ptr(), dst.len(), dst_rs, accumulate),
            lhs,
            rhs,
            alpha,
            threads,
        )
    }
}

/// A new row-major `m × n` matrix `alpha·lhs·rhs` (operands as in [`gemm_f32`]), written by
/// gemm directly into fresh memory, without zero-filling it first (that fill was ~2% of an
/// encoder step).
pub(crate) fn gemm_f32_new(
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], (usize, usize)),
    rhs: (&[f32], (usize, usize)),
    alpha: f32,
    threads: gemm::Parallelism,
) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the capacity holds m · n values; with `accumulate` false gemm writes every one
    // of them without reading it, so all are initialised before `set_len`.
    unsafe {
        gemm_raw(
            (m, n, k),
            (out.as_mut_ptr(), m * n, n, false),
            lhs,
            rhs,
            alpha,
            threads,
        );
        out.set_len(m * n);
    }
    out
}

/// [`gemm_f32`] on a destination pointer.
///
/// # Safety
/// `dst` points to `dst_len` writable values that nothing else accesses during the call; with
/// `accumulate` they must be initialised.
unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    (dst, dst_len, dst_rs, accumulate): (*mut f32, usize, usize, bool),
    (lhs, (lhs_rs, lhs_cs)): (&[f32], (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (&[f32], (usize, usize)),
    alpha: f32,
    threads: gemm::Parallelism,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let fits = |len: usize, rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows - 1) * rs + (cols - 1) * cs < len
    };
    assert!(
        fits(dst_len, m, n, dst_rs, 1)
            && fits(lhs.len(), m, k, lhs_rs, lhs_cs)
            && fits(rhs.len(), k, n, rhs_rs, rhs_cs),
        "gemm operand out of bounds"
    );
    // SAFETY: the assertion above keeps every addressed element inside its buffer, and the
    // caller guarantees `dst` is not aliased.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            threads,
        )
    }
}
