//! Banded bidirectional attention: each query sees the keys within `half_width` positions
//! (`|i - j| <= half_width`, ModernBERT's local layers with `half_width = local_attention / 2`).
//!
//! A masked dense attention does `L²` work and keeps `L²` scores per head for the backward pass;
//! here queries are cut into blocks of `block` rows and each block is scored against only the
//! key blocks its band reaches (`halo` blocks either side), so work and memory are
//! `O(L · (2·halo + 1) · block)`. Built from differentiable ops (narrow, cat, matmul, and the
//! fused softmax of [`crate::fused`], which has its own backward), so gradients flow to q, k and v.
//!
//! Out-of-range keys (before position 0, after the end) and padding keys get [`MASKED`] in a
//! mask precomputed once per forward and shared by every local layer.
//!
//! [`chunked_attention`] is the dense counterpart for global layers: the same values and
//! gradients as `scaled_dot_product`, computed for bounded chunks of queries so the score
//! temporaries stay small (their memory is still `L²` for the backward pass; a memory-efficient
//! attention with its own backward belongs to the training engine).

use candle_core::{DType, Device, Result, Tensor};

use super::{AttentionOpts, MASKED, repeat_kv};
use crate::fused::softmax_last_dim;

/// Where the band reaches for every query block, as an additive mask.
#[derive(Debug, Clone)]
pub struct BandMask {
    batch: usize,
    len: usize,
    half_width: usize,
    block: usize,
    /// Query blocks: `ceil(len / block)`.
    blocks: usize,
    /// Key blocks scored on each side of a query block: `ceil(half_width / block)`.
    halo: usize,
    /// `(batch, 1, blocks, block, (2·halo + 1)·block)` in f32: 0 visible, [`MASKED`] not.
    mask: Tensor,
}

impl BandMask {
    /// Blocks of `half_width` rows (at least 1): the band then spans three key blocks, 1.5× the
    /// `2·half_width + 1` keys a query needs, with few and reasonably sized matmuls.
    pub fn new(
        batch: usize,
        len: usize,
        half_width: usize,
        key_padding: Option<&Tensor>,
        device: &Device,
    ) -> Result<BandMask> {
        BandMask::with_block(
            batch,
            len,
            half_width,
            half_width.max(1),
            key_padding,
            device,
        )
    }

    /// Keys scored per query by [`BandMask::new`]'s blocks, without building a mask.
    pub fn default_window(half_width: usize) -> usize {
        let block = half_width.max(1);
        (2 * half_width.div_ceil(block) + 1) * block
    }

    /// `key_padding`: `(batch, len)`, 1 for real tokens and 0 for padding (any dtype).
    pub fn with_block(
        batch: usize,
        len: usize,
        half_width: usize,
        block: usize,
        key_padding: Option<&Tensor>,
        device: &Device,
    ) -> Result<BandMask> {
        if block == 0 || len == 0 {
            candle_core::bail!(
                "banded attention needs block > 0 and len > 0 (block {block}, len {len})"
            );
        }
        let keep: Option<Vec<Vec<f32>>> = match key_padding {
            Some(p) => {
                let (pb, pl) = p.dims2()?;
                if (pb, pl) != (batch, len) {
                    candle_core::bail!(
                        "key padding has shape ({pb}, {pl}), expected ({batch}, {len})"
                    );
                }
                Some(p.to_dtype(DType::F32)?.to_vec2()?)
            }
            None => None,
        };
        let blocks = len.div_ceil(block);
        let halo = half_width.div_ceil(block);
        let width = (2 * halo + 1) * block;
        let mut data = vec![MASKED; batch * blocks * block * width];
        for b in 0..batch {
            for n in 0..blocks {
                for r in 0..block {
                    let i = n * block + r;
                    let row = ((b * blocks + n) * block + r) * width;
                    for c in 0..width {
                        // Key c of block n's window sits at (n - halo)·block + c.
                        let Some(j) = (n * block + c).checked_sub(halo * block) else {
                            continue;
                        };
                        // Queries past the end (i >= len) only fill the last block and their
                        // output is dropped; they get the same rule.
                        let real = j < len && keep.as_ref().is_none_or(|k| k[b][j] != 0.0);
                        if real && i.abs_diff(j) <= half_width {
                            data[row + c] = 0.0;
                        }
                    }
                }
            }
        }
        let mask = Tensor::from_vec(data, (batch, 1, blocks, block, width), device)?;
        Ok(BandMask {
            batch,
            len,
            half_width,
            block,
            blocks,
            halo,
            mask,
        })
    }

    pub fn half_width(&self) -> usize {
        self.half_width
    }

    pub fn block(&self) -> usize {
        self.block
    }

