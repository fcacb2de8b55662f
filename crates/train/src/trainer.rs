//! The training loop both tasks share (nanoGPT-short): sample a batch, forward, backward,
//! accumulate, clip, step, log; evaluate every N steps, keep the best, stop early; checkpoint
//! atomically; resume bit-identically.
//!
//! A task plugs in as a [`Recipe`]: it owns the model and the data and knows how to turn a
//! batch of example indices into a loss, how to evaluate, and how to export its trained
//! weights (a PEFT adapter, classification heads). The loop owns everything a resumed run needs
//! to continue exactly: trainable tensors, optimiser moments, the schedule position, the data
//! order and position, and the recipe's dropout stream.
//!
//! Output directory:
//! - `checkpoint/`: the latest state (`trainer_state.json`, `trainable.safetensors`,
//!   `optimizer.safetensors`, and the recipe's export), replaced atomically;
//! - `best/`: the recipe's export at the best evaluation (with `metrics.json`);
//! - the final export at the top level (the best one when keep-best is on);
//! - `metrics.jsonl` (one record per logged step and per evaluation) and `training_curve.svg`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::curve;
use crate::optim::{AdamW, AdamWConfig, GradAccumulator, clip_coefficient, grad_norm};
use crate::sampler::{EpochSampler, SamplerState};
use crate::schedule::LrSchedule;

/// One micro-batch's loss (mean over its targets) and what it processed, for throughput.
pub struct BatchLoss {
    pub loss: Tensor,
    pub tokens: usize,
}

/// A task's side of training.
pub trait Recipe {
    /// Training examples the sampler draws indices from.
    fn train_len(&self) -> usize;
    /// The variables the optimiser updates, under stable names (they key the checkpoint).
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Dropout on or off.
    fn set_training(&mut self, training: bool);
    /// The loss of one micro-batch of example indices.
    fn loss(&mut self, batch: &[usize]) -> Result<BatchLoss>;
    /// Gradients of `loss` (recipes with gradient checkpointing merge their side store).
    fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        loss.backward()
    }
    /// Evaluation metrics (empty when the recipe has no evaluation data).
    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>>;
    /// Writes the trained weights in the task's format (files directly in `dir`).
    fn export(&self, dir: &Path) -> Result<()>;
    /// The position of the recipe's random stream (dropout), saved with checkpoints.
    fn rng_state(&self) -> u64;
    fn set_rng_state(&mut self, state: u64);
}

/// Which evaluation metric decides "best", and in which direction.
#[derive(Debug, Clone, PartialEq)]
pub struct BestMetric {
    pub name: String,
    pub higher_is_better: bool,
}

