//! ggml Q8_0 weights times activations quantised to Q8_0 on the fly, computed as llama.cpp's
//! CPU backend computes them (`quantize_row_q8_0` + `ggml_vec_dot_q8_0_q8_0`, x86), so the same
//! inputs give bit-identical outputs:
//!
//! - activations: per block of 32, `amax = max |x|`, scale `d = f16(amax / 127)`, values
//!   `round_half_even(x · (127 / amax))`;
//! - one output: eight f32 lanes, lane `j` taking the exact integer sum of bytes `4j..4j+3` of
//!   each block, `acc_j = fma(d_w · d_x, sum_j, acc_j)` block after block, then llama.cpp's
//!   horizontal sum `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
//!
//! The AVX-512-VNNI, AVX-VNNI and AVX2 paths differ only in how the integer lane sums are
//! formed (all exact), so every path, including the portable one, gives the same bits. Weight
//! block scales are converted from f16 to f32 once, at construction; the quantised values are
//! read in place from the `QTensor`'s ggml blocks.

use std::sync::{Arc, OnceLock};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};
use rayon::prelude::*;

/// Values per block.
pub const QK8_0: usize = 32;
/// ggml's `block_q8_0`: an f16 scale, then 32 signed bytes.
const BLOCK_BYTES: usize = 34;
/// Weight rows a kernel call handles together (one activation load serves them all).
const ROW_TILE: usize = 4;
/// Below this many multiply-adds a product is not split across threads: a fork-join costs
/// tens of microseconds (more on a busy machine). Gemma-3-270M's decode projections of 640 x
/// 1024 and up (q, o, MLP) are split, one token's k and v (640 x 256) are not; A/B runs of `bench/decode_gguf.sh` at 2
/// threads gave 0.82x llama.cpp (median of 5) with 2^19 against 0.76x with 2^22 and 0.80x with
/// 2^17.
const PARALLEL_MIN_MACS: usize = 1 << 19;

/// A Q8_0 weight `(rows, k)`: the ggml blocks of a CPU `QTensor` and their scales in f32.
#[derive(Debug)]
pub struct Q8_0Matrix {
    q: Arc<QTensor>,
    scales: Vec<f32>,
    rows: usize,
    k: usize,
}

/// Activations quantised as llama.cpp does: `qs` row-major `(n, k)`, one f32 scale (an f16
/// value) per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8_0Activations {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub k: usize,
}

impl Q8_0Matrix {
    /// Fails unless `q` is a 2-D Q8_0 tensor on the CPU with whole blocks per row.
    pub fn new(q: Arc<QTensor>) -> Result<Q8_0Matrix> {
        if q.dtype() != GgmlDType::Q8_0 {
            candle_core::bail!("Q8_0 kernel: weight is {:?}, not Q8_0", q.dtype());
        }
        if !matches!(q.device(), Device::Cpu) {
            candle_core::bail!("Q8_0 kernel: weight is not on the CPU");
        }
        let (rows, k) = q.shape().dims2()?;
        if !k.is_multiple_of(QK8_0) {
            candle_core::bail!("Q8_0 kernel: row length {k} is not a multiple of {QK8_0}");
        }
        let scales = {
            let data = q.data()?;
            if data.len() != rows * (k / QK8_0) * BLOCK_BYTES {
                candle_core::bail!(
                    "Q8_0 kernel: {} bytes of data for a ({rows}, {k}) weight",
                    data.len()
                );
            }
            data.chunks_exact(BLOCK_BYTES)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()
        };
        Ok(Q8_0Matrix { q, scales, rows, k })
    }

