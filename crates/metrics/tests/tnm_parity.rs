//! Parity of `clinstruct_metrics::tnm` with the scikit-learn oracle (`clfmetrics.py`).
//!
//! Fixtures are made by `scripts/fixtures/make_tnm_metric_fixtures.py` (scikit-learn 1.9.1) and
//! committed, so this test needs no Python. Every number the oracle writes is compared:
//! accuracy and F1 to 1e-9, AUROC to 1e-6, counts and confusion matrices exactly, and `null`
//! exactly where the oracle has `null`. An oracle field this test does not know is an error too.

use std::collections::BTreeMap;

use clinstruct_metrics::tnm::{self, Stage, StageScores, TnmReport, TnmScores};
use serde_json::Value;

const CASES: &str = include_str!("fixtures/tnm_cases.json");
const EXPECTED: &str = include_str!("fixtures/tnm_expected.json");

const TOL_F1: f64 = 1e-9;
const TOL_AUROC: f64 = 1e-6;

#[derive(Default)]
struct Checker {
    errors: Vec<String>,
    /// numbers compared, by kind
    compared: BTreeMap<&'static str, usize>,
    /// largest absolute difference seen, by kind
    max_diff: BTreeMap<&'static str, f64>,
}

impl Checker {
    fn err(&mut self, path: &str, msg: String) {
        self.errors.push(format!("{path}: {msg}"));
    }

    fn float(
        &mut self,
        path: &str,
        kind: &'static str,
        tol: f64,
        exp: Option<&Value>,
        got: Option<f64>,
    ) {
        *self.compared.entry(kind).or_default() += 1;
        match (exp.unwrap_or(&Value::Null), got) {
            (Value::Null, None) => {}
            (Value::Null, Some(g)) => self.err(path, format!("expected null, got {g}")),
            (e, None) => self.err(path, format!("expected {e}, got null")),
            (e, Some(g)) => match e.as_f64() {
                Some(e) => {
                    let d = (e - g).abs();
                    let m = self.max_diff.entry(kind).or_default();
                    *m = m.max(d);
                    if d.is_nan() || d > tol {
                        self.err(
                            path,
                            format!("expected {e}, got {g} (diff {d:e} > {tol:e})"),
                        );
                    }
                }
                None => self.err(path, format!("expected a number or null, fixture has {e}")),
            },
        }
    }

    fn f1(&mut self, path: &str, exp: Option<&Value>, got: Option<f64>) {
        self.float(path, "accuracy/F1", TOL_F1, exp, got);
    }

    fn auroc(&mut self, path: &str, exp: Option<&Value>, got: Option<f64>) {
        self.float(path, "AUROC", TOL_AUROC, exp, got);
    }

    fn count(&mut self, path: &str, exp: Option<&Value>, got: usize) {
        *self.compared.entry("counts").or_default() += 1;
        if exp.and_then(Value::as_u64) != Some(got as u64) {
            self.err(path, format!("expected {exp:?}, got {got}"));
        }
    }
}

fn parse_reports(reports: &Value) -> Vec<TnmReport> {
    let label = |v: Option<&Value>| -> Option<u8> {
        let x = v?.as_i64()?;
        (x >= 0).then(|| u8::try_from(x).expect("class index fits u8"))
    };
    reports
        .as_array()
        .expect("reports array")
        .iter()
        .map(|r| {
            let mut rep = TnmReport::default();
            for s in Stage::ALL {
                rep.gold[s.index()] = label(r["gold"].get(s.name()));
                rep.pred[s.index()] = label(r["pred"].get(s.name()));
                rep.prob[s.index()] = r.get("prob").and_then(|p| p.get(s.name())).map(|p| {
                    p.as_array()
                        .expect("prob array")
                        .iter()
                        .map(|x| x.as_f64().expect("prob number"))
                        .collect()
                });
            }
            rep
        })
        .collect()
}

