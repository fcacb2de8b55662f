//! `clinstruct eval tnm`: joins, JSON shape, and clear errors for bad prediction files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clinstruct"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const GOLD: &str = "patient_filename,text,t,n,m\nTCGA-AA-0001.x,r1,1,0,0\nTCGA-AA-0002.y,r2,2,1,\nTCGA-AA-0003.z,r3,3,2,1\nTCGA-AA-0004.w,r4,4,,0\n";

fn eval(dir: &Path, pred: &str, extra: &[&str]) -> Output {
    let g = write(dir, "gold.csv", GOLD);
    let p = write(dir, "pred.csv", pred);
    let mut args = vec![
        "eval",
        "tnm",
        "--pred",
        p.to_str().unwrap(),
        "--gold",
        g.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn err_text(o: &Output, dir: &Path) -> String {
    String::from_utf8(o.stderr.clone())
        .unwrap()
        .replace(&format!("{}/", dir.display()), "")
        .trim_end()
        .to_string()
}

#[test]
fn perfect_predictions_score_one() {
    let dir = tempfile::tempdir().unwrap();
    let o = eval(
        dir.path(),
        "patient_filename,t,n,m,p_m0,p_m1\nTCGA-AA-0001.x,1,0,0,0.9,0.1\nTCGA-AA-0002.y,2,1,0,0.8,0.2\nTCGA-AA-0003.z,3,2,1,0.3,0.7\nTCGA-AA-0004.w,4,0,0,0.6,0.4\n",
        &["--json"],
    );
    assert!(o.status.success(), "{}", err_text(&o, dir.path()));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["t"]["macro_f1"], 1.0);
    assert_eq!(v["m"]["auroc"], 1.0);
    assert_eq!(v["mean_macro_f1"], 1.0);
    assert_eq!(v["exact_match"], 1.0);
    assert_eq!(v["n_reports"], 4);
    assert_eq!(v["coverage"]["matched"], 4);
}

#[test]
fn missing_prediction_counts_as_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let o = eval(
        dir.path(),
        "patient_filename,t,n,m\nTCGA-AA-0001.x,1,0,0\nTCGA-AA-0002.y,2,1,0\nTCGA-AA-0003.z,3,2,1\nextra,1,1,1\n",
        &["--json"],
    );
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["t"]["accuracy"], 0.75);
    assert_eq!(v["coverage"]["missing_predictions"], 1);
    assert_eq!(v["coverage"]["unmatched_predictions"], 1);
    assert!(err_text(&o, dir.path()).contains("1 of 4 gold reports have no prediction"));
}

#[test]
fn gold_label_files_join_by_barcode() {
    let dir = tempfile::tempdir().unwrap();
    let g = write(
        dir.path(),
        "T.csv",
        "ajcc_pathologic_t,project_id,case_id,case_submitter_id\nT2a,TCGA-BRCA,x,TCGA-AA-0001\nT3,TCGA-BRCA,y,TCGA-AA-0002\n",
    );
    let p = write(
        dir.path(),
        "p.csv",
        "patient_filename,t,n,m\nTCGA-AA-0001.abc,2,0,0\nTCGA-AA-0002.def,1,0,0\n",
    );
    let o = run(&[
        "eval",
        "tnm",
        "--pred",
        p.to_str().unwrap(),
        "--gold",
        g.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", err_text(&o, dir.path()));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["t"]["accuracy"], 0.5);
    assert_eq!(v["n"]["n"], 0);
}

#[test]
fn bad_prediction_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = eval(d, "patient_filename,t,n\nTCGA-AA-0001.x,1,0\n", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err_text(&o, d),
        "error: pred.csv: missing column \"m\" (found columns: patient_filename, t, n)"
    );
    let o = eval(
        d,
        "patient_filename,t,n,m\nTCGA-AA-0001.x,1,0,0\nTCGA-AA-0001.x,2,0,0\n",
        &[],
    );
    assert_eq!(
        err_text(&o, d),
        "error: pred.csv: line 3: duplicate id \"TCGA-AA-0001.x\" (first seen on line 2)"
    );
    let o = eval(d, "patient_filename,t,n,m\nTCGA-AA-0001.x,T1,0,0\n", &[]);
    assert_eq!(
        err_text(&o, d),
        "error: pred.csv: line 2: field \"t\": \"T1\" is not an integer code (T must be 1–4, blank = missing)"
    );
    let o = eval(d, "patient_filename,t,n,m\nTCGA-AA-0001.x,0,0,0\n", &[]);
    assert_eq!(
        err_text(&o, d),
        "error: pred.csv: line 2: field \"t\": value \"0\" is out of range (T must be 1–4, blank = missing)"
    );
    let o = eval(
        d,
        "patient_filename,t,n,m,p_m0\nTCGA-AA-0001.x,1,0,0,0.5\n",
        &[],
    );
    assert_eq!(
        err_text(&o, d),
        "error: pred.csv: missing column \"p_m1\" (found columns: patient_filename, t, n, m, p_m0)"
    );
    let o = eval(d, "patient_filename,t,n,m\nnobody,1,0,0\n", &[]);
    assert_eq!(
        err_text(&o, d),
        "error: no prediction id in pred.csv matches a gold id in gold.csv (compared ids exactly)"
    );
}

#[test]
fn probabilities_must_sum_to_one_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pred = "patient_filename,t,n,m,p_t1,p_t2,p_t3,p_t4\nTCGA-AA-0001.x,1,0,0,0.5,0.2,0.2,0.2\nTCGA-AA-0002.y,2,1,0,0.1,0.7,0.1,0.1\nTCGA-AA-0003.z,3,2,1,0.1,0.1,0.7,0.1\nTCGA-AA-0004.w,4,0,0,0.1,0.1,0.1,0.7\n";
    let o = eval(d, pred, &[]);
    assert_eq!(o.status.code(), Some(1));
    let e = err_text(&o, d);
    assert!(
        e.starts_with("error: pred.csv: 1 probability problem(s); first: report 0: T"),
        "{e}"
    );
    assert!(e.ends_with("pass --no-prob-check to score anyway"), "{e}");
    let o = eval(d, pred, &["--no-prob-check", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["t"]["macro_f1"], 1.0);
    assert!(
        v["t"]["auroc"].is_null(),
        "sklearn refuses unnormalised OvR scores"
    );
}
