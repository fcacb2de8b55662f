//! TNM corpora: pathology reports with T/N/M labels, in the formats users have on disk.
//!
//! | format | columns | labels |
//! |---|---|---|
//! | official (SMM4H Task 6) | `patient_filename,text[,t,n,m]` (or `id,text`) | t 1–4, n 0–3, m 0–1, blank = missing |
//! | Kefeli BB-TEN | `patient_filename,label,text` | label 0–3 = T1–T4 |
//! | GDC label file | `ajcc_pathologic_{t,n,m},project_id,case_id,case_submitter_id` | AJCC strings |
//! | JSONL | `{"id","text","t","n","m"}` (+ optional `cancer_type`) | as official, `null` = missing |
//!
//! Reports join label files by TCGA patient barcode: the first 12 characters of
//! `patient_filename` (`TCGA-05-4245.902fe548-...` → `TCGA-05-4245`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ajcc::{self, AjccError, CodeError, Stage};
use crate::error::{DataError, Result};
use crate::table::{Row, Table, UniqueIds};
use crate::text::normalize_whitespace;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TnmLabels {
    pub t: Option<u8>,
    pub n: Option<u8>,
    pub m: Option<u8>,
}

impl TnmLabels {
    pub fn get(&self, stage: Stage) -> Option<u8> {
        match stage {
            Stage::T => self.t,
            Stage::N => self.n,
            Stage::M => self.m,
        }
    }

    pub fn set(&mut self, stage: Stage, value: Option<u8>) {
        match stage {
            Stage::T => self.t = value,
            Stage::N => self.n = value,
            Stage::M => self.m = value,
        }
    }

    /// 0-based class indices for T, N, M (T1→0, N0→0, M0→0), the encoding of the metrics.
    pub fn class_indices(&self) -> [Option<u8>; 3] {
        Stage::ALL.map(|s| self.get(s).map(|c| s.class_index(c) as u8))
    }

