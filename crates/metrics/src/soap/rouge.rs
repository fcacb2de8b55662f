//! ROUGE-1/2/L/Lsum exactly as Google's `rouge_score` 0.1.2 `RougeScorer` computes them.

use crate::soap::text::FxMap;

use serde::Serialize;

use crate::soap::porter;

/// Precision, recall and F-measure of one ROUGE type for one document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RougeScore {
    /// Matched units / prediction units.
    pub precision: f64,
    /// Matched units / reference units.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub fmeasure: f64,
}

impl RougeScore {
    fn new(precision: f64, recall: f64) -> Self {
        RougeScore {
            precision,
            recall,
            fmeasure: fmeasure(precision, recall),
        }
    }
}

/// The four ROUGE types `evaluate` reports for one document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RougeDoc {
    /// Unigram overlap.
    pub rouge1: RougeScore,
    /// Bigram overlap.
    pub rouge2: RougeScore,
    /// LCS over the whole text.
    #[serde(rename = "rougeL")]
    pub rouge_l: RougeScore,
    /// Summary-level union LCS over `\n`-separated lines.
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: RougeScore,
}

impl RougeDoc {
    /// F-measures in the order rouge1, rouge2, rougeL, rougeLsum.
    pub fn fmeasures(&self) -> [f64; 4] {
        [
            self.rouge1.fmeasure,
            self.rouge2.fmeasure,
            self.rouge_l.fmeasure,
            self.rouge_lsum.fmeasure,
        ]
    }
}

fn fmeasure(p: f64, r: f64) -> f64 {
    if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    }
}

/// `rouge_score.tokenize.tokenize`: lowercase, runs of `[a-z0-9]` are tokens, and with
/// a stemmer, tokens longer than 3 characters are Porter-stemmed.
pub fn tokenize(text: &str, use_stemmer: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            let t = std::mem::take(cur);
            // Stemmer output of an ASCII token is ASCII [a-z0-9], so still valid.
            let t = if use_stemmer && t.len() > 3 {
                porter::stem(&t)
            } else {
                t
            };
            if !t.is_empty() {
                out.push(t);
            }
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            let l = c.to_ascii_lowercase();
            if l.is_ascii_lowercase() || l.is_ascii_digit() {
                cur.push(l);
            } else {
                flush(&mut cur, &mut out);
            }
        } else {
            // Only U+0130 (-> "i̇") and U+212A KELVIN (-> "k") lowercase to ASCII letters.
            let mut low = String::new();
            crate::soap::pyunicode::push_lower(c, &mut low);
            for l in low.chars() {
                if l.is_ascii_lowercase() || l.is_ascii_digit() {
                    cur.push(l);
                } else {
                    flush(&mut cur, &mut out);
                }
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}

#[derive(Default)]
struct Interner {
    ids: FxMap<String, u32>,
}

impl Interner {
    fn ids(&mut self, toks: Vec<String>) -> Vec<u32> {
        toks.into_iter()
            .map(|t| {
                let n = self.ids.len() as u32;
                *self.ids.entry(t).or_insert(n)
            })
            .collect()
    }
}

fn score_ngrams(target: &[u32], pred: &[u32], n: usize) -> RougeScore {
    fn count(t: &[u32], n: usize) -> FxMap<&[u32], u32> {
        let mut m: FxMap<&[u32], u32> = FxMap::default();
        if t.len() >= n {
            for w in t.windows(n) {
                *m.entry(w).or_insert(0) += 1;
            }
        }
        m
    }
    let tc = count(target, n);
    let pc = count(pred, n);
    let mut inter = 0u64;
    for (ng, &c) in &tc {
        if let Some(&p) = pc.get(ng) {
            inter += c.min(p) as u64;
        }
    }
    let tn = target.len().saturating_sub(n - 1) as u64;
    let pn = pred.len().saturating_sub(n - 1) as u64;
    RougeScore::new(
        inter as f64 / pn.max(1) as f64,
        inter as f64 / tn.max(1) as f64,
    )
}

/// LCS length by the bit-vector algorithm of Crochemore et al. (2001); equals the
/// `_lcs_table` corner value in O(|a| * |b| / 64).
fn lcs_len(a: &[u32], b: &[u32], vocab: usize) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let w = b.len().div_ceil(64);
    let mut masks = vec![0u64; vocab * w];
    for (j, &t) in b.iter().enumerate() {
        masks[t as usize * w + j / 64] |= 1 << (j % 64);
    }
    let mut v = vec![!0u64; w];
    for &x in a {
        let m = &masks[x as usize * w..(x as usize + 1) * w];
        let mut carry = false;
        for k in 0..w {
            let u = v[k] & m[k];
            let (s1, c1) = v[k].overflowing_add(u);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            carry = c1 || c2;
            v[k] = s2 | (v[k] & !m[k]);
        }
    }
    let mut zeros = 0;
    for (k, &x) in v.iter().enumerate() {
        let bits = (b.len() - 64 * k).min(64);
        let mask = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
        zeros += (!x & mask).count_ones() as usize;
    }
    zeros
}