impl BestMetric {
    fn improves(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => value.is_finite(),
            Some(b) if self.higher_is_better => value > b,
            Some(b) => value < b,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TrainerConfig {
    pub output_dir: PathBuf,
    pub max_steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    pub optimizer: AdamWConfig,
    pub schedule: LrSchedule,
    /// `clip_grad_norm_` threshold; `None` does not clip.
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub shuffle: bool,
    pub log_every: usize,
    pub eval_every: Option<usize>,
    pub save_every: Option<usize>,
    /// Keep the best evaluation's export in `best/` and make it the final one.
    pub best: Option<BestMetric>,
    /// Stop after this many evaluations without improvement of `best`.
    pub patience: Option<usize>,
    pub progress: bool,
    pub resume: bool,
    /// Stop (as if killed, without the final export) after this many optimiser steps of this
    /// process: for tests and for splitting a run across scheduled jobs.
    pub stop_after: Option<usize>,
}

impl TrainerConfig {
    pub fn new(output_dir: impl Into<PathBuf>, max_steps: usize, schedule: LrSchedule) -> Self {
        TrainerConfig {
            output_dir: output_dir.into(),
            max_steps,
            batch_size: 1,
            grad_accum: 1,
            optimizer: AdamWConfig {
                lr: schedule.base_lr,
                ..AdamWConfig::default()
            },
            schedule,
            max_grad_norm: Some(1.0),
            seed: 42,
            shuffle: true,
            log_every: 1,
            eval_every: None,
            save_every: None,
            best: None,
            patience: None,
            progress: true,
            resume: false,
            stop_after: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Optimiser steps completed in total (including those before a resume).
    pub steps: usize,
    /// The step a resumed run continued from.
    pub resumed_from: Option<usize>,
    /// Mean training loss of the last logged window.
    pub last_loss: Option<f64>,
    /// `(step, value)` of the best evaluation.
    pub best: Option<(usize, f64)>,
    pub stopped_early: bool,
    /// `stop_after` ended the run before `max_steps`.
    pub interrupted: bool,
}

/// Everything besides tensors that a checkpoint must restore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct TrainerState {
    step: usize,
    sampler: SamplerState,
    rng_state: u64,
    best_value: Option<f64>,
    best_step: Option<usize>,
    evals_without_improvement: usize,
    /// Settings that must not change across a resume (they change the batches or the maths).
    fingerprint: BTreeMap<String, Value>,
}

const CHECKPOINT: &str = "checkpoint";
const STATE_FILE: &str = "trainer_state.json";
const TRAINABLE_FILE: &str = "trainable.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const LOG_FILE: &str = "metrics.jsonl";
const CURVE_FILE: &str = "training_curve.svg";

fn io_err(path: &Path, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::msg(format!("{}: {e}", path.display()))
}

fn fingerprint(cfg: &TrainerConfig, train_len: usize) -> BTreeMap<String, Value> {
    let mut f = BTreeMap::new();
    f.insert("batch_size".into(), json!(cfg.batch_size));
    f.insert("grad_accum".into(), json!(cfg.grad_accum));
    f.insert("seed".into(), json!(cfg.seed));
    f.insert("shuffle".into(), json!(cfg.shuffle));
    f.insert("train_examples".into(), json!(train_len));
    f.insert("lr".into(), json!(cfg.schedule.base_lr));
    f.insert("warmup_steps".into(), json!(cfg.schedule.warmup_steps));
    f.insert("total_steps".into(), json!(cfg.schedule.total_steps));
    f.insert("decay".into(), json!(format!("{:?}", cfg.schedule.decay)));
    f.insert("weight_decay".into(), json!(cfg.optimizer.weight_decay));
    f.insert("max_grad_norm".into(), json!(cfg.max_grad_norm));
    f
}

/// Runs (or resumes) training.
pub fn train(recipe: &mut dyn Recipe, cfg: &TrainerConfig) -> Result<TrainSummary> {
    if cfg.max_steps == 0 {
        candle_core::bail!("max_steps must be at least 1");
    }
    if recipe.train_len() == 0 {
        candle_core::bail!("no training examples");
    }
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let vars = recipe.trainable();
    if vars.is_empty() {
        candle_core::bail!("the model has no trainable parameters");
    }
    let mut opt = AdamW::new(vars.clone(), cfg.optimizer)?;
    let plain_vars: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut sampler = EpochSampler::new(recipe.train_len(), cfg.seed, cfg.shuffle);
    let fp = fingerprint(cfg, recipe.train_len());

    let mut state = TrainerState {
        step: 0,
        sampler: sampler.state(),
        rng_state: recipe.rng_state(),
        best_value: None,
        best_step: None,
        evals_without_improvement: 0,
        fingerprint: fp.clone(),
    };
    let mut resumed_from = None;
    if cfg.resume
        && let Some(dir) = existing_checkpoint(out)
    {
        state = load_checkpoint(&dir, &vars, &mut opt)?;
        check_fingerprint(&dir, &state.fingerprint, &fp)?;
        sampler.restore(state.sampler);
        recipe.set_rng_state(state.rng_state);
        resumed_from = Some(state.step);
        truncate_log(&out.join(LOG_FILE), state.step)?;
    } else {
        if let Some(dir) = existing_checkpoint(out) {
            candle_core::bail!(
                "{}: a checkpoint of an earlier run is there; resume it, or use a new output \
                 directory",
                dir.display()
            );
        }
        // A fresh run starts a fresh log.
        let log = out.join(LOG_FILE);
        if log.exists() {
            std::fs::remove_file(&log).map_err(|e| io_err(&log, e))?;
        }
    }
    let mut log = Log::open(&out.join(LOG_FILE))?;

    let bar = progress_bar(cfg, state.step);
    let mut summary = TrainSummary {
        steps: state.step,
        resumed_from,
        last_loss: None,
        best: state.best_step.zip(state.best_value),
        stopped_early: false,
        interrupted: false,
    };
    let mut window = Window::default();
    let started = Instant::now();
    let mut steps_here = 0usize;

    while state.step < cfg.max_steps {
        let step_start = Instant::now();
        recipe.set_training(true);
        let lr = cfg.schedule.lr(state.step);
        opt.set_learning_rate(lr);
        let mut acc = GradAccumulator::new(plain_vars.clone());
        let mut loss_sum = 0.0;
        let mut tokens = 0usize;
        for _ in 0..cfg.grad_accum.max(1) {
            let batch = sampler.next_batch(cfg.batch_size);
            let BatchLoss { loss, tokens: t } = recipe.loss(&batch)?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                candle_core::bail!("step {}: the loss is {value}", state.step);
            }
            loss_sum += value;
            tokens += t;
            let scaled = (loss / cfg.grad_accum.max(1) as f64)?;
            acc.add(&recipe.backward(&scaled)?)?;
        }
        let grads = acc.take();
        let norm = grad_norm(&grads, &plain_vars)?;
        let scale = cfg.max_grad_norm.map_or(1.0, |m| clip_coefficient(norm, m));
        opt.step_scaled(&grads, scale)?;
        state.step += 1;
        steps_here += 1;

        let loss = loss_sum / cfg.grad_accum.max(1) as f64;
        window.add(loss, tokens, step_start.elapsed().as_secs_f64());
        bar.set_position(state.step as u64);
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {:.0} tok/s",
            window.tokens_per_s()
        ));
        if state.step.is_multiple_of(cfg.log_every.max(1)) || state.step == cfg.max_steps {
            let mean = window.mean_loss();
            summary.last_loss = Some(mean);
            log.write(&json!({
                "step": state.step,
                "epoch": round6(sampler.epoch_progress()),
                "loss": mean,
                "lr": lr,
                "grad_norm": norm,
                "tokens": window.tokens,
                "tokens_per_s": round6(window.tokens_per_s()),
                "elapsed_s": round6(started.elapsed().as_secs_f64()),
            }))?;
            window = Window::default();
        }

        let mut stop = false;
        let eval_due = cfg
            .eval_every
            .is_some_and(|n| state.step.is_multiple_of(n.max(1)))
            || (cfg.eval_every.is_some() && state.step == cfg.max_steps);
        if eval_due {
            recipe.set_training(false);
            let metrics = recipe.evaluate()?;
            log.write(&json!({ "step": state.step, "eval": metrics }))?;
            bar.println(format!("step {}: {}", state.step, format_metrics(&metrics)));
            if let Some(best) = &cfg.best {
                let value = *metrics.get(&best.name).ok_or_else(|| {
                    candle_core::Error::msg(format!(
                        "evaluation has no metric {} (it has: {})",
                        best.name,
                        metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?;
                if best.improves(value, state.best_value) {
                    state.best_value = Some(value);
                    state.best_step = Some(state.step);
                    state.evals_without_improvement = 0;
                    write_dir_atomic(&out.join("best"), |dir| {
                        recipe.export(dir)?;
                        let m = json!({ "step": state.step, "metrics": metrics });
                        write_json(&dir.join("metrics.json"), &m)
                    })?;
                    summary.best = Some((state.step, value));
                } else {
                    state.evals_without_improvement += 1;
                    if cfg
                        .patience
                        .is_some_and(|p| state.evals_without_improvement >= p)
                    {
                        stop = true;
                        summary.stopped_early = true;
                        bar.println(format!(
                            "early stop at step {}: {} evaluations without improvement",
                            state.step, state.evals_without_improvement
                        ));
                    }
                }
            }
        }

        let last = state.step == cfg.max_steps || stop;
        if last
            || cfg
                .save_every
                .is_some_and(|n| state.step.is_multiple_of(n.max(1)))
        {
            state.sampler = sampler.state();
            state.rng_state = recipe.rng_state();
            save_checkpoint(out, &state, &vars, &opt, recipe)?;
        }
        if stop {
            break;
        }
        if cfg.stop_after.is_some_and(|n| steps_here >= n) && state.step < cfg.max_steps {
            summary.steps = state.step;
            summary.interrupted = true;
            bar.abandon();
            return Ok(summary);
        }
    }
    bar.finish();
    summary.steps = state.step;

    // The final export: the best evaluation's when keep-best is on, else the last weights.
    let best_dir = out.join("best");
    if cfg.best.is_some() && best_dir.join("metrics.json").is_file() {
        copy_dir_files(&best_dir, out)?;
    } else {
        write_files_atomic(out, |dir| recipe.export(dir))?;
    }
    let records = read_log(&out.join(LOG_FILE))?;
    let svg = curve::render(&records, cfg.best.as_ref().map(|b| b.name.as_str()));
    let curve_path = out.join(CURVE_FILE);
    clinstruct_data::atomic::write_atomic(&curve_path, |w| w.write_all(svg.as_bytes()))
        .map_err(|e| io_err(&curve_path, e))?;
    Ok(summary)
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn format_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn progress_bar(cfg: &TrainerConfig, position: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(cfg.max_steps as u64),
        if cfg.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_position(position as u64);
    bar
}

/// Loss and throughput since the last log record.
#[derive(Default)]
struct Window {
    loss_sum: f64,
    steps: usize,
    tokens: usize,
    seconds: f64,
}

impl Window {
    fn add(&mut self, loss: f64, tokens: usize, seconds: f64) {
        self.loss_sum += loss;
        self.steps += 1;
        self.tokens += tokens;
        self.seconds += seconds;
    }
    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.steps.max(1) as f64
    }
    fn tokens_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The JSONL metrics log, flushed per record.
struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    fn open(path: &Path) -> Result<Log> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        Ok(Log {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, record: &Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| io_err(&self.path, e))
    }
}

/// Every record of the log (a line cut short by a crash is skipped).
pub fn read_log(path: &Path) -> Result<Vec<Value>> {
    let Ok(file) = File::open(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| io_err(path, e))?;
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Drops records after `step` (written after the checkpoint a resumed run continues from).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let records = read_log(path)?;
    let kept: Vec<&Value> = records
        .iter()
        .filter(|r| r["step"].as_u64().is_some_and(|s| s as usize <= step))
        .collect();
    clinstruct_data::atomic::write_atomic(path, |w| {
        for r in kept {
            writeln!(w, "{r}")?;
        }
        Ok(())
    })
    .map_err(|e| io_err(path, e))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io_err(path, e))?;
    std::fs::write(path, text).map_err(|e| io_err(path, e))
}

/// The checkpoint to resume from: `checkpoint/`, or the previous one when a crash hit between
/// the two renames of [`write_dir_atomic`].
fn existing_checkpoint(out: &Path) -> Option<PathBuf> {
    [CHECKPOINT, ".checkpoint.old"]
        .iter()
        .map(|n| out.join(n))
        .find(|d| d.join(STATE_FILE).is_file())
}

fn save_checkpoint(
    out: &Path,
    state: &TrainerState,
    vars: &[(String, Var)],
    opt: &AdamW,
    recipe: &dyn Recipe,
) -> Result<()> {
    write_dir_atomic(&out.join(CHECKPOINT), |dir| {
        let tensors: std::collections::HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, dir.join(TRAINABLE_FILE))?;
        opt.save(&dir.join(OPTIMIZER_FILE))?;
        recipe.export(dir)?;
        let state_json = serde_json::to_value(state).map_err(|e| io_err(dir, e))?;
        write_json(&dir.join(STATE_FILE), &state_json)
    })
}

fn load_checkpoint(dir: &Path, vars: &[(String, Var)], opt: &mut AdamW) -> Result<TrainerState> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| io_err(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| io_err(&state_path, e))?;
    let trainable_path = dir.join(TRAINABLE_FILE);
    let saved = candle_core::safetensors::load(&trainable_path, &candle_core::Device::Cpu)
        .map_err(|e| io_err(&trainable_path, e))?;
    for (name, var) in vars {
        let t = saved.get(name).ok_or_else(|| {
            io_err(
                &trainable_path,
                format!("no tensor {name}: the checkpoint is from a different model or adapter"),
            )
        })?;
        if t.shape() != var.shape() {
            return Err(io_err(
                &trainable_path,
                format!(
                    "{name} has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    let opt_path = dir.join(OPTIMIZER_FILE);
    opt.load(&opt_path).map_err(|e| io_err(&opt_path, e))?;
    Ok(state)
}

fn check_fingerprint(
    dir: &Path,
    saved: &BTreeMap<String, Value>,
    now: &BTreeMap<String, Value>,
) -> Result<()> {
    for (k, v) in now {
        if let Some(s) = saved.get(k)
            && s != v
        {
            candle_core::bail!(
                "{}: cannot resume, {k} was {s} and is now {v} (use the same settings, or a new \
                 output directory)",
                dir.join(STATE_FILE).display()
            );
        }
    }
    Ok(())
}

/// Writes a directory whole or not at all: into a temporary sibling, synced, then swapped in
/// with two renames (`dir` → `.<name>.old`, temporary → `dir`).
fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .ok_or_else(|| io_err(dir, "no directory name"))?
        .to_string_lossy()
        .to_string();
    let tmp = parent.join(format!(".{name}.tmp"));
    let old = parent.join(format!(".{name}.old"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    fill(&tmp)?;
    sync_dir_files(&tmp)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| io_err(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io_err(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
    }
    Ok(())
}

/// Writes files into an existing directory, each whole or not at all: `fill` writes into a
/// temporary directory, then every file is renamed into `dir`.
fn write_files_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.join(".export.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    fill(&tmp)?;
    sync_dir_files(&tmp)?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| io_err(&tmp, e))? {
        let entry = entry.map_err(|e| io_err(&tmp, e))?;
        let target = dir.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(|e| io_err(&target, e))?;
    }
    std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))
}

fn copy_dir_files(from: &Path, to: &Path) -> Result<()> {
    write_files_atomic(to, |tmp| {
        for entry in std::fs::read_dir(from).map_err(|e| io_err(from, e))? {
            let entry = entry.map_err(|e| io_err(from, e))?;
            if entry.path().is_file() {
                let target = tmp.join(entry.file_name());
                std::fs::copy(entry.path(), &target).map_err(|e| io_err(&target, e))?;
            }
        }
        Ok(())
    })
}

fn sync_dir_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if path.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err(&path, e))?;
        }
    }
    Ok(())
}
