//! SOAP corpora: doctor–patient dialogues paired with reference notes.
//!
//! | format | columns |
//! |---|---|
//! | official (SMM4H Task 4) | `id,note,dialogue` (blind test: `id,dialogue`) |
//! | MedSynth release | `Note,Dialogue,ICD10,ICD10_desc` (header names may carry stray spaces; optional `ID`) |
//! | JSONL | `{"id","dialogue","note"}` |
//!
//! Loading drops rows with an empty dialogue or note (the release has 2 null dialogues) and
//! de-duplicates on (note, dialogue): the HF release repeats ~205 pairs under a second ICD-10 code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DataError, Result};
use crate::table::{Container, Row, Table, UniqueIds};

#[derive(Debug, Clone, Serialize)]
pub struct SoapExample {
    pub id: String,
    #[serde(skip)]
    pub dialogue: String,
    /// `None` for inference-only files (the blind test has dialogues only).
    #[serde(skip)]
    pub note: Option<String>,
    /// ICD-10 code when the corpus has one (MedSynth `ICD10`, JSONL `icd10`).
    pub icd10: Option<String>,
    pub line: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SoapFormat {
    Official,
    MedSynth,
    Jsonl,
}

#[derive(Debug, Clone)]
pub struct SoapCorpus {
    pub path: PathBuf,
    pub format: SoapFormat,
    pub examples: Vec<SoapExample>,
    pub rows_read: usize,
    pub dropped: Vec<(String, usize)>,
}

const FORMATS_EXPECTED: &str = "an official Task 4 file (id,note,dialogue), the MedSynth release (Note,Dialogue,...) or JSONL ({\"id\",\"dialogue\",\"note\"})";

impl SoapCorpus {
    pub fn load(path: &Path) -> Result<SoapCorpus> {
        SoapCorpus::from_table(Table::read(path)?)
    }

    pub fn from_table(table: Table) -> Result<SoapCorpus> {
        let format = if table.container == Container::Jsonl {
            SoapFormat::Jsonl
        } else if table.column_index("Dialogue").is_some() || table.column_index("Note").is_some() {
            SoapFormat::MedSynth
        } else if table.has("dialogue") {
            SoapFormat::Official
        } else if table.has("note") || table.has("id") {
            return Err(DataError::MissingColumn {
                path: table.path.clone(),
                column: "dialogue".to_string(),
                found: table.columns.clone(),
            });
        } else {
            return Err(DataError::UnknownFormat {
                path: table.path.clone(),
                found: table.columns.clone(),
                expected: FORMATS_EXPECTED.to_string(),
            });
        };
        let dialogue_col = table.require("dialogue")?;
        let note_col = match format {
            SoapFormat::MedSynth => Some(table.require("note")?),
            _ => table.column_index_ci("note"),
        };
        let id_col = match format {
            SoapFormat::MedSynth => table.column_index_ci("id"),
            _ => Some(table.require("id")?),
        };

        let icd_col = table.column_index_ci("icd10");
        let mut examples = Vec::with_capacity(table.rows.len());
        let (mut empty_dialogue, mut empty_note, mut duplicates) = (0usize, 0usize, 0usize);
        let mut seen_pairs: HashSet<(String, String)> = HashSet::new();
        let mut seen_ids = UniqueIds::default();
        for (i, row) in table.rows.iter().enumerate() {
            let id = match id_col {
                Some(c) => row_id(&table, row, c)?,
                // MedSynth has no id: number pairs by their position in the release.
                None => (i + 1).to_string(),
            };
            let dialogue = row.non_blank(Some(dialogue_col));
            let note = row.non_blank(note_col);
            let Some(dialogue) = dialogue else {
                empty_dialogue += 1;
                continue;
            };
            if note_col.is_some() && note.is_none() {
                empty_note += 1;
                continue;
            }
            if let Some(note) = note
                && !seen_pairs.insert((note.to_string(), dialogue.to_string()))
            {
                duplicates += 1;
                continue;
            }
            seen_ids.check(&table.path, &id, row.line)?;
            examples.push(SoapExample {
                id,
                dialogue: dialogue.to_string(),
                note: note.map(str::to_string),
                icd10: row.non_blank(icd_col).map(str::to_string),
                line: row.line,
            });
        }
        let dropped = [
            ("empty dialogue", empty_dialogue),
            ("empty note", empty_note),
            ("duplicate (note, dialogue) pair", duplicates),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.to_string(), n))
        .collect();
        Ok(SoapCorpus {
            path: table.path.clone(),
            format,
            rows_read: table.rows.len(),
            examples,
            dropped,
        })
    }
}

fn row_id(table: &Table, row: &Row, col: usize) -> Result<String> {
    row.non_blank(Some(col))
        .map(str::to_string)
        .ok_or_else(|| DataError::MissingField {
            path: table.path.clone(),
            line: row.line,
            field: table.columns[col].clone(),
        })
}

/// One text per id, as scored by the official Task 4 script.
#[derive(Debug, Clone)]
pub struct IdText {
    pub id: String,
    pub text: String,
    pub line: u64,
}

/// Reads a submission: CSV `id,generated_note` or JSONL `{"id","prediction"}`.
/// A blank prediction is the empty string, as the official script turns NaN into "".
pub fn load_predictions(path: &Path) -> Result<Vec<IdText>> {
    let table = Table::read(path)?;
    let text_col = match table.container {
        Container::Jsonl => table.require("prediction")?,
        Container::Csv => table.require("generated_note")?,
    };
    id_texts(&table, text_col)
}

/// Reads references: CSV `id,note[,dialogue]` or JSONL `{"id","note"}` / `{"id","reference"}`.
pub fn load_references(path: &Path) -> Result<Vec<IdText>> {
    let table = Table::read(path)?;
    let text_col = match (table.container, table.column_index_ci("reference")) {
        (Container::Jsonl, Some(c)) => c,
        _ => table.require("note")?,
    };
    id_texts(&table, text_col)
}

fn id_texts(table: &Table, text_col: usize) -> Result<Vec<IdText>> {
    let id_col = table.require("id")?;
    let mut seen = UniqueIds::default();
    let mut out = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        let id = row_id(table, row, id_col)?;
        seen.check(&table.path, &id, row.line)?;
        out.push(IdText {
            id,
            text: row.get(text_col).unwrap_or("").to_string(),
            line: row.line,
        });
    }
    Ok(out)
}

/// Writes examples as the official CSV (`id,note,dialogue`) when the path ends in `.csv`, else as
/// JSONL (`{"id","dialogue","note"}`, plus `icd10` when known). Atomic.
pub fn write_corpus(path: &Path, examples: &[SoapExample]) -> Result<()> {
    crate::table::write_csv_or_jsonl(
        path,
        examples,
        &["id", "note", "dialogue"],
        |e| {
            vec![
                e.id.clone(),
                e.note.clone().unwrap_or_default(),
                e.dialogue.clone(),
            ]
        },
        |e| {
            let mut obj = serde_json::json!({"id": e.id, "dialogue": e.dialogue, "note": e.note});
            if let Some(code) = &e.icd10 {
                obj["icd10"] = serde_json::Value::String(code.clone());
            }
            obj
        },
    )
}
