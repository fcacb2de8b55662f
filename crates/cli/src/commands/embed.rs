//! `clinstruct embed`: encoder embeddings for JSONL inputs.
//!
//! Inputs: `{"id", "text"}` lines, tokenised with the checkpoint's `tokenizer.json` (its
//! template adds `[CLS]`/`[SEP]`; longer texts are truncated to `--max-length`, keeping the
//! template's special tokens), or `{"id", "input_ids"}` lines used as given (longer ones are an
//! error). Output: a safetensors file with one f32 tensor per id, named by the id — `(hidden,)`
//! for `cls` and `mean` pooling, `(len, hidden)` for `all` — with metadata `ids` (JSON list, input
//! order), `pooling`, `architecture` and `hidden_size`. Logs carry counts and ids, never text.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Tensor};
use clap::{Args, ValueEnum};
use tokenizers::{Tokenizer, TruncationParams};

use super::model::{
    Backbone, Content, DTypeArg, InputKind, read_inputs, run_batches, write_output,
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolingArg {
    /// The first token's state ([CLS]).
    Cls,
    /// Mean over the sequence's tokens (special tokens included, padding excluded).
    Mean,
    /// Every token's state: `(len, hidden)` per id.
    All,
}

impl PoolingArg {
    fn name(self) -> &'static str {
        match self {
            PoolingArg::Cls => "cls",
            PoolingArg::Mean => "mean",
            PoolingArg::All => "all",
        }
    }
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Checkpoint: a directory with config.json, safetensors and (for text) tokenizer.json.
    #[arg(long)]
    pub model: String,
    /// JSONL with `{"id", "text"}` or `{"id", "input_ids"}` per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Output safetensors: one f32 tensor per id.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "cls")]
    pub pooling: PoolingArg,
    /// Longest sequence in tokens, special tokens included (default: the model's maximum).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Sequences per forward pass; inputs are grouped by length to limit padding.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Compute dtype (weights are converted on load; outputs are always f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let start = Instant::now();
    let backbone = Backbone::load(&args.model, args.dtype.dtype())?;
    if let Backbone::Decoder(_, arch) = &backbone {
        bail!(
            "{}: {arch} is a decoder; `embed` pools encoder states (use `model forward` for logits)",
            args.model
        );
    }
    let max_len = args.max_length.unwrap_or(backbone.max_positions());
    if max_len < 2 {
        bail!("--max-length must be at least 2 (got {max_len})");
    }
    let inputs = read_inputs(&args.input, InputKind::TextOrIds)?;
    let tokenizer = if inputs.iter().any(|i| matches!(i.content, Content::Text(_))) {
        Some(load_tokenizer(&args.model, max_len)?)
    } else {
        None
    };
    let mut truncated = Vec::new();
    let mut seqs = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let ids = match &input.content {
            Content::Ids(ids) => ids.clone(),
            Content::Text(text) => {
                let tok = tokenizer.as_ref().expect("loaded for text inputs");
                let enc = tok.encode(text.as_str(), true).map_err(|e| {
                    anyhow!(
                        "{}:{} (id {}): tokenising failed: {e}",
                        args.input.display(),
                        input.line,
                        input.id
                    )
                })?;
                if !enc.get_overflowing().is_empty() {
                    truncated.push(input.id.as_str());
                }
                enc.get_ids().to_vec()
            }
        };
        seqs.push(backbone.check_ids(&args.input, input, &ids, Some(max_len))?);
    }
    if !truncated.is_empty() {
        eprintln!(
            "embed: {} inputs truncated to {max_len} tokens: {}",
            truncated.len(),
            truncated.join(", ")
        );
    }
    let mut outputs: Vec<Option<Tensor>> = vec![None; seqs.len()];
    let pooling = args.pooling;
    let stats = run_batches(&backbone, &seqs, args.batch_size, |i, h| {
        let h = h.to_dtype(DType::F32)?;
        outputs[i] = Some(match pooling {
            PoolingArg::Cls => h.get(0)?,
            PoolingArg::Mean => h.mean(0)?,
            PoolingArg::All => h,
        });
        Ok(())
    })?;
    let named = inputs
        .iter()
        .zip(outputs)
        .map(|(i, t)| (i.id.clone(), t.expect("every input ran")))
        .collect();
    write_output(
        &args.output,
        named,
        &backbone,
        &[("pooling", pooling.name().to_string())],
    )?;
    eprintln!(
        "embed: {} inputs, {} tokens, {} batches, pooling {}, {:.2} s → {}",
        seqs.len(),
        stats.tokens,
        stats.batches,
        pooling.name(),
        start.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

fn load_tokenizer(model: &str, max_len: usize) -> Result<Tokenizer> {
    let ckpt = clinstruct_models::Checkpoint::resolve(model)?;
    let path = ckpt.tokenizer_json.ok_or_else(|| {
        anyhow!(
            "{}: no tokenizer.json (text inputs need one; give input_ids instead)",
            ckpt.dir.display()
        )
    })?;
    let mut tok = Tokenizer::from_file(&path)
        .map_err(|e| anyhow!("{}: cannot read tokenizer: {e}", path.display()))?;
    // The file's own padding would pad every text to its rule; batches are padded here.
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| anyhow!("{}: {e}", path.display()))
    .context("setting truncation")?;
    Ok(tok)
}
