//! Corpus BLEU two ways: HF `evaluate`'s (tensorflow-nmt `compute_bleu`, the official
//! Task 4 number) and sacreBLEU's `corpus_bleu` defaults.

use crate::soap::text::FxMap;

use serde::Serialize;

use crate::soap::text::py_rstrip;
use crate::soap::tokenize::tok13a::tokenize_13a;

/// Maximum n-gram order for both BLEU variants.
pub const MAX_ORDER: usize = 4;

/// sacreBLEU's signature for its default corpus BLEU with one reference (v2.6.0).
pub const SACREBLEU_SIGNATURE: &str = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0";

/// Sufficient statistics of one (or several, summed) segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BleuStats {
    /// Clipped n-gram matches per order.
    pub matches: [u64; MAX_ORDER],
    /// Hypothesis n-grams per order.
    pub possible: [u64; MAX_ORDER],
    /// Hypothesis tokens.
    pub hyp_len: u64,
    /// Reference tokens.
    pub ref_len: u64,
}

impl BleuStats {
    /// Adds another segment's statistics.
    pub fn add(&mut self, o: &BleuStats) {
        for k in 0..MAX_ORDER {
            self.matches[k] += o.matches[k];
            self.possible[k] += o.possible[k];
        }
        self.hyp_len += o.hyp_len;
        self.ref_len += o.ref_len;
    }

    /// Statistics of one hypothesis against one reference, both already tokenized.
    pub fn from_tokens<S: AsRef<str>>(hyp: &[S], reference: &[S]) -> BleuStats {
        fn intern<'a, S: AsRef<str>>(ids: &mut FxMap<&'a str, u32>, toks: &'a [S]) -> Vec<u32> {
            let mut v = Vec::with_capacity(toks.len());
            for t in toks {
                let n = ids.len() as u32;
                v.push(*ids.entry(t.as_ref()).or_insert(n));
            }
            v
        }
        let mut ids: FxMap<&str, u32> = FxMap::default();
        let h = intern(&mut ids, hyp);
        let r = intern(&mut ids, reference);
        let hc = ngram_counts(&h);
        let rc = ngram_counts(&r);
        let mut st = BleuStats {
            hyp_len: h.len() as u64,
            ref_len: r.len() as u64,
            ..Default::default()
        };
        for (ng, &c) in &hc {
            if let Some(&rcnt) = rc.get(ng) {
                st.matches[(ng >> 124) as usize - 1] += u64::from(c.min(rcnt));
            }
        }
        for k in 0..MAX_ORDER {
            st.possible[k] = (h.len() as u64).saturating_sub(k as u64);
        }
        st
    }
}

/// An n-gram of token ids packed into one integer: order in the top bits, then up to
/// four 31-bit ids (a document never has 2^31 distinct tokens).
type NGram = u128;

fn ngram_counts(toks: &[u32]) -> FxMap<NGram, u32> {
    let mut m = FxMap::with_capacity_and_hasher(toks.len() * MAX_ORDER, Default::default());
    for n in 1..=MAX_ORDER {
        for w in toks.windows(n) {
            let mut key = (n as u128) << 124;
            for (k, &t) in w.iter().enumerate() {
                key |= u128::from(t) << (31 * k);
            }
            *m.entry(key).or_insert(0) += 1;
        }
    }
    m
}

/// Why `evaluate`'s BLEU is undefined for a corpus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum BleuError {
    /// The corpus has no prediction tokens (`evaluate` raises ZeroDivisionError).
    #[error("ZeroDivisionError: float division by zero (no prediction tokens)")]
    NoPredictionTokens,
    /// The corpus has no reference tokens (`evaluate` raises ZeroDivisionError).
    #[error("ZeroDivisionError: float division by zero (no reference tokens)")]
    NoReferenceTokens,
}

/// `evaluate`'s BLEU result (tensorflow-nmt `compute_bleu`, no smoothing).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bleu {
    /// BLEU in [0, 1].
    pub bleu: f64,
    /// Modified n-gram precisions, orders 1..=4.
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty.
    pub brevity_penalty: f64,
    /// translation_length / reference_length.
    pub length_ratio: f64,
    /// Total prediction tokens.
    pub translation_length: u64,
    /// Total reference tokens.
    pub reference_length: u64,
}

