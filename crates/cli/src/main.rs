//! `clinstruct`: one offline binary that turns clinical text into structure.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

#[derive(Parser)]
#[command(
    name = "clinstruct",
    version,
    about = "Turn clinical text into structure, offline: SOAP notes from doctor–patient dialogues, TNM stages from pathology reports",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Corpus tools: statistics, synthetic corpora and splits.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// TNM staging of pathology reports.
    #[command(subcommand)]
    Tnm(commands::tnm::TnmCommand),
    /// Official scores of predictions against gold files.
    #[command(subcommand)]
    Eval(commands::eval::EvalCommand),
    /// Run the main job on the bundled sample corpora (the quickstart).
    Demo(commands::demo::DemoArgs),
    /// Generate text with a decoder LM (HF directory or GGUF file).
    Generate(commands::generate::GenerateArgs),
    /// Encoder embeddings ([CLS], mean or every token) for JSONL texts or token ids.
    Embed(commands::embed::EmbedArgs),
    /// LoRA / QLoRA fine-tuning of decoder LMs, and merging adapters into their base.
    #[command(subcommand)]
    Lora(commands::lora::LoraCommand),
    /// Run a checkpoint directly (`model forward`: last hidden states for token ids).
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Tnm(cmd) => commands::tnm::run(cmd),
        Command::Eval(cmd) => commands::eval::run(cmd),
        Command::Demo(args) => commands::demo::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Model(cmd) => commands::model::run(cmd),
        Command::Lora(cmd) => commands::lora::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
