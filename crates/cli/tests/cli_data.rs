//! The `clinstruct` binary end to end: help texts, JSON output, exit codes and error messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clinstruct"))
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["data", "--help"],
        vec!["data", "stats", "--help"],
        vec!["data", "synth", "--help"],
        vec!["data", "split", "--help"],
        vec!["demo", "--help"],
        vec!["eval", "--help"],
        vec!["eval", "soap", "--help"],
        vec!["eval", "tnm", "--help"],
        vec!["tnm", "--help"],
        vec!["tnm", "rules", "--help"],
    ] {
        let o = run(&args);
        assert!(o.status.success(), "{args:?}");
        assert!(stdout(&o).contains("Usage: clinstruct"), "{args:?}");
    }
}

#[test]
fn stats_json_on_tcga_label_files() {
    let (t, n, m) = (
        repo("data/tcga/TCGA_T14_patients.csv"),
        repo("data/tcga/TCGA_N03_patients.csv"),
        repo("data/tcga/TCGA_M01_patients.csv"),
    );
    let o = run(&[
        "data",
        "stats",
        t.to_str().unwrap(),
        "--task",
        "tnm",
        "--labels",
        n.to_str().unwrap(),
        m.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["coverage"]["all_three"], 3898);
    assert_eq!(v["fully_labelled"]["m"]["counts"]["M1"], 250);
    let share = v["fully_labelled"]["m"]["shares"]["M1"].as_f64().unwrap();
    assert!((share - 250.0 / 3898.0).abs() < 1e-12);
    assert_eq!(v["unit"], "patients");
}

#[test]
fn stats_readable_output() {
    let o = run(&[
        "data",
        "stats",
        repo("data/samples/soap-pairs.jsonl").to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("examples kept 30"), "{out}");
    assert!(out.contains("note length (words)"), "{out}");
}

#[test]
fn synth_then_split_then_stats() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reports.csv");
    let o = run(&[
        "data",
        "synth",
        "--task",
        "tnm",
        "--n",
        "40",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let split_dir = dir.path().join("split");
    let o = run(&[
        "data",
        "split",
        out.to_str().unwrap(),
        "--dev-fraction",
        "0.25",
        "--out-dir",
        split_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (v["train"].as_u64(), v["dev"].as_u64()),
        (Some(30), Some(10))
    );
    let o = run(&[
        "data",
        "stats",
        split_dir.join("dev.jsonl").to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["records"], 10);
}

#[test]
fn bad_input_exits_nonzero_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.csv");
    std::fs::write(
        &p,
        "patient_filename,text,t,n,m\nA,secret report text,7,0,0\n",
    )
    .unwrap();
    let o = run(&["data", "stats", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: {}: line 2: field \"t\": value \"7\" is out of range (T must be 1–4, blank = missing)",
            p.display()
        )
    );
    assert!(!err.contains("secret"));
    let o = run(&["data", "stats", "/no/such/file.csv"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim_end(),
        "error: /no/such/file.csv: file not found"
    );
}

#[test]
fn demo_runs_on_the_embedded_samples() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["demo", "--out", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("reports 60"));
    assert!(text.contains("exact match                0.9091"), "{text}");
    assert!(text.contains("30 notes · BLEU"), "{text}");
    assert!(dir.path().join("tnm-train.jsonl").exists());
    assert!(dir.path().join("soap-dev.jsonl").exists());
}

#[test]
fn tnm_rules_writes_a_submission_that_eval_scores() {
    let dir = tempfile::tempdir().unwrap();
    let reports = repo("data/samples/tnm-reports.jsonl");
    let pred = dir.path().join("pred.csv");
    let ev = dir.path().join("evidence.jsonl");
    let o = run(&[
        "tnm",
        "rules",
        "--input",
        reports.to_str().unwrap(),
        "--output",
        pred.to_str().unwrap(),
        "--evidence",
        ev.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["reports"], 60);
    assert_eq!(v["stated"][0], 35, "every explicit report, nothing else");
    let header = std::fs::read_to_string(&pred).unwrap();
    assert!(header.starts_with("patient_filename,t,n,m\n"));
    let evidence = std::fs::read_to_string(&ev).unwrap();
    assert_eq!(evidence.lines().count(), 60);
    assert!(
        !evidence.contains("carcinoma"),
        "evidence holds spans, never text"
    );
    let o = run(&[
        "eval",
        "tnm",
        "--pred",
        pred.to_str().unwrap(),
        "--gold",
        reports.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for stage in ["t", "n", "m"] {
        for class in v[stage]["per_class"].as_array().unwrap() {
            if class["predicted"].as_u64().unwrap() > 0 {
                assert_eq!(class["precision"], 1.0, "{stage} {}", class["class"]);
            }
        }
    }
}

#[test]
fn stats_counts_tokens_with_a_tokenizer() {
    let tok = repo("crates/models/tests/fixtures/tokenizers/llama3/tokenizer.json");
    let o = run(&[
        "data",
        "stats",
        repo("data/samples/soap-pairs.jsonl").to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["note_tokens"]["n"], 30);
    // Sub-word tokens outnumber whitespace words.
    assert!(
        v["note_tokens"]["median"].as_f64().unwrap() > v["note_words"]["median"].as_f64().unwrap()
    );
    let o = run(&[
        "data",
        "stats",
        repo("data/samples/soap-pairs.jsonl").to_str().unwrap(),
        "--tokenizer",
        "/no/tokenizer.json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: /no/tokenizer.json: cannot load a tokenizer"),
        "{}",
        stderr(&o)
    );
}
