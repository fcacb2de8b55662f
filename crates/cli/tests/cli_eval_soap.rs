//! `clinstruct eval soap` end to end: the official file formats in, the oracle's numbers out.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clinstruct"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// The metric parity cases, written as an official submission and gold CSV.
fn official_files(dir: &Path) -> (PathBuf, PathBuf, serde_json::Value) {
    let cases =
        std::fs::read_to_string(repo("crates/metrics/tests/fixtures/soap_cases.jsonl")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("crates/metrics/tests/fixtures/soap_expected.json")).unwrap(),
    )
    .unwrap();
    let mut pred = csv::Writer::from_path(dir.join("submission.csv")).unwrap();
    let mut gold = csv::Writer::from_path(dir.join("gold.csv")).unwrap();
    pred.write_record(["id", "generated_note"]).unwrap();
    gold.write_record(["id", "note", "dialogue"]).unwrap();
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = c["id"].as_str().unwrap();
        pred.write_record([id, c["prediction"].as_str().unwrap()])
            .unwrap();
        gold.write_record([id, c["reference"].as_str().unwrap(), "unused"])
            .unwrap();
    }
    pred.flush().unwrap();
    gold.flush().unwrap();
    (dir.join("submission.csv"), dir.join("gold.csv"), expected)
}

fn close(a: &serde_json::Value, b: &serde_json::Value, tol: f64) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= tol
}

#[test]
fn official_csv_files_reproduce_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let (pred, gold, expected) = official_files(dir.path());
    let per = dir.path().join("per.jsonl");
    let o = run(&[
        "eval",
        "soap",
        "--pred",
        pred.to_str().unwrap(),
        "--gold",
        gold.to_str().unwrap(),
        "--json",
        "--per-example",
        per.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &expected["corpus"];
    // The CSV round trip must not change a byte of any note, so the corpus numbers are the oracle's.
    assert!(close(&v["bleu"], &e["bleu_evaluate"], 1e-9));
    assert!(close(&v["bleu_sacrebleu"], &e["bleu_sacrebleu"], 1e-9));
    for k in ["rouge1", "rouge2", "rougeL", "rougeLsum"] {
        assert!(close(&v[k], &e[k], 1e-9), "{k}");
    }
    assert!(close(&v["meteor"], &e["meteor"], 1e-6));
    assert!(close(&v["average"], &e["average"], 1e-6));
    assert_eq!(v["n"], e["n"]);
    assert_eq!(v["coverage"]["matched"], e["n"]);
    let lines = std::fs::read_to_string(&per).unwrap();
    assert_eq!(lines.lines().count() as u64, e["n"].as_u64().unwrap());
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "identical");
    assert!(close(&first["rouge1"], &serde_json::json!(1.0), 1e-12));
}

#[test]
fn inner_join_reports_coverage_and_jsonl_inputs_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("pred.jsonl"),
        "{\"id\":\"a\",\"prediction\":\"The patient has a cough.\"}\n{\"id\":\"zz\",\"prediction\":\"x\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("gold.jsonl"),
        "{\"id\":\"a\",\"reference\":\"The patient has a cough.\"}\n{\"id\":\"b\",\"reference\":\"Another note.\"}\n",
    )
    .unwrap();
    let o = run(&[
        "eval",
        "soap",
        "--pred",
        d.join("pred.jsonl").to_str().unwrap(),
        "--gold",
        d.join("gold.jsonl").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n"], 1);
    assert_eq!(v["coverage"]["missing_predictions"], 1);
    assert_eq!(v["coverage"]["unmatched_predictions"], 1);
    assert_eq!(v["rouge1"], 1.0);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("1 of 2 gold ids have no prediction"), "{err}");
}

#[test]
fn undefined_bleu_is_a_value_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.csv"), "id,generated_note\n1,\n").unwrap();
    std::fs::write(d.join("g.csv"), "id,note\n1,Some reference note.\n").unwrap();
    let o = run(&[
        "eval",
        "soap",
        "--pred",
        d.join("p.csv").to_str().unwrap(),
        "--gold",
        d.join("g.csv").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["bleu"].is_null());
    assert!(v["average"].is_null());
    assert!(!v["bleu_error"].is_null());
    let o = run(&[
        "eval",
        "soap",
        "--pred",
        d.join("p.csv").to_str().unwrap(),
        "--gold",
        d.join("g.csv").to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8(o.stdout)
            .unwrap()
            .contains("BLEU (official, evaluate) undefined")
    );
}

#[test]
fn bad_submission_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("g.csv"), "id,note\n1,n\n").unwrap();
    std::fs::write(d.join("p.csv"), "id,prediction\n1,x\n").unwrap();
    let o = run(&[
        "eval",
        "soap",
        "--pred",
        d.join("p.csv").to_str().unwrap(),
        "--gold",
        d.join("g.csv").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr)
        .unwrap()
        .replace(&format!("{}/", d.display()), "");
    assert_eq!(
        err.trim_end(),
        "error: p.csv: missing column \"generated_note\" (found columns: id, prediction)"
    );
    std::fs::write(d.join("p.csv"), "id,generated_note\n1,x\n1,y\n").unwrap();
    let o = run(&[
        "eval",
        "soap",
        "--pred",
        d.join("p.csv").to_str().unwrap(),
        "--gold",
        d.join("g.csv").to_str().unwrap(),
    ]);
    let err = String::from_utf8(o.stderr)
        .unwrap()
        .replace(&format!("{}/", d.display()), "");
    assert_eq!(
        err.trim_end(),
        "error: p.csv: line 3: duplicate id \"1\" (first seen on line 2)"
    );
}
