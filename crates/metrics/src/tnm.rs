//! Task 6 (TNM staging) classification scores with scikit-learn semantics.
//!
//! The official SMM4H-HeaRD ranking score is, per stage, scikit-learn's
//! `f1_score(y_true, y_pred, average="macro", zero_division=0)` over the labels present in gold ∪
//! predictions, with a missing prediction encoded as `-1`; the overall score is the mean of the T,
//! N and M macro-F1. [`score`] computes that, plus the research metrics of the seed paper (AUROC
//! one-vs-rest macro for T and N, binary on P(M1) for M), exact match, and per-class tables.
//! The algorithms are ports of scikit-learn 1.9.1 (see the `sklearn` submodule), checked number by
//! number against the Python oracle (`tests/tnm_parity.rs`).
//!
//! Class indices are 0-based: T1..T4 → 0..3, N0..N3 → 0..3, M0/M1 → 0/1. (The official files
//! write T as 1..4; converting is the caller's job.)
//!
//! ```
//! use clinstruct_metrics::tnm::{score, TnmReport};
//! let reports = vec![
//!     TnmReport::new([Some(1), Some(0), Some(0)], [Some(1), Some(0), Some(0)]),
//!     TnmReport::new([Some(2), Some(1), Some(1)], [Some(2), None, Some(0)]),
//! ];
//! let s = score(&reports);
//! assert_eq!(s.t.macro_f1, Some(1.0));
//! assert_eq!(s.exact_match, Some(0.5));
//! ```

mod sklearn;
mod table;

pub use table::render_table;

use serde::Serialize;

/// One of the three TNM components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Stage {
    /// Primary tumour, T1..T4 (4 classes).
    T,
    /// Regional lymph nodes, N0..N3 (4 classes).
    N,
    /// Distant metastasis, M0/M1 (2 classes).
    M,
}

impl Stage {
    /// T, N, M in the order used by the `[_; 3]` arrays of [`TnmReport`].
    pub const ALL: [Stage; 3] = [Stage::T, Stage::N, Stage::M];

    /// Position in the `[_; 3]` arrays (T 0, N 1, M 2).
    pub const fn index(self) -> usize {
        match self {
            Stage::T => 0,
            Stage::N => 1,
            Stage::M => 2,
        }
    }

    /// Number of classes K: 4, 4, 2.
    pub const fn n_classes(self) -> usize {
        self.class_names().len()
    }

