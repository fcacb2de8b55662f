//! Memory-efficient attention with its own backward (FlashAttention-2's algorithm on the CPU):
//! the `Lq × Lk` probabilities are never stored.
//!
//! The forward walks query tiles of [`BQ`] rows over key tiles of [`BK`] keys with an online
//! softmax (running max `m` and sum `l` per row) and keeps, besides the output, one logsumexp
//! per query row. The backward recomputes each tile's probabilities from q, k and the
//! logsumexp, with `D = rowsum(dO ∘ O)`:
//!
//! ```text
//! P = exp(q·kᵀ·scale - lse)   dV += Pᵀ·dO   dS = P ∘ (dO·vᵀ - D)·scale   dQ += dS·k   dK += dSᵀ·q
//! ```
//!
//! Memory is `O(L·d)` per head instead of `O(L²)`; tiles that no query of a tile can see
//! (outside the causal region, the sliding window or the band) are skipped, so local attention
//! costs `O(L·w)`. A query that sees no key (all padding) gets a zero output and zero
//! gradients. Forward parallel over (batch, head), backward over (batch, kv head) so the
//! heads of a GQA group accumulate into their shared dk/dv without contention.
//!
//! f32 compute on the CPU; [`flash_attention`] answers `None` elsewhere (other devices,
//! soft-capping) and the caller takes the op-by-op path.

use std::sync::{Arc, OnceLock};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use super::AttentionOpts;
use crate::fused::{exp_neg, simd_dispatch};

/// Query rows per tile.
const BQ: usize = 64;
/// Keys per tile. With `d = 64` a tile of scores plus its q, k and v rows is about 64 KB.
const BK: usize = 64;
/// Independent accumulators in the row reductions (see `fused::LANES`).
const LANES: usize = 16;

/// Which keys a query sees (padding aside). Queries are the last `Lq` of `Lk` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// Every key (encoders, global layers).
    Full,
    /// Keys at or before the query; with a window `w`, only those with `q - k < w` (Mistral,
    /// Gemma 3 sliding layers).
    Causal { window: Option<usize> },
    /// Keys with `|q - k| <= half_width` (ModernBERT's local layers).
    Band { half_width: usize },
}

impl Span {
    /// The keys `[start, end)` visible from position `qpos` among `lk` keys. Both ends are
    /// non-decreasing in `qpos`, which the tile bounds rely on.
    #[inline]
    fn range(self, qpos: usize, lk: usize) -> (usize, usize) {
        let (start, end) = match self {
            Span::Full => (0, lk),
            Span::Causal { window } => (
                window.map_or(0, |w| (qpos + 1).saturating_sub(w)),
                (qpos + 1).min(lk),
            ),
            Span::Band { half_width } => (
                qpos.saturating_sub(half_width),
                qpos.saturating_add(half_width).saturating_add(1).min(lk),
            ),
        };
        (start.min(end), end)
    }
}

/// `(b, Lk)` key padding (1 or any non-zero: a real token) as the flags [`flash_attention`]
/// takes; computed once per forward and shared by the layers.
pub fn key_padding(mask: &Tensor) -> Result<Arc<[u8]>> {
    let flags: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(flags.iter().map(|&x| u8::from(x != 0.0)).collect())
}

/// `softmax(q·kᵀ·scale + mask)·v` with `q (b, h, Lq, d)` and `k, v (b, h_kv, Lk, d)`
/// (`Lq <= Lk`, `h` a multiple of `h_kv`), the mask given by `span` and `key_padding`
/// (`b · Lk` flags from [`key_padding`]). Differentiable in q, k and v; the result has q's
/// dtype. `None` when this path does not apply (not on the CPU, or soft-capping).
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    span: Span,
    key_padding: Option<&Arc<[u8]>>,
    opts: AttentionOpts,
) -> Result<Option<Tensor>> {
    if opts.softcap.is_some() || !q.device().is_cpu() {
        return Ok(None);
    }
    let op = FlashAttention::new(q.dims(), k.dims(), v.dims(), span, key_padding, opts)?;
    let dtype = q.dtype();
    let f32c = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    let y = f32c(q)?.apply_op3(&f32c(k)?, &f32c(v)?, op)?;
    Ok(Some(y.to_dtype(dtype)?))
}

