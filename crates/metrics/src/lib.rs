//! Scores for both clinstruct tasks, with no ML dependencies.
//!
//! - [`soap`]: Task 4 text scores (BLEU, ROUGE, METEOR) exactly as the official scorer computes them.
//! - [`tnm`]: Task 6 classification scores (macro/micro F1, AUROC, exact match) with scikit-learn semantics.

pub mod soap;
pub mod tnm;