const STAGE_KEYS: &[&str] = &[
    "n",
    "n_missing_gold",
    "n_missing_pred",
    "accuracy",
    "macro_f1",
    "micro_f1",
    "weighted_f1",
    "macro_f1_all_labels",
    "labels_used_by_sklearn_default",
    "per_class",
    "confusion_matrix",
    "missing_pred_by_gold",
    "auroc",
    "auroc_note",
    "auroc_ovr_per_class",
    "auroc_ovr_macro_defined_classes",
    "auroc_ovr_weighted",
];

fn compare_stage(ck: &mut Checker, path: &str, e: &Value, g: &StageScores) {
    let Some(obj) = e.as_object() else {
        ck.err(path, "expected an object".into());
        return;
    };
    for k in obj.keys() {
        if !STAGE_KEYS.contains(&k.as_str()) {
            ck.err(
                path,
                format!("oracle field {k:?} is not compared by this test"),
            );
        }
    }
    let p = |k: &str| format!("{path}.{k}");
    ck.count(&p("n"), e.get("n"), g.n);
    ck.count(
        &p("n_missing_gold"),
        e.get("n_missing_gold"),
        g.n_missing_gold,
    );
    ck.count(
        &p("n_missing_pred"),
        e.get("n_missing_pred"),
        g.n_missing_pred,
    );
    ck.f1(&p("accuracy"), e.get("accuracy"), g.accuracy);
    ck.f1(&p("macro_f1"), e.get("macro_f1"), g.macro_f1);
    ck.f1(&p("micro_f1"), e.get("micro_f1"), g.micro_f1);
    ck.f1(&p("weighted_f1"), e.get("weighted_f1"), g.weighted_f1);
    ck.f1(
        &p("macro_f1_all_labels"),
        e.get("macro_f1_all_labels"),
        g.macro_f1_all_labels,
    );

    let labels: Option<Vec<i64>> = e
        .get("labels_used_by_sklearn_default")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_i64).collect());
    let got_labels: Vec<i64> = g.labels_used.iter().map(|&l| i64::from(l)).collect();
    *ck.compared.entry("counts").or_default() += 1;
    if labels.as_ref() != Some(&got_labels) {
        ck.err(
            &p("labels_used"),
            format!("expected {labels:?}, got {got_labels:?}"),
        );
    }

    // per class
    match (e.get("per_class").unwrap_or(&Value::Null), &g.per_class) {
        (Value::Null, None) => {}
        (Value::Object(m), Some(per)) => {
            if m.len() != per.len() {
                ck.err(
                    &p("per_class"),
                    format!("expected {} classes, got {}", m.len(), per.len()),
                );
            }
            for (c, cs) in g.stage.class_names().iter().zip(per) {
                let q = format!("{path}.per_class.{c}");
                if cs.class != *c {
                    ck.err(&q, format!("class name {}", cs.class));
                }
                let Some(ec) = m.get(*c) else {
                    ck.err(&q, "missing in oracle output".into());
                    continue;
                };
                ck.f1(
                    &format!("{q}.precision"),
                    ec.get("precision"),
                    Some(cs.precision),
                );
                ck.f1(&format!("{q}.recall"), ec.get("recall"), Some(cs.recall));
                ck.f1(&format!("{q}.f1"), ec.get("f1"), Some(cs.f1));
                ck.count(&format!("{q}.support"), ec.get("support"), cs.support);
                ck.count(&format!("{q}.predicted"), ec.get("predicted"), cs.predicted);
            }
        }
        (ev, gv) => ck.err(&p("per_class"), format!("expected {ev}, got {gv:?}")),
    }

    // confusion matrix and missing predictions per gold class
    let em = e.get("confusion_matrix").unwrap_or(&Value::Null);
    let emiss = e.get("missing_pred_by_gold").unwrap_or(&Value::Null);
    match (&g.confusion, em.is_null()) {
        (None, true) => {
            if !emiss.is_null() {
                ck.err(
                    &p("missing_pred_by_gold"),
                    format!("expected {emiss}, got null"),
                );
            }
        }
        (Some(cm), false) => {
            let rows = em.as_array().cloned().unwrap_or_default();
            if rows.len() != cm.matrix.len() {
                ck.err(
                    &p("confusion_matrix"),
                    format!("expected {} rows, got {}", rows.len(), cm.matrix.len()),
                );
            }
            for (i, (er, gr)) in rows.iter().zip(&cm.matrix).enumerate() {
                let er = er.as_array().cloned().unwrap_or_default();
                if er.len() != gr.len() {
                    ck.err(
                        &format!("{path}.confusion_matrix[{i}]"),
                        "row length".into(),
                    );
                }
                for (j, (ev, gv)) in er.iter().zip(gr).enumerate() {
                    ck.count(&format!("{path}.confusion_matrix[{i}][{j}]"), Some(ev), *gv);
                }
            }
            let emiss = emiss.as_array().cloned().unwrap_or_default();
            if emiss.len() != cm.missing_pred.len() {
                ck.err(&p("missing_pred_by_gold"), "length".into());
            }
            for (i, (ev, gv)) in emiss.iter().zip(&cm.missing_pred).enumerate() {
                ck.count(&format!("{path}.missing_pred_by_gold[{i}]"), Some(ev), *gv);
            }
            if cm.out_of_range_pred.iter().any(|&x| x > 0) {
                ck.err(
                    &p("confusion"),
                    "unexpected out-of-range predictions".into(),
                );
            }
        }
        (gv, _) => ck.err(&p("confusion_matrix"), format!("expected {em}, got {gv:?}")),
    }

    // AUROC
    ck.auroc(&p("auroc"), e.get("auroc"), g.auroc);
    *ck.compared.entry("notes").or_default() += 1;
    let enote = e.get("auroc_note").and_then(Value::as_str);
    if enote != g.auroc_note.as_deref() {
        ck.err(
            &p("auroc_note"),
            format!("expected {enote:?}, got {:?}", g.auroc_note),
        );
    }
    match (e.get("auroc_ovr_per_class"), &g.auroc_ovr_per_class) {
        (None | Some(Value::Null), None) => {}
        (Some(Value::Object(m)), Some(per)) => {
            if m.len() != per.len() {
                ck.err(
                    &p("auroc_ovr_per_class"),
                    format!("expected {} classes, got {}", m.len(), per.len()),
                );
            }
            for (c, v) in g.stage.class_names().iter().zip(per) {
                ck.auroc(&format!("{path}.auroc_ovr_per_class.{c}"), m.get(*c), *v);
            }
        }
        (ev, gv) => ck.err(
            &p("auroc_ovr_per_class"),
            format!("expected {ev:?}, got {gv:?}"),
        ),
    }
    ck.auroc(
        &p("auroc_ovr_macro_defined_classes"),
        e.get("auroc_ovr_macro_defined_classes"),
        g.auroc_ovr_macro_defined_classes,
    );
    ck.auroc(
        &p("auroc_ovr_weighted"),
        e.get("auroc_ovr_weighted"),
        g.auroc_ovr_weighted,
    );
}