    /// Keys scored per query (the band plus the block rounding).
    pub fn window(&self) -> usize {
        (2 * self.halo + 1) * self.block
    }

    /// Whether the band is cheaper than a dense `len × len` attention.
    pub fn pays_off(&self) -> bool {
        self.window() < self.len
    }
}

/// `x (b, h, L, d)` with `before` zero rows in front and `after` behind, along `L`.
fn pad_rows(x: &Tensor, before: usize, after: usize) -> Result<Tensor> {
    if before == 0 && after == 0 {
        return x.contiguous();
    }
    let (b, h, _, d) = x.dims4()?;
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(Tensor::zeros((b, h, before, d), x.dtype(), x.device())?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(Tensor::zeros((b, h, after, d), x.dtype(), x.device())?);
    }
    Tensor::cat(&parts, 2)
}

/// `(b, h, (blocks + 2·halo)·block, d)` → every block's key window `(b·h·blocks, width, d)`.
fn windows(x: &Tensor, blocks: usize, block: usize, halo: usize) -> Result<Tensor> {
    let (b, h, _, d) = x.dims4()?;
    let xb = x.reshape((b, h, blocks + 2 * halo, block, d))?;
    let parts = (0..=2 * halo)
        .map(|o| xb.narrow(2, o, blocks))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 3)?.reshape((b * h * blocks, (2 * halo + 1) * block, d))
}

/// Score elements computed per chunk of queries (16 MB in f32). Bounding the temporaries keeps
/// them in cache and below glibc's mmap threshold, so their memory is reused instead of freshly
/// mapped and zeroed: page faults were a quarter of a 4,096-token forward with whole-sequence
/// score tensors.
const CHUNK_ELEMS: usize = 1 << 22;

/// `softmax(q·kᵀ·scale + band mask) · v` over the band only, with `q (b, h, L, d)` and
/// `k, v (b, h_kv, L, d)`; equal to [`super::scaled_dot_product`] with the dense mask of
/// [`super::build_mask`]`(.., Bidirectional, Some(half_width), key_padding, ..)` at every query
/// that sees at least one key. `dropout` drops attention probabilities (training).
pub fn banded_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BandMask,
    opts: AttentionOpts,
    dropout: Option<f32>,
) -> Result<Tensor> {
    banded_chunks(q, k, v, mask, opts, dropout, CHUNK_ELEMS)
}

fn banded_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BandMask,
    opts: AttentionOpts,
    dropout: Option<f32>,
    chunk_elems: usize,
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    if (b, l) != (mask.batch, mask.len) {
        candle_core::bail!(
            "band mask is for batch {} and length {}, got q with batch {b} and length {l}",
            mask.batch,
            mask.len
        );
    }
    let dtype = q.dtype();
    let n_rep = h / k.dim(1)?;
    let (blocks, block, halo) = (mask.blocks, mask.block, mask.halo);
    let width = mask.window();
    let padded = blocks * block;
    let tail = padded - l + halo * block;
    // The scale goes on q (L·d values) rather than on the scores (L·width).
    let q = pad_rows(&(q.to_dtype(DType::F32)? * opts.scale)?, 0, padded - l)?;
    let k = pad_rows(
        &repeat_kv(k, n_rep)?.to_dtype(DType::F32)?,
        halo * block,
        tail,
    )?;
    let v = pad_rows(&repeat_kv(v, n_rep)?, halo * block, tail)?;
    let per_chunk = (chunk_elems / (b * h * block * width)).max(1);
    let mut outs = Vec::with_capacity(blocks.div_ceil(per_chunk));
    for n0 in (0..blocks).step_by(per_chunk) {
        let nc = per_chunk.min(blocks - n0);
        let qc = q
            .narrow(2, n0 * block, nc * block)?
            .contiguous()?
            .reshape((b * h * nc, block, d))?;
        // Key rows of this chunk's windows: its blocks plus `halo` blocks on each side.
        let span = (nc + 2 * halo) * block;
        let kw = windows(
            &k.narrow(2, n0 * block, span)?.contiguous()?,
            nc,
            block,
            halo,
        )?;
        let vw = windows(
            &v.narrow(2, n0 * block, span)?.contiguous()?,
            nc,
            block,
            halo,
        )?;
        let mut scores = qc.matmul(&kw.t()?)?;
        if let Some(cap) = opts.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = scores
            .reshape((b, h, nc, block, width))?
            .broadcast_add(&mask.mask.narrow(2, n0, nc)?)?;
        let mut probs = softmax_last_dim(&scores)?;
        if let Some(p) = dropout.filter(|&p| p > 0.0) {
            probs = crate::dropout::dropout(&probs, p)?;
        }
        outs.push(
            probs
                .to_dtype(dtype)?
                .reshape((b * h * nc, block, width))?
                .matmul(&vw)?
                .reshape((b, h, nc * block, d))?,
        );
    }
    Tensor::cat(&outs, 2)?.narrow(2, 0, l)
}