fn score_lcs(target: &[u32], pred: &[u32], vocab: usize) -> RougeScore {
    if target.is_empty() || pred.is_empty() {
        return RougeScore::default();
    }
    let l = lcs_len(target, pred, vocab) as f64;
    RougeScore::new(l / pred.len() as f64, l / target.len() as f64)
}

/// Indices into `r` of the LCS that `rouge_score._backtrack_norec` reads out.
fn lcs_indices(r: &[u32], c: &[u32], table: &mut Vec<u32>, out: &mut Vec<usize>) {
    let (rows, cols) = (r.len(), c.len());
    let w = cols + 1;
    table.clear();
    table.resize((rows + 1) * w, 0);
    for i in 1..=rows {
        for j in 1..=cols {
            table[i * w + j] = if r[i - 1] == c[j - 1] {
                table[(i - 1) * w + j - 1] + 1
            } else {
                table[(i - 1) * w + j].max(table[i * w + j - 1])
            };
        }
    }
    let (mut i, mut j) = (rows, cols);
    let start = out.len();
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if table[i * w + j - 1] > table[(i - 1) * w + j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out[start..].reverse();
}

fn summary_level_lcs(ref_sents: &[Vec<u32>], can_sents: &[Vec<u32>], vocab: usize) -> RougeScore {
    if ref_sents.is_empty() || can_sents.is_empty() {
        return RougeScore::default();
    }
    let m: usize = ref_sents.iter().map(Vec::len).sum();
    let n: usize = can_sents.iter().map(Vec::len).sum();
    if m == 0 || n == 0 {
        return RougeScore::default();
    }
    let mut cnt_r = vec![0u32; vocab];
    let mut cnt_c = vec![0u32; vocab];
    for s in ref_sents {
        for &t in s {
            cnt_r[t as usize] += 1;
        }
    }
    for s in can_sents {
        for &t in s {
            cnt_c[t as usize] += 1;
        }
    }
    // Reference tokens absent from a candidate line only ever make the backtrack step
    // up, so dropping them (and pairs with nothing in common) leaves the LCS read-out
    // unchanged while shrinking the tables.
    let vw = vocab.div_ceil(64);
    let mut present = vec![0u64; can_sents.len() * vw];
    for (ci, c) in can_sents.iter().enumerate() {
        for &t in c {
            present[ci * vw + t as usize / 64] |= 1 << (t % 64);
        }
    }
    let mut hits = 0u64;
    let mut table = Vec::new();
    let mut idx = Vec::new();
    let mut in_union = Vec::new();
    let mut keep: Vec<usize> = Vec::new();
    let mut r2: Vec<u32> = Vec::new();
    for r in ref_sents {
        in_union.clear();
        in_union.resize(r.len(), false);
        for (ci, c) in can_sents.iter().enumerate() {
            let bits = &present[ci * vw..(ci + 1) * vw];
            keep.clear();
            keep.extend(
                (0..r.len()).filter(|&i| bits[r[i] as usize / 64] & (1 << (r[i] % 64)) != 0),
            );
            if keep.is_empty() {
                continue;
            }
            r2.clear();
            r2.extend(keep.iter().map(|&i| r[i]));
            idx.clear();
            lcs_indices(&r2, c, &mut table, &mut idx);
            for &i in &idx {
                in_union[keep[i]] = true;
            }
        }
        for (i, &u) in in_union.iter().enumerate() {
            if u {
                let t = r[i] as usize;
                if cnt_c[t] > 0 && cnt_r[t] > 0 {
                    hits += 1;
                    cnt_c[t] -= 1;
                    cnt_r[t] -= 1;
                }
            }
        }
    }
    RougeScore::new(hits as f64 / n as f64, hits as f64 / m as f64)
}

/// `RougeScorer(['rouge1','rouge2','rougeL','rougeLsum'], use_stemmer).score(reference, prediction)`.
pub fn score(reference: &str, prediction: &str, use_stemmer: bool) -> RougeDoc {
    // rougeLsum splits on "\n", drops empty lines and tokenizes each line on its own.
    // Tokens never span a "\n", so the whole-text tokens are the lines' tokens in order.
    let mut it = Interner::default();
    let mut lines = |s: &str| -> Vec<Vec<u32>> {
        s.split('\n')
            .filter(|l| !l.is_empty())
            .map(|l| it.ids(tokenize(l, use_stemmer)))
            .collect()
    };
    let rls = lines(reference);
    let pls = lines(prediction);
    let r = rls.concat();
    let p = pls.concat();
    let vocab = it.ids.len();
    RougeDoc {
        rouge1: score_ngrams(&r, &p, 1),
        rouge2: score_ngrams(&r, &p, 2),
        rouge_l: score_lcs(&r, &p, vocab),
        rouge_lsum: summary_level_lcs(&rls, &pls, vocab),
    }
}

/// Low / mid / high bootstrap percentiles of a mean, like `BootstrapAggregator`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Interval {
    /// 2.5th percentile of the resampled means.
    pub low: f64,
    /// 50th percentile (what `evaluate` reports as the score).
    pub mid: f64,
    /// 97.5th percentile.
    pub high: f64,
}

