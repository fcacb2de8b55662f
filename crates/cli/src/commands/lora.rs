//! `clinstruct lora train`: LoRA / QLoRA supervised fine-tuning of a decoder LM (HF directory or
//! GGUF file) on prompt/completion or text JSONL, writing a PEFT adapter; `clinstruct lora
//! merge`: base + adapter as one safetensors model.
//!
//! Logs give counts, losses and paths, never text from the data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use clinstruct_models::CausalLm;
use clinstruct_nn::LinearHook;
use clinstruct_nn::lora::{
    AdapterControl, BaseMode, LinearPlan, Lora, LoraConfig, PeftAdapter, PeftMeta, Targets,
    export_merged,
};
use clinstruct_nn::quant::nf4::Nf4Config;
use clinstruct_train::recipes::sft::{PromptFormat, SftRecipe, SftStats, read_sft};
use clinstruct_train::{
    AdamWConfig, BestMetric, LrSchedule, TrainerConfig, train, warmup_steps_from_ratio,
};
use serde_json::json;

use super::load::{LmSource, LoadedLm, load_lm, resolve_source};

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Fine-tune LoRA adapters on prompt/completion (or text) JSONL; writes a PEFT adapter.
    Train(Box<TrainArgs>),
    /// Merge a PEFT adapter into its safetensors base and write the merged model.
    Merge(MergeArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Quantize {
    /// Keep the base weights as loaded (frozen).
    None,
    /// QLoRA: quantise the frozen base to 4-bit NF4 with double quantisation on load.
    Nf4,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// BOS + prompt, then completion + EOS, tokenised as written.
    Raw,
    /// The model's chat template: prompt as the user turn, completion as the assistant turn.
    Chat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Scheduler {
    Cosine,
    Linear,
    Constant,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Base model: an HF directory (safetensors), a .gguf file, or a hub id in the local cache.
    #[arg(long)]
    pub model: String,
    /// Training data: JSONL/CSV rows with "prompt" and "completion" (loss on the completion), or
    /// "text" (loss on every token).
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: the adapter (adapter_config.json, adapter_model.safetensors),
    /// checkpoint/, best/, metrics.jsonl, training_curve.svg.
    #[arg(long)]
    pub output: PathBuf,
    /// Evaluation data (same format); enables eval_loss, keep-best and early stopping.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "raw")]
    pub format: Format,
    /// System turn for --format chat.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, value_enum, default_value = "none")]
    pub quantize: Quantize,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f32,
    /// Comma-separated module names (q_proj,v_proj) or all-linear.
    #[arg(long, default_value = "all-linear")]
    pub target_modules: String,
    /// rsLoRA scaling (alpha / sqrt(rank)).
    #[arg(long)]
    pub rslora: bool,
    #[arg(long, default_value_t = 1000)]
    pub max_steps: usize,
    /// Tokens per example (longer ones are cut at the end).
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    #[arg(long, value_enum, default_value = "cosine")]
    pub scheduler: Scheduler,
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Global gradient-norm clipping; 0 turns it off.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Evaluate every N steps (default: 10 evaluations per run when --eval-data is given).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps (default: at every evaluation, or every 100 steps).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Stop after N evaluations without a better eval_loss.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (less memory for long inputs, about a third more compute).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Continue the run in --output from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub no_progress: bool,
    /// Print the run summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit after N optimiser steps of this process, as an interruption would (tests, job
    /// schedulers with time limits); `--resume` continues.
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

#[derive(Args)]
pub struct MergeArgs {
    /// The base model the adapter was trained on (HF directory with safetensors).
    #[arg(long)]
    pub model: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory for the merged model (config, tokenizer files and merged weights).
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(cmd: LoraCommand) -> Result<()> {
    match cmd {
        LoraCommand::Train(args) => run_train(*args),
        LoraCommand::Merge(args) => run_merge(args),
    }
}

fn check_args(a: &TrainArgs) -> Result<()> {
    if a.rank == 0 {
        bail!("--rank must be at least 1");
    }
    if !(0.0..1.0).contains(&a.dropout) {
        bail!("--dropout must be in [0, 1), got {}", a.dropout);
    }
    if a.max_steps == 0 || a.batch_size == 0 || a.grad_accum == 0 || a.max_length < 2 {
        bail!("--max-steps, --batch-size and --grad-accum must be at least 1, --max-length 2");
    }
    if !(a.lr > 0.0 && a.lr.is_finite()) {
        bail!("--lr must be a positive number, got {}", a.lr);
    }
    if !(0.0..1.0).contains(&a.warmup_ratio) {
        bail!("--warmup-ratio must be in [0, 1), got {}", a.warmup_ratio);
    }
    if a.patience.is_some() && a.eval_data.is_none() {
        bail!("--patience needs --eval-data");
    }
    if a.system.is_some() && !matches!(a.format, Format::Chat) {
        bail!("--system needs --format chat");
    }
    Ok(())
}

fn describe(stats: &SftStats) -> String {
    format!(
        "{} rows, {} kept ({} truncated), dropped: {} empty, {} without completion tokens after \
         truncation; {} tokens, {} trained",
        stats.rows,
        stats.kept,
        stats.truncated,
        stats.dropped_empty,
        stats.dropped_no_completion,
        stats.tokens,
        stats.completion_tokens
    )
}

fn run_train(a: TrainArgs) -> Result<()> {
    check_args(&a)?;
    // Each step reuses the previous step's buffers instead of faulting fresh pages in.
    clinstruct_models::runtime::keep_freed_memory();
    let device = Device::Cpu;
    let base = match a.quantize {
        Quantize::None => BaseMode::Freeze,
        Quantize::Nf4 => {
            if let LmSource::Gguf(path) = resolve_source(&a.model)? {
                bail!(
                    "--quantize nf4: {} is already quantized (GGUF); LoRA trains on its quantized weights directly",
                    path.display()
                );
            }
            BaseMode::Nf4(Nf4Config::default())
        }
    };
    let mut lora = LoraConfig::new(a.rank, a.alpha, Targets::parse(&a.target_modules));
    lora.dropout = a.dropout;
    lora.use_rslora = a.rslora;
    let plan = Arc::new(LinearPlan::new(base, Some(lora), a.seed));
    let t0 = std::time::Instant::now();
    let LoadedLm {
        lm,
        tokenizer,
        description,
        ..
    } = load_lm(&a.model, &device, Some(plan.clone() as Arc<dyn LinearHook>))?;
    let adapters = plan.adapter_paths().len();
    if adapters == 0 {
        bail!(
            "--target-modules {}: no linear layer of the model matches",
            a.target_modules
        );
    }
    let trainable: usize = plan
        .trainable_vars()
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    eprintln!(
        "model: {description}, loaded in {:.1}s; {adapters} adapters, {trainable} trainable parameters",
        t0.elapsed().as_secs_f64()
    );

    let format = match a.format {
        Format::Raw => PromptFormat::Raw,
        Format::Chat => PromptFormat::Chat {
            system: a.system.clone(),
        },
    };
    let (train_set, stats) = read_sft(&a.data, &tokenizer, &format, a.max_length)?;
    eprintln!("train data {}: {}", a.data.display(), describe(&stats));
    if train_set.is_empty() {
        bail!("{}: no usable training rows", a.data.display());
    }
    let eval_set = match &a.eval_data {
        Some(path) => {
            let (set, stats) = read_sft(path, &tokenizer, &format, a.max_length)?;
            eprintln!("eval data {}: {}", path.display(), describe(&stats));
            if set.is_empty() {
                bail!("{}: no usable evaluation rows", path.display());
            }
            set
        }
        None => Vec::new(),
    };
    let info = lm.info().clone();
    let pad_id = tokenizer
        .pad_token_id()
        .or(info.pad_token_id)
        .or(tokenizer.eos_token_ids().first().copied())
        .unwrap_or(0);
    let meta = PeftMeta {
        base_model_name_or_path: Some(a.model.clone()),
        task_type: Some("CAUSAL_LM".to_string()),
    };
    let mut recipe = SftRecipe::new(lm, plan, meta, train_set, eval_set, pad_id, device)
        .with_eval_batch_size(a.batch_size)
        .with_seed(a.seed);
    recipe.set_gradient_checkpointing(a.gradient_checkpointing);

    let warmup = warmup_steps_from_ratio(a.max_steps, a.warmup_ratio);
    let schedule = match a.scheduler {
        Scheduler::Cosine => LrSchedule::cosine(a.lr, warmup, a.max_steps),
        Scheduler::Linear => LrSchedule::linear(a.lr, warmup, a.max_steps),
        Scheduler::Constant => LrSchedule {
            decay: clinstruct_train::Decay::Constant,
            ..LrSchedule::linear(a.lr, warmup, a.max_steps)
        },
    };
    let has_eval = a.eval_data.is_some();
    let eval_every = has_eval.then(|| a.eval_every.unwrap_or((a.max_steps / 10).max(1)));
    let mut cfg = TrainerConfig::new(&a.output, a.max_steps, schedule);
    cfg.batch_size = a.batch_size;
    cfg.grad_accum = a.grad_accum;
    cfg.optimizer = AdamWConfig {
        lr: a.lr,
        weight_decay: a.weight_decay,
        ..AdamWConfig::default()
    };
    cfg.max_grad_norm = (a.max_grad_norm > 0.0).then_some(a.max_grad_norm);
    cfg.seed = a.seed;
    cfg.log_every = a.log_every.max(1);
    cfg.eval_every = eval_every;
    cfg.save_every = Some(a.save_every.or(eval_every).unwrap_or(100));
    cfg.best = has_eval.then(|| BestMetric {
        name: "eval_loss".to_string(),
        higher_is_better: false,
    });
    cfg.patience = a.patience;
    cfg.progress = !a.no_progress;
    cfg.resume = a.resume;
    cfg.stop_after = a.stop_after;

    let summary = train(&mut recipe, &cfg)?;
    let report = json!({
        "output": a.output,
        "steps": summary.steps,
        "resumed_from": summary.resumed_from,
        "last_loss": summary.last_loss,
        "best_step": summary.best.map(|b| b.0),
        "best_eval_loss": summary.best.map(|b| b.1),
        "stopped_early": summary.stopped_early,
        "interrupted": summary.interrupted,
        "adapters": adapters,
        "trainable_parameters": trainable,
    });
    if a.json {
        super::print_json(&report)?;
    } else if summary.interrupted {
        eprintln!(
            "stopped after step {} (checkpoint in {}); continue with --resume",
            summary.steps,
            a.output.join("checkpoint").display()
        );
    } else {
        eprintln!(
            "done: {} steps, last loss {}, adapter in {}",
            summary.steps,
            summary
                .last_loss
                .map_or("n/a".to_string(), |l| format!("{l:.4}")),
            a.output.display()
        );
    }
    Ok(())
}

/// Files of a model directory that belong with merged weights.
const MODEL_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
];

fn run_merge(a: MergeArgs) -> Result<()> {
    let adapter = PeftAdapter::load(&a.adapter)
        .with_context(|| format!("{}: adapter", a.adapter.display()))?;
    let ckpt = match resolve_source(&a.model)? {
        LmSource::Safetensors(c) => c,
        LmSource::Gguf(p) => bail!(
            "{}: merging needs a safetensors base (a GGUF base keeps its quantized weights; \
             load it with the adapter instead)",
            p.display()
        ),
    };
    let control = AdapterControl::new(0);
    let scale = adapter.config.scale();
    let mut loras = Vec::new();
    for (path, (a_w, b_w)) in &adapter.weights {
        loras.push((
            path.clone(),
            Lora::from_weights(a_w.clone(), b_w.clone(), scale, 0.0, control.clone())?,
        ));
    }
    if a.output.exists() && std::fs::read_dir(&a.output)?.next().is_some() {
        bail!(
            "{}: exists and is not empty; choose a new directory",
            a.output.display()
        );
    }
    let parent = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".merge-")
        .tempdir_in(parent)
        .with_context(|| format!("{}: temporary directory", parent.display()))?;
    let written = export_merged(&ckpt.safetensors, &loras, tmp.path())?;
    for name in MODEL_FILES {
        let src = ckpt.dir.join(name);
        if src.is_file() {
            std::fs::copy(&src, tmp.path().join(name))
                .with_context(|| format!("{}", src.display()))?;
        }
    }
    if a.output.exists() {
        std::fs::remove_dir(&a.output)?;
    }
    let tmp = tmp.keep();
    std::fs::rename(&tmp, &a.output)
        .with_context(|| format!("{}: rename into place", a.output.display()))?;
    eprintln!(
        "merged {} adapters into {} weight file(s) in {}",
        loras.len(),
        written.len(),
        a.output.display()
    );
    Ok(())
}
