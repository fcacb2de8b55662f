//! `clinstruct demo`: the quickstart's main job on the embedded default. It runs every stage that
//! exists today on corpora compiled into the binary, so it works on a fresh machine with no
//! files and no network.

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

    out(&format!(
        "\n== 3. Synthetic corpora, cleaned and split (seed {})\n",
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
