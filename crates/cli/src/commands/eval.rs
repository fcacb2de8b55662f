//! `clinstruct eval …`: the official Task 4 and Task 6 scores from prediction and gold files.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use clinstruct_data::soap;
use clinstruct_data::tnm::{self, TnmCorpus, TnmFormat};
use clinstruct_metrics::soap as soap_metrics;
use clinstruct_metrics::tnm as tnm_metrics;
use serde::Serialize;

use super::{out, print_json};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// SOAP note scores: BLEU, ROUGE-1/2/L/Lsum, METEOR and the task average, as the official
    /// Task 4 script computes them.
    Soap(EvalSoapArgs),
    /// TNM staging scores: per-stage accuracy, macro/micro/weighted F1, AUROC, exact match.
    Tnm(EvalTnmArgs),
}

#[derive(Args)]
pub struct EvalSoapArgs {
    /// Predictions: the official submission CSV `id,generated_note` or JSONL `{"id","prediction"}`.
    #[arg(long)]
    pub pred: PathBuf,
    /// References: CSV `id,note[,dialogue]` or JSONL `{"id","note"}` / `{"id","reference"}`.
    #[arg(long)]
    pub gold: PathBuf,
    /// Write per-document scores (JSONL, one line per scored id) to this file.
    #[arg(long, value_name = "FILE")]
    pub per_example: Option<PathBuf>,
    /// Porter-stem ROUGE tokens (rouge_score's `use_stemmer=True`; the official score does not).
    #[arg(long)]
    pub rouge_stemmer: bool,
    /// Also report a seeded bootstrap interval of the ROUGE means with this many resamples.
    #[arg(long, value_name = "N")]
    pub bootstrap: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
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
        EvalCommand::Soap(a) => eval_soap(a),
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
struct SoapEvalOutput {
    #[serde(flatten)]
    scores: soap_metrics::SoapScores,
    coverage: Coverage,
    #[serde(skip_serializing_if = "Option::is_none")]
    rouge_bootstrap: Option<soap_metrics::RougeBootstrap>,
}

#[derive(Serialize)]
struct PerExample<'a> {
    id: &'a str,
    #[serde(flatten)]
    scores: &'a soap_metrics::DocScores,
}

fn eval_soap(a: EvalSoapArgs) -> Result<()> {
    let preds = soap::load_predictions(&a.pred)?;
    let golds = soap::load_references(&a.gold)?;
    // Inner join on id, in gold order; missing ids are dropped, not penalised (official script).
    let pred_by_id: HashMap<&str, &str> = preds
        .iter()
        .map(|p| (p.id.as_str(), p.text.as_str()))
        .collect();
    let mut ids = Vec::new();
    let (mut p_texts, mut r_texts) = (Vec::new(), Vec::new());
    for g in &golds {
        if let Some(p) = pred_by_id.get(g.id.as_str()) {
            ids.push(g.id.as_str());
            p_texts.push(*p);
            r_texts.push(g.text.as_str());
        }
    }
    let coverage = Coverage {
        gold: golds.len(),
        predictions: preds.len(),
        matched: ids.len(),
        missing_predictions: golds.len() - ids.len(),
        unmatched_predictions: preds.len() - ids.len(),
    };
    if ids.is_empty() {
        bail!(
            "no prediction id in {} matches a gold id in {}",
            a.pred.display(),
            a.gold.display()
        );
    }
    if coverage.missing_predictions > 0 {
        eprintln!(
            "warning: {} of {} gold ids have no prediction; they are left out, not penalised (as the official script does)",
            coverage.missing_predictions, coverage.gold
        );
    }
    let opts = soap_metrics::SoapOptions {
        rouge_stemmer: a.rouge_stemmer,
        sentence_bleu: a.per_example.is_some(),
        ..Default::default()
    };
    let docs = soap_metrics::per_document(&p_texts, &r_texts, &opts)?;
    let scores = soap_metrics::aggregate(&docs)?;
    if let Some(path) = &a.per_example {
        clinstruct_data::atomic::write_atomic(path, |w| {
            for (id, d) in ids.iter().zip(&docs) {
                let line = serde_json::to_string(&PerExample { id, scores: d })
                    .map_err(std::io::Error::other)?;
                writeln!(w, "{line}")?;
            }
            Ok(())
        })?;
    }
    let rouge_bootstrap = a
        .bootstrap
        .and_then(|n| soap_metrics::rouge_bootstrap(&docs, n, a.seed));
    if a.json {
        return print_json(&SoapEvalOutput {
            scores,
            coverage,
            rouge_bootstrap,
        });
    }
    let fmt = |x: Option<f64>| x.map_or_else(|| "undefined".to_string(), |v| format!("{v:.4}"));
    let mut text = format!(
        "coverage: {} of {} gold notes predicted ({} prediction rows, {} without gold)\n",
        coverage.matched, coverage.gold, coverage.predictions, coverage.unmatched_predictions
    );
    text += &format!("BLEU (official, evaluate) {}", fmt(scores.bleu));
    if let Some(e) = &scores.bleu_error {
        text += &format!(" ({e})");
    }
    text += &format!(
        "\nBLEU (sacreBLEU)          {:.4}  [{}]\nROUGE-1                   {:.4}\nROUGE-2                   {:.4}\nROUGE-L                   {:.4}\nROUGE-Lsum                {:.4}  (reported, not averaged)\nMETEOR                    {:.4}\naverage (task score)      {}\n",
        scores.bleu_sacrebleu,
        scores.sacrebleu_signature,
        scores.rouge1,
        scores.rouge2,
        scores.rouge_l,
        scores.rouge_lsum,
        scores.meteor,
        fmt(scores.average)
    );
    out(&text)
}

#[derive(Serialize)]
struct TnmEvalOutput {
    #[serde(flatten)]
    scores: tnm_metrics::TnmScores,
    coverage: Coverage,
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
        let gold_idx = g.labels.class_indices();
        let mut report = tnm_metrics::TnmReport::new(gold_idx, [None, None, None]);
        if let Some(&i) = pred_index.get(&key(&g.id)) {
            matched += 1;
            let p = &preds[i];
            report.pred = p.labels.class_indices();
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
