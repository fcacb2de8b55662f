//! Task 6 classification scores (work in progress on branch tnm-metrics).
