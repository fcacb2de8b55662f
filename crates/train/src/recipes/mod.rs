//! One recipe per task (torchtune style): each turns its data and model into the loss, the
//! evaluation and the export the shared [`crate::trainer`] loop needs.

pub mod sft;
