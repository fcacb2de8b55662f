//! Process-level allocator settings for running and training models on CPU.
//!
//! candle allocates a fresh buffer for every op. With glibc's defaults, buffers of a few MB and
//! up are mapped and unmapped (or trimmed from the heap top) again and again, and every reuse
//! faults its pages back in zeroed: about 700k page faults, ~11% of the CPU time of a
//! ModernBERT-base forward over 4×512 tokens, and the high `sys` time of training steps. Binaries
//! call one of these once at start-up (they change the whole process); both do nothing on other
//! C libraries.

/// Inference: buffers up to 32 MB (glibc's upper limit for the mmap threshold) come from the
/// heap and are recycled; bigger ones stay mapped, so a long-running server gives them back.
pub fn tune_allocator() {
    set_malloc_options(Some(32 << 20));
}

/// Training: every block comes from the heap and freed memory is never returned, so each step
/// reuses the previous step's pages (peak RSS unchanged). A LoRA step on the Llama-1B-shaped
/// linear stack was about 5% faster (2.75 s against 2.91 s, mean of 3 interleaved runs;
/// `--no-alloc-tune` in `crates/train/examples/lora_linear.rs`).
pub fn keep_freed_memory() {
    set_malloc_options(None);
}

/// `mmap_threshold`: `Some(bytes)` to fix glibc's threshold, `None` to never `mmap`.
#[allow(unused_variables)]
fn set_malloc_options(mmap_threshold: Option<i32>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // glibc's mallopt parameters (malloc.h).
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            const M_MMAP_MAX: i32 = -4;
            // SAFETY: mallopt only changes glibc's allocation parameters; called before the
            // allocations it affects and never concurrently with itself (Once).
            unsafe {
                match mmap_threshold {
                    Some(bytes) => mallopt(M_MMAP_THRESHOLD, bytes),
                    None => mallopt(M_MMAP_MAX, 0),
                };
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}