/// `compute_bleu(max_order=4, smooth=False)` from summed statistics.
pub fn nmt_bleu(st: &BleuStats) -> Result<Bleu, BleuError> {
    if st.ref_len == 0 {
        return Err(BleuError::NoReferenceTokens);
    }
    if st.hyp_len == 0 {
        return Err(BleuError::NoPredictionTokens);
    }
    let mut precisions = [0.0; MAX_ORDER];
    for (p, (&m, &t)) in precisions
        .iter_mut()
        .zip(st.matches.iter().zip(&st.possible))
    {
        if t > 0 {
            *p = m as f64 / t as f64;
        }
    }
    let min_p = precisions.iter().cloned().fold(f64::INFINITY, f64::min);
    let geo_mean = if min_p > 0.0 {
        let mut s = 0.0;
        for p in precisions {
            s += (1.0 / MAX_ORDER as f64) * p.ln();
        }
        s.exp()
    } else {
        0.0
    };
    let ratio = st.hyp_len as f64 / st.ref_len as f64;
    let bp = if ratio > 1.0 {
        1.0
    } else {
        (1.0 - 1.0 / ratio).exp()
    };
    Ok(Bleu {
        bleu: geo_mean * bp,
        precisions,
        brevity_penalty: bp,
        length_ratio: ratio,
        translation_length: st.hyp_len,
        reference_length: st.ref_len,
    })
}

/// sacreBLEU's corpus BLEU (defaults: 13a, mixed case, `exp` smoothing).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SacreBleu {
    /// Score divided by 100, in [0, 1].
    pub score: f64,
    /// Precisions in percent, as sacreBLEU reports them.
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    /// System (prediction) length.
    pub sys_len: u64,
    /// Reference length.
    pub ref_len: u64,
    /// Matches per order.
    pub counts: [u64; MAX_ORDER],
    /// Hypothesis n-grams per order.
    pub totals: [u64; MAX_ORDER],
    /// Reproducibility signature.
    pub signature: &'static str,
}

fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9999999999.0 } else { x.ln() }
}

/// `BLEU.compute_bleu(..., smooth_method='exp')` from summed statistics.
pub fn sacre_bleu(st: &BleuStats) -> SacreBleu {
    let (sys_len, ref_len) = (st.hyp_len, st.ref_len);
    let mut bp = 1.0;
    if sys_len < ref_len {
        bp = if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = [0.0; MAX_ORDER];
    let mut out = SacreBleu {
        score: 0.0,
        precisions,
        bp,
        sys_len,
        ref_len,
        counts: st.matches,
        totals: st.possible,
        signature: SACREBLEU_SIGNATURE,
    };
    if st.matches.iter().all(|&c| c == 0) {
        return out;
    }
    let mut smooth_mteval = 1.0;
    for (p, (&m, &t)) in precisions
        .iter_mut()
        .zip(st.matches.iter().zip(&st.possible))
    {
        if t == 0 {
            break;
        }
        if m == 0 {
            smooth_mteval *= 2.0;
            *p = 100.0 / (smooth_mteval * t as f64);
        } else {
            *p = 100.0 * m as f64 / t as f64;
        }
    }
    let mut s = 0.0;
    for p in precisions {
        s += my_log(p);
    }
    out.score = bp * (s / MAX_ORDER as f64).exp() / 100.0;
    out.precisions = precisions;
    out
}

/// Per-segment statistics for both variants: `evaluate` tokenizes the raw text,
/// sacreBLEU `rstrip()`s first (only a trailing `"-\n"` makes that differ).
pub fn segment_stats(pred: &str, reference: &str) -> (BleuStats, BleuStats) {
    let hp = tokenize_13a(pred);
    let hr = tokenize_13a(reference);
    let ev = BleuStats::from_tokens(&hp, &hr);
    let (p2, r2) = (py_rstrip(pred), py_rstrip(reference));
    let sb = if p2.len() == pred.len() && r2.len() == reference.len() {
        ev
    } else {
        BleuStats::from_tokens(&tokenize_13a(p2), &tokenize_13a(r2))
    };
    (ev, sb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tokens_is_an_error() {
        let (ev, _) = segment_stats("", "a b c");
        assert_eq!(nmt_bleu(&ev), Err(BleuError::NoPredictionTokens));
        let (ev, sb) = segment_stats("a b", " \n ");
        assert_eq!(nmt_bleu(&ev), Err(BleuError::NoReferenceTokens));
        assert_eq!(sacre_bleu(&sb).score, 0.0);
    }

    #[test]
    fn identical_is_one() {
        let (ev, sb) = segment_stats("the cat sat on the mat .", "the cat sat on the mat .");
        assert!((nmt_bleu(&ev).unwrap().bleu - 1.0).abs() < 1e-12);
        assert!((sacre_bleu(&sb).score - 1.0).abs() < 1e-12);
    }
}
