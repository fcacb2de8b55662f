//! The corpus layer of clinstruct: everything between files on disk and training examples.
//!
//! - [`table`]: CSV and JSONL containers with line-accurate errors.
//! - [`soap`] / [`tnm`]: the corpus formats of the two tasks.
//! - [`ajcc`]: the one AJCC/TNM label normaliser.
//! - [`split`]: seeded train/dev split. [`stats`]: corpus statistics. [`synth`]: synthetic corpora.

pub mod ajcc;
pub mod atomic;
pub mod error;
pub mod soap;
pub mod split;
pub mod stats;
pub mod synth;
pub mod table;
pub mod text;
pub mod tnm;

pub use ajcc::Stage;
pub use error::{DataError, Result};
