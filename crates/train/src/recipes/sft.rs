//! Supervised fine-tuning of a decoder with LoRA adapters (the engine behind `clinstruct lora
//! train`; the SOAP recipe is a preset of it).
//!
//! Data: JSONL (or CSV) rows of `{"prompt", "completion"}` — the loss covers the completion
//! only — or `{"text"}` — the loss covers every token. With a chat format the prompt becomes
//! the user turn of the model's chat template and the completion the assistant turn, with the
//! template's own end-of-turn tokens; otherwise prompt and completion are tokenised as given
//! (BOS before the prompt, EOS after the completion).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use clinstruct_data::table::Table;
use clinstruct_models::{AnyCausalLm, ChatMessage, Tokenizer};
use clinstruct_nn::checkpoint::Checkpointed;
use clinstruct_nn::dropout;
use clinstruct_nn::lora::{LinearPlan, PeftMeta};

use crate::loss::{IGNORE_INDEX, causal_lm_loss_on_hidden, completion_labels, shift_labels};
use crate::trainer::{BatchLoss, Recipe};

/// How a prompt/completion row becomes tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptFormat {
    /// Prompt and completion as written (BOS + prompt, completion + EOS).
    Raw,
    /// The model's chat template: an optional system turn, the prompt as the user turn, the
    /// completion as the assistant turn.
    Chat { system: Option<String> },
}

/// One tokenised example: the loss covers `ids[prompt_len..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// What reading a file did (counts only: logs never show text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SftStats {
    pub rows: usize,
    pub kept: usize,
    pub truncated: usize,
    /// Rows whose prompt alone filled `max_length`, so no completion token was left to learn.
    pub dropped_no_completion: usize,
    pub dropped_empty: usize,
    pub tokens: usize,
    pub completion_tokens: usize,
}

/// Reads and tokenises an SFT file. Errors name the file and line.
pub fn read_sft(
    path: &Path,
    tok: &Tokenizer,
    format: &PromptFormat,
    max_length: usize,
) -> Result<(Vec<SftExample>, SftStats)> {
    let err = |msg: String| candle_core::Error::msg(format!("{}: {msg}", path.display()));
    let table = Table::read(path).map_err(|e| candle_core::Error::msg(e.to_string()))?;
    let prompt_col = table.column_index("prompt");
    let completion_col = table.column_index("completion");
    let text_col = table.column_index("text");
    let mode_pc = prompt_col.is_some() || completion_col.is_some();
    if mode_pc && (prompt_col.is_none() || completion_col.is_none()) {
        return Err(err(format!(
            "rows need both \"prompt\" and \"completion\" (found fields: {})",
            table.columns.join(", ")
        )));
    }
    if !mode_pc && text_col.is_none() {
        return Err(err(format!(
            "rows need \"prompt\" and \"completion\", or \"text\" (found fields: {})",
            table.columns.join(", ")
        )));
    }
    let eos = tok.eos_token_ids().first().copied();
    let mut stats = SftStats::default();
    let mut out = Vec::new();
    for row in &table.rows {
        stats.rows += 1;
        let line_err = |msg: String| err(format!("line {}: {msg}", row.line));
        let (prompt_ids, mut completion_ids) = if mode_pc {
            let (Some(prompt), Some(completion)) = (
                row.get(prompt_col.unwrap()),
                row.get(completion_col.unwrap()),
            ) else {
                return Err(line_err(
                    "\"prompt\" and \"completion\" must be strings".into(),
                ));
            };
            if completion.trim().is_empty() {
                stats.dropped_empty += 1;
                continue;
            }
            encode_pair(tok, format, prompt, completion).map_err(|e| line_err(e.to_string()))?
        } else {
            let Some(text) = row.get(text_col.unwrap()) else {
                return Err(line_err("\"text\" must be a string".into()));
            };
            if text.trim().is_empty() {
                stats.dropped_empty += 1;
                continue;
            }
            let mut ids = tok
                .encode(text, true)
                .map_err(|e| line_err(e.to_string()))?;
            ids.extend(eos);
            (Vec::new(), ids)
        };
        if format == &PromptFormat::Raw && mode_pc {
            completion_ids.extend(eos);
        }
        let mut ids = prompt_ids;
        let prompt_len = ids.len();
        ids.extend(completion_ids);
        if ids.len() > max_length {
            stats.truncated += 1;
            ids.truncate(max_length);
        }
        // A completion needs a predecessor to be predicted from: with no prompt the first
        // token is not a target.
        let targets = ids.len().saturating_sub(prompt_len.max(1));
        if targets == 0 {
            stats.dropped_no_completion += 1;
            continue;
        }
        stats.kept += 1;
        stats.tokens += ids.len();
        stats.completion_tokens += targets;
        out.push(SftExample { ids, prompt_len });
    }
    Ok((out, stats))
}