    /// Class names by 0-based class index.
    pub const fn class_names(self) -> &'static [&'static str] {
        match self {
            Stage::T => &["T1", "T2", "T3", "T4"],
            Stage::N => &["N0", "N1", "N2", "N3"],
            Stage::M => &["M0", "M1"],
        }
    }

    /// The name of a 0-based class index, `None` when out of range.
    pub fn class_name(self, class: u8) -> Option<&'static str> {
        self.class_names().get(usize::from(class)).copied()
    }

    /// "T", "N" or "M".
    pub const fn name(self) -> &'static str {
        match self {
            Stage::T => "T",
            Stage::N => "N",
            Stage::M => "M",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One scored report: gold and predicted class per stage (indexed by [`Stage::index`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TnmReport {
    /// Gold class per stage; `None` = no gold label (the report is not scored for that stage).
    pub gold: [Option<u8>; 3],
    /// Predicted class per stage; `None` = missing prediction, scored as the wrong class `-1`.
    pub pred: [Option<u8>; 3],
    /// Optional class probabilities per stage (K values summing to 1), for AUROC.
    pub prob: [Option<Vec<f64>>; 3],
}

impl TnmReport {
    /// A report without probabilities.
    pub fn new(gold: [Option<u8>; 3], pred: [Option<u8>; 3]) -> Self {
        Self {
            gold,
            pred,
            prob: [None, None, None],
        }
    }

    /// Sets the probabilities of one stage.
    pub fn with_prob(mut self, stage: Stage, prob: Vec<f64>) -> Self {
        self.prob[stage.index()] = Some(prob);
        self
    }
}

/// Precision, recall and F1 of one class (`precision_recall_fscore_support` with
/// `labels=0..K-1, zero_division=0`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    /// Class name, e.g. "T2".
    pub class: &'static str,
    /// tp / predicted (0 when never predicted).
    pub precision: f64,
    /// tp / support (0 when absent from gold).
    pub recall: f64,
    /// 2·tp / (support + predicted) (0 when both are 0).
    pub f1: f64,
    /// Gold count.
    pub support: usize,
    /// Prediction count.
    pub predicted: usize,
}

/// Confusion matrix over the K real classes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    /// Class names, the order of rows and columns.
    pub labels: Vec<&'static str>,
    /// `matrix[gold][pred]` (sklearn `confusion_matrix(y, p, labels=0..K-1)`, which leaves out
    /// predictions that are not one of the K classes).
    pub matrix: Vec<Vec<usize>>,
    /// Missing predictions per gold class (the `-1`s the matrix leaves out).
    pub missing_pred: Vec<usize>,
    /// Out-of-range predictions per gold class (left out of the matrix as well); present in the
    /// JSON only when there is one.
    #[serde(skip_serializing_if = "all_zero")]
    pub out_of_range_pred: Vec<usize>,
}

fn all_zero(v: &[usize]) -> bool {
    v.iter().all(|&x| x == 0)
}

/// Scores of one stage, over the reports whose gold label for that stage is present.
///
/// Values that scikit-learn leaves undefined (NaN) or refuses (raises) are `None` (JSON `null`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageScores {
    /// The stage.
    pub stage: Stage,
    /// Reports scored (gold present).
    pub n: usize,
    /// Reports without gold for this stage (not scored).
    pub n_missing_gold: usize,
    /// Scored reports without a prediction for this stage (counted as wrong).
    pub n_missing_pred: usize,
    /// Fraction of exact hits.
    pub accuracy: Option<f64>,
    /// Official ranking score: macro-F1 over the labels present in gold ∪ predictions, a missing
    /// prediction being label `-1` (sklearn `f1_score(average="macro", zero_division=0)`).
    pub macro_f1: Option<f64>,
    /// Micro-F1 over the same labels (equals accuracy).
    pub micro_f1: Option<f64>,
    /// Support-weighted F1 over the same labels.
    pub weighted_f1: Option<f64>,
    /// Macro-F1 over all K classes (`labels=0..K-1`), so a class absent from both gold and
    /// predictions counts as F1 = 0.
    pub macro_f1_all_labels: Option<f64>,
    /// The label set `macro_f1` averages over (sklearn's default), `-1` = missing prediction.
    pub labels_used: Vec<i32>,
    /// AUROC: binary on P(M1) for M; one-vs-rest macro over the K classes for T and N. `None`
    /// when undefined (see `auroc_note`).
    pub auroc: Option<f64>,
    /// Why `auroc` is `None`.
    pub auroc_note: Option<String>,
    /// T and N: the one-vs-rest AUROC of each class (by class index), `None` for a class whose
    /// OvR AUROC is undefined (absent from gold, or the only class present). `None` for M, or
    /// when probabilities are missing or malformed.
    pub auroc_ovr_per_class: Option<Vec<Option<f64>>>,
    /// T and N: the mean of the defined entries of `auroc_ovr_per_class`.
    pub auroc_ovr_macro_defined_classes: Option<f64>,
    /// T and N: `roc_auc_score(..., multi_class="ovr", average="weighted")`.
    pub auroc_ovr_weighted: Option<f64>,
    /// Per-class scores for the K classes; `None` when `n == 0`.
    pub per_class: Option<Vec<ClassScores>>,
    /// Confusion matrix; `None` when `n == 0`.
    pub confusion: Option<Confusion>,
}

/// All Task 6 scores. JSON: `{"t": {...}, "n": {...}, "m": {...}, "mean_macro_f1",
/// "mean_macro_f1_available", "exact_match", "n_exact_match_eligible", "n_reports"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TnmScores {
    /// T stage.
    pub t: StageScores,
    /// N stage.
    pub n: StageScores,
    /// M stage.
    pub m: StageScores,
    /// Official ranking score: mean of the T, N, M macro-F1; `None` if any stage has no gold.
    pub mean_macro_f1: Option<f64>,
    /// Mean over the stages whose macro-F1 is defined.
    pub mean_macro_f1_available: Option<f64>,
    /// Fraction of reports with all three stages right, over the reports whose three gold labels
    /// are all present (a missing prediction is wrong).
    pub exact_match: Option<f64>,
    /// Reports with all three gold labels present.
    pub n_exact_match_eligible: usize,
    /// All input reports.
    pub n_reports: usize,
}

