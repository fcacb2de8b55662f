//! Task 4 text scores: BLEU, ROUGE and METEOR, identical to the official Python scorers.
pub mod bleu;
pub mod porter;
pub mod rouge;
pub mod text;
pub mod tokenize;
pub mod wordnet;
