//! `clinstruct tnm …`: TNM staging of pathology reports.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use clinstruct_data::Stage;
use clinstruct_data::tnm::TnmCorpus;
use clinstruct_tnm::rules::{RuleStaging, stage_report};
use serde::Serialize;

use super::{out, print_json};

#[derive(Subcommand)]
pub enum TnmCommand {
    /// Read explicitly written pathologic stages (pT2 pN1a, ypT3, T4 N2 M0) with evidence spans.
    Rules(RulesArgs),
}

#[derive(Args)]
pub struct RulesArgs {
    /// Reports: any TNM corpus format with text (official, Kefeli, JSONL).
    #[arg(long)]
    pub input: PathBuf,
    /// Predictions in the official submission format `patient_filename,t,n,m` (blank = none).
    #[arg(long)]
    pub output: PathBuf,
    /// Evidence per report as JSONL: byte spans of the stage tokens, never the text.
    #[arg(long, value_name = "FILE")]
    pub evidence: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: TnmCommand) -> Result<()> {
    match cmd {
        TnmCommand::Rules(a) => rules(a),
    }
}

#[derive(Serialize)]
struct RulesSummary {
    reports: usize,
    /// Reports with a stated category, per stage.
    stated: [usize; 3],
    output: PathBuf,
}

#[derive(Serialize)]
struct EvidenceLine<'a> {
    id: &'a str,
    #[serde(flatten)]
    staging: &'a RuleStaging,
}

fn rules(a: RulesArgs) -> Result<()> {
    let corpus = TnmCorpus::load(&a.input)?;
    if !corpus.has_text() {
        anyhow::bail!(
            "{}: a label file has no report texts to stage",
            a.input.display()
        );
    }
    let staged: Vec<RuleStaging> = corpus
        .records
        .iter()
        .map(|r| stage_report(r.text.as_deref().unwrap_or("")))
        .collect();
    let code =
        |s: &RuleStaging, stage: Stage| s.category(stage).map_or(String::new(), |c| c.to_string());
    clinstruct_data::atomic::write_atomic(&a.output, |w| {
        writeln!(w, "patient_filename,t,n,m")?;
        for (r, s) in corpus.records.iter().zip(&staged) {
            let mut row = csv::Writer::from_writer(Vec::new());
            row.write_record([
                r.id.as_str(),
                &code(s, Stage::T),
                &code(s, Stage::N),
                &code(s, Stage::M),
            ])?;
            w.write_all(&row.into_inner().map_err(|e| e.into_error())?)?;
        }
        Ok(())
    })?;
    if let Some(path) = &a.evidence {
        clinstruct_data::atomic::write_atomic(path, |w| {
            for (r, s) in corpus.records.iter().zip(&staged) {
                let line = serde_json::to_string(&EvidenceLine {
                    id: &r.id,
                    staging: s,
                })
                .map_err(std::io::Error::other)?;
                writeln!(w, "{line}")?;
            }
            Ok(())
        })?;
    }
    let summary = RulesSummary {
        reports: staged.len(),
        stated: [Stage::T, Stage::N, Stage::M]
            .map(|st| staged.iter().filter(|s| s.category(st).is_some()).count()),
        output: a.output.clone(),
    };
    if a.json {
        print_json(&summary)
    } else {
        out(&format!(
            "{} reports staged → {} · stated T {} · N {} · M {}\n",
            summary.reports,
            summary.output.display(),
            summary.stated[0],
            summary.stated[1],
            summary.stated[2]
        ))
    }
}
