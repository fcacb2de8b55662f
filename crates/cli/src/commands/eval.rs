//! `clinstruct eval …`: the official Task 4 and Task 6 scores from prediction and gold files.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use clinstruct_data::Stage;
use clinstruct_data::tnm::{self, TnmCorpus, TnmFormat, TnmLabels};
use clinstruct_metrics::tnm as tnm_metrics;
use serde::Serialize;

use super::{out, print_json};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// TNM staging scores: per-stage accuracy, macro/micro/weighted F1, AUROC, exact match.
    Tnm(EvalTnmArgs),
}

#[derive(Args)]
pub struct EvalTnmArgs {
    /// Predictions: `patient_filename,t,n,m` (t 1–4, n 0–3, m 0–1) with optional
    /// probability columns `p_t1..p_t4,p_n0..p_n3,p_m0,p_m1`; CSV or JSONL.
    #[arg(long)]
    pub pred: PathBuf,
    /// Gold labels: any TNM corpus format (official, Kefeli, GDC label file, JSONL).
    #[arg(long)]
    pub gold: PathBuf,
    /// More GDC label files joined onto the gold by TCGA patient barcode.
    #[arg(long, num_args = 1.., value_name = "LABELFILE")]
    pub labels: Vec<PathBuf>,
    /// Score even when probability rows do not sum to 1 (AUROC then follows scikit-learn:
    /// null for T and N).
    #[arg(long)]
    pub no_prob_check: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Tnm(a) => eval_tnm(a),
    }
}

/// How predictions and gold matched, like the official script's coverage line.
#[derive(Debug, Serialize)]
pub struct Coverage {
    pub gold: usize,
    pub predictions: usize,
    pub matched: usize,
    /// Gold reports with no prediction row: scored as wrong on every stage.
    pub missing_predictions: usize,
    /// Prediction rows with no gold report: ignored.
    pub unmatched_predictions: usize,
}

#[derive(Serialize)]
struct TnmEvalOutput {
    #[serde(flatten)]
    scores: tnm_metrics::TnmScores,
    coverage: Coverage,
}

fn class_index(stage: Stage, labels: &TnmLabels) -> Option<u8> {
    labels.get(stage).map(|c| stage.class_index(c) as u8)
}

fn eval_tnm(a: EvalTnmArgs) -> Result<()> {
    let preds = tnm::load_predictions(&a.pred)?;
    let mut gold = TnmCorpus::load(&a.gold)?;
    if !a.labels.is_empty() {
        let files = a
            .labels
            .iter()
            .map(|p| TnmCorpus::load(p))
            .collect::<clinstruct_data::Result<Vec<_>>>()?;
        gold.join_labels(&files)?;
    }
    // Label files are keyed by patient barcode; report corpora by their file id.
    let by_barcode = gold.format == TnmFormat::GdcLabels;
    let key = |id: &str| -> String {
        if by_barcode {
            tnm::tcga_barcode(id).unwrap_or_else(|| id.to_string())
        } else {
            id.to_string()
        }
    };
    let mut pred_index: HashMap<String, usize> = HashMap::with_capacity(preds.len());
    for (i, p) in preds.iter().enumerate() {
        if let Some(prev) = pred_index.insert(key(&p.id), i) {
            bail!(
                "{}: lines {} and {} predict the same patient {}",
                a.pred.display(),
                preds[prev].line,
                p.line,
                key(&p.id)
            );
        }
    }
    let mut reports = Vec::with_capacity(gold.records.len());
    let mut matched = 0;
    for g in &gold.records {
        let gold_idx = [Stage::T, Stage::N, Stage::M].map(|s| class_index(s, &g.labels));
        let mut report = tnm_metrics::TnmReport::new(gold_idx, [None, None, None]);
        if let Some(&i) = pred_index.get(&key(&g.id)) {
            matched += 1;
            let p = &preds[i];
            report.pred = [Stage::T, Stage::N, Stage::M].map(|s| class_index(s, &p.labels));
            report.prob = p.probs.clone();
        }
        reports.push(report);
    }
    let coverage = Coverage {
        gold: gold.records.len(),
        predictions: preds.len(),
        matched,
        missing_predictions: gold.records.len() - matched,
        unmatched_predictions: preds.len() - matched,
    };
    if matched == 0 {
        bail!(
            "no prediction id in {} matches a gold id in {} (compared {})",
            a.pred.display(),
            a.gold.display(),
            if by_barcode {
                "TCGA patient barcodes"
            } else {
                "ids exactly"
            }
        );
    }
    let problems = tnm_metrics::validate_probabilities(&reports);
    if let Some(first) = problems.first() {
        let msg = format!(
            "{}: {} probability problem(s); first: {first} (report index counts gold rows)",
            a.pred.display(),
            problems.len()
        );
        if a.no_prob_check {
            eprintln!("warning: {msg}");
        } else {
            bail!("{msg}; pass --no-prob-check to score anyway");
        }
    }
    let scores = tnm_metrics::score(&reports);
    if coverage.missing_predictions > 0 {
        eprintln!(
            "warning: {} of {} gold reports have no prediction; they count as wrong",
            coverage.missing_predictions, coverage.gold
        );
    }
    if a.json {
        print_json(&TnmEvalOutput { scores, coverage })
    } else {
        out(&format!(
            "coverage: {} of {} gold reports predicted ({} prediction rows, {} without gold)\n",
            coverage.matched, coverage.gold, coverage.predictions, coverage.unmatched_predictions
        ))?;
        out(&tnm_metrics::render_table(&scores))
    }
}