/// [`flash_attention`] for q, k and v packed as one `(3, b, h, L, d)` tensor, as
/// [`super::layout::split_heads`] makes them from a fused qkv projection (ModernBERT). The
/// gradient comes back packed as well: taken apart into three views first, each view's
/// backward would send a zero-padded gradient of the full packed size, to be summed.
pub fn flash_attention_packed(
    qkv: &Tensor,
    span: Span,
    key_padding: Option<&Arc<[u8]>>,
    opts: AttentionOpts,
) -> Result<Option<Tensor>> {
    if opts.softcap.is_some() || !qkv.device().is_cpu() {
        return Ok(None);
    }
    let (three, b, h, l, d) = qkv.dims5()?;
    if three != 3 {
        candle_core::bail!(
            "flash attention: packed qkv {:?} is not (3, b, h, L, d)",
            qkv.dims()
        );
    }
    let dims = [b, h, l, d];
    let op = FlashAttention::new(&dims, &dims, &dims, span, key_padding, opts)?;
    let dtype = qkv.dtype();
    let y = qkv
        .to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1(Packed(op))?;
    Ok(Some(y.to_dtype(dtype)?))
}

struct FlashAttention {
    span: Span,
    scale: f32,
    key_padding: Option<Arc<[u8]>>,
    /// Per query row `(b, h, Lq)`, written by the forward for the backward: `m + ln l`, or
    /// `+inf` for a row that sees no key (its probabilities then recompute to 0).
    lse: OnceLock<Vec<f32>>,
}

/// The same op on one packed `(3, b, h, L, d)` input.
struct Packed(FlashAttention);

impl FlashAttention {
    /// Checks the shapes of q, k and v (`(b, h, Lq, d)`, `(b, h_kv, Lk, d)` twice).
    fn new(
        q: &[usize],
        k: &[usize],
        v: &[usize],
        span: Span,
        key_padding: Option<&Arc<[u8]>>,
        opts: AttentionOpts,
    ) -> Result<FlashAttention> {
        let (&[b, h, lq, d], &[kb, hkv, lk, kd]) = (q, k) else {
            candle_core::bail!("flash attention: q {q:?} and k {k:?} are not (b, h, L, d)");
        };
        if v != k || kb != b || kd != d {
            candle_core::bail!(
                "flash attention: q {q:?}, k {k:?} and v {v:?} do not fit (b, h, L, d)"
            );
        }
        if hkv == 0 || !h.is_multiple_of(hkv) || lq > lk {
            candle_core::bail!(
                "flash attention: {h} query heads over {hkv} kv heads, {lq} queries over {lk} keys"
            );
        }
        if let Some(p) = key_padding
            && p.len() != b * lk
        {
            candle_core::bail!(
                "flash attention: key padding has {} flags, expected batch {b} × {lk} keys",
                p.len()
            );
        }
        Ok(FlashAttention {
            span,
            scale: opts.scale as f32,
            key_padding: key_padding.cloned(),
            lse: OnceLock::new(),
        })
    }

    fn geom(&self, (h, lq, d): (usize, usize, usize), (hkv, lk): (usize, usize)) -> Geom {
        Geom {
            h,
            hkv,
            lq,
            lk,
            d,
            span: self.span,
            scale: self.scale,
        }
    }

    /// The output `(b, h, Lq, d)`; keeps the logsumexp rows for the backward.
    fn forward(&self, b: usize, g: &Geom, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let (h, hkv, lq, lk, d) = (g.h, g.hkv, g.lq, g.lk, g.d);
        let mut out = vec![0f32; b * h * lq * d];
        let mut lse = vec![f32::INFINITY; b * h * lq];
        if !out.is_empty() && lk > 0 {
            let rep = g.rep();
            out.par_chunks_mut(lq * d)
                .zip(lse.par_chunks_mut(lq))
                .enumerate()
                .for_each(|(bh, (o, l))| {
                    let (bi, hi) = (bh / h, bh % h);
                    let kv = (bi * hkv + hi / rep) * lk * d;
                    let keep = self.key_padding.as_deref().map(|p| &p[bi * lk..][..lk]);
                    forward_head(
                        g,
                        &q[bh * lq * d..][..lq * d],
                        &k[kv..][..lk * d],
                        &v[kv..][..lk * d],
                        keep,
                        o,
                        l,
                    );
                });
        }
        self.lse
            .set(lse)
            .map_err(|_| candle_core::Error::msg("flash attention: op applied twice"))?;
        Ok(out)
    }

    fn lse(&self) -> Result<&[f32]> {
        match self.lse.get() {
            Some(lse) => Ok(lse),
            None => candle_core::bail!("flash attention: backward before forward"),
        }
    }
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy)]
struct Geom {
    h: usize,
    hkv: usize,
    lq: usize,
    lk: usize,
    d: usize,
    span: Span,
    scale: f32,
}

impl Geom {
    /// Visible keys of query row `i`.
    #[inline]
    fn range(&self, i: usize) -> (usize, usize) {
        self.span.range(i + self.lk - self.lq, self.lk)
    }

