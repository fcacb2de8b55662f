//! NF4 block-wise 4-bit quantisation (QLoRA), bit-compatible with bitsandbytes'
//! `quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=...)`:
//!
//! - each block of 64 consecutive values (row-major) is scaled by its absmax into [-1, 1] and
//!   each value gets the index of the nearest NF4 code value (ties to the lower index, as
//!   `torch.bucketize` over the code's midpoints does);
//! - two indices per byte, the first element in the high nibble;
//! - with double quantisation (`compress_statistics=True`), the f32 absmax constants lose their
//!   mean (`offset`) and are quantised with bitsandbytes' signed dynamic 8-bit code in blocks of
//!   256 (their own f32 absmax per block): 0.5 + 1/64 + 4/(64·256) bytes per weight instead of
//!   0.5 + 4/64.
//!
//! Dequantisation is `code[q] · absmax` in f32, the same product bitsandbytes computes.

use candle_core::{DType, Device, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu;
use crate::quant::dynamic;

/// bitsandbytes' NF4 code book (`get_4bit_type("nf4")`), exact f32 bit patterns.
pub const NF4_CODE: [f32; 16] = {
    let bits: [u32; 16] = [
        0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871,
        0x00000000, 0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab,
        0x3f3913b3, 0x3f800000,
    ];
    let mut code = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        code[i] = f32::from_bits(bits[i]);
        i += 1;
    }
    code
};

/// QLoRA's block size for the weights.
pub const BLOCK_SIZE: usize = 64;
/// QLoRA's block size for the double-quantised absmax constants.
pub const DQ_BLOCK_SIZE: usize = 256;

fn nf4_bounds() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0)
}

/// The NF4 index of a value already scaled into [-1, 1]: the number of code midpoints strictly
/// below it (`torch.bucketize(x, bounds, right=False)`).
fn nf4_index(bounds: &[f32; 15], x: f32) -> u8 {
    bounds.partition_point(|&b| b < x) as u8
}

/// How the per-block absmax constants are stored.
#[derive(Debug, Clone)]
pub enum Absmax {
    /// One f32 per block.
    F32(Tensor),
    /// Double quantisation: `code[q] · absmax2[i / block_size] + offset`.
    Double {
        /// u8 indices into `code`, one per weight block.
        q: Tensor,
        /// f32 absmax of each group of `block_size` constants.
        absmax2: Tensor,
        /// The signed dynamic 8-bit code (256 f32).
        code: Tensor,
        offset: f32,
        block_size: usize,
    },
}

/// Options of [`Nf4Tensor::quantize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Config {
    pub block_size: usize,
    /// Quantise the absmax constants too (QLoRA's double quantisation).
    pub double_quant: bool,
}

impl Default for Nf4Config {
    fn default() -> Self {
        Nf4Config {
            block_size: BLOCK_SIZE,
            double_quant: true,
        }
    }
}

/// An NF4-quantised tensor (usually a linear weight `(out, in)`), on any device.
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    shape: Shape,
    block_size: usize,
    /// `ceil(n / 2)` bytes, two 4-bit indices each (first element in the high nibble).
    packed: Tensor,
    absmax: Absmax,
}

impl Nf4Tensor {
    /// Quantises `w` (any float dtype, any device; the work happens on the CPU) and stores the
    /// result on `w`'s device.
    pub fn quantize(w: &Tensor, cfg: Nf4Config) -> Result<Nf4Tensor> {
        if cfg.block_size == 0 {
            candle_core::bail!("nf4: block size must be positive");
        }
        let values = cpu::to_vec::<f32>(&w.to_dtype(DType::F32)?)?;
        let (packed, absmax) = quantize_slice(&values, cfg.block_size);
        let device = w.device();
        let absmax = if cfg.double_quant {
            let dq = dynamic::quantize_with_offset(&absmax, DQ_BLOCK_SIZE);
            let (n_q, n_blocks) = (dq.absmax_len(), dq.blocks());
            Absmax::Double {
                q: Tensor::from_vec(dq.q, n_q, device)?,
                absmax2: Tensor::from_vec(dq.absmax, n_blocks, device)?,
                code: Tensor::from_slice(&dynamic::code(), 256, device)?,
                offset: dq.offset,
                block_size: DQ_BLOCK_SIZE,
            }
        } else {
            let n = absmax.len();
            Absmax::F32(Tensor::from_vec(absmax, n, device)?)
        };
        let n_packed = packed.len();
        Ok(Nf4Tensor {
            shape: w.shape().clone(),
            block_size: cfg.block_size,
            packed: Tensor::from_vec(packed, n_packed, device)?,
            absmax,
        })
    }

