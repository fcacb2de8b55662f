//! Fixed-width text rendering of [`TnmScores`].

use std::fmt::Write as _;

use super::{Stage, TnmScores};

/// 4-decimal number, or "n/a" for an undefined value.
fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.4}"))
}

/// A readable fixed-width table: one row per stage (n, accuracy, macro/micro/weighted F1,
/// AUROC), then per-class precision/recall/F1/support, then the confusion matrices, then the
/// overall lines (official mean macro-F1, exact match) and any AUROC notes.
pub fn render_table(s: &TnmScores) -> String {
    let mut o = String::new();
    // `write!` to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(o, "TNM staging scores ({} reports)", s.n_reports);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<5} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "stage", "n", "no-gold", "no-pred", "acc", "macroF1", "microF1", "wtdF1", "AUROC"
    );
    for stage in Stage::ALL {
        let st = s.stage(stage);
        let _ = writeln!(
            o,
            "{:<5} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            stage.name(),
            st.n,
            st.n_missing_gold,
            st.n_missing_pred,
            num(st.accuracy),
            num(st.macro_f1),
            num(st.micro_f1),
            num(st.weighted_f1),
            num(st.auroc)
        );
    }

    let _ = writeln!(o);
    let _ = writeln!(o, "Per class");
    let _ = writeln!(
        o,
        "{:<5} {:<5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "stage", "class", "P", "R", "F1", "support", "predicted", "AUROC"
    );
    for stage in Stage::ALL {
        let st = s.stage(stage);
        let Some(per_class) = &st.per_class else {
            let _ = writeln!(o, "{:<5} (no gold labels)", stage.name());
            continue;
        };
        for (c, cs) in per_class.iter().enumerate() {
            let ovr = st
                .auroc_ovr_per_class
                .as_ref()
                .and_then(|v| v.get(c).copied().flatten());
            let ovr = if st.auroc_ovr_per_class.is_some() {
                num(ovr)
            } else {
                String::new()
            };
            let line = format!(
                "{:<5} {:<5} {:>8.4} {:>8.4} {:>8.4} {:>8} {:>9} {:>8}",
                stage.name(),
                cs.class,
                cs.precision,
                cs.recall,
                cs.f1,
                cs.support,
                cs.predicted,
                ovr
            );
            let _ = writeln!(o, "{}", line.trim_end());
        }
    }

    for stage in Stage::ALL {
        let st = s.stage(stage);
        let Some(cm) = &st.confusion else { continue };
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Confusion {} (rows gold, columns predicted)",
            stage.name()
        );
        let _ = write!(o, "{:<6}", "");
        for l in &cm.labels {
            let _ = write!(o, " {l:>6}");
        }
        let _ = write!(o, " {:>8}", "missing");
        let other = cm.out_of_range_pred.iter().any(|&x| x > 0);
        if other {
            let _ = write!(o, " {:>8}", "invalid");
        }
        let _ = writeln!(o);
        for (g, row) in cm.matrix.iter().enumerate() {
            let _ = write!(o, "{:<6}", cm.labels.get(g).copied().unwrap_or("?"));
            for v in row {
                let _ = write!(o, " {v:>6}");
            }
            let _ = write!(o, " {:>8}", cm.missing_pred.get(g).copied().unwrap_or(0));
            if other {
                let _ = write!(
                    o,
                    " {:>8}",
                    cm.out_of_range_pred.get(g).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(o);
        }
    }

    let _ = writeln!(o);
    let _ = writeln!(o, "mean macro-F1 (official)   {}", num(s.mean_macro_f1));
    let _ = writeln!(
        o,
        "mean macro-F1 (available)  {}",
        num(s.mean_macro_f1_available)
    );
    let _ = writeln!(
        o,
        "exact match                {} (over {} reports with T, N and M gold)",
        num(s.exact_match),
        s.n_exact_match_eligible
    );
    for stage in Stage::ALL {
        let st = s.stage(stage);
        if let Some(note) = &st.auroc_note {
            let _ = writeln!(o, "note: {} AUROC n/a: {note}", stage.name());
            if let Some(v) = st.auroc_ovr_macro_defined_classes {
                let _ = writeln!(
                    o,
                    "      {} OvR AUROC mean over defined classes: {v:.4}",
                    stage.name()
                );
            }
        }
    }
    o
}