    fn rep(&self) -> usize {
        self.h / self.hkv
    }
}

fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    crate::cpu::contiguous_f32(storage, layout, "flash attention")
}

fn storage_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        candle_core::bail!("flash attention: CPU tensors only");
    };
    cpu_f32(cpu, layout)
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "clinstruct-flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        let (b, h, lq, d) = l1.shape().dims4()?;
        let (_, hkv, lk, _) = l2.shape().dims4()?;
        let out = self.forward(b, &self.geom((h, lq, d), (hkv, lk)), q, k, v)?;
        Ok((CpuStorage::F32(out), Shape::from((b, h, lq, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse()?;
        let (b, h, lq, d) = q.dims4()?;
        let (_, hkv, lk, _) = k.dims4()?;
        let g = self.geom((h, lq, d), (hkv, lk));
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let out = out.contiguous()?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = out.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let mut dq = vec![0f32; b * h * lq * d];
        let mut dk = vec![0f32; b * hkv * lk * d];
        let mut dv = vec![0f32; b * hkv * lk * d];
        backward(
            &g,
            [
                storage_f32(&qs, ql)?,
                storage_f32(&ks, kl)?,
                storage_f32(&vs, vl)?,
            ],
            storage_f32(&os, ol)?,
            storage_f32(&gs, gl)?,
            lse,
            self.key_padding.as_deref(),
            [&mut dq, &mut dk, &mut dv],
        );
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, lq, d), dev)?),
            Some(Tensor::from_vec(dk, (b, hkv, lk, d), dev)?),
            Some(Tensor::from_vec(dv, (b, hkv, lk, d), dev)?),
        ))
    }
}

impl CustomOp1 for Packed {
    fn name(&self) -> &'static str {
        "clinstruct-flash-attention-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let all = cpu_f32(s, l)?;
        let (_, b, h, len, d) = l.shape().dims5()?;
        let n = b * h * len * d;
        let (q, k, v) = (&all[..n], &all[n..2 * n], &all[2 * n..]);
        let out = self
            .0
            .forward(b, &self.0.geom((h, len, d), (h, len)), q, k, v)?;
        Ok((CpuStorage::F32(out), Shape::from((b, h, len, d))))
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let lse = self.0.lse()?;
        let (_, b, h, len, d) = qkv.dims5()?;
        let n = b * h * len * d;
        let g = self.0.geom((h, len, d), (h, len));
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let out = out.contiguous()?;
        let (xs, xl) = qkv.storage_and_layout();
        let (os, ol) = out.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let all = storage_f32(&xs, xl)?;
        let mut dall = vec![0f32; 3 * n];
        let (dq, dkv) = dall.split_at_mut(n);
        let (dk, dv) = dkv.split_at_mut(n);
        backward(
            &g,
            [&all[..n], &all[n..2 * n], &all[2 * n..]],
            storage_f32(&os, ol)?,
            storage_f32(&gs, gl)?,
            lse,
            self.0.key_padding.as_deref(),
            [dq, dk, dv],
        );
        Ok(Some(Tensor::from_vec(
            dall,
            (3, b, h, len, d),
            qkv.device(),
        )?))
    }
}

/// dq, dk and dv (zero-filled by the caller) for q, k, v.
fn backward(
    g: &Geom,
    [q, k, v]: [&[f32]; 3],
    out: &[f32],
    dout: &[f32],
    lse: &[f32],
    padding: Option<&[u8]>,
    [dq, dk, dv]: [&mut [f32]; 3],
) {
    let (lq, lk, d, rep) = (g.lq, g.lk, g.d, g.rep());
    if dq.is_empty() || dk.is_empty() {
        return;
    }
    // D = rowsum(dO ∘ O), one per query row.
    let dsum: Vec<f32> = dout
        .par_chunks(d)
        .zip(out.par_chunks(d))
        .map(|(a, o)| a.iter().zip(o).map(|(x, y)| x * y).sum())
        .collect();
    // One task per (batch, kv head): it owns dk, dv of that head and dq of its query heads.
    dq.par_chunks_mut(rep * lq * d)
        .zip(dk.par_chunks_mut(lk * d))
        .zip(dv.par_chunks_mut(lk * d))
        .enumerate()
        .for_each(|(bg, ((dq, dk), dv))| {
            let bi = bg / g.hkv;
            let h0 = bg * rep; // = bi·h + (bg % hkv)·rep
            let rows = h0 * lq;
            let keep = padding.map(|p| &p[bi * lk..][..lk]);
            let group = Group {
                q: &q[rows * d..][..rep * lq * d],
                k: &k[bg * lk * d..][..lk * d],
                v: &v[bg * lk * d..][..lk * d],
                dout: &dout[rows * d..][..rep * lq * d],
                lse: &lse[rows..][..rep * lq],
                dsum: &dsum[rows..][..rep * lq],
                keep,
            };
            backward_group(g, &group, dq, dk, dv);
        });
}