    /// Builds a tensor from stored parts (a bitsandbytes checkpoint or our own).
    pub fn from_parts<S: Into<Shape>>(
        shape: S,
        block_size: usize,
        packed: Tensor,
        absmax: Absmax,
    ) -> Result<Nf4Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        if packed.dtype() != DType::U8 || packed.elem_count() != n.div_ceil(2) {
            candle_core::bail!(
                "nf4: packed data must be {} u8 values for shape {:?}",
                n.div_ceil(2),
                shape.dims()
            );
        }
        let blocks = n.div_ceil(block_size);
        let stored = match &absmax {
            Absmax::F32(a) => a.elem_count(),
            Absmax::Double { q, .. } => q.elem_count(),
        };
        if stored != blocks {
            candle_core::bail!("nf4: {stored} absmax values for {blocks} blocks");
        }
        Ok(Nf4Tensor {
            shape,
            block_size,
            packed: packed.flatten_all()?,
            absmax,
        })
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn packed(&self) -> &Tensor {
        &self.packed
    }

    pub fn absmax(&self) -> &Absmax {
        &self.absmax
    }

    pub fn device(&self) -> &Device {
        self.packed.device()
    }

    /// Bytes held: packed indices plus the absmax constants (and the 8-bit code book).
    pub fn storage_bytes(&self) -> usize {
        let absmax = match &self.absmax {
            Absmax::F32(a) => 4 * a.elem_count(),
            Absmax::Double {
                q, absmax2, code, ..
            } => q.elem_count() + 4 * absmax2.elem_count() + 4 * code.elem_count() + 4,
        };
        self.packed.elem_count() + absmax
    }

    /// The per-block absmax constants in f32 (dequantised when double-quantised).
    pub fn absmax_f32(&self) -> Result<Tensor> {
        if let Absmax::Double {
            q,
            absmax2,
            code,
            offset,
            block_size,
        } = &self.absmax
            && let (Some(q), Some(a2), Some(c)) = (
                cpu::with_slice::<u8, _>(q, |s| s.to_vec())?,
                cpu::with_slice::<f32, _>(absmax2, |s| s.to_vec())?,
                cpu::with_slice::<f32, _>(code, |s| s.to_vec())?,
            )
        {
            let code: [f32; 256] = c
                .try_into()
                .map_err(|_| candle_core::Error::msg("nf4: the 8-bit code needs 256 values"))?;
            let n = q.len();
            let out = dynamic::dequantize(&q, &a2, &code, *block_size, *offset);
            return Tensor::from_vec(out, n, self.packed.device());
        }
        self.absmax_f32_with_ops()
    }

    /// [`Self::absmax_f32`] with tensor ops only (what non-CPU devices run).
    pub fn absmax_f32_with_ops(&self) -> Result<Tensor> {
        match &self.absmax {
            Absmax::F32(a) => Ok(a.clone()),
            Absmax::Double {
                q,
                absmax2,
                code,
                offset,
                block_size,
            } => {
                let n = q.elem_count();
                let groups = n.div_ceil(*block_size);
                // u32 indices: candle's index_select reads the largest index of a type (255 for u8) as
                // "no index" and returns zeros.
                let vals = pad_to(
                    &code.index_select(&q.to_dtype(DType::U32)?, 0)?,
                    groups * block_size,
                )?;
                let scaled = vals
                    .reshape((groups, *block_size))?
                    .broadcast_mul(&absmax2.reshape((groups, 1))?)?
                    .flatten_all()?
                    .narrow(0, 0, n)?;
                scaled + f64::from(*offset)
            }
        }
    }

    /// The dense tensor in f32 on this tensor's device.
    pub fn dequantize(&self) -> Result<Tensor> {
        let absmax = self.absmax_f32()?;
        let n = self.shape.elem_count();
        let bs = self.block_size;
        // Reads the packed bytes and constants in place (no copies) on the CPU.
        let fast = cpu::with_slice::<u8, _>(&self.packed, |packed| {
            cpu::with_slice::<f32, _>(&absmax, |am| {
                let mut out = vec![0f32; n];
                dequantize_range_cpu(packed, am, bs, 0, &mut out);
                out
            })
        })?
        .transpose()?
        .flatten();
        match fast {
            Some(out) => Tensor::from_vec(out, self.shape.clone(), self.device()),
            None => self.dequantize_with_ops(),
        }
    }