const TOP_KEYS: &[&str] = &[
    "n_reports",
    "components",
    "n_exact_match_eligible",
    "exact_match_accuracy",
    "mean_macro_f1",
    "mean_macro_f1_available",
];

fn compare_case(ck: &mut Checker, name: &str, e: &Value, g: &TnmScores) {
    if let Some(obj) = e.as_object() {
        for k in obj.keys() {
            if !TOP_KEYS.contains(&k.as_str()) {
                ck.err(
                    name,
                    format!("oracle field {k:?} is not compared by this test"),
                );
            }
        }
    }
    ck.count(
        &format!("{name}.n_reports"),
        e.get("n_reports"),
        g.n_reports,
    );
    ck.count(
        &format!("{name}.n_exact_match_eligible"),
        e.get("n_exact_match_eligible"),
        g.n_exact_match_eligible,
    );
    ck.f1(
        &format!("{name}.exact_match"),
        e.get("exact_match_accuracy"),
        g.exact_match,
    );
    ck.f1(
        &format!("{name}.mean_macro_f1"),
        e.get("mean_macro_f1"),
        g.mean_macro_f1,
    );
    ck.f1(
        &format!("{name}.mean_macro_f1_available"),
        e.get("mean_macro_f1_available"),
        g.mean_macro_f1_available,
    );
    for s in Stage::ALL {
        let ev = &e["components"][s.name()];
        compare_stage(ck, &format!("{name}.{}", s.name()), ev, g.stage(s));
    }
}