/// The inputs of one (batch, kv head) backward task.
struct Group<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    lse: &'a [f32],
    dsum: &'a [f32],
    keep: Option<&'a [u8]>,
}

/// `dst (m × n) = [dst +] alpha · lhs (m × k) · rhs (k × n)`, each matrix given by its slice,
/// row stride and column stride; single-threaded (the callers run one task per head). See
/// [`crate::cpu::gemm_f32`].
#[allow(clippy::too_many_arguments)]
#[inline]
fn mm(
    mnk: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    alpha: f32,
) {
    crate::cpu::gemm_f32(
        mnk,
        (dst, dst_rs, accumulate),
        (lhs, lhs_strides),
        (rhs, rhs_strides),
        alpha,
        gemm::Parallelism::None,
    );
}

/// Scores of query rows `[i0, i0 + nq)` against keys `[j0, j0 + nk)` into `s` (row stride
/// [`BK`]), with hidden keys set to `-inf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn scores(
    g: &Geom,
    q: &[f32],
    k: &[f32],
    keep: Option<&[u8]>,
    (i0, nq): (usize, usize),
    (j0, nk): (usize, usize),
    s: &mut [f32],
) {
    let d = g.d;
    mm(
        (nq, nk, d),
        s,
        BK,
        false,
        &q[i0 * d..],
        (d, 1),
        &k[j0 * d..],
        (1, d),
        g.scale,
    );
    let keys_real = keep.is_none_or(|p| p[j0..j0 + nk].iter().all(|&x| x != 0));
    // Every row sees the whole tile when the last row's window starts before it and the first
    // row's ends after it (both ends are monotone).
    if keys_real && g.range(i0 + nq - 1).0 <= j0 && g.range(i0).1 >= j0 + nk {
        return;
    }
    for r in 0..nq {
        let (a, e) = g.range(i0 + r);
        let row = &mut s[r * BK..r * BK + nk];
        for (c, x) in row.iter_mut().enumerate() {
            let j = j0 + c;
            if j < a || j >= e || keep.is_some_and(|p| p[j] == 0) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// `x ← exp(x - shift)` in place; returns the sum.
#[inline(always)]
fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp_neg(c[i] - shift);
            sums[i] += c[i];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_neg(*v - shift);
        sum += *v;
    }
    sum
}

simd_dispatch!(forward_head => forward_head_portable(g: &Geom, q: &[f32], k: &[f32], v: &[f32], keep: Option<&[u8]>, out: &mut [f32], lse: &mut [f32]));

/// One (batch, head): `out (Lq, d)` and `lse (Lq)` from `q (Lq, d)`, `k, v (Lk, d)`.
#[inline(always)]
fn forward_head_portable(
    g: &Geom,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: Option<&[u8]>,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let d = g.d;
    let mut s = vec![0f32; BQ * BK];
    let mut acc = vec![0f32; BQ * d];
    let mut m = [f32::NEG_INFINITY; BQ];
    let mut l = [0f32; BQ];
    for i0 in (0..g.lq).step_by(BQ) {
        let nq = BQ.min(g.lq - i0);
        let (ks, ke) = (g.range(i0).0, g.range(i0 + nq - 1).1);
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        acc[..nq * d].fill(0.0);
        let mut j0 = ks;
        while j0 < ke {
            let nk = BK.min(ke - j0);
            scores(g, q, k, keep, (i0, nq), (j0, nk), &mut s);
            for r in 0..nq {
                let row = &mut s[r * BK..r * BK + nk];
                let m_new = m[r].max(row_max(row));
                if m_new == f32::NEG_INFINITY {
                    // Nothing visible yet in this row: no contribution.
                    row.fill(0.0);
                    continue;
                }
                let alpha = exp_neg(m[r] - m_new);
                l[r] = l[r] * alpha + exp_shift_sum(row, m_new);
                if alpha != 1.0 {
                    for x in &mut acc[r * d..(r + 1) * d] {
                        *x *= alpha;
                    }
                }
                m[r] = m_new;
            }
            mm(
                (nq, d, nk),
                &mut acc,
                d,
                true,
                &s,
                (BK, 1),
                &v[j0 * d..],
                (d, 1),
                1.0,
            );
            j0 += nk;
        }
        for r in 0..nq {
            let o = &mut out[(i0 + r) * d..][..d];
            if l[r] > 0.0 {
                let inv = 1.0 / l[r];
                for (o, a) in o.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                    *o = a * inv;
                }
                lse[i0 + r] = m[r] + l[r].ln();
            } else {
                o.fill(0.0);
                lse[i0 + r] = f32::INFINITY;
            }
        }
    }
}