    /// Runs `f` on the packed bytes and the f32 absmax constants when they live on the CPU.
    pub fn with_cpu_parts<R>(&self, f: impl FnOnce(&[u8], &[f32]) -> R) -> Result<Option<R>> {
        if !self.packed.device().is_cpu() {
            return Ok(None);
        }
        let absmax = self.absmax_f32()?;
        Ok(cpu::with_slice::<u8, _>(&self.packed, |packed| {
            cpu::with_slice::<f32, _>(&absmax, |am| f(packed, am))
        })?
        .transpose()?
        .flatten())
    }

    /// [`Self::dequantize`] with tensor ops only (table lookup, per-block scale): what
    /// non-CPU devices run, no kernel of our own needed.
    pub fn dequantize_with_ops(&self) -> Result<Tensor> {
        let absmax = self.absmax_f32_with_ops()?;
        let n = self.shape.elem_count();
        let bs = self.block_size;
        let lut = Tensor::from_vec(pair_lut().concat(), (256, 2), self.device())?;
        let idx = self.packed.to_dtype(DType::U32)?;
        let vals = lut.index_select(&idx, 0)?.flatten_all()?;
        let blocks = n.div_ceil(bs);
        let vals = pad_to(&vals.narrow(0, 0, n)?, blocks * bs)?;
        vals.reshape((blocks, bs))?
            .broadcast_mul(&absmax.reshape((blocks, 1))?)?
            .flatten_all()?
            .narrow(0, 0, n)?
            .reshape(self.shape.clone())
    }
}

/// `v` (1-D) padded with zeros to `len`.
fn pad_to(v: &Tensor, len: usize) -> Result<Tensor> {
    let n = v.elem_count();
    if n >= len {
        return Ok(v.clone());
    }
    let pad = Tensor::zeros(len - n, v.dtype(), v.device())?;
    Tensor::cat(&[v, &pad], 0)
}

/// For each byte, the two code values it encodes (high nibble first).
/// Vector dequantisation of whole blocks: the 16-entry code book fits one AVX-512 register
/// (two AVX2 ones), so a table lookup is a permute; about 10x the scalar pair table.
mod simd {
    /// Writes `out` (a multiple of 16 values, from `bytes`, high nibble first) and returns true
    /// where the CPU has AVX-512 or AVX2; false leaves `out` to the caller.
    #[inline]
    pub(super) fn dequantize_block(bytes: &[u8], absmax: f32, out: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            if !out.len().is_multiple_of(16) || bytes.len() * 2 < out.len() {
                return false;
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F; lengths checked above.
                unsafe { avx512(bytes, absmax, out) };
                return true;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2; lengths checked above.
                unsafe { avx2(bytes, absmax, out) };
                return true;
            }
        }
        let _ = (bytes, absmax, out);
        false
    }

    /// 16 values per step from 8 bytes: each byte widened to a 64-bit lane holds its two
    /// indices as the lane's two 32-bit halves (high nibble first), then one permute.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(bytes: &[u8], absmax: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        // SAFETY: NF4_CODE has 16 values.
        let code = unsafe { _mm512_loadu_ps(super::NF4_CODE.as_ptr()) };
        let scale = _mm512_set1_ps(absmax);
        let low = _mm512_set1_epi64(15);
        for (i, o) in out.chunks_exact_mut(16).enumerate() {
            // SAFETY: 8 bytes at 8·i are in `bytes` (2·len(bytes) ≥ len(out)).
            let b = unsafe { _mm_loadl_epi64(bytes.as_ptr().add(8 * i) as *const __m128i) };
            let q = _mm512_cvtepu8_epi64(b);
            let idx = _mm512_or_si512(
                _mm512_srli_epi64::<4>(q),
                _mm512_slli_epi64::<32>(_mm512_and_si512(q, low)),
            );
            let v = _mm512_mul_ps(_mm512_permutexvar_ps(idx, code), scale);
            // SAFETY: `o` holds 16 values.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        }
    }

    /// As [`avx512`] with 8 values per step; the lookup is two 8-entry permutes and a blend on
    /// bit 3 of the index.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(bytes: &[u8], absmax: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        // SAFETY: NF4_CODE has 16 values.
        let (lo_tab, hi_tab) = unsafe {
            (
                _mm256_loadu_ps(super::NF4_CODE.as_ptr()),
                _mm256_loadu_ps(super::NF4_CODE.as_ptr().add(8)),
            )
        };
        let scale = _mm256_set1_ps(absmax);
        let low = _mm256_set1_epi64x(15);
        for (i, o) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: 4 bytes at 4·i are in `bytes`.
            let b = unsafe {
                _mm_cvtsi32_si128(std::ptr::read_unaligned(
                    bytes.as_ptr().add(4 * i) as *const i32
                ))
            };
            let q = _mm256_cvtepu8_epi64(b);
            let idx = _mm256_or_si256(
                _mm256_srli_epi64::<4>(q),
                _mm256_slli_epi64::<32>(_mm256_and_si256(q, low)),
            );
            let lo = _mm256_permutevar8x32_ps(lo_tab, idx);
            let hi = _mm256_permutevar8x32_ps(hi_tab, idx);
            let upper = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
            let v = _mm256_mul_ps(_mm256_blendv_ps(lo, hi, upper), scale);
            // SAFETY: `o` holds 8 values.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
        }
    }
}

