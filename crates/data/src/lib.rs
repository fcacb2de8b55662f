//! Corpus layer.
