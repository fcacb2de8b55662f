//! Every kind of bad input gives one exact, helpful message naming the file, line and field.

use std::path::{Path, PathBuf};

use clinstruct_data::soap::{self, SoapCorpus};
use clinstruct_data::tnm::TnmCorpus;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn tnm_err(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), name, bytes);
    let msg = TnmCorpus::load(&p).unwrap_err().to_string();
    msg.replace(&format!("{}/", dir.path().display()), "")
}

fn soap_err(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), name, bytes);
    let msg = SoapCorpus::load(&p).unwrap_err().to_string();
    msg.replace(&format!("{}/", dir.path().display()), "")
}

#[test]
fn missing_file() {
    let err = TnmCorpus::load(Path::new("/nonexistent/reports.csv")).unwrap_err();
    assert_eq!(err.to_string(), "/nonexistent/reports.csv: file not found");
}

#[test]
fn empty_file() {
    assert_eq!(tnm_err("r.csv", b""), "r.csv: file is empty");
    assert_eq!(soap_err("p.jsonl", b"\n  \n"), "p.jsonl: file is empty");
}

#[test]
fn missing_column_names_the_columns_found() {
    assert_eq!(
        tnm_err("r.csv", b"patient_filename,t,n,m\nTCGA-05-4245.x,1,0,0\n"),
        "r.csv: missing column \"text\" (found columns: patient_filename, t, n, m)"
    );
    assert_eq!(
        soap_err("p.csv", b"id,note\n1,hello\n"),
        "p.csv: missing column \"dialogue\" (found columns: id, note)"
    );
    assert_eq!(
        soap_err("p.csv", b"note,dialogue\nx,y\n"),
        "p.csv: missing column \"id\" (found columns: note, dialogue)"
    );
}

#[test]
fn unknown_format() {
    assert_eq!(
        tnm_err("r.csv", b"a,b\n1,2\n"),
        "r.csv: cannot tell the corpus format from the columns (a, b); expected an official Task 6 file (patient_filename,text[,t,n,m]), a Kefeli file (patient_filename,label,text), a GDC label file (ajcc_pathologic_t|n|m,case_submitter_id) or JSONL ({\"id\",\"text\",\"t\",\"n\",\"m\"})"
    );
}

#[test]
fn label_out_of_range_names_file_line_and_value() {
    let csv = b"patient_filename,text,t,n,m\nA,report one,2,0,\nB,report two,5,1,0\n";
    assert_eq!(
        tnm_err("train.csv", csv),
        "train.csv: line 3: field \"t\": value \"5\" is out of range (T must be 1–4, blank = missing)"
    );
    let jsonl = b"{\"id\":\"a\",\"text\":\"x\",\"t\":1,\"n\":4,\"m\":null}\n";
    assert_eq!(
        tnm_err("r.jsonl", jsonl),
        "r.jsonl: line 1: field \"n\": value \"4\" is out of range (N must be 0–3, blank = missing)"
    );
    let gdc = b"ajcc_pathologic_m,project_id,case_id,case_submitter_id\nM0,TCGA-BRCA,x,TCGA-AR-A5QQ\nM2,TCGA-BRCA,y,TCGA-A2-A04Q\n";
    assert_eq!(
        tnm_err("m.csv", gdc),
        "m.csv: line 3: field \"ajcc_pathologic_m\": value \"M2\" is out of range (M must be 0–1, blank = missing)"
    );
    let kefeli = b"patient_filename,label,text\nA,4,report\n";
    assert_eq!(
        tnm_err("k.csv", kefeli),
        "k.csv: line 2: field \"label\": value \"4\" is out of range (label must be 0–3 (T1–T4))"
    );
}

#[test]
fn non_numeric_label() {
    assert_eq!(
        tnm_err("r.csv", b"patient_filename,text,t,n,m\nA,report,T2,0,0\n"),
        "r.csv: line 2: field \"t\": \"T2\" is not an integer code (T must be 1–4, blank = missing)"
    );
    assert_eq!(
        tnm_err(
            "g.csv",
            b"ajcc_pathologic_t,project_id,case_id,case_submitter_id\nStage II,TCGA-BRCA,x,TCGA-AR-A5QQ\n"
        ),
        "g.csv: line 2: field \"ajcc_pathologic_t\": \"Stage II\" is not an AJCC T value"
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    assert_eq!(
        tnm_err("r.csv", b"patient_filename,text\nA,fine\nB,bad \xff byte\n"),
        "r.csv: line 3: invalid UTF-8"
    );
    assert_eq!(
        soap_err("p.jsonl", b"{\"id\":\"1\",\"dialogue\":\"a\",\"note\":\"b\"}\n{\"id\":\"2\",\"dialogue\":\"\xc3\x28\"}\n"),
        "p.jsonl: line 2: invalid UTF-8"
    );
}

#[test]
fn ragged_csv_rows() {
    assert_eq!(
        tnm_err(
            "r.csv",
            b"patient_filename,text,t,n,m\nA,report,1,0,0\nB,report,1\n"
        ),
        "r.csv: line 3: row has 3 fields but the header has 5"
    );
}

#[test]
fn invalid_json_line() {
    let msg = soap_err(
        "p.jsonl",
        b"{\"id\":\"1\",\"dialogue\":\"a\",\"note\":\"b\"}\n{\"id\": 2,\n",
    );
    assert_eq!(
        msg,
        "p.jsonl: line 2: invalid JSON: EOF while parsing a value (column 9)"
    );
    assert_eq!(
        soap_err("p.jsonl", b"[1, 2]\n"),
        "p.jsonl: line 1: invalid JSON: expected one JSON object per line"
    );
}

#[test]
fn duplicate_ids() {
    assert_eq!(
        tnm_err("r.csv", b"patient_filename,text\nA,one\nB,two\nA,three\n"),
        "r.csv: line 4: duplicate id \"A\" (first seen on line 2)"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "sub.csv", b"id,generated_note\n1,a\n1,b\n");
    let msg = soap::load_predictions(&p).unwrap_err().to_string();
    assert!(
        msg.ends_with("sub.csv: line 3: duplicate id \"1\" (first seen on line 2)"),
        "{msg}"
    );
}

#[test]
fn missing_id_value() {
    assert_eq!(
        tnm_err("r.csv", b"patient_filename,text\n,one\n"),
        "r.csv: line 2: missing field \"patient_filename\""
    );
}

#[test]
fn errors_never_quote_report_text() {
    let secret = "Patient John Doe has carcinoma";
    let csv = format!("patient_filename,text,t,n,m\nA,{secret},9,0,0\n");
    let msg = tnm_err("r.csv", csv.as_bytes());
    assert!(!msg.contains("John"), "{msg}");
}