fn pair_lut() -> [[f32; 2]; 256] {
    std::array::from_fn(|b| [NF4_CODE[b >> 4], NF4_CODE[b & 15]])
}

/// Quantises `values` block-wise; returns the packed bytes and the f32 absmax per block.
pub fn quantize_slice(values: &[f32], block_size: usize) -> (Vec<u8>, Vec<f32>) {
    let bounds = nf4_bounds();
    let n = values.len();
    let mut absmax = Vec::with_capacity(n.div_ceil(block_size));
    let mut idx = vec![0u8; n.next_multiple_of(2)];
    for (block, chunk) in values.chunks(block_size).enumerate() {
        let am = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        // bitsandbytes multiplies by the reciprocal (clamped away from 0) and clamps to [-1, 1].
        let inv = 1.0 / am.max(1e-38);
        for (i, v) in chunk.iter().enumerate() {
            idx[block * block_size + i] = nf4_index(&bounds, (v * inv).clamp(-1.0, 1.0));
        }
    }
    if !n.is_multiple_of(2) {
        // An odd tail is padded with a scaled 0, as bitsandbytes pads.
        idx[n] = nf4_index(&bounds, 0.0);
    }
    let packed = idx.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    (packed, absmax)
}

/// Writes the dequantised values of elements `start .. start + out.len()` into `out` (blocks in
/// parallel when `start` is on a block boundary).
pub fn dequantize_range_cpu(
    packed: &[u8],
    absmax: &[f32],
    block_size: usize,
    start: usize,
    out: &mut [f32],
) {
    let lut = pair_lut();
    if block_size.is_multiple_of(2) && start.is_multiple_of(block_size) {
        let per_task = block_size * (16384 / block_size).max(1);
        out.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(c, dst)| {
                for (k, blk) in dst.chunks_mut(block_size).enumerate() {
                    let e = start + c * per_task + k * block_size;
                    let am = absmax[e / block_size];
                    let bytes = &packed[e / 2..(e + blk.len()).div_ceil(2)];
                    if simd::dequantize_block(bytes, am, blk) {
                        continue;
                    }
                    let mut pairs = blk.chunks_exact_mut(2);
                    for (pair, &byte) in (&mut pairs).zip(bytes) {
                        let [a, b] = lut[byte as usize];
                        pair[0] = a * am;
                        pair[1] = b * am;
                    }
                    if let (Some(last), Some(&byte)) =
                        (pairs.into_remainder().first_mut(), bytes.last())
                    {
                        *last = lut[byte as usize][0] * am;
                    }
                }
            });
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            let e = start + i;
            let byte = packed[e / 2];
            let q = if e.is_multiple_of(2) {
                byte >> 4
            } else {
                byte & 15
            };
            *o = NF4_CODE[q as usize] * absmax[e / block_size];
        }
    }
}

#[cfg(test)]
mod simd_tests {
    use super::*;

    /// The vector lookup gives the scalar table's values bit for bit, for every byte value.
    #[test]
    fn vector_dequantisation_equals_the_table() {
        let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let lut = pair_lut();
        let want: Vec<f32> = bytes
            .iter()
            .flat_map(|&b| lut[b as usize].map(|v| v * 0.37))
            .collect();
        let mut got = vec![f32::NAN; want.len()];
        if !simd::dequantize_block(&bytes, 0.37, &mut got) {
            eprintln!("no AVX-512 or AVX2 here: the scalar path is the only one");
            return;
        }
        assert_eq!(got, want);
    }
}
