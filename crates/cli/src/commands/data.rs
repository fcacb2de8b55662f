//! `clinstruct data …`: corpus statistics, synthetic corpora and train/dev splits.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use clinstruct_data::soap::{self, SoapCorpus};
use clinstruct_data::split::{DEFAULT_DEV_FRACTION, train_dev_split};
use clinstruct_data::stats::{SoapStats, TnmStats};
use clinstruct_data::synth;
use clinstruct_data::table::Table;
use clinstruct_data::tnm::{self, TnmCorpus};
use clinstruct_models::Tokenizer;

use super::{out, print_json};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Rows, rows dropped and why, label distributions, label coverage and text lengths.
    Stats(StatsArgs),
    /// Write a synthetic corpus: staged pathology reports or dialogue/SOAP pairs.
    Synth(SynthArgs),
    /// Clean a corpus and split it into train and dev files with a seeded shuffle.
    Split(SplitArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// TNM staging from pathology reports (Task 6).
    Tnm,
    /// SOAP notes from doctor–patient dialogues (Task 4).
    Soap,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Corpus file (CSV or JSONL; the format is recognised from its columns).
    pub file: PathBuf,
    /// Which task the corpus is for (default: recognised from the columns).
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// GDC label files (ajcc_pathologic_t|n|m) to join by TCGA patient barcode (TNM only).
    #[arg(long, num_args = 1.., value_name = "LABELFILE")]
    pub labels: Vec<PathBuf>,
    /// Also give lengths in tokens: a `tokenizer.json`, a model directory holding one, or a GGUF
    /// file with an embedded vocabulary.
    #[arg(long, value_name = "TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// Print JSON instead of a readable summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long, value_enum)]
    pub task: Task,
    /// Number of reports or dialogue/note pairs.
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file: `.csv` writes the official Task 4/6 CSV, anything else JSONL.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct SplitArgs {
    /// Corpus file (CSV or JSONL).
    pub file: PathBuf,
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// Share of the cleaned corpus held out as dev.
    #[arg(long, default_value_t = DEFAULT_DEV_FRACTION)]
    pub dev_fraction: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Directory for train.jsonl and dev.jsonl (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Stats(a) => stats(a),
        DataCommand::Synth(a) => synth_cmd(a),
        DataCommand::Split(a) => split(a),
    }
}

/// SOAP corpora have a dialogue column; everything else is read as TNM.
fn detect_task(table: &Table) -> Task {
    if table.has("dialogue") {
        Task::Soap
    } else {
        Task::Tnm
    }
}

fn load_tokenizer(path: &std::path::Path) -> Result<Tokenizer> {
    let t = if path.is_dir() {
        Tokenizer::from_dir(path)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        // Metadata only: the vocabulary is there, the weights need not be read.
        let content = clinstruct_models::gguf::read_metadata(path)?;
        Tokenizer::from_gguf(&content.metadata)
    } else {
        Tokenizer::from_file(path)
    };
    t.with_context(|| format!("{}: cannot load a tokenizer", path.display()))
}

/// Token counts with special tokens added, as a model would see the texts.
fn token_lengths(tok: &Tokenizer, texts: &[&str]) -> Result<Vec<usize>> {
    Ok(tok
        .encode_batch(texts, true)?
        .iter()
        .map(Vec::len)
        .collect())
}

fn stats(a: StatsArgs) -> Result<()> {
    let tokenizer = a.tokenizer.as_deref().map(load_tokenizer).transpose()?;
    let table = Table::read(&a.file)?;
    let task = a.task.unwrap_or_else(|| detect_task(&table));
    match task {
        Task::Soap => {
            if !a.labels.is_empty() {
                bail!("--labels joins TNM label files; it does not apply to a SOAP corpus");
            }
            let corpus = SoapCorpus::from_table(table)?;
            let lengths = match &tokenizer {
                Some(tok) => {
                    let dialogues: Vec<&str> = corpus
                        .examples
                        .iter()
                        .map(|e| e.dialogue.as_str())
                        .collect();
                    let notes: Vec<&str> = corpus
                        .examples
                        .iter()
                        .filter_map(|e| e.note.as_deref())
                        .collect();
                    Some((token_lengths(tok, &dialogues)?, token_lengths(tok, &notes)?))
                }
                None => None,
            };
            let s = SoapStats::compute(
                &corpus,
                lengths.as_ref().map(|(d, n)| (d.as_slice(), n.as_slice())),
            );
            if a.json {
                print_json(&s)
            } else {
                out(&s.render())
            }
        }
        Task::Tnm => {
            let mut corpus = TnmCorpus::from_table(table)?;
            let join = if a.labels.is_empty() {
                None
            } else {
                let files = a
                    .labels
                    .iter()
                    .map(|p| TnmCorpus::load(p))
                    .collect::<clinstruct_data::Result<Vec<_>>>()?;
                Some(corpus.join_labels(&files)?)
            };
            let lengths = match &tokenizer {
                Some(tok) => {
                    let texts: Vec<&str> = corpus
                        .records
                        .iter()
                        .filter_map(|r| r.text.as_deref())
                        .collect();
                    Some(token_lengths(tok, &texts)?)
                }
                None => None,
            };
            let s = TnmStats::compute(&corpus, join, lengths.as_deref());
            if a.json {
                print_json(&s)
            } else {
                out(&s.render())
            }
        }
    }
}

fn synth_cmd(a: SynthArgs) -> Result<()> {
    match a.task {
        Task::Tnm => tnm::write_corpus(&a.out, &synth::tnm_reports(a.n, a.seed))?,
        Task::Soap => soap::write_corpus(&a.out, &synth::soap_pairs(a.n, a.seed))?,
    }
    eprintln!(
        "wrote {} synthetic {} examples to {}",
        a.n,
        match a.task {
            Task::Tnm => "TNM",
            Task::Soap => "SOAP",
        },
        a.out.display()
    );
    Ok(())
}

#[derive(serde::Serialize)]
struct SplitSummary {
    train: usize,
    dev: usize,
    dropped: Vec<(String, usize)>,
    train_file: PathBuf,
    dev_file: PathBuf,
    seed: u64,
}

fn split(a: SplitArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.dev_fraction) {
        bail!("--dev-fraction must be in [0, 1), got {}", a.dev_fraction);
    }
    let table = Table::read(&a.file)?;
    let task = a.task.unwrap_or_else(|| detect_task(&table));
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let train_file = a.out_dir.join("train.jsonl");
    let dev_file = a.out_dir.join("dev.jsonl");
    let (train, dev, dropped) = match task {
        Task::Soap => {
            let c = SoapCorpus::from_table(table)?;
            let (train, dev) = train_dev_split(c.examples, a.dev_fraction, a.seed);
            soap::write_corpus(&train_file, &train)?;
            soap::write_corpus(&dev_file, &dev)?;
            (train.len(), dev.len(), c.dropped)
        }
        Task::Tnm => {
            let c = TnmCorpus::from_table(table)?;
            if !c.has_text() {
                bail!(
                    "{}: a label file has no report texts to split",
                    a.file.display()
                );
            }
            let (train, dev) = train_dev_split(c.records, a.dev_fraction, a.seed);
            tnm::write_corpus(&train_file, &train)?;
            tnm::write_corpus(&dev_file, &dev)?;
            (train.len(), dev.len(), c.dropped)
        }
    };
    let summary = SplitSummary {
        train,
        dev,
        dropped,
        train_file,
        dev_file,
        seed: a.seed,
    };
    if a.json {
        print_json(&summary)
    } else {
        out(&format!(
            "train {} → {} · dev {} → {} (seed {})\n",
            summary.train,
            summary.train_file.display(),
            summary.dev,
            summary.dev_file.display(),
            summary.seed
        ))?;
        for (reason, n) in &summary.dropped {
            out(&format!("  dropped {n}: {reason}\n"))?;
        }
        Ok(())
    }
}
