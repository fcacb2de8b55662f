//! Errors of the corpus layer. Every message names the file, and the line and field where there
//! is one, so a user can fix the input without reading code. Messages never quote clinical text.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: file not found", .path.display())]
    NotFound { path: PathBuf },

    #[error("{}: cannot read: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: file is empty", .path.display())]
    Empty { path: PathBuf },

    #[error("{}: line {line}: invalid UTF-8", .path.display())]
    InvalidUtf8 { path: PathBuf, line: u64 },

    #[error("{}: line {line}: row has {found} fields but the header has {expected}", .path.display())]
    RaggedRow {
        path: PathBuf,
        line: u64,
        found: usize,
        expected: usize,
    },

    #[error("{}: line {line}: malformed CSV: {message}", .path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },

    #[error("{}: line {line}: invalid JSON: {message}", .path.display())]
    Json {
        path: PathBuf,
        line: u64,
        message: String,
    },

    #[error("{}: missing column \"{column}\" (found columns: {})", .path.display(), .found.join(", "))]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: Vec<String>,
    },

    #[error("{}: line {line}: missing field \"{field}\"", .path.display())]
    MissingField {
        path: PathBuf,
        line: u64,
        field: String,
    },

    #[error("{}: line {line}: field \"{field}\": {message}", .path.display())]
    BadField {
        path: PathBuf,
        line: u64,
        field: String,
        message: String,
    },

    #[error("{}: line {line}: field \"{field}\": value {value:?} is out of range ({range})", .path.display())]
    LabelOutOfRange {
        path: PathBuf,
        line: u64,
        field: String,
        value: String,
        range: String,
    },

    #[error("{}: line {line}: duplicate id {id:?} (first seen on line {first_line})", .path.display())]
    DuplicateId {
        path: PathBuf,
        line: u64,
        id: String,
        first_line: u64,
    },

    #[error("{}: cannot tell the corpus format from the columns ({}); expected {expected}", .path.display(), .found.join(", "))]
    UnknownFormat {
        path: PathBuf,
        found: Vec<String>,
        expected: String,
    },

    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
