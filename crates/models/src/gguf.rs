//! GGUF checkpoints (llama.cpp's format): architecture and hyper-parameters from metadata as an
//! HF `config.json`, the HF↔GGUF tensor name map, the embedded tokenizer and chat template, and
//! the converter conventions undone so HF-layout model code loads the weights unchanged:
//!
//! - `gemma3`: llama.cpp's converter stores every `*norm.weight` as `w + 1` (its RMSNorm has no
//!   `1 + w`); we subtract 1 again. The sliding-window pattern (every 6th layer global) and the
//!   local rope base (10 000) are not in the metadata: llama.cpp hard-codes them, so do we.
//! - `llama`: the converter permutes the rows of `attn_q`/`attn_k` so GGML's interleaved-pair
//!   rope applies; we permute them back to HF's half-split order (row moves only, so quantized
//!   blocks are moved, never re-quantized). Llama-3 rope scaling is stored as a `rope_freqs`
//!   tensor; we recover the `llama3` `rope_scaling` parameters from it.
//!
//! Block-quantized weights stay quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q8_K through
//! candle's `QTensor`); linear layers multiply them with candle's ggml kernels.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device};
use clinstruct_nn::weights::GgufStore;
use clinstruct_nn::{LinearHook, Weights};
use serde_json::json;

use crate::auto::{AnyCausalLm, AnyConfig};
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: not a GGUF file (expected magic bytes \"GGUF\")", .path.display())]
    NotGguf { path: PathBuf },
    #[error("{}: unknown GGUF architecture `{arch}` (supported: gemma3, llama)", .path.display())]
    UnknownArchitecture { path: PathBuf, arch: String },
    #[error("{}: missing tensor {gguf} ({hf})", .path.display())]
    MissingTensor {
        path: PathBuf,
        gguf: String,
        hf: String,
    },
    #[error("{}: missing metadata {key}", .path.display())]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufArchitecture {
    Gemma3,
    Llama,
}

impl GgufArchitecture {
    pub fn from_name(name: &str) -> Option<GgufArchitecture> {
        match name {
            "gemma3" => Some(GgufArchitecture::Gemma3),
            "llama" => Some(GgufArchitecture::Llama),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgufArchitecture::Gemma3 => "gemma3",
            GgufArchitecture::Llama => "llama",
        }
    }

    /// The chat template used when the file embeds none (instruction-tuned family default).
    pub fn default_chat_template(self) -> &'static str {
        match self {
            GgufArchitecture::Gemma3 => include_str!("templates/gemma-3-it.jinja"),
            GgufArchitecture::Llama => include_str!("templates/llama-3.2-instruct.jinja"),
        }
    }
}

/// Per-layer tensors: (HF suffix after `model.layers.N.`, GGUF suffix after `blk.N.`).
fn layer_names(arch: GgufArchitecture) -> &'static [(&'static str, &'static str)] {
    const COMMON: [(&str, &str); 8] = [
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
        ("input_layernorm.weight", "attn_norm.weight"),
    ];
    const GEMMA3: [(&str, &str); 13] = [
        COMMON[0],
        COMMON[1],
        COMMON[2],
        COMMON[3],
        COMMON[4],
        COMMON[5],
        COMMON[6],
        COMMON[7],
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        (
            "post_attention_layernorm.weight",
            "post_attention_norm.weight",
        ),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
    ];
    const LLAMA: [(&str, &str); 9] = [
        COMMON[0],
        COMMON[1],
        COMMON[2],
        COMMON[3],
        COMMON[4],
        COMMON[5],
        COMMON[6],
        COMMON[7],
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ];
    match arch {
        GgufArchitecture::Gemma3 => &GEMMA3,
        GgufArchitecture::Llama => &LLAMA,
    }
}

const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// HF tensor name → GGUF tensor name (`None` for names the architecture does not have).
pub fn hf_to_gguf_name(arch: GgufArchitecture, hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (n, suffix) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    let (_, g) = layer_names(arch).iter().find(|(h, _)| *h == suffix)?;
    Some(format!("blk.{n}.{g}"))
}

