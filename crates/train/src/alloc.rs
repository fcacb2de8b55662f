//! Allocator settings for training processes.
//!
//! Every candle op allocates its output. glibc serves large blocks with fresh `mmap`s and
//! returns them on free, so each step page-faults its activations and gradients in again (the
//! findings' high `sys` time). Keeping freed memory in the heap for reuse made a LoRA step on
//! the Llama-1B-shaped benchmark stack about 5% faster in an interleaved A/B on a loaded
//! 2-core machine (2.75 s against 2.91 s, mean of 3; `--no-alloc-tune` in
//! `examples/lora_linear.rs`); peak RSS is unchanged, memory is just not handed back to the
//! system between steps.

/// Serves all blocks from the heap and never trims it (glibc only; a no-op elsewhere).
/// Call once at the start of a training process, before the allocations it should affect.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's mallopt parameters (malloc.h).
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tunables; valid at any time.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}
