//! `clinstruct model …`: run a checkpoint directly. `model forward` dumps the last hidden states
//! (encoders) or logits (decoders) for given token ids, so anyone can compare clinstruct with
//! another implementation on the same ids.
//!
//! [`Backbone`] is the one place that maps a checkpoint's architecture to our model code; the
//! embedding command uses it too (encoders only).
//!
//! Output format (shared with `clinstruct embed`): a safetensors file with one f32 tensor per
//! input, named by its id (`(len, hidden)`, or `(len, vocab)` for decoders), and metadata `ids`
//! (the ids in input order, a JSON list), `architecture` and `hidden_size` (the row width).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use clinstruct_models::modernbert::{self, ModernBert};
use clinstruct_models::{AnyCausalLm, CausalLm, Checkpoint, SUPPORTED_ARCHITECTURES};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Last hidden states (encoders) or logits (decoders) for given token ids
    /// (`{"id", "input_ids"}` JSONL lines), for parity checks against other implementations.
    Forward(ForwardArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

#[derive(Args)]
pub struct ForwardArgs {
    /// Checkpoint: a directory with config.json and safetensors, or a hub id in the local cache.
    #[arg(long)]
    pub model: String,
    /// JSONL with one `{"id": ..., "input_ids": [...]}` per line.
    #[arg(long)]
    pub input_ids: PathBuf,
    /// Output safetensors: one `(len, hidden)` f32 tensor per id.
    #[arg(long)]
    pub output: PathBuf,
    /// Sequences per forward pass (right-padded; padding does not change the results).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Compute dtype (weights are converted on load; outputs are always f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Forward(args) => forward(args),
    }
}

fn forward(args: ForwardArgs) -> Result<()> {
    let start = Instant::now();
    let backbone = Backbone::load(&args.model, args.dtype.dtype())?;
    let inputs = read_inputs(&args.input_ids, InputKind::IdsOnly)?;
    let seqs = inputs
        .iter()
        .map(|i| match &i.content {
            Content::Ids(ids) => backbone.check_ids(&args.input_ids, i, ids, None),
            Content::Text(_) => unreachable!("rejected by read_inputs"),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut outputs: Vec<Option<Tensor>> = vec![None; seqs.len()];
    let stats = run_batches(&backbone, &seqs, args.batch_size, |i, h| {
        outputs[i] = Some(h.to_dtype(DType::F32)?);
        Ok(())
    })?;
    let named = inputs
        .iter()
        .zip(outputs)
        .map(|(i, t)| (i.id.clone(), t.expect("every input ran")))
        .collect();
    write_output(&args.output, named, &backbone, &[])?;
    eprintln!(
        "model forward: {} inputs, {} tokens, {} batches, {:.2} s → {}",
        seqs.len(),
        stats.tokens,
        stats.batches,
        start.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

/// The encoder or decoder a checkpoint holds, chosen by its architecture. Encoders give last
/// hidden states, decoders logits.
pub enum Backbone {
    ModernBert(Box<ModernBert>),
    Decoder(Box<AnyCausalLm>, String),
}

/// Every architecture [`Backbone::load`] knows.
pub fn supported_architectures() -> Vec<&'static str> {
    let mut all = modernbert::ARCHITECTURES.to_vec();
    all.extend_from_slice(SUPPORTED_ARCHITECTURES);
    all
}

impl Backbone {
    pub fn load(spec: &str, dtype: DType) -> Result<Backbone> {
        clinstruct_models::runtime::tune_allocator();
        let ckpt = Checkpoint::resolve(spec)?;
        let device = Device::Cpu;
        let arch = ckpt.architecture().ok_or_else(|| {
            anyhow!(
                "{}: config.json names no architecture or model_type",
                ckpt.dir.display()
            )
        })?;
        match arch.as_str() {
            a if modernbert::ARCHITECTURES.contains(&a) || a == modernbert::MODEL_TYPE => {
                Ok(Backbone::ModernBert(Box::new(ModernBert::from_checkpoint(
                    &ckpt, dtype, &device,
                )?)))
            }
            a if SUPPORTED_ARCHITECTURES.contains(&a) => Ok(Backbone::Decoder(
                Box::new(AnyCausalLm::load(&ckpt, dtype, &device)?),
                a.to_string(),
            )),
            other => bail!(
                "{}: unknown architecture {other} (supported: {})",
                ckpt.dir.display(),
                supported_architectures().join(", ")
            ),
        }
    }

    pub fn architecture(&self) -> String {
        match self {
            Backbone::ModernBert(m) => m
                .config()
                .architectures
                .first()
                .cloned()
                .unwrap_or_else(|| "ModernBertModel".into()),
            Backbone::Decoder(_, arch) => arch.clone(),
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            Backbone::ModernBert(m) => m.config().hidden_size,
            // A decoder's output row is its logits.
            Backbone::Decoder(m, _) => m.info().vocab_size,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Backbone::ModernBert(m) => m.config().vocab_size,
            Backbone::Decoder(m, _) => m.info().vocab_size,
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            Backbone::ModernBert(m) => m.config().max_position_embeddings,
            Backbone::Decoder(m, _) => m.info().max_position_embeddings,
        }
    }

    /// Filler id for padding positions (masked out, so only its validity matters).
    pub fn pad_id(&self) -> u32 {
        let pad = match self {
            Backbone::ModernBert(m) => m.config().pad_token_id,
            Backbone::Decoder(m, _) => m.info().pad_token_id,
        };
        pad.filter(|&p| (p as usize) < self.vocab_size())
            .unwrap_or(0)
    }

    /// Last hidden states `(b, L, hidden)` of an encoder, logits `(b, L, vocab)` of a decoder.
    pub fn hidden_states(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Backbone::ModernBert(m) => Ok(m.forward(ids, Some(mask))?),
            Backbone::Decoder(m, _) => {
                let rows: Vec<Vec<u32>> = mask.to_vec2()?;
                let positions = clinstruct_models::decoder::positions_from_mask(&rows);
                let positions = Tensor::new(positions, mask.device())?;
                Ok(m.forward(ids, Some(mask), &positions, None)?)
            }
        }
    }

    /// The ids of one input, checked against the vocabulary and `max_len`.
    pub fn check_ids(
        &self,
        file: &Path,
        input: &Input,
        ids: &[u32],
        max_len: Option<usize>,
    ) -> Result<Vec<u32>> {
        let at = || format!("{}:{} (id {})", file.display(), input.line, input.id);
        if ids.is_empty() {
            bail!("{}: empty input_ids", at());
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab_size()) {
            bail!(
                "{}: token id {bad} is outside the vocabulary (size {})",
                at(),
                self.vocab_size()
            );
        }
        if let Some(max) = max_len
            && ids.len() > max
        {
            bail!(
                "{}: {} input ids exceed --max-length {max}",
                at(),
                ids.len()
            );
        }
        Ok(ids.to_vec())
    }
}

/// One JSONL input line.
pub struct Input {
    pub line: usize,
    pub id: String,
    pub content: Content,
}

pub enum Content {
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    IdsOnly,
    TextOrIds,
}

/// Reads `{"id", "text"}` / `{"id", "input_ids"}` lines; errors give file and line, never text.
pub fn read_inputs(path: &Path, kind: InputKind) -> Result<Vec<Input>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line_no = n + 1;
        let line = line.with_context(|| format!("{}:{line_no}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{line_no}", path.display());
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| anyhow!("{}: invalid JSON: {e}", at()))?;
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => bail!("{}: missing \"id\" (a non-empty string or a number)", at()),
        };
        if !seen.insert(id.clone()) {
            bail!("{}: duplicate id {id}", at());
        }
        let content = match (v.get("input_ids"), v.get("text")) {
            (Some(ids), _) => {
                let arr = ids
                    .as_array()
                    .ok_or_else(|| anyhow!("{} (id {id}): input_ids is not an array", at()))?;
                let ids = arr
                    .iter()
                    .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| {
                        anyhow!(
                            "{} (id {id}): input_ids must be non-negative integers",
                            at()
                        )
                    })?;
                Content::Ids(ids)
            }
            (None, Some(serde_json::Value::String(t))) if kind == InputKind::TextOrIds => {
                Content::Text(t.clone())
            }
            _ => bail!(
                "{} (id {id}): expected {}",
                at(),
                match kind {
                    InputKind::IdsOnly =>
                        "\"input_ids\" (token ids; `clinstruct embed` takes text)",
                    InputKind::TextOrIds => "\"text\" (a string) or \"input_ids\"",
                }
            ),
        };
        out.push(Input {
            line: line_no,
            id,
            content,
        });
    }
    if out.is_empty() {
        bail!("{}: no inputs", path.display());
    }
    Ok(out)
}