/// GGUF tensor name → HF tensor name.
pub fn gguf_to_hf_name(arch: GgufArchitecture, gguf: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (n, suffix) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    let (h, _) = layer_names(arch).iter().find(|(_, g)| *g == suffix)?;
    Some(format!("model.layers.{n}.{h}"))
}

/// An opened GGUF checkpoint.
pub struct GgufModel {
    pub path: PathBuf,
    pub architecture: GgufArchitecture,
    /// The hyper-parameters as the family's HF `config.json` would state them.
    pub config: serde_json::Value,
    pub tokenizer: Tokenizer,
    pub store: Arc<GgufStore>,
}

impl std::fmt::Debug for GgufModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModel")
            .field("path", &self.path)
            .field("architecture", &self.architecture)
            .finish()
    }
}

/// Checks the magic bytes so a wrong file fails with a clear message, not a parse error.
fn check_magic(path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == b"GGUF" => Ok(()),
        _ => Err(GgufError::NotGguf {
            path: path.to_path_buf(),
        }),
    }
}

/// Reads only the header and metadata (no tensor data).
pub fn read_metadata(path: &Path) -> Result<gguf_file::Content> {
    check_magic(path)?;
    let mut f = std::fs::File::open(path).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    gguf_file::Content::read(&mut f).map_err(|e| GgufError::Invalid {
        path: path.to_path_buf(),
        message: format!("corrupt GGUF header: {e}"),
    })
}

struct Meta<'a> {
    path: &'a Path,
    arch: &'a str,
    md: &'a HashMap<String, GgufValue>,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }
    fn get(&self, k: &str) -> Option<&GgufValue> {
        self.md.get(&self.key(k))
    }
    fn missing(&self, k: &str) -> GgufError {
        GgufError::MissingMetadata {
            path: self.path.to_path_buf(),
            key: self.key(k),
        }
    }
    fn usize(&self, k: &str) -> Result<usize> {
        let v = self.get(k).ok_or_else(|| self.missing(k))?;
        num(v)
            .map(|x| x as usize)
            .ok_or_else(|| GgufError::Invalid {
                path: self.path.to_path_buf(),
                message: format!("{} is not a number: {v:?}", self.key(k)),
            })
    }
    fn usize_or(&self, k: &str, d: usize) -> Result<usize> {
        if self.get(k).is_some() {
            self.usize(k)
        } else {
            Ok(d)
        }
    }
    fn f64_or(&self, k: &str, d: f64) -> Result<f64> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => num(v).ok_or_else(|| GgufError::Invalid {
                path: self.path.to_path_buf(),
                message: format!("{} is not a number: {v:?}", self.key(k)),
            }),
        }
    }
    fn f64(&self, k: &str) -> Result<f64> {
        if self.get(k).is_none() {
            return Err(self.missing(k));
        }
        self.f64_or(k, 0.0)
    }
}

fn num(v: &GgufValue) -> Option<f64> {
    use GgufValue::*;
    Some(match v {
        U8(x) => *x as f64,
        I8(x) => *x as f64,
        U16(x) => *x as f64,
        I16(x) => *x as f64,
        U32(x) => *x as f64,
        I32(x) => *x as f64,
        U64(x) => *x as f64,
        I64(x) => *x as f64,
        F32(x) => *x as f64,
        F64(x) => *x,
        _ => return None,
    })
}

