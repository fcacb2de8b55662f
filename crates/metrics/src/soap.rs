//! Task 4 text scores: BLEU, ROUGE and METEOR (work in progress on branch soap-metrics).
