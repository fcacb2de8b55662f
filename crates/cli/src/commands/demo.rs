//! `clinstruct demo`: the quickstart's main job on the embedded default. It runs every stage that
//! exists today on corpora compiled into the binary, so it works on a fresh machine with no
//! files and no network: corpus statistics, the rule-based TNM stager scored with the official
//! Task 6 metrics, a retrieval baseline for SOAP notes scored with the official Task 4 metrics,
//! and synthetic corpora cleaned and split for training.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::out;
use clap::Args;
use clinstruct_data::soap::{self, SoapCorpus};
use clinstruct_data::split::{DEFAULT_DEV_FRACTION, train_dev_split};
use clinstruct_data::stats::{SoapStats, TnmStats};
use clinstruct_data::synth;
use clinstruct_data::table::Table;
use clinstruct_data::tnm::{self, TnmCorpus};
use clinstruct_metrics::soap as soap_metrics;
use clinstruct_metrics::tnm::{self as tnm_metrics, TnmReport};
use clinstruct_tnm::rules::stage_report;

/// 60 invented TCGA-style reports and 30 invented dialogue/SOAP pairs (data/README.md).
const TNM_SAMPLE: &[u8] = include_bytes!("../../../../data/samples/tnm-reports.jsonl");
const SOAP_SAMPLE: &[u8] = include_bytes!("../../../../data/samples/soap-pairs.jsonl");

#[derive(Args)]
pub struct DemoArgs {
    /// Where the demo writes its synthetic corpora and splits.
    #[arg(long, default_value = "clinstruct-demo")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(args: DemoArgs) -> Result<()> {
    out("== 1. Bundled TNM sample (pathology reports)\n")?;
    let tnm_sample = TnmCorpus::from_table(Table::from_bytes(
        Path::new("<bundled>/tnm-reports.jsonl"),
        TNM_SAMPLE,
    )?)?;
    out(&TnmStats::compute(&tnm_sample, None, None).render())?;

    out("\n== 2. Bundled SOAP sample (dialogue → note pairs)\n")?;
    let soap_sample = SoapCorpus::from_table(Table::from_bytes(
        Path::new("<bundled>/soap-pairs.jsonl"),
        SOAP_SAMPLE,
    )?)?;
    out(&SoapStats::compute(&soap_sample, None).render())?;

    out("\n== 3. Rule-based TNM stager on the bundled reports (official Task 6 scores)\n")?;
    let reports: Vec<TnmReport> = tnm_sample
        .records
        .iter()
        .map(|r| {
            let staged = stage_report(r.text.as_deref().unwrap_or(""));
            TnmReport::new(r.labels.class_indices(), staged.labels().class_indices())
        })
        .collect();
    out(&tnm_metrics::render_table(&tnm_metrics::score(&reports)))?;

    out("\n== 4. Nearest-dialogue baseline for SOAP notes (official Task 4 scores)\n")?;
    let (preds, refs) = nearest_dialogue_baseline(&soap_sample);
    let p: Vec<&str> = preds.iter().map(String::as_str).collect();
    let r: Vec<&str> = refs.iter().map(String::as_str).collect();
    let s = soap_metrics::score_corpus(&p, &r, &soap_metrics::SoapOptions::default())?;
    out(&format!(
        "{} notes · BLEU {:.4} · ROUGE-1 {:.4} · ROUGE-2 {:.4} · ROUGE-L {:.4} · METEOR {:.4} · average {:.4}\n",
        s.n,
        s.bleu.unwrap_or(0.0),
        s.rouge1,
        s.rouge2,
        s.rouge_l,
        s.meteor,
        s.average.unwrap_or(0.0)
    ))?;
    out("(the fine-tuned SOAP generator will replace this baseline)\n")?;

    out(&format!(
        "\n== 5. Synthetic corpora, cleaned and split (seed {})\n",
        args.seed
    ))?;
    std::fs::create_dir_all(&args.out)?;
    let reports = synth::tnm_reports(500, args.seed);
    let (train, dev) = train_dev_split(reports, DEFAULT_DEV_FRACTION, args.seed);
    tnm::write_corpus(&args.out.join("tnm-train.jsonl"), &train)?;
    tnm::write_corpus(&args.out.join("tnm-dev.jsonl"), &dev)?;
    out(&format!(
        "TNM: {} train / {} dev reports → {}\n",
        train.len(),
        dev.len(),
        args.out.display()
    ))?;
    let pairs = synth::soap_pairs(200, args.seed);
    let (train, dev) = train_dev_split(pairs, DEFAULT_DEV_FRACTION, args.seed);
    soap::write_corpus(&args.out.join("soap-train.jsonl"), &train)?;
    soap::write_corpus(&args.out.join("soap-dev.jsonl"), &dev)?;
    out(&format!(
        "SOAP: {} train / {} dev pairs → {}\n",
        train.len(),
        dev.len(),
        args.out.display()
    ))?;
    Ok(())
}

/// Leave-one-out retrieval: each dialogue gets the note of the other dialogue sharing the most
/// distinct words. The floor any trained generator must clear.
fn nearest_dialogue_baseline(corpus: &SoapCorpus) -> (Vec<String>, Vec<String>) {
    let vocab: Vec<std::collections::HashSet<String>> = corpus
        .examples
        .iter()
        .map(|e| {
            e.dialogue
                .split_whitespace()
                .map(str::to_lowercase)
                .collect()
        })
        .collect();
    let mut preds = Vec::new();
    let mut refs = Vec::new();
    for (i, e) in corpus.examples.iter().enumerate() {
        let best = (0..vocab.len()).filter(|&j| j != i).max_by_key(|&j| {
            (
                vocab[i].intersection(&vocab[j]).count(),
                std::cmp::Reverse(j),
            )
        });
        let Some(j) = best else { continue };
        preds.push(corpus.examples[j].note.clone().unwrap_or_default());
        refs.push(e.note.clone().unwrap_or_default());
    }
    (preds, refs)
}