/// Bootstrap interval of the mean F-measure per ROUGE type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RougeBootstrap {
    /// ROUGE-1 F.
    pub rouge1: Interval,
    /// ROUGE-2 F.
    pub rouge2: Interval,
    /// ROUGE-L F.
    #[serde(rename = "rougeL")]
    pub rouge_l: Interval,
    /// ROUGE-Lsum F.
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: Interval,
}

/// SplitMix64: tiny, seedable and stable across platforms and crate versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's method).
    fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// numpy's default (linear) percentile of sorted data.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Seeded bootstrap of the mean per-document F-measures (`n_samples` resamples,
/// 95% interval), the procedure of `rouge_score.scoring.BootstrapAggregator`. `docs`
/// holds per-document F of rouge1, rouge2, rougeL, rougeLsum. The numbers differ from
/// `evaluate`'s (which is unseeded) by resampling noise only.
/// Returns `None` for an empty corpus or `n_samples == 0`.
pub fn bootstrap(docs: &[[f64; 4]], n_samples: usize, seed: u64) -> Option<RougeBootstrap> {
    if docs.is_empty() || n_samples == 0 {
        return None;
    }
    let n = docs.len();
    let mut rng = SplitMix64(seed);
    let mut means: [Vec<f64>; 4] = Default::default();
    for _ in 0..n_samples {
        let mut s = [0.0f64; 4];
        for _ in 0..n {
            let d = &docs[rng.below(n as u64) as usize];
            for k in 0..4 {
                s[k] += d[k];
            }
        }
        for k in 0..4 {
            means[k].push(s[k] / n as f64);
        }
    }
    let iv = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        Interval {
            low: percentile(v, 2.5),
            mid: percentile(v, 50.0),
            high: percentile(v, 97.5),
        }
    };
    Some(RougeBootstrap {
        rouge1: iv(&mut means[0]),
        rouge2: iv(&mut means[1]),
        rouge_l: iv(&mut means[2]),
        rouge_lsum: iv(&mut means[3]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer() {
        assert_eq!(
            tokenize("BP 120/80 mmHg; Café İS", false),
            ["bp", "120", "80", "mmhg", "caf", "i", "s"]
        );
        assert_eq!(tokenize("The running dogs", true), ["the", "run", "dog"]);
    }

    #[test]
    fn doc_scores() {
        let d = score("the cat sat on the mat", "the cat on the mat", false);
        assert!((d.rouge1.precision - 1.0).abs() < 1e-12);
        assert!((d.rouge1.recall - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(d.rouge_l, d.rouge1);
        let e = score("", "x", false);
        assert_eq!(e.rouge_lsum.fmeasure, 0.0);
    }

    #[test]
    fn bit_parallel_lcs_equals_table() {
        let mut rng = SplitMix64(3);
        let mut table = Vec::new();
        for _ in 0..500 {
            let vocab = 1 + rng.below(6) as usize;
            let n = rng.below(150) as usize;
            let m = rng.below(150) as usize;
            let a: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64) as u32).collect();
            let b: Vec<u32> = (0..m).map(|_| rng.below(vocab as u64) as u32).collect();
            let mut idx = Vec::new();
            lcs_indices(&a, &b, &mut table, &mut idx);
            assert_eq!(lcs_len(&a, &b, vocab), idx.len());
        }
    }

    #[test]
    fn bootstrap_is_seeded() {
        let docs: Vec<[f64; 4]> = ["a b", "a c", "c d e", "x"]
            .iter()
            .map(|p| score("a b c d", p, false).fmeasures())
            .collect();
        let a = bootstrap(&docs, 1000, 7).unwrap();
        assert_eq!(Some(a), bootstrap(&docs, 1000, 7));
        assert!(a.rouge1.low <= a.rouge1.mid && a.rouge1.mid <= a.rouge1.high);
    }
}