fn encode_pair(
    tok: &Tokenizer,
    format: &PromptFormat,
    prompt: &str,
    completion: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let msg = |e: String| candle_core::Error::msg(e);
    match format {
        PromptFormat::Raw => Ok((
            tok.encode(prompt, true).map_err(|e| msg(e.to_string()))?,
            tok.encode(completion, false)
                .map_err(|e| msg(e.to_string()))?,
        )),
        PromptFormat::Chat { system } => {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(ChatMessage::system(s.clone()));
            }
            messages.push(ChatMessage::user(prompt.to_string()));
            let prompt_text = tok
                .apply_chat_template(&messages, true)
                .map_err(|e| msg(e.to_string()))?;
            messages.push(ChatMessage::new("assistant", completion.to_string()));
            let full = tok
                .apply_chat_template(&messages, false)
                .map_err(|e| msg(e.to_string()))?;
            let Some(rest) = full.strip_prefix(&prompt_text) else {
                return Err(msg(
                    "the chat template renders the conversation with a different prefix than the \
                     prompt alone; use the raw prompt format"
                        .into(),
                ));
            };
            // The template writes BOS itself.
            Ok((
                tok.encode(&prompt_text, false)
                    .map_err(|e| msg(e.to_string()))?,
                tok.encode(rest, false).map_err(|e| msg(e.to_string()))?,
            ))
        }
    }
}

/// A right-padded batch: ids, attention mask and completion-only labels, `(b, len)` row-major.
pub struct SftBatch {
    pub input_ids: Tensor,
    /// `None` when no row is padded.
    pub attention_mask: Option<Tensor>,
    pub position_ids: Tensor,
    pub labels: Vec<i64>,
    pub tokens: usize,
}

pub fn collate(examples: &[&SftExample], pad_id: u32, device: &Device) -> Result<SftBatch> {
    let b = examples.len();
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; b * len];
    let mut mask = vec![0u32; b * len];
    let mut labels = Vec::with_capacity(b * len);
    let mut tokens = 0;
    for (i, e) in examples.iter().enumerate() {
        ids[i * len..i * len + e.ids.len()].copy_from_slice(&e.ids);
        mask[i * len..i * len + e.ids.len()].fill(1);
        tokens += e.ids.len();
        let row_mask: Vec<u8> = mask[i * len..(i + 1) * len]
            .iter()
            .map(|&m| m as u8)
            .collect();
        labels.extend(completion_labels(
            &ids[i * len..(i + 1) * len],
            e.prompt_len,
            &row_mask,
        ));
    }
    let positions: Vec<u32> = (0..b).flat_map(|_| 0..len as u32).collect();
    Ok(SftBatch {
        input_ids: Tensor::from_vec(ids, (b, len), device)?,
        attention_mask: if tokens == b * len {
            None
        } else {
            Some(Tensor::from_vec(mask, (b, len), device)?)
        },
        position_ids: Tensor::from_vec(positions, (b, len), device)?,
        labels,
        tokens,
    })
}