impl GgufModel {
    /// Opens `path`: checks it is GGUF of a supported architecture with every tensor the
    /// config implies, builds the config and tokenizer, and loads the tensors onto `device`.
    pub fn open(path: &Path, device: &Device) -> Result<GgufModel> {
        let content = read_metadata(path)?;
        let arch_name = match content.metadata.get("general.architecture") {
            Some(GgufValue::String(s)) => s.clone(),
            _ => {
                return Err(GgufError::MissingMetadata {
                    path: path.to_path_buf(),
                    key: "general.architecture".into(),
                });
            }
        };
        let arch = GgufArchitecture::from_name(&arch_name).ok_or_else(|| {
            GgufError::UnknownArchitecture {
                path: path.to_path_buf(),
                arch: arch_name.clone(),
            }
        })?;
        let mut tokenizer =
            Tokenizer::from_gguf(&content.metadata).map_err(|source| GgufError::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        if tokenizer.chat_templates().get(None).is_none() {
            tokenizer
                .chat_templates_mut()
                .set_default(arch.default_chat_template().to_string());
        }
        let config = build_config(path, arch, &content, &tokenizer)?;
        let layers = config["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
        for (hf, gguf) in required_tensors(arch, layers) {
            if !content.tensor_infos.contains_key(&gguf) {
                return Err(GgufError::MissingTensor {
                    path: path.to_path_buf(),
                    gguf,
                    hf,
                });
            }
        }
        let rename: Box<clinstruct_nn::weights::NameMap> =
            Box::new(move |hf: &str| hf_to_gguf_name(arch, hf));
        let mut store = GgufStore::open(path, device, rename)?;
        // candle has no SIMD kernel for Q5_0 (a scalar loop, ~10x slower than Q8_0); its values
        // are integers in [-16, 15] times a per-block f16 scale, exactly representable in Q8_0,
        // whose kernel multiplies the same Q8_0-quantized activations.
        store.map_tensors(|_, t| {
            if t.dtype() == GgmlDType::Q5_0 {
                q5_0_to_q8_0(&t)
            } else {
                Ok(t)
            }
        })?;
        match arch {
            GgufArchitecture::Gemma3 => store.map_tensors(|name, t| {
                if name.ends_with("norm.weight") {
                    shift_norm(&t, -1.0)
                } else {
                    Ok(t)
                }
            })?,
            GgufArchitecture::Llama => {
                let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
                let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
                store.map_tensors(|name, t| {
                    if name.ends_with(".attn_q.weight") {
                        unpermute_rows(&t, heads)
                    } else if name.ends_with(".attn_k.weight") {
                        unpermute_rows(&t, kv_heads)
                    } else {
                        Ok(t)
                    }
                })?
            }
        }
        Ok(GgufModel {
            path: path.to_path_buf(),
            architecture: arch,
            config,
            tokenizer,
            store: Arc::new(store),
        })
    }

    /// Weights under HF names: dense tensors in `dtype`, block-quantized linears kept as is.
    pub fn weights(&self, dtype: DType, device: &Device) -> Weights<'static> {
        Weights::from_gguf(self.store.clone(), dtype, device)
    }

    /// Builds the decoder: the metadata-derived config through the family's own config
    /// parser, weights under HF names (block-quantized linears stay quantized).
    pub fn load_lm(&self, dtype: DType, device: &Device) -> Result<AnyCausalLm> {
        self.load_lm_with_hook(dtype, device, None)
    }

    /// [`Self::load_lm`] with every linear layer passed through `hook` (LoRA on the frozen
    /// quantized base).
    pub fn load_lm_with_hook(
        &self,
        dtype: DType,
        device: &Device,
        hook: Option<Arc<dyn LinearHook>>,
    ) -> Result<AnyCausalLm> {
        let invalid = |e: candle_core::Error| GgufError::Invalid {
            path: self.path.clone(),
            message: crate::decoder::error_message(&e),
        };
        let mut config = self.config.clone();
        if hook.is_some()
            && let Some(o) = config.as_object_mut()
        {
            // Adapters train: the plain f32 numerics and memory-efficient attention, not
            // llama.cpp's f16 rounding (kept for matching its inference).
            o.insert("ggml_numerics".into(), json!(false));
        }
        let cfg = AnyConfig::parse(&config).map_err(invalid)?;
        let mut w = self.weights(dtype, device);
        if let Some(hook) = hook {
            w = w.with_linear_hook(hook);
        }
        AnyCausalLm::new(&cfg, &w).map_err(invalid)
    }

    /// Tensor count per ggml type (`Q4_K: 27`, ...).
    pub fn quant_summary(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for name in self.store.tensor_names() {
            if let Some(t) = self.store.tensor(name) {
                *m.entry(format!("{:?}", t.dtype())).or_insert(0) += 1;
            }
        }
        m
    }
}

fn required_tensors(arch: GgufArchitecture, layers: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = GLOBAL_NAMES[..2]
        .iter()
        .map(|(h, g)| (h.to_string(), g.to_string()))
        .collect();
    for n in 0..layers {
        for (h, g) in layer_names(arch) {
            out.push((format!("model.layers.{n}.{h}"), format!("blk.{n}.{g}")));
        }
    }
    out
}

const Q5_0_BLOCK_BYTES: usize = 22; // f16 d, u32 high bits, 16 bytes of low nibbles
const Q8_0_BLOCK_BYTES: usize = 34; // f16 d, 32 i8

/// Q5_0 blocks re-encoded as Q8_0 with the same scale and the same integer values (lossless):
/// ggml's `dequantize_row_q5_0` value `j` is `((qs[j] & 15) | bit j of qh << 4) - 16` and value
/// `j + 16` is `((qs[j] >> 4) | bit j + 16 of qh << 4) - 16`.
pub fn q5_0_to_q8_0(t: &Arc<QTensor>) -> candle_core::Result<Arc<QTensor>> {
    let data = t.data()?;
    if data.len() % Q5_0_BLOCK_BYTES != 0 {
        candle_core::bail!("Q5_0 data of {} bytes is not whole blocks", data.len());
    }
    let blocks = data.len() / Q5_0_BLOCK_BYTES;
    let mut out = vec![0u8; blocks * Q8_0_BLOCK_BYTES];
    for (src, dst) in data
        .chunks_exact(Q5_0_BLOCK_BYTES)
        .zip(out.chunks_exact_mut(Q8_0_BLOCK_BYTES))
    {
        dst[..2].copy_from_slice(&src[..2]);
        let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
        let qs = &src[6..22];
        for j in 0..16 {
            let lo = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
            let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
            dst[2 + j] = (lo as i8 - 16) as u8;
            dst[2 + j + 16] = (hi as i8 - 16) as u8;
        }
    }
    let dev = t.device();
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &dev, GgmlDType::Q8_0)?;
    Ok(Arc::new(QTensor::new(storage, t.shape().clone())?))
}

