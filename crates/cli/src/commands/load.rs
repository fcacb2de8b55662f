//! Loading a decoder LM and its tokenizer from what users pass as `--model`: an HF model
//! directory, a `.safetensors`/`.gguf` file, or a hub id in the local cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clinstruct_models::gguf::GgufModel;
use clinstruct_models::{AnyCausalLm, Checkpoint, Tokenizer};
use clinstruct_nn::LinearHook;

pub struct LoadedLm {
    pub lm: AnyCausalLm,
    pub tokenizer: Tokenizer,
    /// For logs: path, architecture, quantization.
    pub description: String,
}

/// Where a model's weights are.
pub enum LmSource {
    /// An HF directory with safetensors (what `lora merge` rewrites).
    Safetensors(Checkpoint),
    /// A GGUF file, given directly or as the only weights of a directory.
    Gguf(PathBuf),
}

/// Resolves `spec` (directory, weight file or cached hub id) without loading weights.
pub fn resolve_source(spec: &str) -> Result<LmSource> {
    let path = Path::new(spec);
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return Ok(LmSource::Gguf(path.to_path_buf()));
    }
    let ckpt = Checkpoint::resolve(spec)?;
    Ok(match &ckpt.gguf {
        Some(g) if ckpt.safetensors.is_empty() => LmSource::Gguf(g.clone()),
        _ => LmSource::Safetensors(ckpt),
    })
}

/// Loads `spec` in f32 (the CPU compute type), every linear layer through `hook` when given
/// (freezing, quantise-on-load, LoRA).
pub fn load_lm(spec: &str, device: &Device, hook: Option<Arc<dyn LinearHook>>) -> Result<LoadedLm> {
    let gguf = match resolve_source(spec)? {
        LmSource::Gguf(g) => g,
        LmSource::Safetensors(ckpt) => {
            let lm = AnyCausalLm::load_with_hook(&ckpt, DType::F32, device, hook)?;
            let tokenizer = Tokenizer::from_dir(&ckpt.dir)
                .with_context(|| format!("{}: tokenizer", ckpt.dir.display()))?;
            let description = format!(
                "{} ({})",
                ckpt.dir.display(),
                ckpt.architecture().unwrap_or_default()
            );
            return Ok(LoadedLm {
                lm,
                tokenizer,
                description,
            });
        }
    };
    let m = GgufModel::open(&gguf, device)?;
    let lm = m.load_lm_with_hook(DType::F32, device, hook)?;
    let quants: Vec<String> = m
        .quant_summary()
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect();
    let description = format!(
        "{} (gguf {}, {})",
        gguf.display(),
        m.architecture.name(),
        quants.join(" ")
    );
    Ok(LoadedLm {
        lm,
        tokenizer: m.tokenizer,
        description,
    })
}
