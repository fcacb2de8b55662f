//! Faithful ports of the scikit-learn 1.9.1 (numpy 2.4) routines behind the Task 6 scores.
//!
//! Every function here mirrors one sklearn/numpy code path, including its floating-point order
//! of operations, so that results agree with the Python scorers to the last bit in practice (the
//! parity tests allow 1e-9 for F1 and 1e-6 for AUROC, and in fact see differences of 0).
//!
//! Labels are plain `i32` values, exactly as sklearn sees them: a missing prediction is `-1`, and
//! an out-of-range label is just another label. None of these functions panic.

/// `numpy.add.reduce` over a contiguous `float64` array: numpy's pairwise summation.
///
/// numpy starts from the identity `0.0` and adds the pairwise sum of the whole array: blocks of
/// fewer than 8 values are summed left to right, blocks of up to 128 values with 8 interleaved
/// accumulators, longer blocks are split in two (the first half a multiple of 8). Summing left to
/// right instead would differ from numpy in the last bits once there are 9 values or more (e.g.
/// the trapezoid pieces of a ROC curve).
pub(crate) fn np_sum(a: &[f64]) -> f64 {
    0.0 + pairwise_sum(a)
}

fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - (n % 8) {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.mean` of a float array (`add.reduce / n`); NaN for an empty array, as numpy.
pub(crate) fn np_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    np_sum(a) / a.len() as f64
}

/// `sklearn.utils.multiclass.unique_labels(y_true, y_pred)`: the sorted union of the labels
/// present in either array. This is the label set `f1_score` uses when `labels=None`, which is
/// why a missing prediction (`-1`) enters the macro average as a class of its own: its F1 is 0
/// (it is never a gold label), so every report with a missing prediction both lowers the recall
/// of its gold class and adds a zero to the macro mean, exactly as in the official scorer.
pub(crate) fn unique_labels(y_true: &[i32], y_pred: &[i32]) -> Vec<i32> {
    let mut labels: Vec<i32> = y_true.iter().chain(y_pred).copied().collect();
    labels.sort_unstable();
    labels.dedup();
    labels
}

/// The output of `precision_recall_fscore_support(..., average=None, zero_division=0)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prfs {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    /// `true_sum`: how many gold labels equal each label (sklearn's "support").
    pub support: Vec<usize>,
    /// `pred_sum`: how many predictions equal each label.
    pub predicted: Vec<usize>,
}

/// `_prf_divide` with `zero_division=0` (also what "warn" does): a zero denominator gives 0.
fn prf_divide(num: f64, den: f64) -> f64 {
    if den == 0.0 { 0.0 } else { num / den }
}

/// Per-label precision, recall and F1 for the given `labels` (`average=None`), from the
/// multilabel confusion matrix counts `tp`, `pred_sum = tp + fp`, `true_sum = tp + fn`.
///
/// sklearn ≥ 1.3 computes F-beta from counts, not from precision and recall:
/// `F = (1 + β²)·tp / (β²·true_sum + pred_sum)`, here with β = 1, so a class that is never
/// predicted and never in gold has F1 = 0/0 → `zero_division` = 0.
pub(crate) fn precision_recall_fscore(y_true: &[i32], y_pred: &[i32], labels: &[i32]) -> Prfs {
    let k = labels.len();
    let mut out = Prfs {
        precision: Vec::with_capacity(k),
        recall: Vec::with_capacity(k),
        f1: Vec::with_capacity(k),
        support: Vec::with_capacity(k),
        predicted: Vec::with_capacity(k),
    };
    for &label in labels {
        let mut tp = 0usize;
        let mut true_sum = 0usize;
        let mut pred_sum = 0usize;
        for (&y, &p) in y_true.iter().zip(y_pred) {
            let is_true = y == label;
            let is_pred = p == label;
            tp += usize::from(is_true && is_pred);
            true_sum += usize::from(is_true);
            pred_sum += usize::from(is_pred);
        }
        let (tp_f, true_f, pred_f) = (tp as f64, true_sum as f64, pred_sum as f64);
        out.precision.push(prf_divide(tp_f, pred_f));
        out.recall.push(prf_divide(tp_f, true_f));
        let beta2 = 1.0;
        out.f1
            .push(prf_divide((1.0 + beta2) * tp_f, beta2 * true_f + pred_f));
        out.support.push(true_sum);
        out.predicted.push(pred_sum);
    }
    out
}

/// `f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)`; `labels=None`
/// means [`unique_labels`]. The macro mean is `np.nanmean` of the per-label F1 (no NaN can
/// occur with `zero_division=0`). NaN for empty input (the caller never passes one).
pub(crate) fn f1_macro(y_true: &[i32], y_pred: &[i32], labels: Option<&[i32]>) -> f64 {
    let owned;
    let labels = match labels {
        Some(l) => l,
        None => {
            owned = unique_labels(y_true, y_pred);
            &owned
        }
    };
    let prfs = precision_recall_fscore(y_true, y_pred, labels);
    np_mean(&prfs.f1)
}

/// `f1_score(..., average="micro")`: the counts are pooled over the label set first, so
/// `F = 2·Σtp / (Σtrue + Σpred)`. With the default label set every gold and every predicted
/// label is counted, so this equals accuracy (a missing prediction is a false positive of `-1`).
pub(crate) fn f1_micro(y_true: &[i32], y_pred: &[i32]) -> f64 {
    let labels = unique_labels(y_true, y_pred);
    let prfs = precision_recall_fscore(y_true, y_pred, &labels);
    let tp: usize = y_true.iter().zip(y_pred).filter(|(y, p)| y == p).count();
    let true_sum: usize = prfs.support.iter().sum();
    let pred_sum: usize = prfs.predicted.iter().sum();
    prf_divide(2.0 * tp as f64, true_sum as f64 + pred_sum as f64)
}

/// `f1_score(..., average="weighted")` over the default label set: the per-label F1 averaged
/// with weights = gold support (`np.average`: `Σ(f·w) / Σw`, both pairwise sums). Labels that
/// only occur as predictions (such as `-1`) have weight 0. When every weight is zero sklearn
/// falls back to the unweighted mean (cannot happen with at least one gold label).
pub(crate) fn f1_weighted(y_true: &[i32], y_pred: &[i32]) -> f64 {
    let labels = unique_labels(y_true, y_pred);
    let prfs = precision_recall_fscore(y_true, y_pred, &labels);
    let w: Vec<f64> = prfs.support.iter().map(|&s| s as f64).collect();
    let scale = np_sum(&w);
    if scale == 0.0 {
        return np_mean(&prfs.f1);
    }
    let fw: Vec<f64> = prfs.f1.iter().zip(&w).map(|(f, w)| f * w).collect();
    np_sum(&fw) / scale
}

/// `accuracy_score`: the mean of `y_true == y_pred`, i.e. exactly `correct / n`.
pub(crate) fn accuracy(y_true: &[i32], y_pred: &[i32]) -> f64 {
    if y_true.is_empty() {
        return f64::NAN;
    }
    let correct = y_true.iter().zip(y_pred).filter(|(y, p)| y == p).count();
    correct as f64 / y_true.len() as f64
}

/// `_binary_roc_auc_score(y_true, y_score)` with `max_fpr=None`: `auc(*roc_curve(...)[:2])`.
///
/// Returns NaN, as sklearn ≥ 1.6 does (with an `UndefinedMetricWarning`), when `y_true` does not
/// hold both classes. Scores must be finite (sklearn raises on NaN/inf before getting here; the
/// caller checks).
///
/// How the curve is built (`confusion_matrix_at_thresholds`, formerly `_binary_clf_curve`):
/// 1. sort by score, descending, stably;
/// 2. **ties**: one threshold per *distinct* score value: the positions where the sorted score
///    changes, plus the last position. All reports sharing a score enter the curve together, so
///    a tie between a positive and a negative becomes one diagonal step, which the trapezoid
///    rule turns into the usual "half credit" for tied pairs;
/// 3. `tps` = cumulative count of positives at each threshold, `fps = 1 + index - tps`;
/// 4. `roc_curve(drop_intermediate=True)` drops the interior points where both `fps` and `tps`
///    have a zero second difference (collinear points; this never changes the area, but we drop
///    them too so that the sum of trapezoids is the same floating-point sum), then prepends the
///    (0, 0) point;
/// 5. `fpr = fps / fps[-1]`, `tpr = tps / tps[-1]`;
/// 6. `auc`: `np.trapezoid(tpr, fpr)` = pairwise sum of `Δfpr·(tpr[i+1] + tpr[i]) / 2`.
pub(crate) fn binary_roc_auc(y_true: &[bool], y_score: &[f64]) -> f64 {
    let n = y_true.len().min(y_score.len());
    let n_pos = y_true[..n].iter().filter(|&&y| y).count();
    if n_pos == 0 || n_pos == n {
        // len(np.unique(y_true)) != 2
        return f64::NAN;
    }
    // 1. stable descending argsort (`xp.argsort(..., stable=True, descending=True)`); ties keep
    // their input order, which cannot matter since a tie block is consumed as a whole.
    let mut order: Vec<usize> = (0..n).collect();
    // (`total_cmp` puts 0.0 before -0.0, which numpy sorts as equal; they still end up adjacent
    // and `0.0 - -0.0 == 0`, so they form one tie block, as in numpy.)
    order.sort_by(|&a, &b| y_score[b].total_cmp(&y_score[a]));
    let sorted: Vec<f64> = order.iter().map(|&i| y_score[i]).collect();
    // 2.-3. thresholds at distinct values (`np.diff(y_score) != 0`) and the last index.
    let mut tps: Vec<f64> = Vec::new();
    let mut fps: Vec<f64> = Vec::new();
    let mut cum = 0.0f64;
    for i in 0..n {
        if y_true[order[i]] {
            cum += 1.0;
        }
        let last = i + 1 == n;
        if last || sorted[i + 1] - sorted[i] != 0.0 {
            tps.push(cum);
            fps.push(1.0 + i as f64 - cum);
        }
    }
    // 4. drop_intermediate: keep the ends and every point with a non-zero second difference.
    if fps.len() > 2 {
        let m = fps.len();
        let second_diff = |v: &[f64], j: usize| (v[j + 2] - v[j + 1]) - (v[j + 1] - v[j]);
        let keep: Vec<usize> = (0..m)
            .filter(|&i| {
                i == 0
                    || i + 1 == m
                    || second_diff(&fps, i - 1) != 0.0
                    || second_diff(&tps, i - 1) != 0.0
            })
            .collect();
        fps = keep.iter().map(|&i| fps[i]).collect();
        tps = keep.iter().map(|&i| tps[i]).collect();
    }
    // (0, 0) start point.
    fps.insert(0, 0.0);
    tps.insert(0, 0.0);
    // 5. rates (both totals are > 0: two classes are present).
    let fp_total = fps[fps.len() - 1];
    let tp_total = tps[tps.len() - 1];
    let fpr: Vec<f64> = fps.iter().map(|v| v / fp_total).collect();
    let tpr: Vec<f64> = tps.iter().map(|v| v / tp_total).collect();
    auc(&fpr, &tpr)
}

/// `sklearn.metrics.auc(x, y)`: trapezoidal area, `x` monotonic (increasing, or decreasing with
/// a sign flip). NaN where sklearn would raise (fewer than 2 points, non-monotonic `x`).
fn auc(x: &[f64], y: &[f64]) -> f64 {
    if x.len() < 2 || x.len() != y.len() {
        return f64::NAN;
    }
    let dx: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    let mut direction = 1.0;
    if dx.iter().any(|&d| d < 0.0) {
        if dx.iter().all(|&d| d <= 0.0) {
            direction = -1.0;
        } else {
            return f64::NAN;
        }
    }
    // np.trapezoid: (d * (y[1:] + y[:-1]) / 2.0).sum()
    let pieces: Vec<f64> = dx
        .iter()
        .zip(y.windows(2))
        .map(|(d, w)| d * (w[1] + w[0]) / 2.0)
        .collect();
    direction * np_sum(&pieces)
}

/// The per-class one-vs-rest view of `roc_auc_score(y, probs, multi_class="ovr", labels=...)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ovr {
    /// `average="macro"`: NaN as soon as one class's OvR AUC is NaN (the class is absent from
    /// gold, or it is the only class present).
    pub macro_avg: f64,
    /// `average="weighted"` (weights = gold support; sklearn zeroes the scores of zero-weight
    /// classes before averaging, so an absent class does not make this NaN).
    pub weighted: f64,
}

