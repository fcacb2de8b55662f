//! Task 4 text scores: BLEU, ROUGE and METEOR, identical to the official Python scorers.
//!
//! The organisers' scorer calls Hugging Face `evaluate` ("bleu", "rouge", "meteor") with
//! default arguments. This module reproduces each number from first principles:
//!
//! - [`bleu`]: `evaluate`'s BLEU (tensorflow-nmt `compute_bleu` over 13a tokens, no
//!   smoothing; undefined when the corpus has no prediction or no reference tokens) and
//!   sacreBLEU's default corpus BLEU.
//! - [`rouge`]: `rouge_score` ROUGE-1/2/L/Lsum F-measure; the corpus value is the exact
//!   mean of per-document F (`evaluate` reports an unseeded bootstrap median instead,
//!   which jitters ~1e-4 around it; [`rouge_bootstrap`] gives a seeded one).
//! - [`meteor`]: nltk's `single_meteor_score` over `word_tokenize` tokens, with the
//!   Punkt parameters and a WordNet 3.0 synonym table embedded in the binary.
//!
//! Task score = mean(BLEU, ROUGE-1, ROUGE-2, ROUGE-L, METEOR); ROUGE-Lsum is reported only.
//!
//! ```
//! use clinstruct_metrics::soap::{score_corpus, SoapOptions};
//! let s = score_corpus(&["The patient has a cough."], &["Patient has a dry cough."], &SoapOptions::default()).unwrap();
//! assert!(s.rouge1 > 0.5 && s.bleu.is_none() == s.bleu_error.is_some());
//! ```

pub mod bleu;
pub mod meteor;
pub mod porter;
pub mod pyunicode;
pub mod rouge;
pub mod text;
pub mod tokenize;
pub mod wordnet;

use rayon::prelude::*;
use serde::Serialize;

pub use bleu::{Bleu, BleuError, BleuStats, SACREBLEU_SIGNATURE, SacreBleu};
pub use meteor::MeteorParams;
pub use rouge::{Interval, RougeBootstrap};

/// What to compute beyond the official defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoapOptions {
    /// Porter-stem ROUGE tokens longer than 3 characters (official: `false`).
    pub rouge_stemmer: bool,
    /// METEOR parameters (official: alpha 0.9, beta 3, gamma 0.5).
    pub meteor: MeteorParams,
    /// Also compute a sentence-level `evaluate` BLEU per document in [`per_document`].
    pub sentence_bleu: bool,
    /// Score documents on several threads (results are identical either way).
    pub parallel: bool,
}

impl Default for SoapOptions {
    fn default() -> Self {
        SoapOptions {
            rouge_stemmer: false,
            meteor: MeteorParams::default(),
            sentence_bleu: false,
            parallel: true,
        }
    }
}

/// Why a corpus cannot be scored at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// No documents.
    #[error("empty corpus")]
    EmptyCorpus,
    /// Predictions and references differ in number.
    #[error("{preds} predictions but {refs} references")]
    LengthMismatch {
        /// Number of predictions.
        preds: usize,
        /// Number of references.
        refs: usize,
    },
}

/// Scores of one document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocScores {
    /// ROUGE-1 F.
    pub rouge1: f64,
    /// ROUGE-2 F.
    pub rouge2: f64,
    /// ROUGE-L F.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// ROUGE-Lsum F.
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: f64,
    /// METEOR.
    pub meteor: f64,
    /// Sentence-level `evaluate` BLEU when requested and defined.
    pub bleu: Option<f64>,
    /// Full ROUGE precision/recall/F.
    #[serde(skip)]
    pub rouge: rouge::RougeDoc,
    #[serde(skip)]
    stats: (BleuStats, BleuStats),
}

/// Corpus-level Task 4 scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoapScores {
    /// Number of documents.
    pub n: usize,
    /// Official BLEU (`evaluate`), `None` when undefined (see `bleu_error`).
    pub bleu: Option<f64>,
    /// Why `bleu` is undefined (`evaluate` raises ZeroDivisionError there).
    pub bleu_error: Option<BleuError>,
    /// `evaluate` BLEU details (precisions, brevity penalty, lengths) when defined.
    pub bleu_detail: Option<Bleu>,
    /// sacreBLEU corpus BLEU / 100 (0 where `evaluate` errs).
    pub bleu_sacrebleu: f64,
    /// sacreBLEU's signature string.
    pub sacrebleu_signature: &'static str,
    /// sacreBLEU details (precisions in percent, bp, lengths, counts).
    pub sacrebleu_detail: SacreBleu,
    /// Mean per-document ROUGE-1 F.
    pub rouge1: f64,
    /// Mean per-document ROUGE-2 F.
    pub rouge2: f64,
    /// Mean per-document ROUGE-L F.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// Mean per-document ROUGE-Lsum F.
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: f64,
    /// Mean per-document METEOR.
    pub meteor: f64,
    /// Task score: mean(bleu, rouge1, rouge2, rougeL, meteor); `None` when BLEU is undefined.
    pub average: Option<f64>,
    /// The same mean with sacreBLEU's BLEU.
    pub average_with_sacrebleu: f64,
}

