//! Direct access to the buffers of CPU tensors, for the fused kernels that candle's op-by-op
//! API would make allocate (dequantisation, the optimiser, the loss).

use candle_core::{Result, Storage, Tensor, WithDType};

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

/// The elements of `t` as a `Vec` (any device), without going through a rank-specific getter.
pub fn to_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}