/// Why sklearn's multiclass `roc_auc_score` raises before computing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OvrError {
    /// `np.allclose(1, y_score.sum(axis=1))` failed.
    NotProbabilities,
    /// A gold label is not one of `labels`.
    LabelNotInLabels,
}

impl OvrError {
    /// sklearn's own message for the `ValueError`.
    pub(crate) fn sklearn_message(&self) -> &'static str {
        match self {
            OvrError::NotProbabilities => {
                "Target scores need to be probabilities for multiclass roc_auc, i.e. they should sum up to 1.0 over classes"
            }
            OvrError::LabelNotInLabels => "'y_true' contains labels not in parameter 'labels'",
        }
    }
}

/// numpy's `allclose(1, s)` for one value: `|1 - s| <= atol + rtol·|s|`, rtol 1e-5, atol 1e-8;
/// an infinite or NaN `s` (a row sum that overflowed) is never close to 1.
fn np_isclose_one(s: f64) -> bool {
    s.is_finite() && (1.0 - s).abs() <= 1e-8 + 1e-5 * s.abs()
}

/// The one-vs-rest AUC of each label column (`roc_auc_score((y == k), probs[:, k])`), NaN where
/// the class is absent from gold or is the only class present. Rows are `probs[i][k]`, all of
/// length `labels.len()` and finite (the caller checks).
pub(crate) fn ovr_per_class(y_true: &[i32], probs: &[&[f64]], labels: &[i32]) -> Vec<f64> {
    labels
        .iter()
        .enumerate()
        .map(|(k, &label)| {
            let yk: Vec<bool> = y_true.iter().map(|&y| y == label).collect();
            let sk: Vec<f64> = probs
                .iter()
                .map(|row| row.get(k).copied().unwrap_or(f64::NAN))
                .collect();
            binary_roc_auc(&yk, &sk)
        })
        .collect()
}

