//! TNM staging from pathology reports.
//!
//! - [`rules`]: reads explicitly written pathologic stages (`pT2 pN1a`, `ypT3`, `T4 N2 M0`, CAP
//!   "Pathologic Staging (pTNM)" blocks, addendum revisions) with the character span of the
//!   evidence. It is exact where a report states the stage and silent where it does not, which
//!   makes it the precision anchor of a hybrid stager and a baseline for the learned one.

pub mod rules;