    pub fn qtensor(&self) -> &Arc<QTensor> {
        &self.q
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// `x (n, k)` (row-major) times the weight's transpose: `(n, rows)` row-major.
    pub fn matmul(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.matmul_with(kernel(), x, n)
    }

    fn matmul_with(&self, path: Path, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if x.len() != n * self.k {
            candle_core::bail!(
                "Q8_0 kernel: {} activation values for {n} rows of {}",
                x.len(),
                self.k
            );
        }
        let a = quantize_activations(x, self.k);
        let data = self.q.data()?;
        let mut out = vec![0f32; n * self.rows];
        let rows = self.rows;
        let threads = rayon::current_num_threads().max(1);
        let macs = n * rows * self.k;
        // Chunks of whole row tiles; a few per thread so uneven progress evens out.
        let chunk = if threads == 1 || macs < PARALLEL_MIN_MACS {
            rows
        } else {
            rows.div_ceil(threads * 4).div_ceil(ROW_TILE) * ROW_TILE
        }
        .max(ROW_TILE);
        let dst = SyncPtr(out.as_mut_ptr());
        let work = |c: usize| {
            let r0 = c * chunk;
            let r1 = (r0 + chunk).min(rows);
            let mut tile = [0f32; ROW_TILE];
            for i in 0..n {
                let aq = &a.qs[i * self.k..(i + 1) * self.k];
                let ad = &a.d[i * (self.k / QK8_0)..(i + 1) * (self.k / QK8_0)];
                let mut r = r0;
                while r < r1 {
                    let m = ROW_TILE.min(r1 - r);
                    self.dot_rows(path, &data, r, m, aq, ad, &mut tile);
                    for (j, v) in tile[..m].iter().enumerate() {
                        // SAFETY: `i < n`, `r + j < rows`: inside `out`; chunks own disjoint
                        // row ranges, so no two tasks write the same element.
                        unsafe { *dst.get().add(i * rows + r + j) = *v };
                    }
                    r += m;
                }
            }
        };
        let chunks = rows.div_ceil(chunk);
        if chunks == 1 {
            work(0);
        } else {
            (0..chunks).into_par_iter().for_each(work);
        }
        Ok(out)
    }

    /// Dots of weight rows `r..r + m` (`m <= ROW_TILE`) with one quantised activation row.
    #[allow(clippy::too_many_arguments)]
    fn dot_rows(
        &self,
        path: Path,
        data: &[u8],
        r: usize,
        m: usize,
        aq: &[i8],
        ad: &[f32],
        out: &mut [f32; ROW_TILE],
    ) {
        let nb = self.k / QK8_0;
        let row_bytes = nb * BLOCK_BYTES;
        let w = &data[r * row_bytes..(r + m) * row_bytes];
        let ws = &self.scales[r * nb..(r + m) * nb];
        let mut lanes = [[0f32; 8]; ROW_TILE];
        match path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `kernel()` / the tests pick a path only where the CPU has its features.
            Path::Avx512Vnni => unsafe { x86::lanes_avx512vnni(w, ws, aq, ad, m, &mut lanes) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Path::AvxVnni => unsafe { x86::lanes_avxvnni(w, ws, aq, ad, m, &mut lanes) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Path::Avx2 => unsafe { x86::lanes_avx2(w, ws, aq, ad, m, &mut lanes) },
            Path::Portable => lanes_portable(w, ws, aq, ad, m, &mut lanes),
        }
        for (o, l) in out.iter_mut().zip(&lanes).take(m) {
            *o = hsum8(l);
        }
    }
}

struct SyncPtr(*mut f32);
// SAFETY: used only to write disjoint elements from rayon tasks (see `matmul_with`).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// llama.cpp's `hsum_float_8`.
fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// `x (n, k)` quantised block by block as llama.cpp's x86 `quantize_row_q8_0`.
pub fn quantize_activations(x: &[f32], k: usize) -> Q8_0Activations {
    let mut qs = vec![0i8; x.len()];
    let mut d = vec![0f32; x.len() / QK8_0];
    for ((xb, qb), db) in x
        .chunks_exact(QK8_0)
        .zip(qs.chunks_exact_mut(QK8_0))
        .zip(d.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        *db = half::f16::from_f32(amax / 127.0).to_f32();
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
    Q8_0Activations { qs, d, k }
}

/// The eight lane accumulators of `m` weight rows (portable; `f32::mul_add` is the fma).
fn lanes_portable(
    w: &[u8],
    ws: &[f32],
    aq: &[i8],
    ad: &[f32],
    m: usize,
    lanes: &mut [[f32; 8]; ROW_TILE],
) {
    let nb = aq.len() / QK8_0;
    for (row, acc) in lanes.iter_mut().enumerate().take(m) {
        for b in 0..nb {
            let blk = &w[(row * nb + b) * BLOCK_BYTES + 2..(row * nb + b + 1) * BLOCK_BYTES];
            let a = &aq[b * QK8_0..(b + 1) * QK8_0];
            let d = ws[row * nb + b] * ad[b];
            for (j, l) in acc.iter_mut().enumerate() {
                let s: i32 = (4 * j..4 * j + 4)
                    .map(|t| blk[t] as i8 as i32 * a[t] as i32)
                    .sum();
                *l = (s as f32).mul_add(d, *l);
            }
        }
    }
}

/// The fastest path the CPU supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

/// Every path this CPU can run, fastest first.
fn supported_paths() -> Vec<Path> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma");
        if avx2 && has!("avx512vnni") && has!("avx512vl") && has!("avx512f") {
            v.push(Path::Avx512Vnni);
        }
        if avx2 && has!("avxvnni") {
            v.push(Path::AvxVnni);
        }
        if avx2 {
            v.push(Path::Avx2);
        }
    }
    v.push(Path::Portable);
    v
}

fn kernel() -> Path {
    static PATH: OnceLock<Path> = OnceLock::new();
    *PATH.get_or_init(|| supported_paths()[0])
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK_BYTES, QK8_0, ROW_TILE};

