//! Process-level settings for running models on CPU.

/// Keeps freed tensor memory in the process instead of returning it to the kernel.
///
/// candle allocates a fresh buffer for every op. With glibc's defaults, buffers of a few MB and
/// up are mapped and unmapped (or trimmed from the heap top) again and again, and every reuse
/// faults its pages back in zeroed: about 700k page faults, ~11% of the CPU time of a
/// ModernBERT-base forward over 4×512 tokens. A fixed mmap threshold and a high trim threshold
/// make glibc recycle those buffers. Binaries call this once at start-up (it changes the whole
/// process); it does nothing on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes glibc's allocation parameters; called before the
            // allocations it affects and never concurrently with itself (Once).
            unsafe {
                // 32 MB is glibc's upper limit for this parameter; bigger buffers stay mapped.
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}