impl TnmScores {
    /// The scores of one stage.
    pub fn stage(&self, stage: Stage) -> &StageScores {
        match stage {
            Stage::T => &self.t,
            Stage::N => &self.n,
            Stage::M => &self.m,
        }
    }
}

/// Absolute tolerance of [`validate_probabilities`] for probability sums: `|Σp − 1| ≤ 1e-3`.
pub const PROB_SUM_TOLERANCE: f64 = 1e-3;

/// A problem with one report's input, located by 0-based report index and stage.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// A gold class index outside 0..K-1.
    #[error("report {row}: {stage} gold class {value} is out of range (expected 0..={max})")]
    GoldOutOfRange {
        /// 0-based report index.
        row: usize,
        /// Stage.
        stage: Stage,
        /// The value.
        value: u8,
        /// K - 1.
        max: usize,
    },
    /// A predicted class index outside 0..K-1.
    #[error("report {row}: {stage} predicted class {value} is out of range (expected 0..={max})")]
    PredOutOfRange {
        /// 0-based report index.
        row: usize,
        /// Stage.
        stage: Stage,
        /// The value.
        value: u8,
        /// K - 1.
        max: usize,
    },
    /// The wrong number of probabilities.
    #[error("report {row}: {stage} has {got} probabilities, expected {expected}")]
    ProbLength {
        /// 0-based report index.
        row: usize,
        /// Stage.
        stage: Stage,
        /// Values given.
        got: usize,
        /// K.
        expected: usize,
    },
    /// A probability that is NaN, infinite or outside [0, 1].
    #[error("report {row}: {stage} probability {value} for class {class} is not in [0, 1]")]
    ProbValue {
        /// 0-based report index.
        row: usize,
        /// Stage.
        stage: Stage,
        /// Class name.
        class: &'static str,
        /// The value.
        value: f64,
    },
    /// Probabilities that do not sum to 1 within [`PROB_SUM_TOLERANCE`].
    #[error(
        "report {row}: {stage} probabilities sum to {sum}, not 1 (tolerance {PROB_SUM_TOLERANCE})"
    )]
    ProbSum {
        /// 0-based report index.
        row: usize,
        /// Stage.
        stage: Stage,
        /// The sum.
        sum: f64,
    },
}

/// Checks every present probability vector: K values, each finite and in [0, 1], summing to 1
/// within [`PROB_SUM_TOLERANCE`]. Returns every problem found (empty = fine), so a caller can
/// stop with a clear message or print warnings and score anyway.
///
/// [`score`] itself never fails: AUROC then follows sklearn (`null` with a note where sklearn
/// would raise, e.g. T/N rows off by more than numpy's `allclose` tolerance; M is not checked by
/// sklearn's binary AUROC).
pub fn validate_probabilities(reports: &[TnmReport]) -> Vec<InputError> {
    let mut errors = Vec::new();
    for (row, r) in reports.iter().enumerate() {
        for stage in Stage::ALL {
            let Some(p) = &r.prob[stage.index()] else {
                continue;
            };
            let k = stage.n_classes();
            if p.len() != k {
                errors.push(InputError::ProbLength {
                    row,
                    stage,
                    got: p.len(),
                    expected: k,
                });
                continue;
            }
            let mut ok = true;
            for (class, &value) in stage.class_names().iter().zip(p) {
                if !(0.0..=1.0).contains(&value) {
                    errors.push(InputError::ProbValue {
                        row,
                        stage,
                        class,
                        value,
                    });
                    ok = false;
                }
            }
            let sum: f64 = p.iter().sum();
            if ok && (sum - 1.0).abs() > PROB_SUM_TOLERANCE {
                errors.push(InputError::ProbSum { row, stage, sum });
            }
        }
    }
    errors
}