    /// Prefetch distance in weight bytes (overridable while tuning).
    const PREFETCH: usize = 4096;

    /// One shared body; `$dot` turns `|w|` (u8) and `sign(a, w)` (i8) into 8 exact i32 sums.
    macro_rules! lanes_fn {
        ($name:ident, $features:literal, $dot:expr) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                w: &[u8],
                ws: &[f32],
                aq: &[i8],
                ad: &[f32],
                m: usize,
                lanes: &mut [[f32; 8]; ROW_TILE],
            ) {
                let nb = aq.len() / QK8_0;
                debug_assert!(w.len() >= m * nb * BLOCK_BYTES && ws.len() >= m * nb);
                let mut acc = [_mm256_setzero_ps(); ROW_TILE];
                let wp = w.as_ptr();
                let sp = ws.as_ptr();
                // The tile's bytes are contiguous: fetch those `PREFETCH` bytes ahead, a
                // tile's length spread over its blocks (the scales likewise).
                let step = m * BLOCK_BYTES;
                for b in 0..nb {
                    let ahead = wp.wrapping_add(PREFETCH + b * step);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(step - 1).cast());
                    _mm_prefetch::<_MM_HINT_T0>(
                        sp.wrapping_add(PREFETCH / BLOCK_BYTES + b * m).cast(),
                    );
                    // SAFETY: block `b` of activation row and of each of the `m` weight rows is
                    // in bounds (checked above); unaligned loads.
                    let a = unsafe { _mm256_loadu_si256(aq.as_ptr().add(b * QK8_0).cast()) };
                    let da = ad[b];
                    for r in 0..m {
                        let off = (r * nb + b) * BLOCK_BYTES + 2;
                        let x = unsafe { _mm256_loadu_si256(wp.add(off).cast()) };
                        let ax = _mm256_sign_epi8(x, x);
                        let sy = _mm256_sign_epi8(a, x);
                        let q = _mm256_cvtepi32_ps($dot(ax, sy));
                        let d = _mm256_set1_ps(ws[r * nb + b] * da);
                        acc[r] = _mm256_fmadd_ps(d, q, acc[r]);
                    }
                }
                for r in 0..m {
                    unsafe { _mm256_storeu_ps(lanes[r].as_mut_ptr(), acc[r]) };
                }
            }
        };
    }

    lanes_fn!(
        lanes_avx512vnni,
        "avx2,fma,avx512f,avx512vl,avx512vnni",
        |ax, sy| _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
    );
    lanes_fn!(lanes_avxvnni, "avx2,fma,avxvnni", |ax, sy| {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sy)
    });
    lanes_fn!(lanes_avx2, "avx2,fma", |ax, sy| {
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// Straight from the definitions: exact integer block dots, scales applied per block in
    /// f64. Returns the values and the sums of the magnitudes of the lane terms.
    fn reference(w: &Q8_0Matrix, x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
        let a = quantize_activations(x, w.k);
        let data = w.q.data().unwrap();
        let nb = w.k / QK8_0;
        let mut out = vec![0f64; n * w.rows];
        let mut mag = vec![0f64; n * w.rows];
        for i in 0..n {
            for r in 0..w.rows {
                let (mut s, mut m) = (0f64, 0f64);
                for b in 0..nb {
                    let blk = &data[(r * nb + b) * BLOCK_BYTES..(r * nb + b + 1) * BLOCK_BYTES];
                    let d = (w.scales[r * nb + b] * a.d[i * nb + b]) as f64;
                    for lane in 0..8 {
                        let dot: i32 = (4 * lane..4 * lane + 4)
                            .map(|t| blk[2 + t] as i8 as i32 * a.qs[i * w.k + b * QK8_0 + t] as i32)
                            .sum();
                        s += dot as f64 * d;
                        m += (dot as f64 * d).abs();
                    }
                }
                out[i * w.rows + r] = s;
                mag[i * w.rows + r] = m;
            }
        }
        (out, mag)
    }

    fn random(rows: usize, k: usize, n: usize) -> (Q8_0Matrix, Vec<f32>) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (rows, k), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let x: Vec<f32> = Tensor::randn(0f32, 3.0, (n, k), &dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (Q8_0Matrix::new(q).unwrap(), x)
    }

    #[test]
    fn every_path_matches_the_reference_and_each_other() {
        let paths = supported_paths();
        eprintln!("Q8_0 paths on this CPU: {paths:?}");
        for (k, rows, n) in [
            (32, 7, 1),
            (64, 13, 3),
            (640, 33, 2),
            (2048, 9, 5),
            (640, 1, 1),
        ] {
            let (w, x) = random(rows, k, n);
            let (want, mag) = reference(&w, &x, n);
            let portable = w.matmul_with(Path::Portable, &x, n).unwrap();
            for ((got, want), mag) in portable.iter().zip(&want).zip(&mag) {
                // f32 accumulation of the lane terms: a few ulps of their magnitude.
                let tol = 1e-6 * mag + 1e-12;
                assert!((*got as f64 - want).abs() <= tol, "k {k}: {got} vs {want}");
            }
            for &p in &paths {
                let got = w.matmul_with(p, &x, n).unwrap();
                let same = got
                    .iter()
                    .zip(&portable)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{p:?} differs from the portable path at k {k}");
            }
        }
    }

    #[test]
    fn threaded_split_is_bit_identical() {
        // Above PARALLEL_MIN_MACS, so the rows are split.
        let (w, x) = random(7003, 640, 2);
        assert!(w.rows() * w.k() * 2 >= PARALLEL_MIN_MACS);
        let one = w.matmul_with(Path::Portable, &x, 2).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let many = pool.install(|| w.matmul_with(kernel(), &x, 2).unwrap());
        assert_eq!(
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            many.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn activations_round_like_llama_cpp() {
        // amax 127: id 1 exactly, so halves show the tie rule (to even).
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 3.5;
        x[4] = 0.49;
        let a = quantize_activations(&x, 32);
        assert_eq!(&a.qs[..5], &[127, 2, -2, 4, 0]);
        assert_eq!(a.d[0], 1.0);
        // The scale is amax / 127 rounded to f16.
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 7.3) * 0.013).collect();
        let a = quantize_activations(&x, 32);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(a.d[0], half::f16::from_f32(amax / 127.0).to_f32());
        assert_eq!(quantize_activations(&[0f32; 32], 32).qs, vec![0i8; 32]);
    }

    #[test]
    fn rejects_other_types_and_ragged_rows() {
        let w = Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q4 = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_0).unwrap());
        assert!(Q8_0Matrix::new(q4).is_err());
        let (m, _) = random(4, 64, 1);
        assert!(m.matmul(&[0.0; 63], 1).is_err());
    }
}