fn load() -> (Vec<(String, Vec<TnmReport>)>, Value) {
    let cases: Value = serde_json::from_str(CASES).expect("tnm_cases.json");
    let expected: Value = serde_json::from_str(EXPECTED).expect("tnm_expected.json");
    let cases = cases["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_string(),
                parse_reports(&c["reports"]),
            )
        })
        .collect();
    (cases, expected)
}

fn run_all(expected: &Value, cases: &[(String, Vec<TnmReport>)]) -> Checker {
    let mut ck = Checker::default();
    for (name, reports) in cases {
        let Some(exp) = expected["cases"].get(name) else {
            ck.err(name, "no expected result".into());
            continue;
        };
        compare_case(&mut ck, name, &exp["result"], &tnm::score(reports));
    }
    ck
}

#[test]
fn parity_with_sklearn_oracle() {
    let (cases, expected) = load();
    let ck = run_all(&expected, &cases);
    eprintln!("{} cases; numbers compared: {:?}", cases.len(), ck.compared);
    eprintln!("largest differences: {:?}", ck.max_diff);
    assert!(
        ck.errors.is_empty(),
        "{} mismatches:\n{}",
        ck.errors.len(),
        ck.errors.join("\n")
    );
    // Every kind of value was actually exercised.
    for (kind, at_least) in [
        ("accuracy/F1", 1000),
        ("AUROC", 300),
        ("counts", 1500),
        ("notes", 66),
    ] {
        let n = ck.compared.get(kind).copied().unwrap_or(0);
        assert!(n >= at_least, "only {n} {kind} values compared");
    }
}

#[test]
fn fixture_files_agree_and_cover_the_required_cases() {
    let (cases, expected) = load();
    let names: Vec<&str> = cases.iter().map(|(n, _)| n.as_str()).collect();
    let exp_names: Vec<&str> = expected["cases"]
        .as_object()
        .expect("expected cases")
        .keys()
        .map(String::as_str)
        .collect();
    let mut a = names.clone();
    let mut b = exp_names.clone();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(
        a, b,
        "tnm_cases.json and tnm_expected.json list different cases"
    );
    for required in [
        "realistic_random_300",
        "class_never_predicted",
        "class_absent_from_gold",
        "all_missing_gold_M",
        "one_class_M_all_M0",
        "ties_quantised_eighths",
        "perfect_predictions",
        "all_wrong_predictions",
        "missing_predictions_realistic",
        "single_report",
        "two_reports",
    ] {
        assert!(names.contains(&required), "missing case {required}");
    }
    let realistic = &cases
        .iter()
        .find(|(n, _)| n == "realistic_random_300")
        .expect("realistic")
        .1;
    assert_eq!(realistic.len(), 300);
    assert!(tnm::validate(realistic).is_empty());
}