/// `roc_auc_score(y_true, probs, multi_class="ovr", average=..., labels=labels)` for a
/// multiclass target (`_multiclass_roc_auc_score`), after sklearn's input checks in its order:
/// rows must sum to 1 (numpy `allclose`, i.e. about 1e-5 relative), then every gold label must
/// be in `labels`. OvR is then the multilabel case: each label column against the rest, then
/// averaged (`_average_binary_score`).
pub(crate) fn ovr_roc_auc(
    y_true: &[i32],
    probs: &[&[f64]],
    labels: &[i32],
) -> Result<Ovr, OvrError> {
    if !probs.iter().all(|row| np_isclose_one(np_sum(row))) {
        return Err(OvrError::NotProbabilities);
    }
    if !y_true.iter().all(|y| labels.contains(y)) {
        return Err(OvrError::LabelNotInLabels);
    }
    let per = ovr_per_class(y_true, probs, labels);
    // macro: `_average(score)` = np.mean; one NaN makes it NaN.
    let macro_avg = np_mean(&per);
    // weighted: weights = column sums of the binarised gold.
    let weights: Vec<f64> = labels
        .iter()
        .map(|l| y_true.iter().filter(|&y| y == l).count() as f64)
        .collect();
    let total = np_sum(&weights);
    let weighted = if (total - 0.0).abs() <= 1e-8 {
        // `xpx.isclose(sum(average_weight), 0)`: sklearn returns 0.
        0.0
    } else {
        let prod: Vec<f64> = per
            .iter()
            .zip(&weights)
            .map(|(&s, &w)| if w == 0.0 { 0.0 } else { s * w })
            .collect();
        np_sum(&prod) / total
    };
    Ok(Ovr {
        macro_avg,
        weighted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_simple_sum_for_short_arrays() {
        assert_eq!(np_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(np_sum(&[]), 0.0);
        let v: Vec<f64> = (0..300).map(|i| i as f64).collect();
        assert_eq!(np_sum(&v), 44850.0);
    }

    #[test]
    fn roc_auc_examples_from_sklearn_docs() {
        // sklearn doc example: y = [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8] → 0.75
        let y = [false, false, true, true];
        assert_eq!(binary_roc_auc(&y, &[0.1, 0.4, 0.35, 0.8]), 0.75);
        // all tied → 0.5
        assert_eq!(binary_roc_auc(&y, &[0.5; 4]), 0.5);
        // one class only → NaN
        assert!(binary_roc_auc(&[true, true], &[0.1, 0.2]).is_nan());
        assert!(binary_roc_auc(&[], &[]).is_nan());
    }

    #[test]
    fn macro_f1_counts_missing_prediction_label() {
        // gold [0, 1], pred [0, -1]: labels {-1, 0, 1}; F1 = [0, 1, 0] → 1/3
        let f = f1_macro(&[0, 1], &[0, -1], None);
        assert!((f - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(f1_micro(&[0, 1], &[0, -1]), 0.5);
    }
}