/// [`validate_probabilities`] plus range checks of the gold and predicted class indices.
pub fn validate(reports: &[TnmReport]) -> Vec<InputError> {
    let mut errors = Vec::new();
    for (row, r) in reports.iter().enumerate() {
        for stage in Stage::ALL {
            let max = stage.n_classes() - 1;
            if let Some(value) = r.gold[stage.index()].filter(|&v| usize::from(v) > max) {
                errors.push(InputError::GoldOutOfRange {
                    row,
                    stage,
                    value,
                    max,
                });
            }
            if let Some(value) = r.pred[stage.index()].filter(|&v| usize::from(v) > max) {
                errors.push(InputError::PredOutOfRange {
                    row,
                    stage,
                    value,
                    max,
                });
            }
        }
    }
    errors.extend(validate_probabilities(reports));
    errors
}

/// [`validate`], then [`score`]: fails with the first input problem.
pub fn score_checked(reports: &[TnmReport]) -> Result<TnmScores, InputError> {
    match validate(reports).into_iter().next() {
        Some(e) => Err(e),
        None => Ok(score(reports)),
    }
}

/// Scores all reports. Never fails and never panics: out-of-range labels are scored the way
/// scikit-learn would see them (one more label; see [`validate`] to reject them), and undefined
/// values are `None`.
pub fn score(reports: &[TnmReport]) -> TnmScores {
    let [t, n, m] = Stage::ALL.map(|s| stage_scores(s, reports));

    let eligible: Vec<&TnmReport> = reports
        .iter()
        .filter(|r| r.gold.iter().all(Option::is_some))
        .collect();
    let exact = eligible
        .iter()
        .filter(|r| {
            r.gold
                .iter()
                .zip(&r.pred)
                .all(|(g, p)| p.is_some() && g == p)
        })
        .count();
    let exact_match = (!eligible.is_empty()).then(|| exact as f64 / eligible.len() as f64);

    // Python's `sum(mf) / 3.0` (left to right from 0) and `sum(avail) / len(avail)`.
    let mf = [t.macro_f1, n.macro_f1, m.macro_f1];
    let mean_macro_f1 = match mf {
        [Some(a), Some(b), Some(c)] => Some((0.0 + a + b + c) / 3.0),
        _ => None,
    };
    let avail: Vec<f64> = mf.iter().flatten().copied().collect();
    let mean_macro_f1_available =
        (!avail.is_empty()).then(|| avail.iter().fold(0.0, |acc, v| acc + v) / avail.len() as f64);

    TnmScores {
        t,
        n,
        m,
        mean_macro_f1,
        mean_macro_f1_available,
        exact_match,
        n_exact_match_eligible: eligible.len(),
        n_reports: reports.len(),
    }
}

/// Finite float → `Some`, NaN/inf → `None` (the oracle's `_f`).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The sklearn label of a prediction: the class index, or `-1` when missing (as the official
/// replica scorer encodes it, so that it is a wrong class of its own in the label set).
fn pred_label(p: Option<u8>) -> i32 {
    p.map_or(-1, i32::from)
}