/// The comparison must be able to fail: perturb the expectations and expect errors.
#[test]
fn checker_detects_perturbed_expectations() {
    let (cases, expected) = load();
    let subset: Vec<_> = cases
        .into_iter()
        .filter(|(n, _)| n == "realistic_random_300" || n == "class_absent_from_gold")
        .collect();
    assert!(run_all(&expected, &subset).errors.is_empty());

    type Mutation = fn(&mut Value);
    let mutations: [(&str, Mutation); 10] = [
        ("macro_f1 + 1e-8", |v| {
            let x =
                &mut v["cases"]["realistic_random_300"]["result"]["components"]["T"]["macro_f1"];
            *x = (x.as_f64().unwrap_or(0.0) + 1e-8).into();
        }),
        ("auroc + 1e-5", |v| {
            let x = &mut v["cases"]["realistic_random_300"]["result"]["components"]["M"]["auroc"];
            *x = (x.as_f64().unwrap_or(0.0) + 1e-5).into();
        }),
        ("null auroc made a number", |v| {
            v["cases"]["class_absent_from_gold"]["result"]["components"]["T"]["auroc"] = 0.5.into();
        }),
        ("number made null", |v| {
            v["cases"]["realistic_random_300"]["result"]["components"]["N"]["weighted_f1"] =
                Value::Null;
        }),
        ("confusion cell + 1", |v| {
            let x = &mut v["cases"]["realistic_random_300"]["result"]["components"]["N"]["confusion_matrix"]
                [1][2];
            *x = (x.as_u64().unwrap_or(0) + 1).into();
        }),
        ("support + 1", |v| {
            let x = &mut v["cases"]["realistic_random_300"]["result"]["components"]["T"]["per_class"]
                ["T2"]["support"];
            *x = (x.as_u64().unwrap_or(0) + 1).into();
        }),
        ("per-class OvR AUROC null made a number", |v| {
            v["cases"]["class_absent_from_gold"]["result"]["components"]["T"]["auroc_ovr_per_class"]
                ["T4"] = 0.5.into();
        }),
        ("note changed", |v| {
            v["cases"]["class_absent_from_gold"]["result"]["components"]["N"]["auroc_note"] =
                "other".into();
        }),
        ("label set changed", |v| {
            v["cases"]["realistic_random_300"]["result"]["components"]["M"]["labels_used_by_sklearn_default"] =
                serde_json::json!([0]);
        }),
        ("unknown oracle field", |v| {
            v["cases"]["realistic_random_300"]["result"]["components"]["M"]["new_metric"] =
                1.into();
        }),
    ];
    for (what, mutate) in mutations {
        let mut e = expected.clone();
        mutate(&mut e);
        assert!(
            !run_all(&e, &subset).errors.is_empty(),
            "perturbation not detected: {what}"
        );
    }
}

#[test]
fn json_shape() {
    let (cases, _) = load();
    let reports = &cases
        .iter()
        .find(|(n, _)| n == "realistic_random_300")
        .expect("case")
        .1;
    let v = serde_json::to_value(tnm::score(reports)).expect("serialize");
    for k in [
        "t",
        "n",
        "m",
        "mean_macro_f1",
        "mean_macro_f1_available",
        "exact_match",
        "n_reports",
    ] {
        assert!(v.get(k).is_some(), "missing top-level {k}");
    }
    for s in ["t", "n", "m"] {
        for k in [
            "n",
            "n_missing_gold",
            "accuracy",
            "macro_f1",
            "micro_f1",
            "weighted_f1",
            "macro_f1_all_labels",
            "auroc",
            "per_class",
            "confusion",
        ] {
            assert!(v[s].get(k).is_some(), "missing {s}.{k}");
        }
        assert!(v[s]["confusion"]["matrix"].is_array());
        assert!(v[s]["confusion"]["missing_pred"].is_array());
        assert!(v[s]["per_class"][0]["precision"].is_number());
    }
    assert_eq!(v["t"]["stage"], "T");
    assert!(v["t"]["auroc_ovr_per_class"].is_array());
    assert!(v["m"]["auroc_ovr_per_class"].is_null());
}

#[test]
fn table_shows_every_section() {
    let (cases, _) = load();
    for (name, reports) in &cases {
        let s = tnm::score(reports);
        let t = tnm::render_table(&s);
        assert!(t.contains("Per class"), "{name}");
        assert!(t.contains("mean macro-F1 (official)"), "{name}");
        if let Some(m) = s.t.macro_f1 {
            assert!(
                t.contains(&format!("{m:.4}")),
                "{name}: T macro-F1 not shown"
            );
            assert!(t.contains("Confusion T"), "{name}");
        }
    }
}