/// `w + delta` for a (dense) norm weight.
fn shift_norm(t: &Arc<QTensor>, delta: f64) -> candle_core::Result<Arc<QTensor>> {
    let dev = t.device();
    let w = (t.dequantize(&dev)? + delta)?;
    Ok(Arc::new(QTensor::quantize(&w, GgmlDType::F32)?))
}

/// Undoes llama.cpp's `permute(w, n_head)`: GGUF row `h·d + 2j + s` is HF row `h·d + s·d/2 + j`.
fn unpermute_rows(t: &Arc<QTensor>, heads: usize) -> candle_core::Result<Arc<QTensor>> {
    let (rows, cols) = t.shape().dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        candle_core::bail!("cannot un-permute {rows} rows into {heads} heads");
    }
    let d = rows / heads;
    let data = t.data()?;
    let row_bytes = data.len() / rows;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..d / 2 {
                let src = h * d + 2 * j + s;
                let dst = h * d + s * (d / 2) + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let dev = t.device();
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &dev, t.dtype())?;
    Ok(Arc::new(QTensor::new(storage, (rows, cols))?))
}

fn build_config(
    path: &Path,
    arch: GgufArchitecture,
    content: &gguf_file::Content,
    tokenizer: &Tokenizer,
) -> Result<serde_json::Value> {
    let m = Meta {
        path,
        arch: arch.name(),
        md: &content.metadata,
    };
    let hidden = m.usize("embedding_length")?;
    let layers = m.usize("block_count")?;
    let heads = m.usize("attention.head_count")?;
    let kv_heads = m.usize_or("attention.head_count_kv", heads)?;
    let head_dim = m.usize_or("attention.key_length", hidden / heads.max(1))?;
    // candle's tensor info shape is (vocab, hidden) for the embedding.
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|i| i.shape.dims().first().copied())
        .unwrap_or_else(|| tokenizer.vocab_size());
    let tied = !content.tensor_infos.contains_key("output.weight");
    let eos: Vec<u32> = tokenizer.eos_token_ids().to_vec();
    let mut c = json!({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": m.usize("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": m.f64("attention.layer_norm_rms_epsilon")?,
        "rope_theta": m.f64_or("rope.freq_base", 10_000.0)?,
        "max_position_embeddings": m.usize_or("context_length", 2048)?,
        "tie_word_embeddings": tied,
        "bos_token_id": tokenizer.bos_token_id(),
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        "pad_token_id": tokenizer.pad_token_id(),
        "torch_dtype": "float32",
    });
    let rope_scaling = match m.get("rope.scaling.type") {
        Some(GgufValue::String(t)) if t == "linear" => {
            Some(json!({"rope_type": "linear", "factor": m.f64("rope.scaling.factor")?}))
        }
        Some(GgufValue::String(t)) if t == "none" => None,
        Some(GgufValue::String(t)) if t == "yarn" => {
            return Err(GgufError::Invalid {
                path: path.to_path_buf(),
                message: "yarn rope scaling in GGUF is not supported yet".into(),
            });
        }
        _ => None,
    };
    match arch {
        GgufArchitecture::Gemma3 => {
            let window = m.usize_or("attention.sliding_window", 4096)?;
            // llama.cpp: every 6th layer global; 27B scales queries by hidden/heads.
            let pattern = 6;
            let layer_types: Vec<&str> = (0..layers)
                .map(|i| {
                    if (i + 1) % pattern == 0 {
                        "full_attention"
                    } else {
                        "sliding_attention"
                    }
                })
                .collect();
            let query_pre_attn_scalar = if layers == 62 && hidden == 5376 {
                hidden / heads
            } else {
                head_dim
            };
            let o = c.as_object_mut().expect("object");
            o.insert("architectures".into(), json!(["Gemma3ForCausalLM"]));
            o.insert("model_type".into(), json!("gemma3_text"));
            o.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
            o.insert("sliding_window".into(), json!(window));
            o.insert("sliding_window_pattern".into(), json!(pattern));
            o.insert("layer_types".into(), json!(layer_types));
            o.insert("rope_local_base_freq".into(), json!(10_000.0));
            o.insert("query_pre_attn_scalar".into(), json!(query_pre_attn_scalar));
            o.insert("attn_logit_softcapping".into(), serde_json::Value::Null);
            o.insert("final_logit_softcapping".into(), serde_json::Value::Null);
            o.insert("attention_bias".into(), json!(false));
            o.insert(
                "rope_scaling".into(),
                rope_scaling.unwrap_or(serde_json::Value::Null),
            );
            // llama.cpp's CPU numerics (f16 GELU table, f16 KV cache): greedy decoding then
            // follows llama.cpp through near-ties (crates/models/tests/gemma3_gguf.rs).
            o.insert("ggml_numerics".into(), json!(true));
        }
        GgufArchitecture::Llama => {
            let scaling = match rope_scaling {
                Some(s) => Some(s),
                None => llama3_scaling_from_rope_freqs(path, content, &m, head_dim)?,
            };
            let o = c.as_object_mut().expect("object");
            o.insert("architectures".into(), json!(["LlamaForCausalLM"]));
            o.insert("model_type".into(), json!("llama"));
            o.insert("hidden_act".into(), json!("silu"));
            o.insert("attention_bias".into(), json!(false));
            o.insert("mlp_bias".into(), json!(false));
            o.insert(
                "rope_scaling".into(),
                scaling.unwrap_or(serde_json::Value::Null),
            );
        }
    }
    Ok(c)
}