pub struct RunStats {
    pub tokens: usize,
    pub batches: usize,
}

/// Runs `seqs` in batches of similar length (longest first, so padding stays small and memory
/// peaks early) and hands each sequence's `(len, hidden)` states to `sink` with its index.
pub fn run_batches(
    backbone: &Backbone,
    seqs: &[Vec<u32>],
    batch_size: usize,
    mut sink: impl FnMut(usize, Tensor) -> Result<()>,
) -> Result<RunStats> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let pad = backbone.pad_id();
    let mut stats = RunStats {
        tokens: 0,
        batches: 0,
    };
    for chunk in order.chunks(batch_size) {
        let len = chunk.iter().map(|&i| seqs[i].len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(chunk.len() * len);
        let mut mask = Vec::with_capacity(chunk.len() * len);
        for &i in chunk {
            let s = &seqs[i];
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad, len - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, len - s.len()));
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), len), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (chunk.len(), len), &Device::Cpu)?;
        let h = backbone.hidden_states(&ids, &mask)?;
        for (row, &i) in chunk.iter().enumerate() {
            sink(i, h.get(row)?.narrow(0, 0, seqs[i].len())?)?;
            stats.tokens += seqs[i].len();
        }
        stats.batches += 1;
    }
    Ok(stats)
}

/// Writes one tensor per id atomically, with the ids in input order in the metadata.
pub fn write_output(
    path: &Path,
    named: Vec<(String, Tensor)>,
    backbone: &Backbone,
    extra_metadata: &[(&str, String)],
) -> Result<()> {
    let ids: Vec<&str> = named.iter().map(|(id, _)| id.as_str()).collect();
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("ids".to_string(), serde_json::to_string(&ids)?),
        ("architecture".to_string(), backbone.architecture()),
        (
            "hidden_size".to_string(),
            backbone.hidden_size().to_string(),
        ),
    ]);
    for (k, v) in extra_metadata {
        metadata.insert(k.to_string(), v.clone());
    }
    let tensors: Vec<(String, Tensor)> = named
        .into_iter()
        .map(|(id, t)| Ok((id, t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
            .map_err(|e| anyhow!("serialising {}: {e}", path.display()))?;
    clinstruct_data::atomic::write_atomic(path, |w| w.write_all(&bytes))?;
    Ok(())
}