fn stage_scores(stage: Stage, reports: &[TnmReport]) -> StageScores {
    let i = stage.index();
    let k = stage.n_classes();
    let rows: Vec<&TnmReport> = reports.iter().filter(|r| r.gold[i].is_some()).collect();
    let y: Vec<i32> = rows
        .iter()
        .map(|r| r.gold[i].map_or(-1, i32::from))
        .collect();
    let p: Vec<i32> = rows.iter().map(|r| pred_label(r.pred[i])).collect();
    let mut out = StageScores {
        stage,
        n: rows.len(),
        n_missing_gold: reports.len() - rows.len(),
        n_missing_pred: rows.iter().filter(|r| r.pred[i].is_none()).count(),
        accuracy: None,
        macro_f1: None,
        micro_f1: None,
        weighted_f1: None,
        macro_f1_all_labels: None,
        labels_used: Vec::new(),
        auroc: None,
        auroc_note: None,
        auroc_ovr_per_class: None,
        auroc_ovr_macro_defined_classes: None,
        auroc_ovr_weighted: None,
        per_class: None,
        confusion: None,
    };
    if rows.is_empty() {
        out.auroc_note = Some("no gold labels".to_string());
        return out;
    }

    let all_labels: Vec<i32> = (0..k as i32).collect();
    out.accuracy = finite(sklearn::accuracy(&y, &p));
    out.macro_f1 = finite(sklearn::f1_macro(&y, &p, None));
    out.micro_f1 = finite(sklearn::f1_micro(&y, &p));
    out.weighted_f1 = finite(sklearn::f1_weighted(&y, &p));
    out.macro_f1_all_labels = finite(sklearn::f1_macro(&y, &p, Some(&all_labels)));
    out.labels_used = sklearn::unique_labels(&y, &p);

    let prfs = sklearn::precision_recall_fscore(&y, &p, &all_labels);
    out.per_class = Some(
        stage
            .class_names()
            .iter()
            .enumerate()
            .map(|(c, &class)| ClassScores {
                class,
                precision: prfs.precision[c],
                recall: prfs.recall[c],
                f1: prfs.f1[c],
                support: prfs.support[c],
                predicted: prfs.predicted[c],
            })
            .collect(),
    );

    let mut confusion = Confusion {
        labels: stage.class_names().to_vec(),
        matrix: vec![vec![0; k]; k],
        missing_pred: vec![0; k],
        out_of_range_pred: vec![0; k],
    };
    for r in &rows {
        let Some(g) = r.gold[i].map(usize::from).filter(|&g| g < k) else {
            continue;
        };
        match r.pred[i].map(usize::from) {
            None => confusion.missing_pred[g] += 1,
            Some(q) if q < k => confusion.matrix[g][q] += 1,
            Some(_) => confusion.out_of_range_pred[g] += 1,
        }
    }
    out.confusion = Some(confusion);

    auroc(stage, &rows, &y, &mut out);
    out
}

