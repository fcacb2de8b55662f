//! ModernBERT (Warner et al., 2024) as in transformers 5.23 `modeling_modernbert.py`: the
//! encoder backbone, returning the last hidden state `(b, L, hidden)` after `final_norm`.
//!
//! Differences from candle-transformers' version (shared/docs/candle-findings.md §1), all on
//! purpose: every op has a backward (no fused `rope`), masks follow the model dtype and stay
//! finite, layer 0 has no `attn_norm` (never created, so a `VarMap` stays clean), configs in the
//! transformers v4 and v5 spellings both load, dropouts exist for training, and local layers
//! compute only their band (`clinstruct_nn::attention::banded`) once the sequence is longer
//! than it.
//!
//! Weights keep HF names, with or without the `model.` prefix (`ModernBertForMaskedLM` and
//! `ForSequenceClassification` checkpoints have it, `ModernBertModel` does not).

use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use clinstruct_nn::attention::banded::{BandMask, banded_attention, chunked_attention};
use clinstruct_nn::attention::flash::{Span, flash_attention, flash_attention_packed, key_padding};
use clinstruct_nn::attention::layout::{RopeRows, merge_heads, split_heads};
use clinstruct_nn::attention::{AttentionOpts, MASKED, MaskKind, build_mask};
use clinstruct_nn::checkpoint::{Block, Gradients, checkpoint_seeded};
use clinstruct_nn::dropout::next_seed;
use clinstruct_nn::norm::LayerNorm;
use clinstruct_nn::rope::{RopeScaling, RotaryEmbedding, apply_rotary};
use clinstruct_nn::{Linear, Weights};
use serde::Deserialize;

use crate::checkpoint::{Checkpoint, CheckpointError};

/// The `architectures` whose weights hold a ModernBERT backbone this module loads.
pub const ARCHITECTURES: &[&str] = &[
    "ModernBertModel",
    "ModernBertForMaskedLM",
    "ModernBertForSequenceClassification",
    "ModernBertForTokenClassification",
    "ModernBertForQuestionAnswering",
    "ModernBertForMultipleChoice",
];

pub const MODEL_TYPE: &str = "modernbert";

#[derive(Debug, thiserror::Error)]
pub enum ModernBertError {
    #[error("unknown model_type {0:?} (expected \"modernbert\")")]
    UnknownModelType(String),
    #[error("unknown architecture {0} (supported: {list})", list = ARCHITECTURES.join(", "))]
    UnknownArchitecture(String),
    #[error("invalid config: {0}")]
    Config(String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor {name}: {source}")]
    Tensor {
        name: String,
        source: candle_core::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// Config

/// transformers' `ACT2FN` names that ModernBERT configs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: `x · sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Activation, ModernBertError> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(ModernBertError::Config(format!(
                    "unsupported activation {other:?} (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu, swish)"
                )));
            }
        })
    }

    pub fn forward(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// Attention span of one layer (transformers v5 `layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// `full_attention`: every token.
    Global,
    /// `sliding_attention`: `|i - j| <= local_attention / 2`.
    Local,
}

/// Rotary parameters of one attention type.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierPooling {
    Cls,
    Mean,
}

/// `config.json` of a ModernBERT checkpoint, resolved from either transformers spelling:
///
/// - v4 (the hub's ModernBERT and BioClinical-ModernBERT files): `global_rope_theta`,
///   `local_rope_theta` (`null`: local layers use the global theta, as v4 did),
///   `global_attn_every_n_layers`, `norm_eps` and/or `layer_norm_eps`, optional `rope_scaling`;
/// - v5 (what 5.23's `to_dict()` writes): `rope_parameters.{full,sliding}_attention` with
///   `rope_theta`/`rope_type`, and `layer_types`.
///
/// When both are present the v5 keys win, as in transformers 5.23. `layer_norm_eps` (read by
/// candle-transformers) is used only when `norm_eps` is absent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub model_type: String,
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_activation: Activation,
    pub norm_eps: f64,
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// Full local window; local layers see `local_attention / 2` tokens on each side.
    pub local_attention: usize,
    pub layer_types: Vec<LayerType>,
    pub global_rope: RopeParams,
    pub local_rope: RopeParams,
    pub embedding_dropout: f32,
    pub attention_dropout: f32,
    pub mlp_dropout: f32,
    pub classifier_pooling: ClassifierPooling,
    pub classifier_dropout: f32,
    pub classifier_bias: bool,
    pub classifier_activation: Activation,
    pub pad_token_id: Option<u32>,
    pub cls_token_id: Option<u32>,
    pub sep_token_id: Option<u32>,
}