fn check(preds: &[&str], refs: &[&str]) -> Result<(), SoapError> {
    if preds.len() != refs.len() {
        return Err(SoapError::LengthMismatch {
            preds: preds.len(),
            refs: refs.len(),
        });
    }
    if preds.is_empty() {
        return Err(SoapError::EmptyCorpus);
    }
    Ok(())
}

fn score_doc(pred: &str, reference: &str, opts: &SoapOptions) -> DocScores {
    let stats = bleu::segment_stats(pred, reference);
    let r = rouge::score(reference, pred, opts.rouge_stemmer);
    DocScores {
        rouge1: r.rouge1.fmeasure,
        rouge2: r.rouge2.fmeasure,
        rouge_l: r.rouge_l.fmeasure,
        rouge_lsum: r.rouge_lsum.fmeasure,
        meteor: meteor::meteor(reference, pred, opts.meteor),
        bleu: if opts.sentence_bleu {
            bleu::nmt_bleu(&stats.0).ok().map(|b| b.bleu)
        } else {
            None
        },
        rouge: r,
        stats,
    }
}

/// Per-document scores, in input order.
pub fn per_document(
    preds: &[&str],
    refs: &[&str],
    opts: &SoapOptions,
) -> Result<Vec<DocScores>, SoapError> {
    check(preds, refs)?;
    Ok(if opts.parallel {
        preds
            .par_iter()
            .zip(refs.par_iter())
            .map(|(p, r)| score_doc(p, r, opts))
            .collect()
    } else {
        preds
            .iter()
            .zip(refs)
            .map(|(p, r)| score_doc(p, r, opts))
            .collect()
    })
}

/// Python's `sum(xs) / len(xs)`: left-to-right, so the last bits match too.
fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in xs {
        s += x;
        n += 1;
    }
    s / n as f64
}

/// Corpus scores from per-document scores (as returned by [`per_document`]).
pub fn aggregate(docs: &[DocScores]) -> Result<SoapScores, SoapError> {
    if docs.is_empty() {
        return Err(SoapError::EmptyCorpus);
    }
    let (mut ev, mut sb) = (BleuStats::default(), BleuStats::default());
    for d in docs {
        ev.add(&d.stats.0);
        sb.add(&d.stats.1);
    }
    let nmt = bleu::nmt_bleu(&ev);
    let sacre = bleu::sacre_bleu(&sb);
    let rouge1 = mean(docs.iter().map(|d| d.rouge1));
    let rouge2 = mean(docs.iter().map(|d| d.rouge2));
    let rouge_l = mean(docs.iter().map(|d| d.rouge_l));
    let rouge_lsum = mean(docs.iter().map(|d| d.rouge_lsum));
    let meteor = mean(docs.iter().map(|d| d.meteor));
    let parts = ((rouge1 + rouge2) + rouge_l) + meteor;
    let bleu = nmt.as_ref().ok().map(|b| b.bleu);
    Ok(SoapScores {
        n: docs.len(),
        bleu,
        bleu_error: nmt.as_ref().err().cloned(),
        bleu_detail: nmt.ok(),
        bleu_sacrebleu: sacre.score,
        sacrebleu_signature: SACREBLEU_SIGNATURE,
        average: bleu.map(|b| (b + parts) / 5.0),
        average_with_sacrebleu: (sacre.score + parts) / 5.0,
        sacrebleu_detail: sacre,
        rouge1,
        rouge2,
        rouge_l,
        rouge_lsum,
        meteor,
    })
}

/// Official Task 4 corpus scores of predictions against references (one reference each).
pub fn score_corpus(
    preds: &[&str],
    refs: &[&str],
    opts: &SoapOptions,
) -> Result<SoapScores, SoapError> {
    aggregate(&per_document(preds, refs, opts)?)
}

/// Seeded bootstrap interval (low 2.5%, mid 50%, high 97.5%) of the mean ROUGE F, as
/// `rouge_score`'s `BootstrapAggregator` computes it (`n_samples` = 1000 there).
pub fn rouge_bootstrap(docs: &[DocScores], n_samples: usize, seed: u64) -> Option<RougeBootstrap> {
    let f: Vec<[f64; 4]> = docs.iter().map(|d| d.rouge.fmeasures()).collect();
    rouge::bootstrap(&f, n_samples, seed)
}