/// Fills the AUROC fields, following the oracle (`clfmetrics.py`) and sklearn.
fn auroc(stage: Stage, rows: &[&TnmReport], y: &[i32], out: &mut StageScores) {
    let i = stage.index();
    let k = stage.n_classes();
    let probs: Option<Vec<&[f64]>> = rows.iter().map(|r| r.prob[i].as_deref()).collect();
    let Some(probs) = probs else {
        out.auroc_note = Some("probabilities missing".to_string());
        return;
    };
    if probs.iter().any(|row| row.len() != k) {
        out.auroc_note = Some(format!("{stage} probabilities must have {k} columns"));
        return;
    }
    if probs.iter().any(|row| row.iter().any(|v| !v.is_finite())) {
        // sklearn's check_array: "Input contains NaN" / "Input contains infinity".
        out.auroc_note =
            Some("sklearn ValueError: Input y_score contains NaN or infinity.".to_string());
        return;
    }
    let labels: Vec<i32> = (0..k as i32).collect();

    if stage == Stage::M {
        // Binary: roc_auc_score(y, P[:, 1]); the positive class is M1.
        if y.iter().any(|&v| !(0..=1).contains(&v)) {
            out.auroc_note = Some("gold label out of range".to_string());
            return;
        }
        let yb: Vec<bool> = y.iter().map(|&v| v == 1).collect();
        let s: Vec<f64> = probs.iter().map(|row| row[1]).collect();
        out.auroc = finite(sklearn::binary_roc_auc(&yb, &s));
        if out.auroc.is_none() {
            out.auroc_note =
                Some("sklearn returned NaN: only one class present in gold".to_string());
        }
        return;
    }

    // T and N: multi_class="ovr", average="macro", labels=0..K-1.
    match sklearn::ovr_roc_auc(y, &probs, &labels) {
        Ok(ovr) => {
            out.auroc = finite(ovr.macro_avg);
            if out.auroc.is_none() {
                out.auroc_note = Some(
                    "sklearn returned NaN: at least one class absent from gold (its OvR AUC is NaN)".to_string(),
                );
            }
            out.auroc_ovr_weighted = finite(ovr.weighted);
        }
        Err(e) => {
            out.auroc_note = Some(format!("sklearn ValueError: {}", e.sklearn_message()));
        }
    }
    // Per-class views, computed even when the averaged call raised (as the oracle does).
    let per: Vec<Option<f64>> = sklearn::ovr_per_class(y, &probs, &labels)
        .into_iter()
        .map(finite)
        .collect();
    let defined: Vec<f64> = per.iter().flatten().copied().collect();
    out.auroc_ovr_macro_defined_classes = finite(sklearn::np_mean(&defined));
    out.auroc_ovr_per_class = Some(per);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(g: [Option<u8>; 3], p: [Option<u8>; 3]) -> TnmReport {
        TnmReport::new(g, p)
    }

    #[test]
    fn empty_input_is_all_null() {
        let s = score(&[]);
        assert_eq!(s.n_reports, 0);
        assert_eq!(s.mean_macro_f1, None);
        assert_eq!(s.exact_match, None);
        assert_eq!(s.t.auroc_note.as_deref(), Some("no gold labels"));
        assert!(!render_table(&s).is_empty());
    }

    #[test]
    fn missing_prediction_is_its_own_wrong_label() {
        let s = score(&[
            rep([Some(0), None, None], [Some(0), None, None]),
            rep([Some(1), None, None], [None, None, None]),
        ]);
        assert_eq!(s.t.labels_used, vec![-1, 0, 1]);
        assert_eq!(s.t.accuracy, Some(0.5));
        // F1: -1 → 0, 0 → 1, 1 → 0
        assert!((s.t.macro_f1.unwrap_or(f64::NAN) - 1.0 / 3.0).abs() < 1e-15);
        let c = s.t.confusion.as_ref().map(|c| c.missing_pred.clone());
        assert_eq!(c, Some(vec![0, 1, 0, 0]));
        assert_eq!(s.mean_macro_f1, None);
        assert_eq!(s.exact_match, None);
    }

    #[test]
    fn out_of_range_values_never_panic() {
        let reports = vec![
            rep([Some(9), Some(200), Some(7)], [Some(255), None, Some(3)])
                .with_prob(Stage::T, vec![f64::NAN])
                .with_prob(Stage::M, vec![0.2, 0.8]),
            rep([Some(0), Some(0), Some(0)], [Some(0), Some(0), Some(0)])
                .with_prob(Stage::T, vec![1.0, 0.0, 0.0, 0.0])
                .with_prob(Stage::M, vec![0.9, 0.1]),
        ];
        let s = score(&reports);
        assert!(s.t.auroc.is_none());
        assert!(s.m.auroc.is_none());
        assert!(validate(&reports).len() >= 5);
        assert!(score_checked(&reports).is_err());
        let _ = render_table(&s);
    }

    #[test]
    fn probability_validation_reports_row_and_stage() {
        let reports = vec![
            rep([Some(0); 3], [Some(0); 3]).with_prob(Stage::N, vec![0.25; 4]),
            rep([Some(0); 3], [Some(0); 3]).with_prob(Stage::N, vec![0.5, 0.5, 0.5, 0.0]),
            rep([Some(0); 3], [Some(0); 3]).with_prob(Stage::M, vec![0.5, 0.5, 0.0]),
        ];
        let errs = validate_probabilities(&reports);
        assert_eq!(errs.len(), 2);
        assert!(matches!(
            errs[0],
            InputError::ProbSum {
                row: 1,
                stage: Stage::N,
                ..
            }
        ));
        assert!(matches!(
            errs[1],
            InputError::ProbLength {
                row: 2,
                stage: Stage::M,
                got: 3,
                expected: 2
            }
        ));
        assert_eq!(
            errs[0].to_string(),
            "report 1: N probabilities sum to 1.5, not 1 (tolerance 0.001)"
        );
    }

    #[test]
    fn ovr_probabilities_off_by_more_than_numpy_allclose_give_null_with_sklearn_message() {
        let reports: Vec<TnmReport> = (0..4u8)
            .map(|c| {
                let mut p = vec![0.1; 4];
                p[usize::from(c)] = 0.7 + 0.0005; // sums to 1.0005: within 1e-3, not within allclose
                rep([Some(c), None, None], [Some(c), None, None]).with_prob(Stage::T, p)
            })
            .collect();
        let s = score(&reports);
        assert!(validate_probabilities(&reports).is_empty());
        assert_eq!(s.t.auroc, None);
        assert!(
            s.t.auroc_note
                .as_deref()
                .unwrap_or("")
                .contains("sum up to 1.0")
        );
        assert_eq!(s.t.auroc_ovr_per_class, Some(vec![Some(1.0); 4]));
    }
}