/// LoRA supervised fine-tuning of a decoder.
pub struct SftRecipe {
    model: AnyCausalLm,
    plan: Arc<LinearPlan>,
    meta: PeftMeta,
    train: Vec<SftExample>,
    eval: Vec<SftExample>,
    eval_batch_size: usize,
    pad_id: u32,
    device: Device,
    seed: u64,
    /// Training micro-batches run so far: each runs in its own dropout scope seeded from it,
    /// so a resumed run draws the masks the interrupted one would have (also when
    /// checkpointed layers replay them).
    batches_run: u64,
}

impl SftRecipe {
    /// `plan` must be the hook the model's linear layers were loaded through.
    pub fn new(
        model: AnyCausalLm,
        plan: Arc<LinearPlan>,
        meta: PeftMeta,
        train: Vec<SftExample>,
        eval: Vec<SftExample>,
        pad_id: u32,
        device: Device,
    ) -> SftRecipe {
        SftRecipe {
            model,
            plan,
            meta,
            train,
            eval,
            eval_batch_size: 4,
            pad_id,
            device,
            seed: 0,
            batches_run: 0,
        }
    }

    /// Seeds the dropout masks.
    pub fn with_seed(mut self, seed: u64) -> SftRecipe {
        self.seed = seed;
        self
    }

    pub fn with_eval_batch_size(mut self, n: usize) -> SftRecipe {
        self.eval_batch_size = n.max(1);
        self
    }

    pub fn plan(&self) -> &Arc<LinearPlan> {
        &self.plan
    }

    /// Recompute each decoder layer in the backward pass instead of keeping its activations.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.model.set_gradient_checkpointing(on);
    }

    fn batch_loss(&self, examples: &[&SftExample]) -> Result<(Tensor, SftBatch)> {
        let batch = collate(examples, self.pad_id, &self.device)?;
        let lm = self.model.as_decoder();
        let hidden = lm.hidden_states(
            &batch.input_ids,
            batch.attention_mask.as_ref(),
            &batch.position_ids,
            None,
        )?;
        // Vocabulary-sized logits for the completion positions only.
        let loss = causal_lm_loss_on_hidden(&hidden, &batch.labels, lm.lm_head())?;
        Ok((loss, batch))
    }
}

impl Recipe for SftRecipe {
    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn trainable(&self) -> Vec<(String, Var)> {
        self.plan.trainable_vars()
    }

    fn set_training(&mut self, training: bool) {
        self.plan.set_training(training);
    }

    fn loss(&mut self, batch: &[usize]) -> Result<BatchLoss> {
        let examples: Vec<&SftExample> = batch.iter().map(|&i| &self.train[i]).collect();
        let scope = self.seed ^ self.batches_run.wrapping_mul(0xD1B5_4A32_D192_ED03);
        self.batches_run += 1;
        let (loss, batch) = dropout::scoped(scope, || self.batch_loss(&examples))?;
        Ok(BatchLoss {
            loss,
            tokens: batch.tokens,
        })
    }

    /// Token-weighted mean loss over the evaluation set, and its perplexity.
    fn evaluate(&mut self) -> Result<BTreeMap<String, f64>> {
        let mut m = BTreeMap::new();
        if self.eval.is_empty() {
            return Ok(m);
        }
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in self.eval.chunks(self.eval_batch_size) {
            let examples: Vec<&SftExample> = chunk.iter().collect();
            let (loss, batch) = self.batch_loss(&examples)?;
            let (b, l) = batch.input_ids.dims2()?;
            let targets = shift_labels(&batch.labels, b, l)?
                .iter()
                .filter(|&&t| t != IGNORE_INDEX)
                .count();
            sum += loss.detach().to_scalar::<f32>()? as f64 * targets as f64;
            count += targets;
        }
        let mean = sum / count.max(1) as f64;
        m.insert("eval_loss".to_string(), mean);
        m.insert("eval_perplexity".to_string(), mean.exp());
        Ok(m)
    }

    fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.model.gradients().backward(loss)
    }

    fn export(&self, dir: &Path) -> Result<()> {
        self.plan.save_peft(dir, &self.meta)
    }

    fn rng_state(&self) -> u64 {
        self.batches_run
    }

    fn set_rng_state(&mut self, state: u64) {
        self.batches_run = state;
    }
}