/// Dense attention computed for chunks of queries at a time (global layers at long context):
/// the same values and gradients as [`super::scaled_dot_product`], with score temporaries of
/// bounded size instead of `L²`. `key_bias`: an additive mask `(b, 1, 1, Lk)` or
/// `(b, 1, Lq, Lk)` ([`super::MASKED`] where hidden). `dropout` drops attention probabilities.
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: Option<&Tensor>,
    opts: AttentionOpts,
    dropout: Option<f32>,
) -> Result<Tensor> {
    dense_chunks(q, k, v, key_bias, opts, dropout, CHUNK_ELEMS)
}

fn dense_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_bias: Option<&Tensor>,
    opts: AttentionOpts,
    dropout: Option<f32>,
    chunk_elems: usize,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    let lk = k.dim(2)?;
    let dtype = q.dtype();
    let n_rep = h / k.dim(1)?;
    let q = (q.to_dtype(DType::F32)? * opts.scale)?;
    let kt = repeat_kv(k, n_rep)?
        .to_dtype(DType::F32)?
        .t()?
        .contiguous()?;
    let v = repeat_kv(v, n_rep)?.contiguous()?;
    let bias = key_bias.map(|m| m.to_dtype(DType::F32)).transpose()?;
    let rows = (chunk_elems / (b * h * lk)).clamp(1, l);
    let mut outs = Vec::with_capacity(l.div_ceil(rows));
    for start in (0..l).step_by(rows) {
        let n = rows.min(l - start);
        let mut scores = q.narrow(2, start, n)?.contiguous()?.matmul(&kt)?;
        if let Some(cap) = opts.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        if let Some(m) = &bias {
            let m = if m.dim(2)? == 1 {
                m.clone()
            } else {
                m.narrow(2, start, n)?
            };
            scores = scores.broadcast_add(&m)?;
        }
        let mut probs = softmax_last_dim(&scores)?;
        if let Some(p) = dropout.filter(|&p| p > 0.0) {
            probs = crate::dropout::dropout(&probs, p)?;
        }
        outs.push(probs.to_dtype(dtype)?.matmul(&v)?);
    }
    if outs.len() == 1 {
        return Ok(outs.remove(0));
    }
    Tensor::cat(&outs, 2)
}

#[cfg(test)]
mod tests {
    use super::super::{MaskKind, build_mask, scaled_dot_product};
    use super::*;
    use candle_core::Var;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    type Attn<'a> = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + 'a>;

    /// Candidates vs the dense reference: outputs at real queries, and the gradients of a loss
    /// over real queries with respect to q, k and v.
    fn compare(
        shape: (usize, usize, usize, usize),
        kv_heads: usize,
        pad: &Tensor,
        reference: Attn,
        candidates: Vec<(&str, Attn)>,
        band_of_one: bool,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let (batch, heads, len, d) = shape;
        let q = Var::randn(0f32, 1.5, (batch, heads, len, d), &dev)?;
        let k = Var::randn(0f32, 1.5, (batch, kv_heads, len, d), &dev)?;
        let v = Var::randn(0f32, 1., (batch, kv_heads, len, d), &dev)?;
        // Only real queries count: a padding query's output is unused.
        let qmask = pad.reshape((batch, 1, len, 1))?;
        let run = |f: &Attn| f(q.as_tensor(), k.as_tensor(), v.as_tensor())?.broadcast_mul(&qmask);
        let yd = run(&reference)?;
        let w = Tensor::randn(0f32, 1., yd.shape(), &dev)?;
        let gd = (&yd * &w)?.sum_all()?.backward()?;
        for (name, f) in &candidates {
            let y = run(f)?;
            let diff = max_abs_diff(&y, &yd);
            assert!(diff < 1e-5, "{name}: values differ by {diff}");
            let g = (&y * &w)?.sum_all()?.backward()?;
            for (which, t) in [("q", &q), ("k", &k), ("v", &v)] {
                let a = g.get(t.as_tensor()).expect("candidate grad");
                let b = gd.get(t.as_tensor()).expect("dense grad");
                let diff = max_abs_diff(a, b);
                assert!(diff < 1e-5, "{name}: d{which} differs by {diff}");
                // With a band of one key the probabilities are constant: dq and dk are zero.
                let norm = a.abs()?.sum_all()?.to_scalar::<f32>()?;
                assert!(
                    norm > 0.0 || (which != "v" && band_of_one),
                    "{name}: d{which} is zero"
                );
            }
        }
        Ok(())
    }