simd_dispatch!(backward_group => backward_group_portable(g: &Geom, x: &Group, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]));

/// One (batch, kv head): key tiles outside, then the group's query heads and the query tiles
/// that can see the key tile.
#[inline(always)]
fn backward_group_portable(g: &Geom, x: &Group, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let (lq, d) = (g.lq, g.d);
    let mut s = vec![0f32; BQ * BK];
    let mut dp = vec![0f32; BQ * BK];
    for j0 in (0..g.lk).step_by(BK) {
        let nk = BK.min(g.lk - j0);
        if x.keep
            .is_some_and(|p| p[j0..j0 + nk].iter().all(|&f| f == 0))
        {
            continue;
        }
        // Query rows whose window reaches this tile: a contiguous range (monotone ends).
        let qa = partition(lq, |i| g.range(i).1 <= j0);
        let qb = partition(lq, |i| g.range(i).0 < j0 + nk);
        if qa >= qb {
            continue;
        }
        let kt = &x.k[j0 * d..];
        let vt = &x.v[j0 * d..];
        for t in 0..g.rep() {
            let head = t * lq;
            let qh = &x.q[head * d..][..lq * d];
            let doh = &x.dout[head * d..][..lq * d];
            let dqh = &mut dq[head * d..][..lq * d];
            let mut i0 = qa;
            while i0 < qb {
                let nq = BQ.min(qb - i0);
                scores(g, qh, x.k, x.keep, (i0, nq), (j0, nk), &mut s);
                for r in 0..nq {
                    let shift = x.lse[head + i0 + r];
                    for v in &mut s[r * BK..r * BK + nk] {
                        *v = exp_neg(*v - shift);
                    }
                }
                let (qi, doi) = (&qh[i0 * d..], &doh[i0 * d..]);
                // dV += Pᵀ·dO
                mm(
                    (nk, d, nq),
                    &mut dv[j0 * d..],
                    d,
                    true,
                    &s,
                    (1, BK),
                    doi,
                    (d, 1),
                    1.0,
                );
                // dP = dO·vᵀ
                mm(
                    (nq, nk, d),
                    &mut dp,
                    BK,
                    false,
                    doi,
                    (d, 1),
                    vt,
                    (1, d),
                    1.0,
                );
                for r in 0..nq {
                    let dr = x.dsum[head + i0 + r];
                    let (sr, pr) = (&mut s[r * BK..r * BK + nk], &dp[r * BK..r * BK + nk]);
                    for (p, dpv) in sr.iter_mut().zip(pr) {
                        *p *= (dpv - dr) * g.scale;
                    }
                }
                // dQ += dS·k, dK += dSᵀ·q
                mm(
                    (nq, d, nk),
                    &mut dqh[i0 * d..],
                    d,
                    true,
                    &s,
                    (BK, 1),
                    kt,
                    (d, 1),
                    1.0,
                );
                mm(
                    (nk, d, nq),
                    &mut dk[j0 * d..],
                    d,
                    true,
                    &s,
                    (1, BK),
                    qi,
                    (d, 1),
                    1.0,
                );
                i0 += nq;
            }
        }
    }
}