/// Llama 3.x GGUFs store the llama3 frequency scaling as per-frequency divisors
/// (`rope_freqs.weight`); find the `rope_scaling` whose divisors these are.
fn llama3_scaling_from_rope_freqs(
    path: &Path,
    content: &gguf_file::Content,
    m: &Meta<'_>,
    head_dim: usize,
) -> Result<Option<serde_json::Value>> {
    if !content.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(None);
    }
    let mut f = std::fs::File::open(path).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let t = content.tensor(&mut f, "rope_freqs.weight", &Device::Cpu)?;
    let got: Vec<f32> = t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let theta = m.f64_or("rope.freq_base", 10_000.0)?;
    let factor = got.iter().copied().fold(1f32, f32::max) as f64;
    // Meta's published Llama 3.1/3.2 settings; anything else is reported, not guessed.
    let (low, high, orig) = (1.0, 4.0, 8192usize);
    let low_wavelen = orig as f64 / low;
    let high_wavelen = orig as f64 / high;
    let ok = got.iter().enumerate().all(|(i, &g)| {
        let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        let want = if wavelen < high_wavelen {
            1.0
        } else if wavelen > low_wavelen {
            factor
        } else {
            let smooth = (orig as f64 / wavelen - low) / (high - low);
            1.0 / ((1.0 - smooth) / factor + smooth)
        };
        (want - g as f64).abs() <= 1e-3 * want.abs().max(1.0)
    });
    if ok {
        return Ok(Some(json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": orig,
        })));
    }
    Err(GgufError::Invalid {
        path: path.to_path_buf(),
        message: "rope_freqs.weight does not match llama3 scaling (low 1, high 4, original 8192)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_map_round_trips() {
        for arch in [GgufArchitecture::Gemma3, GgufArchitecture::Llama] {
            for (hf, g) in required_tensors(arch, 2) {
                assert_eq!(hf_to_gguf_name(arch, &hf).as_deref(), Some(g.as_str()));
                assert_eq!(gguf_to_hf_name(arch, &g).as_deref(), Some(hf.as_str()));
            }
        }
        assert_eq!(
            hf_to_gguf_name(
                GgufArchitecture::Llama,
                "model.layers.3.self_attn.q_proj.weight"
            )
            .as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            hf_to_gguf_name(
                GgufArchitecture::Llama,
                "model.layers.3.post_attention_layernorm.weight"
            )
            .as_deref(),
            Some("blk.3.ffn_norm.weight")
        );
        assert_eq!(
            hf_to_gguf_name(
                GgufArchitecture::Gemma3,
                "model.layers.0.pre_feedforward_layernorm.weight"
            )
            .as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(
            hf_to_gguf_name(GgufArchitecture::Gemma3, "lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            hf_to_gguf_name(
                GgufArchitecture::Llama,
                "model.layers.0.self_attn.q_norm.weight"
            ),
            None
        );
    }

    #[test]
    fn q5_0_to_q8_0_is_lossless() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = candle_core::Tensor::randn(0f32, 1.0, (8, 256), &dev)?;
        let q5 = Arc::new(QTensor::quantize(&w, GgmlDType::Q5_0)?);
        let q8 = q5_0_to_q8_0(&q5)?;
        assert_eq!(q8.dtype(), GgmlDType::Q8_0);
        let a = q5.dequantize(&dev)?;
        let b = q8.dequantize(&dev)?;
        assert_eq!((&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        // The matmul is the same up to float summation order.
        let x = candle_core::Tensor::randn(0f32, 1.0, (3, 256), &dev)?;
        let y5 = x.apply_op1_no_bwd(q5.as_ref())?;
        let y8 = x.apply_op1_no_bwd(q8.as_ref())?;
        let d = (&y5 - &y8)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-4, "{d}");
        Ok(())
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (heads, d, cols) = (3, 8, 32);
        let hf: Vec<f32> = (0..heads * d * cols).map(|i| i as f32).collect();
        let hf_t = candle_core::Tensor::from_vec(hf, (heads * d, cols), &dev)?;
        // llama.cpp: w.reshape(h, 2, d/2, cols).swapaxes(1, 2).reshape(w.shape)
        let gg = hf_t
            .reshape((heads, 2, d / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((heads * d, cols))?;
        for dtype in [GgmlDType::F32, GgmlDType::Q8_0] {
            let q = Arc::new(QTensor::quantize(&gg, dtype)?);
            let back = unpermute_rows(&q, heads)?.dequantize(&dev)?;
            let want = QTensor::quantize(&hf_t, dtype)?.dequantize(&dev)?;
            let diff = (back - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{dtype:?}");
        }
        Ok(())
    }
}