    fn padding(lengths: &[usize], len: usize) -> Result<Tensor> {
        let pad: Vec<f32> = lengths
            .iter()
            .flat_map(|&n| (0..len).map(move |j| f32::from(u8::from(j < n))))
            .collect();
        Tensor::from_vec(pad, (lengths.len(), len), &Device::Cpu)
    }

    fn opts(d: usize) -> AttentionOpts {
        AttentionOpts {
            scale: 1.0 / (d as f64).sqrt(),
            softcap: None,
        }
    }

    /// Banded (in one chunk and block by block) and chunked dense attention with the band mask,
    /// against `scaled_dot_product` with the dense band mask.
    fn check(
        len: usize,
        half_width: usize,
        block: usize,
        lengths: &[usize],
        kv_heads: usize,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let (batch, heads, d) = (lengths.len(), 4, 8);
        let pad = padding(lengths, len)?;
        let band = BandMask::with_block(batch, len, half_width, block, Some(&pad), &dev)?;
        let dense_mask = build_mask(
            batch,
            len,
            len,
            MaskKind::Bidirectional,
            Some(half_width),
            Some(&pad),
            &dev,
        )?;
        let o = opts(d);
        let (band, dm) = (&band, &dense_mask);
        compare(
            (batch, heads, len, d),
            kv_heads,
            &pad,
            Box::new(move |q, k, v| scaled_dot_product(q, k, v, Some(dm), o)),
            vec![
                (
                    "banded",
                    Box::new(move |q, k, v| banded_attention(q, k, v, band, o, None)),
                ),
                (
                    "banded, one block per chunk",
                    Box::new(move |q, k, v| banded_chunks(q, k, v, band, o, None, 1)),
                ),
                (
                    "chunked dense, 5 rows per chunk",
                    Box::new(move |q, k, v| {
                        dense_chunks(q, k, v, Some(dm), o, None, 5 * batch * heads * len)
                    }),
                ),
            ],
            half_width == 0,
        )
    }

    #[test]
    fn chunked_dense_equals_dense_with_key_padding() -> Result<()> {
        // Global layers: a (b, 1, 1, L) key-padding bias, queries in uneven chunks.
        let dev = Device::Cpu;
        let (len, lengths, d) = (23, [23, 14, 5], 8);
        let pad = padding(&lengths, len)?;
        let full = build_mask(3, len, len, MaskKind::Bidirectional, None, Some(&pad), &dev)?;
        let bias = ((pad.ones_like()? - &pad)? * f64::from(MASKED))?.reshape((3, 1, 1, len))?;
        let o = opts(d);
        let (full, bias) = (&full, &bias);
        compare(
            (3, 4, len, d),
            2,
            &pad,
            Box::new(move |q, k, v| scaled_dot_product(q, k, v, Some(full), o)),
            vec![
                (
                    "chunked, one chunk",
                    Box::new(move |q, k, v| chunked_attention(q, k, v, Some(bias), o, None)),
                ),
                (
                    "chunked, 4 rows",
                    Box::new(move |q, k, v| {
                        dense_chunks(q, k, v, Some(bias), o, None, 4 * 3 * 4 * len)
                    }),
                ),
                (
                    "chunked, 1 row",
                    Box::new(move |q, k, v| dense_chunks(q, k, v, Some(bias), o, None, 1)),
                ),
            ],
            false,
        )
    }

    #[test]
    fn equals_dense_masked_attention() -> Result<()> {
        // Length a multiple of the block, and not; the band larger than a block (halo 2).
        check(48, 4, 4, &[48, 31, 9], 4)?;
        check(45, 4, 4, &[45, 45], 4)?;
        check(37, 5, 3, &[37, 20], 4)?;
        check(40, 3, 8, &[40], 4)?;
        Ok(())
    }

    #[test]
    fn grouped_query_heads_and_degenerate_bands() -> Result<()> {
        check(30, 4, 4, &[30, 17], 2)?;
        // Half-width 0: every query sees only itself.
        check(12, 0, 1, &[12], 4)?;
        // A band wider than the sequence is plain dense attention.
        check(10, 32, 32, &[10, 6], 4)?;
        Ok(())
    }

    #[test]
    fn memory_is_linear_in_length() -> Result<()> {
        let m = BandMask::new(1, 4096, 64, None, &Device::Cpu)?;
        assert_eq!(m.window(), 192);
        assert_eq!(BandMask::default_window(64), 192);
        assert_eq!(BandMask::default_window(0), 1);
        assert!(m.pays_off());
        assert_eq!(m.mask.elem_count(), 4096 * 192);
        Ok(())
    }
}