/// The first `i` in `0..n` where `pred` turns false (`pred` true then false).
fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if pred(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::super::banded::{BandMask, banded_attention};
    use super::super::{MaskKind, build_mask, repeat_kv, scaled_dot_product};
    use super::*;
    use candle_core::{D, Device, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// One mask case: the span, padding lengths per row (left- or right-padded), sizes.
    struct Case {
        name: &'static str,
        span: Span,
        heads: usize,
        kv_heads: usize,
        lq: usize,
        lk: usize,
        d: usize,
        /// `(real tokens, left-padded)` per batch row.
        rows: Vec<(usize, bool)>,
    }

    impl Case {
        fn padding(&self) -> Tensor {
            let flags: Vec<f32> = self
                .rows
                .iter()
                .flat_map(|&(n, left)| {
                    (0..self.lk).map(move |j| {
                        let real = if left { j >= self.lk - n } else { j < n };
                        f32::from(u8::from(real))
                    })
                })
                .collect();
            Tensor::from_vec(flags, (self.rows.len(), self.lk), &Device::Cpu).unwrap()
        }

        /// The dense additive mask `(b, 1, Lq, Lk)` of `build_mask`.
        fn dense_mask(&self) -> Tensor {
            let pad = self.padding();
            let (kind, window) = match self.span {
                Span::Full => (MaskKind::Bidirectional, None),
                Span::Causal { window } => (MaskKind::Causal, window),
                Span::Band { half_width } => (MaskKind::Bidirectional, Some(half_width)),
            };
            build_mask(
                self.rows.len(),
                self.lq,
                self.lk,
                kind,
                window,
                Some(&pad),
                &Device::Cpu,
            )
            .unwrap()
        }

        /// `(b, 1, Lq, 1)`: 1 where the query row sees at least one key.
        fn seeing_rows(&self) -> Tensor {
            let m = self.dense_mask();
            m.eq(0f32)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .max_keepdim(D::Minus1)
                .unwrap()
        }
    }

    fn opts(d: usize) -> AttentionOpts {
        AttentionOpts {
            scale: 1.0 / (d as f64).sqrt(),
            softcap: None,
        }
    }

    fn cases() -> Vec<Case> {
        let c = |name, span, heads, kv_heads, lq, lk, rows: Vec<(usize, bool)>| Case {
            name,
            span,
            heads,
            kv_heads,
            lq,
            lk,
            d: 16,
            rows,
        };
        vec![
            c(
                "full, padded",
                Span::Full,
                4,
                4,
                70,
                70,
                vec![(70, false), (33, false)],
            ),
            c("full, gqa", Span::Full, 4, 2, 130, 130, vec![(130, false)]),
            c(
                "causal, left padding",
                Span::Causal { window: None },
                4,
                2,
                75,
                75,
                vec![(75, true), (40, true)],
            ),
            c(
                "causal, query offset",
                Span::Causal { window: None },
                4,
                1,
                37,
                150,
                vec![(150, true), (100, true)],
            ),
            c(
                "causal sliding window",
                Span::Causal { window: Some(20) },
                4,
                2,
                140,
                140,
                vec![(140, false), (90, false)],
            ),
            c(
                "sliding window, offset, left padding",
                Span::Causal { window: Some(70) },
                2,
                2,
                66,
                200,
                vec![(200, true), (120, true)],
            ),
            c(
                "band, padded",
                Span::Band { half_width: 9 },
                4,
                4,
                150,
                150,
                vec![(150, false), (61, false)],
            ),
            c(
                "band wider than a tile, gqa",
                Span::Band { half_width: 80 },
                4,
                2,
                200,
                200,
                vec![(200, false), (130, false)],
            ),
            c(
                "band of one",
                Span::Band { half_width: 0 },
                2,
                2,
                20,
                20,
                vec![(20, false)],
            ),
        ]
    }

    /// Against `scaled_dot_product` with the dense mask: outputs at rows that see a key, and
    /// gradients of a loss over those rows (relative to their scale), within 1e-5; rows that
    /// see nothing are exactly 0 and receive no gradient.
    #[test]
    fn equals_dense_attention_with_every_mask() -> Result<()> {
        let dev = Device::Cpu;
        for case in cases() {
            let b = case.rows.len();
            let q = Var::randn(0f32, 1.5, (b, case.heads, case.lq, case.d), &dev)?;
            let k = Var::randn(0f32, 1.5, (b, case.kv_heads, case.lk, case.d), &dev)?;
            let v = Var::randn(0f32, 1., (b, case.kv_heads, case.lk, case.d), &dev)?;
            let seeing = case.seeing_rows();
            let w = Tensor::randn(0f32, 1., (b, case.heads, case.lq, case.d), &dev)?
                .broadcast_mul(&seeing)?;
            let o = opts(case.d);
            let pad = key_padding(&case.padding())?;
            let mask = case.dense_mask();
            let yd =
                scaled_dot_product(q.as_tensor(), k.as_tensor(), v.as_tensor(), Some(&mask), o)?;
            let yf = flash_attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                case.span,
                Some(&pad),
                o,
            )?
            .expect("cpu f32 path");
            let diff = max_abs(&(&yd - &yf)?.broadcast_mul(&seeing)?);
            assert!(diff < 1e-5, "{}: outputs differ by {diff}", case.name);
            let blind = (seeing.ones_like()? - &seeing)?;
            assert_eq!(max_abs(&yf.broadcast_mul(&blind)?), 0.0, "{}", case.name);
            let gd = (&yd * &w)?.sum_all()?.backward()?;
            // The flash loss also covers blind rows: their gradient must vanish.
            let wf = (&w + Tensor::randn(0f32, 1., w.shape(), &dev)?.broadcast_mul(&blind)?)?;
            let gf = (&yf * &wf)?.sum_all()?.backward()?;
            for (which, t) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, r) = (gf.get(t).unwrap(), gd.get(t).unwrap());
                // Relative to the gradient's scale: inputs are unseeded and the sums of
                // 200-key rows reach ~10, where f32 rounding alone passes 1e-5 absolute.
                let diff = max_abs(&(a - r)?) / max_abs(r).max(1.0);
                assert!(
                    diff < 1e-5,
                    "{}: d{which} differs by {diff} (rel)",
                    case.name
                );
                let norm = max_abs(a);
                assert!(norm.is_finite(), "{}: d{which} not finite", case.name);
                let constant_probs = case.span == Span::Band { half_width: 0 };
                assert!(
                    norm > 0.0 || (which != "v" && constant_probs),
                    "{}: d{which} = 0",
                    case.name
                );
            }
            // A blind query row gets no gradient.
            let dq_blind = gf.get(&q).unwrap().broadcast_mul(&blind)?;
            assert_eq!(max_abs(&dq_blind), 0.0, "{}", case.name);
        }
        Ok(())
    }

    /// f64 reference from plain candle ops (repeat_kv, matmul, additive mask, softmax).
    fn reference_f64(case: &Case, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let rep = case.heads / case.kv_heads;
        let k = repeat_kv(k, rep)?;
        let v = repeat_kv(v, rep)?;
        let scale = 1.0 / (case.d as f64).sqrt();
        let s = (q.matmul(&k.t()?)? * scale)?
            .broadcast_add(&case.dense_mask().to_dtype(DType::F64)?)?;
        candle_nn::ops::softmax(&s, D::Minus1)?.matmul(&v)
    }

    /// Gradients against an f64 autograd oracle, and central finite differences of the flash
    /// loss itself on sampled coordinates.
    #[test]
    fn gradients_match_f64_oracle_and_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for case in cases() {
            let b = case.rows.len();
            let q = Tensor::randn(0f64, 1.2, (b, case.heads, case.lq, case.d), &dev)?;
            let k = Tensor::randn(0f64, 1.2, (b, case.kv_heads, case.lk, case.d), &dev)?;
            let v = Tensor::randn(0f64, 1., (b, case.kv_heads, case.lk, case.d), &dev)?;
            let seeing = case.seeing_rows().to_dtype(DType::F64)?;
            let w = Tensor::randn(0f64, 1., q.shape(), &dev)?.broadcast_mul(&seeing)?;
            let pad = key_padding(&case.padding())?;
            let o = opts(case.d);
            let (q64, k64, v64) = (
                Var::from_tensor(&q)?,
                Var::from_tensor(&k)?,
                Var::from_tensor(&v)?,
            );
            let g64 = (reference_f64(&case, &q64, &k64, &v64)? * &w)?
                .sum_all()?
                .backward()?;
            let to32 = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap();
            let (q32, k32, v32) = (to32(&q), to32(&k), to32(&v));
            let w32 = w.to_dtype(DType::F32)?;
            let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> Result<Tensor> {
                let y = flash_attention(q, k, v, case.span, Some(&pad), o)?.unwrap();
                (y * &w32)?.sum_all()
            };
            let g32 = loss(&q32, &k32, &v32)?.backward()?;
            for (which, t64, t32) in [("q", &q64, &q32), ("k", &k64, &k32), ("v", &v64, &v32)] {
                let r = g64.get(t64).unwrap();
                let a = g32.get(t32).unwrap().to_dtype(DType::F64)?;
                let diff = max_abs(&(&a - r)?);
                let scale = max_abs(r).max(1.0);
                assert!(
                    diff < 2e-5 * scale,
                    "{}: d{which} vs f64 by {diff}",
                    case.name
                );
            }
            // Finite differences on a few coordinates of each input (f32: eps 1e-2).
            let eps = 1e-2f32;
            for (which, t) in [("q", &q32), ("k", &k32), ("v", &v32)] {
                let grad = g32.get(t).unwrap().flatten_all()?.to_vec1::<f32>()?;
                let base = t.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                for idx in [0, base.len() / 3, base.len() / 2 + 1, base.len() - 1] {
                    let at = |delta: f32| -> Result<f32> {
                        let mut x = base.clone();
                        x[idx] += delta;
                        let x = Tensor::from_vec(x, t.shape(), &dev)?;
                        let (qq, kk, vv) = match which {
                            "q" => (x, k32.as_tensor().clone(), v32.as_tensor().clone()),
                            "k" => (q32.as_tensor().clone(), x, v32.as_tensor().clone()),
                            _ => (q32.as_tensor().clone(), k32.as_tensor().clone(), x),
                        };
                        loss(&qq, &kk, &vv)?.to_scalar::<f32>()
                    };
                    let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
                    let tol = 2e-3 * grad[idx].abs().max(1.0);
                    assert!(
                        (fd - grad[idx]).abs() < tol,
                        "{}: d{which}[{idx}] = {} but finite differences give {fd}",
                        case.name,
                        grad[idx]
                    );
                }
            }
        }
        Ok(())
    }

    /// Band attention against the blocked banded path: values and gradients (relative to their
    /// scale) within 1e-5.
    #[test]
    fn equals_banded_attention() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, l, d, hw) = (2, 4, 300, 16, 64);
        let pad_t = Tensor::from_vec(
            (0..b * l)
                .map(|i| f32::from(u8::from(i % l < [300, 170][i / l])))
                .collect(),
            (b, l),
            &dev,
        )?;
        let band = BandMask::new(b, l, hw, Some(&pad_t), &dev)?;
        let pad = key_padding(&pad_t)?;
        let q = Var::randn(0f32, 1.5, (b, h, l, d), &dev)?;
        let k = Var::randn(0f32, 1.5, (b, 2, l, d), &dev)?;
        let v = Var::randn(0f32, 1., (b, 2, l, d), &dev)?;
        let rows = pad_t.reshape((b, 1, l, 1))?;
        let w = Tensor::randn(0f32, 1., (b, h, l, d), &dev)?.broadcast_mul(&rows)?;
        let o = opts(d);
        let yb = banded_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &band, o, None)?;
        let yf = flash_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Span::Band { half_width: hw },
            Some(&pad),
            o,
        )?
        .unwrap();
        assert!(max_abs(&(&yb - &yf)?.broadcast_mul(&rows)?) < 1e-5);
        let gb = (&yb * &w)?.sum_all()?.backward()?;
        let gf = (&yf * &w)?.sum_all()?.backward()?;
        for t in [&q, &k, &v] {
            let (a, r) = (gf.get(t).unwrap(), gb.get(t).unwrap());
            let diff = max_abs(&(a - r)?) / max_abs(r).max(1.0);
            assert!(diff < 1e-5, "{diff} (rel)");
        }
        Ok(())
    }

    /// The packed entry point gives the unpacked op's output, and its packed gradient holds
    /// the unpacked dq, dk and dv.
    #[test]
    fn packed_equals_unpacked() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, l, d) = (2, 3, 70, 16);
        let qkv = Var::randn(0f32, 1.5, (3, b, h, l, d), &dev)?;
        let pad = key_padding(&Tensor::from_vec(
            (0..b * l)
                .map(|i| f32::from(u8::from(i % l < [70, 41][i / l])))
                .collect(),
            (b, l),
            &dev,
        )?)?;
        let w = Tensor::randn(0f32, 1., (b, h, l, d), &dev)?;
        for span in [Span::Full, Span::Band { half_width: 20 }] {
            let o = opts(d);
            let yp = flash_attention_packed(qkv.as_tensor(), span, Some(&pad), o)?.unwrap();
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let yu = flash_attention(&q, &k, &v, span, Some(&pad), o)?.unwrap();
            assert_eq!(max_abs(&(&yp - &yu)?), 0.0, "{span:?}");
            let gp = (&yp * &w)?.sum_all()?.backward()?;
            let gu = (&yu * &w)?.sum_all()?.backward()?;
            let (a, r) = (gp.get(&qkv).unwrap(), gu.get(&qkv).unwrap());
            assert_eq!(max_abs(&(a - r)?), 0.0, "{span:?}");
            assert!(max_abs(a) > 0.0);
        }
        let wrong = Tensor::zeros((2, b, h, l, d), DType::F32, &dev)?;
        assert!(flash_attention_packed(&wrong, Span::Full, None, opts(d)).is_err());
        Ok(())
    }

    #[test]
    fn falls_back_for_softcap_and_checks_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 3, 4), DType::F32, &dev)?;
        let capped = AttentionOpts {
            scale: 0.5,
            softcap: Some(30.0),
        };
        assert!(flash_attention(&q, &q, &q, Span::Full, None, capped)?.is_none());
        let short = Tensor::zeros((1, 2, 2, 4), DType::F32, &dev)?;
        let err = flash_attention(&q, &short, &short, Span::Full, None, opts(4)).unwrap_err();
        assert!(err.to_string().contains("3 queries over 2 keys"), "{err}");
        let pad: Arc<[u8]> = vec![1u8; 5].into();
        let err = flash_attention(&q, &q, &q, Span::Full, Some(&pad), opts(4)).unwrap_err();
        assert!(err.to_string().contains("5 flags"), "{err}");
        Ok(())
    }
}