    /// How many of the three stages carry a label.
    pub fn count(&self) -> usize {
        Stage::ALL
            .iter()
            .filter(|s| self.get(**s).is_some())
            .count()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TnmRecord {
    /// `patient_filename` (or `id`); for GDC label files the case barcode.
    pub id: String,
    /// TCGA patient barcode when the id is TCGA-like.
    pub patient: Option<String>,
    /// Whitespace-normalised report text; `None` for label-only records.
    #[serde(skip)]
    pub text: Option<String>,
    pub labels: TnmLabels,
    /// Any label came from a y-prefixed (post-neoadjuvant) AJCC string.
    pub post_therapy: bool,
    pub cancer_type: Option<String>,
    /// Line in the source file (CSV lines count the header as line 1).
    pub line: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TnmFormat {
    Official,
    Kefeli,
    GdcLabels,
    Jsonl,
}

#[derive(Debug, Clone)]
pub struct TnmCorpus {
    pub path: PathBuf,
    pub format: TnmFormat,
    pub records: Vec<TnmRecord>,
    /// Stages the file has a label column for (a GDC file usually holds one; Kefeli's only T).
    pub stages: Vec<Stage>,
    /// Rows read from the file, before any drop.
    pub rows_read: usize,
    /// (reason, count) for every row not kept.
    pub dropped: Vec<(String, usize)>,
}

/// The TCGA patient barcode of a report file name or case id, if it looks like one.
pub fn tcga_barcode(id: &str) -> Option<String> {
    let id = id.trim();
    let b = id.get(..12)?;
    let bytes = b.as_bytes();
    let shape_ok = b.starts_with("TCGA-")
        && bytes[7] == b'-'
        && bytes[5..7].iter().all(u8::is_ascii_alphanumeric)
        && bytes[8..12].iter().all(u8::is_ascii_alphanumeric);
    (shape_ok && (id.len() == 12 || !id.as_bytes()[12].is_ascii_alphanumeric()))
        .then(|| b.to_string())
}

fn label_error(path: &Path, row: &Row, field: &str, value: &str, stage: Stage) -> DataError {
    DataError::LabelOutOfRange {
        path: path.to_path_buf(),
        line: row.line,
        field: field.to_string(),
        value: value.to_string(),
        range: stage.range_text(),
    }
}

fn parse_code_field(
    path: &Path,
    row: &Row,
    field: &str,
    value: &str,
    stage: Stage,
) -> Result<Option<u8>> {
    ajcc::parse_code(stage, value).map_err(|e| match e {
        CodeError::OutOfRange => label_error(path, row, field, value, stage),
        CodeError::NotANumber | CodeError::NotAnInteger => DataError::BadField {
            path: path.to_path_buf(),
            line: row.line,
            field: field.to_string(),
            message: format!("{value:?} is not an integer code ({})", stage.range_text()),
        },
    })
}

impl TnmCorpus {
    pub fn load(path: &Path) -> Result<TnmCorpus> {
        let table = Table::read(path)?;
        TnmCorpus::from_table(table)
    }

    pub fn from_table(table: Table) -> Result<TnmCorpus> {
        let format = detect_format(&table)?;
        let stages = Stage::ALL
            .into_iter()
            .filter(|s| {
                let t = s.letter().to_ascii_lowercase();
                match format {
                    TnmFormat::Official | TnmFormat::Jsonl => table.has(&t.to_string()),
                    TnmFormat::Kefeli => *s == Stage::T,
                    TnmFormat::GdcLabels => table.has(&format!("ajcc_pathologic_{t}")),
                }
            })
            .collect();
        let path = table.path.clone();
        let rows_read = table.rows.len();
        let mut records = Vec::with_capacity(rows_read);
        let mut empty_text = 0usize;
        let has_text = format != TnmFormat::GdcLabels;
        for row in &table.rows {
            let record = match format {
                TnmFormat::Official | TnmFormat::Jsonl => read_official_row(&table, row)?,
                TnmFormat::Kefeli => read_kefeli_row(&table, row)?,
                TnmFormat::GdcLabels => read_gdc_row(&table, row)?,
            };
            if has_text && record.text.as_deref().is_none_or(str::is_empty) {
                empty_text += 1;
                continue;
            }
            records.push(record);
        }
        check_unique_ids(&path, &records)?;
        let mut dropped = Vec::new();
        if empty_text > 0 {
            dropped.push(("empty text".to_string(), empty_text));
        }
        Ok(TnmCorpus {
            path,
            format,
            records,
            stages,
            rows_read,
            dropped,
        })
    }

    pub fn has_text(&self) -> bool {
        self.format != TnmFormat::GdcLabels
    }
}

fn check_unique_ids(path: &Path, records: &[TnmRecord]) -> Result<()> {
    let mut seen = UniqueIds::default();
    records
        .iter()
        .try_for_each(|r| seen.check(path, &r.id, r.line))
}

const FORMATS_EXPECTED: &str = "an official Task 6 file (patient_filename,text[,t,n,m]), a Kefeli file (patient_filename,label,text), a GDC label file (ajcc_pathologic_t|n|m,case_submitter_id) or JSONL ({\"id\",\"text\",\"t\",\"n\",\"m\"})";

fn detect_format(table: &Table) -> Result<TnmFormat> {
    let gdc = [
        "ajcc_pathologic_t",
        "ajcc_pathologic_n",
        "ajcc_pathologic_m",
    ]
    .iter()
    .any(|c| table.has(c));
    if gdc {
        table.require("case_submitter_id")?;
        return Ok(TnmFormat::GdcLabels);
    }
    if table.container == crate::table::Container::Jsonl {
        table.require("id")?;
        table.require("text")?;
        return Ok(TnmFormat::Jsonl);
    }
    let has_id = table.has("patient_filename") || table.has("id");
    if has_id && table.has("text") && table.has("label") && !table.has("t") {
        return Ok(TnmFormat::Kefeli);
    }
    if has_id && table.has("text") {
        return Ok(TnmFormat::Official);
    }
    // Looks like a TNM corpus but lacks a column: name the one it needs.
    if has_id && ["t", "n", "m", "label"].iter().any(|c| table.has(c)) {
        table.require("text")?;
    }
    if table.has("text") {
        table.require("patient_filename")?;
    }
    Err(DataError::UnknownFormat {
        path: table.path.clone(),
        found: table.columns.clone(),
        expected: FORMATS_EXPECTED.to_string(),
    })
}

fn id_column(table: &Table) -> Result<usize> {
    table
        .column_index_ci("patient_filename")
        .or_else(|| table.column_index_ci("id"))
        .map_or_else(|| table.require("patient_filename"), Ok)
}

fn required_id(table: &Table, row: &Row, col: usize, name: &str) -> Result<String> {
    row.non_blank(Some(col))
        .map(str::to_string)
        .ok_or_else(|| DataError::MissingField {
            path: table.path.clone(),
            line: row.line,
            field: name.to_string(),
        })
}

fn read_official_row(table: &Table, row: &Row) -> Result<TnmRecord> {
    let id_col = id_column(table)?;
    let id = required_id(table, row, id_col, &table.columns[id_col])?;
    let text_col = table.require("text")?;
    let mut labels = TnmLabels::default();
    for stage in Stage::ALL {
        let field = stage.letter().to_ascii_lowercase().to_string();
        if let Some(v) = row.non_blank(table.column_index_ci(&field)) {
            labels.set(stage, parse_code_field(&table.path, row, &field, v, stage)?);
        }
    }
    let cancer_type = row
        .non_blank(table.column_index_ci("cancer_type"))
        .map(|c| c.trim_start_matches("TCGA-").to_string());
    Ok(TnmRecord {
        patient: tcga_barcode(&id),
        id,
        text: row.get(text_col).map(normalize_whitespace),
        labels,
        post_therapy: false,
        cancer_type,
        line: row.line,
    })
}

fn read_kefeli_row(table: &Table, row: &Row) -> Result<TnmRecord> {
    let id_col = id_column(table)?;
    let id = required_id(table, row, id_col, &table.columns[id_col])?;
    let text_col = table.require("text")?;
    let label_col = table.require("label")?;
    let mut labels = TnmLabels::default();
    if let Some(v) = row.non_blank(Some(label_col)) {
        // Kefeli's label is the 0-based class index (0..3 = T1..T4).
        labels.t = match v.parse::<u8>() {
            Ok(c) if c <= 3 => Some(c + 1),
            Ok(_) => {
                return Err(DataError::LabelOutOfRange {
                    path: table.path.clone(),
                    line: row.line,
                    field: "label".to_string(),
                    value: v.to_string(),
                    range: "label must be 0–3 (T1–T4)".to_string(),
                });
            }
            Err(_) => {
                return Err(DataError::BadField {
                    path: table.path.clone(),
                    line: row.line,
                    field: "label".to_string(),
                    message: format!("{v:?} is not an integer class index (0–3 = T1–T4)"),
                });
            }
        };
    }
    Ok(TnmRecord {
        patient: tcga_barcode(&id),
        id,
        text: row.get(text_col).map(normalize_whitespace),
        labels,
        post_therapy: false,
        cancer_type: None,
        line: row.line,
    })
}

fn read_gdc_row(table: &Table, row: &Row) -> Result<TnmRecord> {
    let id_col = table.require("case_submitter_id")?;
    let id = required_id(table, row, id_col, "case_submitter_id")?;
    let mut labels = TnmLabels::default();
    let mut post_therapy = false;
    for stage in Stage::ALL {
        let field = format!("ajcc_pathologic_{}", stage.letter().to_ascii_lowercase());
        let Some(col) = table.column_index_ci(&field) else {
            continue;
        };
        let raw = row.get(col).unwrap_or("");
        let value = ajcc::normalize(stage, raw).map_err(|e| match e {
            AjccError::OutOfRange { .. } => label_error(&table.path, row, &field, raw, stage),
            AjccError::Unparsable { .. } => DataError::BadField {
                path: table.path.clone(),
                line: row.line,
                field: field.clone(),
                message: format!("{raw:?} is not an AJCC {stage} value"),
            },
        })?;
        labels.set(stage, value.category);
        post_therapy |= value.post_therapy;
    }
    let cancer_type = row
        .non_blank(table.column_index_ci("project_id"))
        .map(|p| p.trim_start_matches("TCGA-").to_string());
    Ok(TnmRecord {
        patient: tcga_barcode(&id).or_else(|| Some(id.clone())),
        id,
        text: None,
        labels,
        post_therapy,
        cancer_type,
        line: row.line,
    })
}

/// What joining label files onto a corpus did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinReport {
    pub label_files: Vec<String>,
    /// Patients present in the label files.
    pub label_patients: usize,
    /// Corpus records that found their patient in the label files.
    pub matched_records: usize,
    /// Label-file patients with no record in the corpus (only for report corpora).
    pub unmatched_label_patients: usize,
    /// Stage values where the corpus and a label file disagreed (the corpus value is kept).
    pub conflicts: usize,
}

/// Labels per patient barcode from GDC label files (outer join of the files).
pub fn merge_label_files(files: &[TnmCorpus]) -> Result<Vec<TnmRecord>> {
    let mut by_patient: HashMap<String, usize> = HashMap::new();
    let mut merged: Vec<TnmRecord> = Vec::new();
    for file in files {
        if file.format != TnmFormat::GdcLabels {
            return Err(DataError::invalid(
                &file.path,
                "--labels expects GDC label files (ajcc_pathologic_t|n|m, case_submitter_id)",
            ));
        }
        for r in &file.records {
            let key = r.patient.clone().unwrap_or_else(|| r.id.clone());
            let idx = *by_patient.entry(key).or_insert_with(|| {
                merged.push(TnmRecord {
                    labels: TnmLabels::default(),
                    post_therapy: false,
                    ..r.clone()
                });
                merged.len() - 1
            });
            let target = &mut merged[idx];
            for &s in &file.stages {
                if let Some(v) = r.labels.get(s) {
                    target.labels.set(s, Some(v));
                }
            }
            target.post_therapy |= r.post_therapy;
            if target.cancer_type.is_none() {
                target.cancer_type = r.cancer_type.clone();
            }
        }
    }
    Ok(merged)
}

impl TnmCorpus {
    /// Joins GDC label files onto this corpus by patient barcode.
    ///
    /// Report corpora keep their rows; labels missing in the corpus are filled from the label
    /// files and disagreements are counted, not overwritten. A label-file corpus is outer-joined,
    /// so `data stats TCGA_T14_patients.csv --labels TCGA_N03_patients.csv ...` counts patients.
    pub fn join_labels(&mut self, label_files: &[TnmCorpus]) -> Result<JoinReport> {
        let mut report = JoinReport {
            label_files: label_files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect(),
            ..Default::default()
        };
        if !self.has_text() {
            let mut all = vec![self.clone()];
            all.extend(label_files.iter().cloned());
            let merged = merge_label_files(&all)?;
            report.label_patients = merged.len();
            report.matched_records = self.records.len();
            self.records = merged;
            for f in label_files {
                for s in &f.stages {
                    if !self.stages.contains(s) {
                        self.stages.push(*s);
                    }
                }
            }
            self.stages.sort();
            return Ok(report);
        }
        let labels = merge_label_files(label_files)?;
        report.label_patients = labels.len();
        let index: HashMap<&str, &TnmRecord> = labels
            .iter()
            .filter_map(|r| r.patient.as_deref().map(|p| (p, r)))
            .collect();
        let mut used: std::collections::HashSet<&str> = Default::default();
        for record in &mut self.records {
            let Some(found) = record.patient.as_deref().and_then(|p| index.get(p)) else {
                continue;
            };
            report.matched_records += 1;
            used.insert(found.patient.as_deref().unwrap_or_default());
            for stage in Stage::ALL {
                match (record.labels.get(stage), found.labels.get(stage)) {
                    (None, Some(v)) => record.labels.set(stage, Some(v)),
                    (Some(a), Some(b)) if a != b => report.conflicts += 1,
                    _ => {}
                }
            }
            record.post_therapy |= found.post_therapy;
            if record.cancer_type.is_none() {
                record.cancer_type = found.cancer_type.clone();
            }
        }
        report.unmatched_label_patients = labels.len() - used.len();
        Ok(report)
    }
}

/// One row of a TNM submission: `patient_filename,t,n,m` with optional class probabilities
/// `p_t1..p_t4, p_n0..p_n3, p_m0, p_m1`.
#[derive(Debug, Clone)]
pub struct TnmPrediction {
    pub id: String,
    pub labels: TnmLabels,
    /// Per stage (T, N, M), the class probabilities when the file has them.
    pub probs: [Option<Vec<f64>>; 3],
    pub line: u64,
}

/// Reads a TNM submission (CSV or JSONL with the same column names; `id` may replace
/// `patient_filename`). Blank codes are missing predictions, which score as wrong.
pub fn load_predictions(path: &Path) -> Result<Vec<TnmPrediction>> {
    let table = Table::read(path)?;
    let id_col = id_column(&table)?;
    let mut code_cols = Vec::new();
    let mut prob_cols: Vec<Option<Vec<(usize, String)>>> = Vec::new();
    for stage in Stage::ALL {
        let field = stage.letter().to_ascii_lowercase().to_string();
        code_cols.push((table.require(&field)?, field.clone()));
        let names: Vec<String> = (0..stage.num_classes())
            .map(|k| format!("p_{field}{}", stage.category(k)))
            .collect();
        let found: Vec<Option<usize>> = names.iter().map(|n| table.column_index_ci(n)).collect();
        if found.iter().all(Option::is_none) {
            prob_cols.push(None);
            continue;
        }
        // A partial set of probability columns is a typo, not a choice: name the first missing.
        let mut cols = Vec::new();
        for (name, col) in names.iter().zip(found) {
            let col = match col {
                Some(c) => c,
                None => table.require(name)?,
            };
            cols.push((col, name.clone()));
        }
        prob_cols.push(Some(cols));
    }
    let mut out = Vec::with_capacity(table.rows.len());
    let mut seen = UniqueIds::default();
    for row in &table.rows {
        let id = required_id(&table, row, id_col, &table.columns[id_col])?;
        seen.check(&table.path, &id, row.line)?;
        let mut labels = TnmLabels::default();
        let mut probs: [Option<Vec<f64>>; 3] = [None, None, None];
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            let (col, field) = &code_cols[i];
            if let Some(v) = row.non_blank(Some(*col)) {
                labels.set(stage, parse_code_field(&table.path, row, field, v, stage)?);
            }
            if let Some(cols) = &prob_cols[i] {
                let mut p = Vec::with_capacity(cols.len());
                for (c, name) in cols {
                    let raw = row
                        .non_blank(Some(*c))
                        .ok_or_else(|| DataError::MissingField {
                            path: table.path.clone(),
                            line: row.line,
                            field: name.clone(),
                        })?;
                    p.push(raw.parse::<f64>().map_err(|_| DataError::BadField {
                        path: table.path.clone(),
                        line: row.line,
                        field: name.clone(),
                        message: format!("{raw:?} is not a probability"),
                    })?);
                }
                probs[i] = Some(p);
            }
        }
        out.push(TnmPrediction {
            id,
            labels,
            probs,
            line: row.line,
        });
    }
    Ok(out)
}

/// Writes records as the official CSV (`patient_filename,text,t,n,m`, blank = missing) when the
/// path ends in `.csv`, else as JSONL (`{"id","text","t","n","m","cancer_type"}`). Atomic.
pub fn write_corpus(path: &Path, records: &[TnmRecord]) -> Result<()> {
    crate::table::write_csv_or_jsonl(
        path,
        records,
        &["patient_filename", "text", "t", "n", "m"],
        |r| {
            let code = |s: Stage| r.labels.get(s).map_or(String::new(), |v| v.to_string());
            vec![
                r.id.clone(),
                r.text.clone().unwrap_or_default(),
                code(Stage::T),
                code(Stage::N),
                code(Stage::M),
            ]
        },
        |r| {
            serde_json::json!({
                "id": r.id,
                "text": r.text,
                "t": r.labels.t,
                "n": r.labels.n,
                "m": r.labels.m,
                "cancer_type": r.cancer_type,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barcodes() {
        assert_eq!(
            tcga_barcode("TCGA-05-4245.902fe548-5b93-49c9-81db-2af4a4a88f3c").as_deref(),
            Some("TCGA-05-4245")
        );
        assert_eq!(
            tcga_barcode("TCGA-AR-A5QQ").as_deref(),
            Some("TCGA-AR-A5QQ")
        );
        assert_eq!(tcga_barcode("TNM_0001"), None);
        assert_eq!(tcga_barcode("TCGA-05-4245X"), None);
        assert_eq!(tcga_barcode("tcga"), None);
    }
}
