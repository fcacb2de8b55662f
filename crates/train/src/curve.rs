//! The training curve as a standalone SVG: training loss by step on top, evaluation metrics by
//! step below. Plain SVG text (a polyline per series) keeps the binary free of a plotting
//! stack and the file viewable in any browser on an offline machine.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

const WIDTH: f64 = 720.0;
const PANEL: f64 = 220.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 30.0;
const GAP: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// Renders the records of `metrics.jsonl` (`{"step", "loss"}` and `{"step", "eval": {..}}`).
/// `highlight` names the metric that chose the best checkpoint (drawn first, marked).
pub fn render(records: &[Value], highlight: Option<&str>) -> String {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| Some((r["step"].as_f64()?, r["loss"].as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect();
    let mut evals: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in records {
        let (Some(step), Some(m)) = (r["step"].as_f64(), r["eval"].as_object()) else {
            continue;
        };
        for (k, v) in m {
            if let Some(y) = v.as_f64().filter(|y| y.is_finite()) {
                evals.entry(k.clone()).or_default().push((step, y));
            }
        }
    }
    let max_step = train
        .iter()
        .chain(evals.values().flatten())
        .map(|p| p.0)
        .fold(1.0f64, f64::max);
    let panels = if evals.is_empty() { 1.0 } else { 2.0 };
    let height = MARGIN_TOP + panels * PANEL + (panels - 1.0) * GAP + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel(
        &mut svg,
        MARGIN_TOP,
        "training loss",
        &[("loss".to_string(), train)],
        max_step,
        None,
    );
    if !evals.is_empty() {
        let mut series: Vec<(String, Vec<(f64, f64)>)> = evals.into_iter().collect();
        if let Some(h) = highlight {
            series.sort_by_key(|(k, _)| k != h);
        }
        panel(
            &mut svg,
            MARGIN_TOP + PANEL + GAP,
            "evaluation",
            &series,
            max_step,
            highlight,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(
    svg: &mut String,
    top: f64,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
    max_step: f64,
    highlight: Option<&str>,
) {
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (mut lo, mut hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let x = |s: f64| MARGIN_LEFT + s / max_step * plot_w;
    let y = |v: f64| top + PANEL - (v - lo) / (hi - lo) * PANEL;
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN_LEFT}" y="{}" font-weight="bold">{title}</text>"##,
        top - 8.0
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#888"/>"##
    );
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text>"##,
            MARGIN_LEFT - 6.0,
            y(v) + 4.0,
            tick(v)
        );
        let s = max_step * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
            x(s),
            top + PANEL + 14.0,
            s.round()
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle">step</text>"##,
        MARGIN_LEFT + plot_w / 2.0,
        top + PANEL + 28.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let width = if highlight == Some(name.as_str()) {
            2.5
        } else {
            1.5
        };
        let pts: Vec<String> = points
            .iter()
            .map(|&(s, v)| format!("{:.1},{:.1}", x(s), y(v)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="{color}" stroke-width="{width}" points="{}"/>"##,
            pts.join(" ")
        );
        if points.len() < 50 {
            for &(s, v) in points {
                let _ = writeln!(
                    svg,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"##,
                    x(s),
                    y(v)
                );
            }
        }
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" fill="{color}" text-anchor="end">{}</text>"##,
            WIDTH - MARGIN_RIGHT - 6.0,
            top + 14.0 + 14.0 * i as f64,
            escape(name)
        );
    }
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn draws_the_loss_and_every_evaluation_metric() {
        let records = vec![
            json!({"step": 1, "loss": 2.0}),
            json!({"step": 2, "loss": 1.5}),
            json!({"step": 2, "eval": {"eval_loss": 1.7, "f1": 0.4}}),
            json!({"step": 4, "loss": 1.0}),
            json!({"step": 4, "eval": {"eval_loss": 1.2, "f1": 0.6}}),
        ];
        let svg = render(&records, Some("f1"));
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains(">training loss<") && svg.contains(">evaluation<"));
        // f1 (the keep-best metric) is drawn first and thicker.
        let f1 = svg.find(">f1<").unwrap();
        let el = svg.find(">eval_loss<").unwrap();
        assert!(f1 < el);
        assert!(svg.contains(r#"stroke-width="2.5""#));
    }

    #[test]
    fn no_records_still_give_a_valid_picture() {
        let svg = render(&[], None);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