/// Every key either spelling may carry; resolved into [`Config`].
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: Option<usize>,
    hidden_activation: Option<String>,
    norm_eps: Option<f64>,
    layer_norm_eps: Option<f64>,
    norm_bias: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    local_attention: Option<usize>,
    global_attn_every_n_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    global_rope_theta: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    local_rope_theta: Option<Option<f64>>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    embedding_dropout: Option<f64>,
    attention_dropout: Option<f64>,
    mlp_dropout: Option<f64>,
    classifier_pooling: Option<String>,
    classifier_dropout: Option<f64>,
    classifier_bias: Option<bool>,
    classifier_activation: Option<String>,
    pad_token_id: Option<u32>,
    cls_token_id: Option<u32>,
    sep_token_id: Option<u32>,
}

/// Tells `"key": null` (Some(None)) from an absent key (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

const DEFAULT_GLOBAL_THETA: f64 = 160_000.0;
const DEFAULT_LOCAL_THETA: f64 = 10_000.0;

/// One attention type's `rope_parameters` entry: `rope_theta` plus an optional scaling.
fn rope_params(
    entry: Option<&serde_json::Value>,
    legacy_scaling: Option<&serde_json::Value>,
    fallback_theta: f64,
    which: &str,
) -> Result<RopeParams, ModernBertError> {
    let mut obj = serde_json::Map::new();
    // v5 applies a legacy `rope_scaling` to both types, then lets rope_parameters override.
    for src in [legacy_scaling, entry].into_iter().flatten() {
        let map = src.as_object().ok_or_else(|| {
            ModernBertError::Config(format!("rope parameters for {which} are not an object"))
        })?;
        obj.extend(map.clone());
    }
    let theta = match obj.get("rope_theta") {
        Some(v) => v.as_f64().ok_or_else(|| {
            ModernBertError::Config(format!("rope_theta for {which} is not a number: {v}"))
        })?,
        None => fallback_theta,
    };
    // transformers' older key for the type.
    if let Some(t) = obj.remove("type") {
        obj.entry("rope_type").or_insert(t);
    }
    let scaling = match obj.get("rope_type").and_then(|t| t.as_str()) {
        None | Some("default") => RopeScaling::Default,
        Some(_) => serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| ModernBertError::Config(format!("rope parameters for {which}: {e}")))?,
    };
    Ok(RopeParams { theta, scaling })
}

fn dropout_p(v: Option<f64>, name: &str) -> Result<f32, ModernBertError> {
    let p = v.unwrap_or(0.0);
    if !(0.0..1.0).contains(&p) {
        return Err(ModernBertError::Config(format!(
            "{name} must be in [0, 1), got {p}"
        )));
    }
    Ok(p as f32)
}

impl TryFrom<RawConfig> for Config {
    type Error = ModernBertError;

