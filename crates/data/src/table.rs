//! One reader for the two container formats our users export: CSV (with a header row) and JSONL
//! (one object per line). Both become a [`Table`] of named, optional string fields with the line
//! each row started on, so every corpus reader reports errors the same way.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// A cell is `None` when a JSONL key is absent or `null`; CSV blanks stay `Some("")` so readers
/// decide what "blank" means for their column.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line on which the record starts (the header is line 1 in CSV).
    pub line: u64,
    cells: Vec<Option<String>>,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub path: PathBuf,
    /// Column names, trimmed (MedSynth's release has stray spaces in its header).
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    pub container: Container,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Csv,
    Jsonl,
}

impl Container {
    /// By extension first; otherwise a file whose first non-blank byte is `{` is JSONL.
    pub fn detect(path: &Path, bytes: &[u8]) -> Container {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("jsonl" | "ndjson" | "json") => Container::Jsonl,
            Some("csv") => Container::Csv,
            _ => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => Container::Jsonl,
                _ => Container::Csv,
            },
        }
    }
}

impl Table {
    pub fn read(path: &Path) -> Result<Table> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Table::from_bytes(path, &bytes)
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Table> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        match Container::detect(path, bytes) {
            Container::Csv => read_csv(path, bytes),
            Container::Jsonl => read_jsonl(path, bytes),
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Case-insensitive lookup, for headers whose capitalisation varies between releases.
    pub fn column_index_ci(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }

    pub fn has(&self, name: &str) -> bool {
        self.column_index_ci(name).is_some()
    }

    pub fn require(&self, name: &str) -> Result<usize> {
        self.column_index_ci(name)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                found: self.columns.clone(),
            })
    }
}

impl Row {
    pub fn get(&self, col: usize) -> Option<&str> {
        self.cells.get(col).and_then(|c| c.as_deref())
    }

    /// The cell with surrounding whitespace removed; `None` for absent, null or blank.
    pub fn non_blank(&self, col: Option<usize>) -> Option<&str> {
        col.and_then(|c| self.get(c))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

fn read_csv(path: &Path, bytes: &[u8]) -> Result<Table> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let csv_err = |e: csv::Error| -> DataError {
        let line = e.position().map(|p| p.line()).unwrap_or(0);
        match e.into_kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => DataError::RaggedRow {
                path: path.to_path_buf(),
                line,
                found: len as usize,
                expected: expected_len as usize,
            },
            csv::ErrorKind::Utf8 { .. } => DataError::InvalidUtf8 {
                path: path.to_path_buf(),
                line,
            },
            other => DataError::Csv {
                path: path.to_path_buf(),
                line,
                message: format!("{other:?}"),
            },
        }
    };
    let header = reader.byte_headers().map_err(csv_err)?.clone();
    let mut columns = Vec::with_capacity(header.len());
    for field in header.iter() {
        let name = std::str::from_utf8(field).map_err(|_| DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            line: 1,
        })?;
        columns.push(name.trim().to_string());
    }
    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_err(e)),
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let mut cells = Vec::with_capacity(record.len());
        for field in record.iter() {
            let s = std::str::from_utf8(field).map_err(|_| DataError::InvalidUtf8 {
                path: path.to_path_buf(),
                line,
            })?;
            cells.push(Some(s.to_string()));
        }
        rows.push(Row { line, cells });
    }
    Ok(Table {
        path: path.to_path_buf(),
        columns,
        rows,
        container: Container::Csv,
    })
}

fn read_jsonl(path: &Path, bytes: &[u8]) -> Result<Table> {
    let mut columns: Vec<String> = Vec::new();
    let mut objects = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        let text = std::str::from_utf8(raw).map_err(|_| DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            line,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line,
            // serde's message names a column, never the offending text; its own
            // "line 1" would only confuse, the line is ours.
            message: {
                let full = e.to_string();
                let what = full.split(" at line ").next().unwrap_or(&full).to_string();
                format!("{what} (column {})", e.column())
            },
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(DataError::Json {
                path: path.to_path_buf(),
                line,
                message: "expected one JSON object per line".to_string(),
            });
        };
        for key in map.keys() {
            if !columns.iter().any(|c| c == key) {
                columns.push(key.clone());
            }
        }
        objects.push((line, map));
    }
    let rows = objects
        .into_iter()
        .map(|(line, map)| {
            let cells = columns
                .iter()
                .map(|c| match map.get(c) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                })
                .collect();
            Row { line, cells }
        })
        .collect();
    Ok(Table {
        path: path.to_path_buf(),
        columns,
        rows,
        container: Container::Jsonl,
    })
}

/// Writes `items` as CSV (with `header`) when `path` ends in `.csv`, else as JSONL; atomic.
pub(crate) fn write_csv_or_jsonl<T>(
    path: &Path,
    items: &[T],
    header: &[&str],
    csv_row: impl Fn(&T) -> Vec<String>,
    json_row: impl Fn(&T) -> serde_json::Value,
) -> Result<()> {
    let csv_out = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    crate::atomic::write_atomic(path, |w| {
        if csv_out {
            let mut out = csv::Writer::from_writer(w);
            out.write_record(header)?;
            for item in items {
                out.write_record(csv_row(item))?;
            }
            out.flush()
        } else {
            for item in items {
                writeln!(w, "{}", json_row(item))?;
            }
            Ok(())
        }
    })
}

/// Rejects a second row with the same id, naming both lines.
#[derive(Debug, Default)]
pub(crate) struct UniqueIds(std::collections::HashMap<String, u64>);

impl UniqueIds {
    pub fn check(&mut self, path: &Path, id: &str, line: u64) -> Result<()> {
        if let Some(&first_line) = self.0.get(id) {
            return Err(DataError::DuplicateId {
                path: path.to_path_buf(),
                line,
                id: id.to_string(),
                first_line,
            });
        }
        self.0.insert(id.to_string(), line);
        Ok(())
    }
}