    fn try_from(r: RawConfig) -> Result<Config, ModernBertError> {
        let model_type = r.model_type.unwrap_or_else(|| MODEL_TYPE.to_string());
        if model_type != MODEL_TYPE {
            return Err(ModernBertError::UnknownModelType(model_type));
        }
        let architectures = r.architectures.unwrap_or_default();
        if let Some(a) = architectures.first()
            && !ARCHITECTURES.contains(&a.as_str())
        {
            return Err(ModernBertError::UnknownArchitecture(a.clone()));
        }
        let bad = |m: String| Err(ModernBertError::Config(m));
        if r.num_attention_heads == 0 || !r.hidden_size.is_multiple_of(r.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                r.hidden_size, r.num_attention_heads
            ));
        }
        if !(r.hidden_size / r.num_attention_heads).is_multiple_of(2) {
            return bad(format!(
                "head dimension {} is odd; rotary embeddings need it even",
                r.hidden_size / r.num_attention_heads
            ));
        }
        let layer_types = match r.layer_types {
            Some(types) => {
                if types.len() != r.num_hidden_layers {
                    return bad(format!(
                        "layer_types has {} entries for {} layers",
                        types.len(),
                        r.num_hidden_layers
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(LayerType::Global),
                        "sliding_attention" => Ok(LayerType::Local),
                        other => Err(ModernBertError::Config(format!(
                            "unknown layer type {other:?} (expected full_attention or sliding_attention)"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => {
                let every = r.global_attn_every_n_layers.unwrap_or(3);
                if every == 0 {
                    return bad("global_attn_every_n_layers must be at least 1".into());
                }
                (0..r.num_hidden_layers)
                    .map(|i| {
                        if i % every == 0 {
                            LayerType::Global
                        } else {
                            LayerType::Local
                        }
                    })
                    .collect()
            }
        };
        let global_theta = r.global_rope_theta.unwrap_or(DEFAULT_GLOBAL_THETA);
        let local_theta = match r.local_rope_theta {
            None => DEFAULT_LOCAL_THETA,
            Some(None) => global_theta,
            Some(Some(t)) => t,
        };
        let entry = |k: &str| r.rope_parameters.as_ref().and_then(|p| p.get(k));
        let legacy = r.rope_scaling.as_ref().filter(|v| !v.is_null());
        let global_rope = rope_params(
            entry("full_attention"),
            legacy,
            global_theta,
            "full_attention",
        )?;
        let local_rope = rope_params(
            entry("sliding_attention"),
            legacy,
            local_theta,
            "sliding_attention",
        )?;
        let classifier_pooling = match r.classifier_pooling.as_deref() {
            None | Some("cls") => ClassifierPooling::Cls,
            Some("mean") => ClassifierPooling::Mean,
            Some(other) => return bad(format!("unknown classifier_pooling {other:?}")),
        };
        Ok(Config {
            model_type,
            architectures,
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            max_position_embeddings: r.max_position_embeddings.unwrap_or(8192),
            hidden_activation: Activation::parse(r.hidden_activation.as_deref().unwrap_or("gelu"))?,
            norm_eps: r.norm_eps.or(r.layer_norm_eps).unwrap_or(1e-5),
            norm_bias: r.norm_bias.unwrap_or(false),
            attention_bias: r.attention_bias.unwrap_or(false),
            mlp_bias: r.mlp_bias.unwrap_or(false),
            local_attention: r.local_attention.unwrap_or(128),
            layer_types,
            global_rope,
            local_rope,
            embedding_dropout: dropout_p(r.embedding_dropout, "embedding_dropout")?,
            attention_dropout: dropout_p(r.attention_dropout, "attention_dropout")?,
            mlp_dropout: dropout_p(r.mlp_dropout, "mlp_dropout")?,
            classifier_pooling,
            classifier_dropout: dropout_p(r.classifier_dropout, "classifier_dropout")?,
            classifier_bias: r.classifier_bias.unwrap_or(false),
            classifier_activation: Activation::parse(
                r.classifier_activation.as_deref().unwrap_or("gelu"),
            )?,
            pad_token_id: r.pad_token_id,
            cls_token_id: r.cls_token_id,
            sep_token_id: r.sep_token_id,
        })
    }
}

impl Config {
    /// Parses `config.json` content. The model type and architecture are checked first, so a
    /// decoder's config is named as such rather than reported for a missing field.
    pub fn from_json(v: &serde_json::Value) -> Result<Config, ModernBertError> {
        if let Some(t) = v.get("model_type").and_then(|t| t.as_str())
            && t != MODEL_TYPE
        {
            return Err(ModernBertError::UnknownModelType(t.to_string()));
        }
        if let Some(a) = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            && !ARCHITECTURES.contains(&a)
        {
            return Err(ModernBertError::UnknownArchitecture(a.to_string()));
        }
        let raw: RawConfig = serde_json::from_value(v.clone())
            .map_err(|e| ModernBertError::Config(e.to_string()))?;
        Config::try_from(raw)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Tokens seen on each side by local layers.
    pub fn local_half_width(&self) -> usize {
        self.local_attention / 2
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// `Weights` plus the full name of where it points, so errors name whole tensors.
#[derive(Clone)]
struct Loader<'a> {
    w: Weights<'a>,
    path: String,
}

impl<'a> Loader<'a> {
    fn pp(&self, name: &str) -> Loader<'a> {
        Loader {
            w: self.w.pp(name),
            path: self.full(name),
        }
    }

    fn full(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The tensor, refusing to fall back to a `VarMap`'s fresh initialisation when it is absent.
    fn get(&self, shape: &[usize], name: &str) -> Result<Tensor, ModernBertError> {
        let full = self.full(name);
        if !self.w.contains(name) {
            return Err(ModernBertError::MissingTensor(full));
        }
        self.w.get(shape, name).map_err(|e| match root(e) {
            candle_core::Error::UnexpectedShape { expected, got, .. } => {
                ModernBertError::ShapeMismatch {
                    name: full,
                    expected: expected.dims().to_vec(),
                    got: got.dims().to_vec(),
                }
            }
            other => ModernBertError::Tensor {
                name: full,
                source: other,
            },
        })
    }

    fn linear(&self, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear, ModernBertError> {
        let weight = self.get(&[out_dim, in_dim], "weight")?;
        let bias = if bias {
            Some(self.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Linear::new(weight, bias).map_err(|source| ModernBertError::Tensor {
            name: self.full("weight"),
            source,
        })
    }

    fn layer_norm(&self, cfg: &Config) -> Result<LayerNorm, ModernBertError> {
        let weight = self.get(&[cfg.hidden_size], "weight")?;
        let bias = if cfg.norm_bias {
            Some(self.get(&[cfg.hidden_size], "bias")?)
        } else {
            None
        };
        Ok(LayerNorm::new(weight, bias, cfg.norm_eps))
    }
}

/// The error without candle's backtrace/context wrappers.
fn root(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => root(*inner),
        candle_core::Error::Context { inner, .. } => root(*inner),
        other => other,
    }
}

/// Replayable inside checkpointed layers (`clinstruct_nn::dropout`).
fn dropout(x: &Tensor, p: f32, train: bool) -> candle_core::Result<Tensor> {
    if train && p > 0.0 {
        clinstruct_nn::dropout::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Model

#[derive(Debug, Clone)]
struct Embeddings {
    tok_embeddings: Tensor,
    norm: LayerNorm,
    dropout: f32,
}

impl Embeddings {
    fn load(l: &Loader, cfg: &Config) -> Result<Embeddings, ModernBertError> {
        Ok(Embeddings {
            tok_embeddings: l
                .pp("tok_embeddings")
                .get(&[cfg.vocab_size, cfg.hidden_size], "weight")?,
            norm: l.pp("norm").layer_norm(cfg)?,
            dropout: cfg.embedding_dropout,
        })
    }

    fn forward(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let hidden = self.tok_embeddings.dim(1)?;
        let x = self
            .tok_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, hidden))?;
        dropout(&self.norm.forward(&x)?, self.dropout, train)
    }
}

/// Per-forward state shared by the layers: rotary tables and masks.
struct Context {
    global_rope: RopeTable,
    local_rope: RopeTable,
    /// Set when layers take the memory-efficient attention (on the CPU): the key-padding
    /// flags, `None` without padding. The additive masks below are then not built.
    flash: Option<Option<Arc<[u8]>>>,
    half_width: usize,
    /// Additive key-padding mask `(b, 1, 1, L)`; `None` without padding.
    global_mask: Option<Tensor>,
    local: LocalMask,
}

enum LocalMask {
    Banded(BandMask),
    /// `(b, 1, L, L)` for sequences no longer than the band.
    Dense(Tensor),
    /// Every layer is global.
    Unused,
}

/// cos and sin `(1, 1, L, d)` in f32 for one attention type, and the same values as rows for
/// [`split_heads`] (on the CPU).
struct RopeTable {
    cos: Tensor,
    sin: Tensor,
    rows: Option<RopeRows>,
}

impl RopeTable {
    fn new(rope: &RotaryEmbedding, positions: &Tensor) -> candle_core::Result<RopeTable> {
        let (cos, sin) = rope.cos_sin(positions, DType::F32)?;
        let rows = RopeRows::new(&cos, &sin)?;
        Ok(RopeTable { cos, sin, rows })
    }
}

/// Wqkv's output `(b, L, 3·hidden)` → rotated q, rotated k and v, each `(b, heads, L, d)`.
///
/// transformers rotates in f32 whatever the model dtype. On CPU in f32 this is one pass
/// ([`split_heads`]) instead of the split, transposes, contiguous copies and the five ops of
/// `apply_rotary` on strided views (10% of a 2,048-token forward); elsewhere it is those ops.
fn split_qkv_rotate(qkv: &Tensor, heads: usize, rope: &RopeTable) -> candle_core::Result<Qkv> {
    if let Some(all) = split_heads(qkv, 3, heads, 2, rope.rows.as_ref())? {
        return Ok(Qkv::Packed(all));
    }
    let (q, k, v) = split_qkv_rotate_ops(qkv, heads, rope)?;
    Ok(Qkv::Parts(q, k, v))
}

/// q, k and v of one attention call, each `(b, heads, L, d)`.
enum Qkv {
    /// `(3, b, heads, L, d)` from [`split_heads`]; [`flash_attention_packed`] takes it whole,
    /// so the backward hands one packed gradient to the split.
    Packed(Tensor),
    Parts(Tensor, Tensor, Tensor),
}

impl Qkv {
    fn parts(&self) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        match self {
            Qkv::Packed(all) => Ok((all.get(0)?, all.get(1)?, all.get(2)?)),
            Qkv::Parts(q, k, v) => Ok((q.clone(), k.clone(), v.clone())),
        }
    }
}

fn split_qkv_rotate_ops(
    qkv: &Tensor,
    heads: usize,
    rope: &RopeTable,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (b, l, three_h) = qkv.dims3()?;
    let d = three_h / 3 / heads;
    let dtype = qkv.dtype();
    let qkv = qkv.reshape((b, l, 3, heads, d))?;
    let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2);
    let rotate =
        |t: Tensor| apply_rotary(&t.to_dtype(DType::F32)?, &rope.cos, &rope.sin)?.to_dtype(dtype);
    Ok((rotate(part(0)?)?, rotate(part(1)?)?, part(2)?.contiguous()?))
}

#[derive(Debug, Clone)]
struct Attention {
    wqkv: Linear,
    wo: Linear,
    heads: usize,
    head_dim: usize,
    dropout: f32,
}

impl Attention {
    fn load(l: &Loader, cfg: &Config) -> Result<Attention, ModernBertError> {
        let h = cfg.hidden_size;
        Ok(Attention {
            wqkv: l.pp("Wqkv").linear(h, 3 * h, cfg.attention_bias)?,
            wo: l.pp("Wo").linear(h, h, cfg.attention_bias)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.attention_dropout,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        kind: LayerType,
        ctx: &Context,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, l, hidden) = x.dims3()?;
        let rope = match kind {
            LayerType::Global => &ctx.global_rope,
            LayerType::Local => &ctx.local_rope,
        };
        let qkv = split_qkv_rotate(&self.wqkv.forward(x)?, self.heads, rope)?;
        let opts = AttentionOpts {
            scale: 1.0 / (self.head_dim as f64).sqrt(),
            softcap: None,
        };
        let p_drop = (train && self.dropout > 0.0).then_some(self.dropout);
        let flash = match &ctx.flash {
            // Attention dropout needs the probabilities: the op-by-op path has them.
            Some(pad) if p_drop.is_none() => {
                let span = match kind {
                    LayerType::Global => Span::Full,
                    LayerType::Local => Span::Band {
                        half_width: ctx.half_width,
                    },
                };
                match &qkv {
                    Qkv::Packed(all) => flash_attention_packed(all, span, pad.as_ref(), opts)?,
                    Qkv::Parts(q, k, v) => flash_attention(q, k, v, span, pad.as_ref(), opts)?,
                }
            }
            _ => None,
        };
        let y = match flash {
            Some(y) => y,
            None => {
                let (q, k, v) = qkv.parts()?;
                match (kind, &ctx.local) {
                    (LayerType::Local, LocalMask::Banded(band)) => {
                        banded_attention(&q, &k, &v, band, opts, p_drop)?
                    }
                    (LayerType::Local, LocalMask::Dense(mask)) => {
                        chunked_attention(&q, &k, &v, Some(mask), opts, p_drop)?
                    }
                    (LayerType::Local, LocalMask::Unused) => {
                        candle_core::bail!("local layer without a local mask")
                    }
                    (LayerType::Global, _) => {
                        chunked_attention(&q, &k, &v, ctx.global_mask.as_ref(), opts, p_drop)?
                    }
                }
            }
        };
        let y = match merge_heads(&y)? {
            Some(y) => y,
            None => y.transpose(1, 2)?.reshape((b, l, hidden))?,
        };
        dropout(&self.wo.forward(&y)?, self.dropout, train)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    wi: Linear,
    wo: Linear,
    act: Activation,
    intermediate: usize,
    dropout: f32,
}

impl Mlp {
    fn load(l: &Loader, cfg: &Config) -> Result<Mlp, ModernBertError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            wi: l.pp("Wi").linear(h, 2 * i, cfg.mlp_bias)?,
            wo: l.pp("Wo").linear(i, h, cfg.mlp_bias)?,
            act: cfg.hidden_activation,
            intermediate: i,
            dropout: cfg.mlp_dropout,
        })
    }

    /// GeGLU: `Wo(drop(act(input) · gate))` with `input, gate = Wi(x).chunk(2)`.
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.wi.forward(x)?;
        if self.act == Activation::Gelu
            && let Some(y) = clinstruct_nn::fused::geglu_erf(&h)?
        {
            return self.wo.forward(&dropout(&y, self.dropout, train)?);
        }
        let input = h.narrow(D::Minus1, 0, self.intermediate)?;
        let gate = h.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        let y = (self.act.forward(&input)? * gate)?;
        self.wo.forward(&dropout(&y, self.dropout, train)?)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    /// `None` in layer 0, where transformers has `Identity` (the embedding norm precedes it).
    attn_norm: Option<LayerNorm>,
    attn: Attention,
    mlp_norm: LayerNorm,
    mlp: Mlp,
    kind: LayerType,
}

impl EncoderLayer {
    fn load(l: &Loader, cfg: &Config, index: usize) -> Result<EncoderLayer, ModernBertError> {
        Ok(EncoderLayer {
            attn_norm: if index == 0 {
                None
            } else {
                Some(l.pp("attn_norm").layer_norm(cfg)?)
            },
            attn: Attention::load(&l.pp("attn"), cfg)?,
            mlp_norm: l.pp("mlp_norm").layer_norm(cfg)?,
            mlp: Mlp::load(&l.pp("mlp"), cfg)?,
            kind: cfg.layer_types[index],
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Context, train: bool) -> candle_core::Result<Tensor> {
        let normed = match &self.attn_norm {
            Some(n) => n.forward(x)?,
            None => x.clone(),
        };
        let x = (x + self.attn.forward(&normed, self.kind, ctx, train)?)?;
        let y = self.mlp.forward(&self.mlp_norm.forward(&x)?, train)?;
        x + y
    }
}

/// The ModernBERT encoder.
#[derive(Debug, Clone)]
pub struct ModernBert {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    global_rope: RotaryEmbedding,
    local_rope: RotaryEmbedding,
    cfg: Config,
    prefix: String,
    dtype: DType,
    device: Device,
    /// Set while gradient checkpointing is on: where the layers' parameter gradients go.
    checkpointing: Option<Gradients>,
}

clinstruct_nn::impl_checkpointed!(ModernBert);

impl ModernBert {
    /// Loads the backbone from `w` (safetensors or a `VarMap`), under `model.` when the source
    /// has it. Every tensor must exist with the shape `cfg` implies.
    pub fn load(w: &Weights, cfg: &Config) -> Result<ModernBert, ModernBertError> {
        const PROBE: &str = "embeddings.tok_embeddings.weight";
        let prefix = if w.contains(&format!("model.{PROBE}")) {
            "model"
        } else if w.contains(PROBE) {
            ""
        } else {
            return Err(ModernBertError::MissingTensor(format!(
                "{PROBE} (or model.{PROBE})"
            )));
        };
        let root = Loader {
            w: if prefix.is_empty() {
                w.clone()
            } else {
                w.pp(prefix)
            },
            path: prefix.to_string(),
        };
        let embeddings = Embeddings::load(&root.pp("embeddings"), cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&root.pp(&format!("layers.{i}")), cfg, i))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = root.pp("final_norm").layer_norm(cfg)?;
        let rope = |p: &RopeParams| {
            RotaryEmbedding::new(
                cfg.head_dim(),
                p.theta,
                &p.scaling,
                cfg.max_position_embeddings,
            )
        };
        Ok(ModernBert {
            embeddings,
            layers,
            final_norm,
            global_rope: rope(&cfg.global_rope),
            local_rope: rope(&cfg.local_rope),
            cfg: cfg.clone(),
            prefix: prefix.to_string(),
            dtype: w.dtype(),
            device: w.device().clone(),
            checkpointing: None,
        })
    }

    /// Reads `config.json` and the safetensors of a checkpoint; errors name the file.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        dtype: DType,
        device: &Device,
    ) -> Result<ModernBert, CheckpointError> {
        let config_path = ckpt.dir.join("config.json");
        let cfg = Config::from_json(ckpt.config()?).map_err(|e| CheckpointError::Invalid {
            path: config_path,
            message: e.to_string(),
        })?;
        let w = ckpt.weights(dtype, device)?;
        ModernBert::load(&w, &cfg).map_err(|e| CheckpointError::Invalid {
            path: match ckpt.safetensors.as_slice() {
                [one] => one.clone(),
                _ => ckpt.dir.clone(),
            },
            message: e.to_string(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `"model"` or `""`: where the backbone's tensors live in the checkpoint.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Inference: the last hidden state `(b, L, hidden)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.forward_t(input_ids, attention_mask, false)
    }

    /// `input_ids (b, L)` (u32 or i64); `attention_mask (b, L)`, 1 for tokens and 0 for padding
    /// (any dtype; `None`: no padding). `train` turns the config's dropouts on.
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let dev = input_ids.device();
        let padding = match attention_mask {
            Some(m) => {
                if m.dims2()? != (b, l) {
                    candle_core::bail!(
                        "attention_mask has shape {:?}, expected ({b}, {l})",
                        m.dims()
                    );
                }
                let m = m.to_dtype(DType::F32)?;
                // An all-ones mask is no mask: skip the additions.
                let any_pad = m.min_all()?.to_scalar::<f32>()? == 0.0;
                any_pad.then_some(m)
            }
            None => None,
        };
        let positions = RotaryEmbedding::positions(1, l, 0, dev)?;
        let global_rope = RopeTable::new(&self.global_rope, &positions)?;
        let local_rope = RopeTable::new(&self.local_rope, &positions)?;
        // Flash attention needs the CPU and no attention dropout (it never forms the
        // probabilities dropout would act on).
        let flash = (dev.is_cpu() && !(train && self.cfg.attention_dropout > 0.0))
            .then(|| padding.as_ref().map(key_padding).transpose())
            .transpose()?;
        let global_mask = match &padding {
            _ if flash.is_some() => None,
            Some(m) => Some(
                ((m.ones_like()? - m)? * f64::from(MASKED))?
                    .reshape((b, 1, 1, l))?
                    .to_dtype(self.dtype)?,
            ),
            None => None,
        };
        let half = self.cfg.local_half_width();
        let has_local = self.cfg.layer_types.contains(&LayerType::Local);
        let local = if !has_local || flash.is_some() {
            LocalMask::Unused
        } else if self.local_attention_is_banded(l) {
            LocalMask::Banded(BandMask::new(b, l, half, padding.as_ref(), dev)?)
        } else {
            let m = build_mask(
                b,
                l,
                l,
                MaskKind::Bidirectional,
                Some(half),
                padding.as_ref(),
                dev,
            )?;
            LocalMask::Dense(m.to_dtype(self.dtype)?)
        };
        let ctx = Context {
            global_rope,
            local_rope,
            flash,
            half_width: half,
            global_mask,
            local,
        };
        let mut x = self.embeddings.forward(input_ids, train)?;
        let ctx = Arc::new(ctx);
        for layer in &self.layers {
            // A checkpointed layer draws its dropout masks in its own scope, to replay them;
            // under an outer scope every layer does, so a seeded run is the same with or
            // without checkpointing.
            let seed = clinstruct_nn::dropout::nested_seed();
            x = match &self.checkpointing {
                Some(grads) => {
                    let (layer, ctx) = (layer.clone(), ctx.clone());
                    let block: Block = Arc::new(move |x: &Tensor| layer.forward(x, &ctx, train));
                    checkpoint_seeded(&x, grads, block, seed.unwrap_or_else(next_seed))?
                }
                None => {
                    clinstruct_nn::dropout::maybe_scoped(seed, || layer.forward(&x, &ctx, train))?
                }
            };
        }
        self.final_norm.forward(&x)
    }

    /// Whether local layers take the banded path for sequences of `len` tokens (otherwise a
    /// dense masked attention, cheaper when the band covers most of the sequence).
    pub fn local_attention_is_banded(&self, len: usize) -> bool {
        BandMask::default_window(self.cfg.local_half_width()) < len
    }

    /// Whether layer `i` has its own `attn_norm` (all but layer 0).
    pub fn has_attn_norm(&self, i: usize) -> bool {
        self.layers.get(i).is_some_and(|l| l.attn_norm.is_some())
    }
}

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token (`[CLS]`).
    Cls,
    /// The mean over real tokens.
    Mean,
}

/// `(b, L, hidden)` → `(b, hidden)`; `attention_mask (b, L)` excludes padding from the mean.
/// Differentiable, for classification heads as well as embeddings.
pub fn pool(
    hidden: &Tensor,
    attention_mask: Option<&Tensor>,
    pooling: Pooling,
) -> candle_core::Result<Tensor> {
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => match attention_mask {
            None => hidden.mean(1),
            Some(m) => {
                let m = m.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1f64, f64::INFINITY)?;
                sum.broadcast_div(&count)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap()
    }

    #[test]
    fn fused_qkv_rope_equals_the_op_by_op_path() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (b, l, heads, d) = (2, 7, 3, 8);
        let rope = RotaryEmbedding::new(d, 1000.0, &RopeScaling::Default, 64);
        let table = RopeTable::new(&rope, &RotaryEmbedding::positions(1, l, 0, &dev)?)?;
        let qkv = Var::randn(0f32, 1., (b, l, 3 * heads * d), &dev)?;
        let fused = split_qkv_rotate(qkv.as_tensor(), heads, &table)?.parts()?;
        let ops = split_qkv_rotate_ops(qkv.as_tensor(), heads, &table)?;
        let w = Tensor::randn(0f32, 1., (b, heads, l, d), &dev)?;
        let loss = |(q, k, v): &(Tensor, Tensor, Tensor)| -> candle_core::Result<Tensor> {
            ((q * &w)?.sum_all()? + (k.sqr()? * &w)?.sum_all()?)? + (v * 2.0)?.sum_all()?
        };
        for (a, b) in [(&fused.0, &ops.0), (&fused.1, &ops.1), (&fused.2, &ops.2)] {
            assert_eq!(a.dims(), b.dims());
            assert!(max_diff(a, b) < 1e-6);
        }
        let ga = loss(&fused)?.backward()?;
        let gb = loss(&ops)?.backward()?;
        let (ga, gb) = (
            ga.get(qkv.as_tensor()).unwrap(),
            gb.get(qkv.as_tensor()).unwrap(),
        );
        assert!(max_diff(ga, gb) < 1e-5, "{}", max_diff(ga, gb));
        Ok(())
    }
}
