//! What the decoder LMs share: config spellings (transformers v4 and v5), the embedding, gated
//! MLP, attention with its KV-cached step, masks, the LM head, FP8 dequantisation and a minimal
//! greedy loop. Every forward op here has a backward (see `clinstruct_nn`), so the models built
//! from these pieces train as they infer.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::quantized::QTensor;
use candle_core::{D, DType, Device, Result, Tensor};
use clinstruct_nn::attention::flash::{self, Span, flash_attention};
use clinstruct_nn::attention::layout::{RopeRows, merge_heads, split_heads};
use clinstruct_nn::attention::{
    AttentionOpts, MaskKind, build_mask, round_f16, scaled_dot_product, scaled_dot_product_f16_kv,
};
use clinstruct_nn::checkpoint::{Block, Gradients, checkpoint_seeded};
use clinstruct_nn::dropout::{self, next_seed};
use clinstruct_nn::kv_cache::KvCache;
use clinstruct_nn::linear_ce::{VocabHead, linear_cross_entropy};
use clinstruct_nn::norm::RmsNorm;
use clinstruct_nn::rope::{RopeScaling, apply_rotary};
use clinstruct_nn::{Linear, Weights};
use serde::Deserialize;
use serde_json::Value;

use crate::lm::{CausalLm, LmCache};

// ---------------------------------------------------------------------------------------------
// Config helpers

/// `eos_token_id` and friends: one id or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(t) => vec![*t],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// Distinguishes a key that is absent (`None`) from one set to `null` (`Some(None)`): HF applies
/// its class default only to the former (e.g. Mistral's `sliding_window`).
pub(crate) fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The MLP activation (`hidden_act` / `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// transformers' `gelu_pytorch_tanh` (and `gelu_new`, `gelu_fast`): the tanh approximation.
    GeluTanh,
    /// Exact `gelu` (erf).
    Gelu,
    /// llama.cpp's CPU GELU (`GGML_GELU_FP16`): the tanh form tabulated at f16 inputs, stored in
    /// f16 (the input is rounded to f16, so is the result; identity from 10 up, 0 from -10
    /// down). Gradients are the tanh form's. Not an HF name: GGUF models ask for it through
    /// `ggml_numerics`.
    GeluTanhF16,
}

/// `ggml_gelu_f32` as llama.cpp's table is built from it (GCC contracts `1 + a·x·x` to an fma).
fn ggml_gelu_f32(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044715;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh())
}

/// `ggml_table_gelu_f16`, indexed by f16 bits, as f32.
fn ggml_gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| {
                let x = half::f16::from_bits(b).to_f32();
                half::f16::from_f32(ggml_gelu_f32(x)).to_f32()
            })
            .collect()
    })
}

/// [`Activation::GeluTanhF16`]'s values.
fn ggml_gelu_f16(x: &Tensor) -> Result<Tensor> {
    let table = ggml_gelu_table();
    let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let y: Vec<f32> = v
        .iter()
        .map(|&x| {
            if x <= -10.0 {
                0.0
            } else if x >= 10.0 {
                x
            } else {
                table[half::f16::from_f32(x).to_bits() as usize]
            }
        })
        .collect();
    Tensor::from_vec(y, x.shape(), x.device())?.to_dtype(x.dtype())
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Activation> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => candle_core::bail!(
                "unsupported activation {other:?} (supported: silu, gelu_pytorch_tanh, gelu)"
            ),
        })
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => x.gelu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanhF16 => {
                let table = ggml_gelu_f16(x)?;
                if !x.track_op() {
                    return Ok(table);
                }
                // The table's values with the tanh form's gradient.
                let smooth = x.gelu()?;
                &smooth + (table - &smooth)?.detach()
            }
        }
    }
}

/// RoPE settings resolved from either spelling.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// The whole (normalised) parameter dict, for model-specific keys such as Ministral-3's
    /// `llama_4_scaling_beta`.
    pub raw: serde_json::Map<String, Value>,
}

impl RopeParams {
    /// transformers' `convert_rope_params_to_dict` + `standardize_rope_params` for one flat dict:
    /// `rope_scaling` (v4) wins over `rope_parameters` (v5), `rope_theta` inside the dict wins
    /// over the top-level key, `type` is the v4 name of `rope_type`, and scaled types default
    /// `original_max_position_embeddings` to the model's context.
    pub fn resolve(
        rope_parameters: Option<&Value>,
        rope_scaling: Option<&Value>,
        rope_theta: Option<f64>,
        default_theta: f64,
        max_position_embeddings: usize,
    ) -> Result<RopeParams> {
        let dict = match (rope_scaling, rope_parameters) {
            (Some(v), _) if !v.is_null() => Some(v),
            (_, Some(v)) if !v.is_null() => Some(v),
            _ => None,
        };
        let mut raw = match dict {
            None => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => candle_core::bail!("rope parameters must be an object, got {other}"),
        };
        let kind = raw
            .get("rope_type")
            .or_else(|| raw.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        raw.insert("rope_type".into(), Value::from(kind.clone()));
        let theta = match raw.get("rope_theta").and_then(Value::as_f64) {
            Some(t) => t,
            None => rope_theta.unwrap_or(default_theta),
        };
        raw.insert("rope_theta".into(), Value::from(theta));
        match kind.as_str() {
            "default" | "linear" => {}
            "llama3" | "yarn" => {
                raw.entry("original_max_position_embeddings")
                    .or_insert(Value::from(max_position_embeddings));
                if kind == "yarn" && raw.get("factor").is_none_or(Value::is_null) {
                    // transformers derives the factor from the two contexts when it is absent.
                    let orig = raw["original_max_position_embeddings"]
                        .as_f64()
                        .unwrap_or(max_position_embeddings as f64);
                    raw.insert(
                        "factor".into(),
                        Value::from(max_position_embeddings as f64 / orig),
                    );
                }
            }
            other => candle_core::bail!(
                "unsupported rope_type {other:?} (supported: default, linear, llama3, yarn)"
            ),
        }
        let scaling: RopeScaling = serde_json::from_value(Value::Object(raw.clone()))
            .map_err(|e| candle_core::Error::msg(format!("rope parameters ({kind}): {e}")))?;
        Ok(RopeParams {
            theta,
            scaling,
            raw,
        })
    }
}

/// An error's message without the backtraces candle attaches when `RUST_BACKTRACE` is set, so
/// messages shown to users (and compared in tests) stay the same in every environment.
pub fn error_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => error_message(inner),
        E::Context { inner, context } => format!("{context}\n{}", error_message(inner)),
        E::WithPath { inner, path } => format!("path: {path:?} {}", error_message(inner)),
        other => other.to_string(),
    }
}

/// Reads a typed config section, naming it in the error.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| candle_core::Error::msg(format!("invalid {what} config: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Layers

/// A linear layer from HF weights; FP8 checkpoints (`weight` in F8_E4M3 with a sibling
/// `weight_scale_inv`) are dequantised on load as transformers does with `dequantize=True`.
pub fn load_linear(in_dim: usize, out_dim: usize, bias: bool, w: &Weights) -> Result<Linear> {
    if !w.contains("weight_scale_inv") {
        return Linear::load(in_dim, out_dim, bias, w);
    }
    let dtype = w.dtype();
    // Scales stay f32 (exact for an f32 model; one rounding of the product otherwise).
    let q = w.get((out_dim, in_dim), "weight")?.to_dtype(DType::F32)?;
    let scale = fp8_scales(w)?.to_dtype(DType::F32)?;
    let weight = dequantize_fp8(&q, &scale)?.to_dtype(dtype)?;
    let bias = if bias {
        Some(w.get(out_dim, "bias")?)
    } else {
        None
    };
    Linear::new(weight, bias)
}

fn fp8_scales(w: &Weights) -> Result<Tensor> {
    let name = "weight_scale_inv";
    if let Ok(t) = w.get_unchecked(name) {
        return Ok(t);
    }
    // A `VarMap` only hands out tensors of a known shape: per-tensor scales are found by trying.
    for shape in [&[][..], &[1], &[1, 1]] {
        if let Ok(t) = w.get(shape, name) {
            return Ok(t);
        }
    }
    candle_core::bail!(
        "{name}: block-wise FP8 scales need a safetensors source; dequantise them (decoder::dequantize_fp8) before filling a VarMap"
    )
}

/// `weight (rows, cols)` times its inverse scales: a scalar (per-tensor) or a `(rows / bm,
/// cols / bn)` grid of blocks, the block size following from the grid as in transformers.
pub fn dequantize_fp8(weight: &Tensor, scale_inv: &Tensor) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    if scale_inv.elem_count() == 1 {
        return weight.broadcast_mul(&scale_inv.reshape(())?);
    }
    let (sr, sc) = match scale_inv.dims() {
        [sr, sc] => (*sr, *sc),
        dims => candle_core::bail!("FP8 scales must be a scalar or 2-D, got shape {dims:?}"),
    };
    if rows % sr != 0 || cols % sc != 0 {
        candle_core::bail!(
            "weight shape ({rows}, {cols}) not divisible by the scale grid ({sr}, {sc})"
        );
    }
    let (bm, bn) = (rows / sr, cols / sc);
    weight
        .reshape((sr, bm, sc, bn))?
        .broadcast_mul(&scale_inv.reshape((sr, 1, sc, 1))?)?
        .reshape((rows, cols))
}

/// Token embeddings, optionally multiplied by a constant (Gemma: `sqrt(hidden)`, in the model
/// dtype as transformers casts it).
///
/// A block-quantized GGUF table stays quantized: rows are dequantized on lookup and a tied LM
/// head multiplies with the quantized table (a dense f32 copy of a 262k vocabulary would be
/// ~0.7 GB, read in full for every generated token).
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: EmbeddingWeight,
    dtype: DType,
    scale: Option<f64>,
}

#[derive(Debug, Clone)]
enum EmbeddingWeight {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl Embedding {
    pub fn load(vocab: usize, hidden: usize, scale: Option<f64>, w: &Weights) -> Result<Embedding> {
        let weight = match w.get_quantized((vocab, hidden), "weight")? {
            Some(q) => EmbeddingWeight::Quantized(q),
            None => EmbeddingWeight::Dense(w.get((vocab, hidden), "weight")?),
        };
        Ok(Embedding {
            weight,
            dtype: w.dtype(),
            scale,
        })
    }

    /// The table `(vocab, hidden)`, dequantized when stored quantized.
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            EmbeddingWeight::Dense(t) => Ok(t.clone()),
            EmbeddingWeight::Quantized(q) => q.dequantize(&q.device())?.to_dtype(self.dtype),
        }
    }

    /// The table as a linear layer for a tied LM head: the same tensor (so a `Var` receives
    /// both gradients), or the same quantized blocks.
    pub fn as_linear(&self) -> Result<Linear> {
        match &self.weight {
            EmbeddingWeight::Dense(t) => Linear::new(t.clone(), None),
            EmbeddingWeight::Quantized(q) => Linear::quantized(q.clone(), None),
        }
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let x = match &self.weight {
            EmbeddingWeight::Dense(t) => {
                let hidden = t.dim(1)?;
                t.index_select(&ids, 0)?.reshape((b, l, hidden))?
            }
            EmbeddingWeight::Quantized(q) => {
                let hidden = q.shape().dims2()?.1;
                q.embedding(&ids)?
                    .to_dtype(self.dtype)?
                    .reshape((b, l, hidden))?
            }
        };
        match self.scale {
            // `affine` rounds the scale to the tensor dtype first, like `embed_scale.to(dtype)`.
            Some(s) => x.affine(s, 0.0),
            None => Ok(x),
        }
    }
}

/// `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    act: Activation,
}

impl Mlp {
    pub fn load(
        hidden: usize,
        intermediate: usize,
        bias: bool,
        act: Activation,
        w: &Weights,
    ) -> Result<Mlp> {
        Ok(Mlp {
            gate_proj: load_linear(hidden, intermediate, bias, &w.pp("gate_proj"))?,
            up_proj: load_linear(hidden, intermediate, bias, &w.pp("up_proj"))?,
            down_proj: load_linear(intermediate, hidden, bias, &w.pp("down_proj"))?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        // SiLU gating as one node with its own backward on CPU f32.
        if self.act == Activation::Silu
            && let Some(h) = clinstruct_nn::fused::swiglu(&gate, &up)?
        {
            return self.down_proj.forward(&h);
        }
        self.down_proj.forward(&(self.act.apply(&gate)? * up)?)
    }
}

/// Shape and behaviour of one self-attention block.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    pub hidden: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Bias on q/k/v/o (`attention_bias`).
    pub bias: bool,
    /// Multiplies `q · kᵀ`.
    pub scale: f64,
    pub softcap: Option<f64>,
    /// Keys visible to a query: itself and `window - 1` before (`None`: all earlier keys).
    pub window: Option<usize>,
    /// Gemma 3's per-head RMSNorm (`1 + w`) on queries and keys, with its eps.
    pub qk_norm_eps: Option<f64>,
    /// llama.cpp's f16 KV cache numerics ([`clinstruct_nn::attention::scaled_dot_product_f16_kv`]).
    pub f16_kv: bool,
}

/// Self-attention with HF names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `q_norm`, `k_norm`).
#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    spec: AttentionSpec,
}

impl Attention {
    pub fn load(spec: &AttentionSpec, w: &Weights) -> Result<Attention> {
        let (h, d) = (spec.hidden, spec.head_dim);
        let norm = |name: &str, eps: f64| -> Result<RmsNorm> {
            Ok(RmsNorm::new(w.pp(name).get(d, "weight")?, eps, true))
        };
        Ok(Attention {
            q_proj: load_linear(h, spec.num_heads * d, spec.bias, &w.pp("q_proj"))?,
            k_proj: load_linear(h, spec.num_kv_heads * d, spec.bias, &w.pp("k_proj"))?,
            v_proj: load_linear(h, spec.num_kv_heads * d, spec.bias, &w.pp("v_proj"))?,
            o_proj: load_linear(spec.num_heads * d, h, spec.bias, &w.pp("o_proj"))?,
            q_norm: spec.qk_norm_eps.map(|e| norm("q_norm", e)).transpose()?,
            k_norm: spec.qk_norm_eps.map(|e| norm("k_norm", e)).transpose()?,
            spec: spec.clone(),
        })
    }

    pub fn spec(&self) -> &AttentionSpec {
        &self.spec
    }

    /// `x (b, L, hidden)` → `(b, L, hidden)`.
    ///
    /// - `cos, sin`: rope tables `(b, 1, L, head_dim)` for the new positions;
    /// - `q_scale`: an extra per-position query factor `(b, 1, L, 1)` (Ministral-3);
    /// - `masks`: the additive masks of this step; the spec's window picks one;
    /// - `cache`: this layer's keys/values of earlier positions, extended in place.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        q_scale: Option<&Tensor>,
        masks: &Masks,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let s = &self.spec;
        let rows = RopeRows::new(cos, sin)?;
        // `(b, L, n·d)` → `(b, n, L, d)`, rotated or not: one pass on the CPU in f32.
        let heads = |t: Tensor, n: usize, norm: Option<&RmsNorm>, rotate: bool| -> Result<Tensor> {
            // The norm is per head row, so it runs before the layout change.
            let t = match norm {
                Some(norm) => norm.forward(&t.reshape((b, l, n, s.head_dim))?)?.reshape((
                    b,
                    l,
                    n * s.head_dim,
                ))?,
                None => t,
            };
            if let Some(y) = split_heads(&t, 1, n, usize::from(rotate), rows.as_ref())? {
                return y.squeeze(0);
            }
            let y = t.reshape((b, l, n, s.head_dim))?.transpose(1, 2)?;
            if rotate {
                apply_rotary(&y, cos, sin)
            } else {
                y.contiguous()
            }
        };
        let mut q = heads(
            self.q_proj.forward(x)?,
            s.num_heads,
            self.q_norm.as_ref(),
            true,
        )?;
        let k = heads(
            self.k_proj.forward(x)?,
            s.num_kv_heads,
            self.k_norm.as_ref(),
            true,
        )?;
        let v = heads(self.v_proj.forward(x)?, s.num_kv_heads, None, false)?;
        if let Some(f) = q_scale {
            q = q.broadcast_mul(f)?;
        }
        // llama.cpp's cache holds f16 keys and values: round the new ones as they enter it.
        let (k, v) = if s.f16_kv {
            (round_f16(&k)?, round_f16(&v)?)
        } else {
            (k, v)
        };
        let opts = AttentionOpts {
            scale: s.scale,
            softcap: s.softcap,
        };
        // Full-sequence forwards (training, prefill without a cache) take the memory-efficient
        // attention where it applies; cached steps and llama.cpp's f16-KV numerics keep the
        // op-by-op path.
        let flash = match cache {
            None if !s.f16_kv => {
                let span = Span::Causal { window: s.window };
                flash_attention(&q, &k, &v, span, masks.key_padding()?.as_ref(), opts)?
            }
            _ => None,
        };
        let y = match flash {
            Some(y) => y,
            None => {
                let (k, v) = match cache {
                    Some(c) => c.append(&k, &v)?,
                    None => (k, v),
                };
                let sdpa = if s.f16_kv {
                    scaled_dot_product_f16_kv
                } else {
                    scaled_dot_product
                };
                sdpa(&q, &k, &v, Some(&masks.get(s.window)?), opts)?
            }
        };
        let y = match merge_heads(&y)? {
            Some(y) => y,
            None => y
                .transpose(1, 2)?
                .reshape((b, l, s.num_heads * s.head_dim))?,
        };
        self.o_proj.forward(&y)
    }
}

/// The LM head: its own weight or the embedding matrix (tied), with optional final soft-capping.
#[derive(Debug, Clone)]
pub struct LmHead {
    pub linear: Linear,
    softcap: Option<f64>,
}

impl LmHead {
    /// `tied`: reuse `embed` (the same tensor, so a `Var` receives both gradients); otherwise
    /// read `lm_head.weight` from `w`.
    pub fn load(
        hidden: usize,
        vocab: usize,
        tied: Option<&Embedding>,
        softcap: Option<f64>,
        w: &Weights,
    ) -> Result<LmHead> {
        let linear = match tied {
            Some(e) => e.as_linear()?,
            None => load_linear(hidden, vocab, false, w)?,
        };
        Ok(LmHead { linear, softcap })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.linear.forward(x)?;
        match self.softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }
}

impl VocabHead for LmHead {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)
    }

    /// The fused LM-head loss on CPU for a frozen head (dense, or quantized and dequantised
    /// for the call); a trainable or adapted head takes the logits path.
    fn fused_cross_entropy(
        &self,
        x: &Tensor,
        targets: &[u32],
        row_weights: &[f32],
    ) -> Result<Option<Tensor>> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() != 2 {
            return Ok(None);
        }
        let Some(w) = self.linear.frozen_f32_weight()? else {
            return Ok(None);
        };
        linear_cross_entropy(x, &w, targets, row_weights, self.softcap).map(Some)
    }
}

// ---------------------------------------------------------------------------------------------
// One forward step: input checks and masks

/// Validates the shapes of one `CausalLm::forward` call; returns `(batch, new_len)`.
pub fn check_inputs(
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    position_ids: &Tensor,
    past: usize,
) -> Result<(usize, usize)> {
    let (b, l) = input_ids.dims2().map_err(|_| {
        candle_core::Error::msg(format!(
            "input_ids must be (batch, len), got shape {:?}",
            input_ids.dims()
        ))
    })?;
    if position_ids.dims() != [b, l] {
        candle_core::bail!(
            "position_ids has shape {:?}, expected (batch, len) = ({b}, {l})",
            position_ids.dims()
        );
    }
    if let Some(m) = attention_mask
        && m.dims() != [b, past + l]
    {
        candle_core::bail!(
            "attention_mask has shape {:?}, expected (batch, cached + new) = ({b}, {})",
            m.dims(),
            past + l
        );
    }
    Ok((b, l))
}

/// The masks of one step, built on first use: the additive dense masks (full causal and one
/// per sliding window) for the op-by-op attention, and the key-padding flags for the
/// memory-efficient one, which needs no `L × L` mask at all.
#[derive(Debug)]
pub struct Masks {
    batch: usize,
    q_len: usize,
    past: usize,
    attention_mask: Option<Tensor>,
    device: Device,
    dense: Mutex<Vec<(Option<usize>, Tensor)>>,
    key_padding: OnceLock<Option<Arc<[u8]>>>,
}

impl Masks {
    /// Queries are the last `q_len` of `past + q_len` positions; `attention_mask (b, past +
    /// q_len)` marks padding (left or right) among them.
    pub fn new(
        batch: usize,
        q_len: usize,
        past: usize,
        attention_mask: Option<&Tensor>,
        device: &Device,
    ) -> Result<Masks> {
        Ok(Masks {
            batch,
            q_len,
            past,
            attention_mask: attention_mask.cloned(),
            device: device.clone(),
            dense: Mutex::new(Vec::new()),
            key_padding: OnceLock::new(),
        })
    }

    /// The additive `(b, 1, q_len, past + q_len)` mask for a sliding `window` (or none).
    pub fn get(&self, window: Option<usize>) -> Result<Tensor> {
        let k_len = self.past + self.q_len;
        // A window covering every key is the full mask.
        let window = window.filter(|&w| w < k_len);
        let mut dense = self
            .dense
            .lock()
            .map_err(|_| candle_core::Error::msg("mask cache poisoned"))?;
        if let Some((_, m)) = dense.iter().find(|(w, _)| *w == window) {
            return Ok(m.clone());
        }
        let m = build_mask(
            self.batch,
            self.q_len,
            k_len,
            MaskKind::Causal,
            window,
            self.attention_mask.as_ref(),
            &self.device,
        )?;
        dense.push((window, m.clone()));
        Ok(m)
    }

    /// `(b · (past + q_len))` flags, 1 for real keys, for [`flash_attention`].
    pub fn key_padding(&self) -> Result<Option<Arc<[u8]>>> {
        if let Some(p) = self.key_padding.get() {
            return Ok(p.clone());
        }
        let p = self
            .attention_mask
            .as_ref()
            .map(flash::key_padding)
            .transpose()?;
        Ok(self.key_padding.get_or_init(|| p).clone())
    }
}

/// One `Option<&mut KvCache>` per layer, from an optional `LmCache`.
pub(crate) fn layer_caches(
    cache: Option<&mut LmCache>,
    num_layers: usize,
) -> Result<Vec<Option<&mut KvCache>>> {
    match cache {
        None => Ok((0..num_layers).map(|_| None).collect()),
        Some(c) => {
            if c.layers.len() != num_layers {
                candle_core::bail!(
                    "cache has {} layers, the model {num_layers}",
                    c.layers.len()
                );
            }
            Ok(c.layers.iter_mut().map(Some).collect())
        }
    }
}

/// Runs one decoder layer. It gets its own dropout scope when the caller runs in one (LoRA
/// dropout, so that a resumed or recomputed run draws the same masks), and it is recomputed in
/// the backward pass when `checkpointing` collects the layers' gradients. Cached steps are
/// inference and never checkpointed. `block` builds the owned, replayable form of the layer
/// (only needed when checkpointing); `forward` runs it directly.
pub(crate) fn run_layer(
    x: &Tensor,
    checkpointing: Option<&Gradients>,
    kv: Option<&mut KvCache>,
    block: impl FnOnce() -> Block,
    forward: impl FnOnce(&Tensor, Option<&mut KvCache>) -> Result<Tensor>,
) -> Result<Tensor> {
    let seed = dropout::nested_seed();
    match (checkpointing, kv) {
        (Some(grads), None) => checkpoint_seeded(x, grads, block(), seed.unwrap_or_else(next_seed)),
        (_, kv) => dropout::maybe_scoped(seed, || forward(x, kv)),
    }
}

// ---------------------------------------------------------------------------------------------
// Hidden states, logits and a greedy loop

/// A causal LM that also exposes its final hidden states, so callers can take logits of only
/// the positions they need (generation: the last; training: chunked losses) instead of
/// materialising `(b, L, vocab)`.
pub trait DecoderLm: CausalLm {
    /// Hidden states `(b, L, hidden)` after the final norm; arguments as [`CausalLm::forward`].
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor>;

    /// The output layer (also what a training loss fuses with its cross-entropy).
    fn lm_head(&self) -> &LmHead;

    /// Logits for hidden states of any leading shape (with final soft-capping where configured).
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head().forward(hidden)
    }
}

/// Implements `CausalLm` for a model with `hidden_states`, `logits` and an `info` field.
macro_rules! impl_causal_lm {
    ($t:ty) => {
        impl $crate::lm::CausalLm for $t {
            fn forward(
                &self,
                input_ids: &candle_core::Tensor,
                attention_mask: Option<&candle_core::Tensor>,
                position_ids: &candle_core::Tensor,
                cache: Option<&mut $crate::lm::LmCache>,
            ) -> candle_core::Result<candle_core::Tensor> {
                use $crate::decoder::DecoderLm;
                let h = self.hidden_states(input_ids, attention_mask, position_ids, cache)?;
                self.logits(&h)
            }

            fn forward_last(
                &self,
                input_ids: &candle_core::Tensor,
                attention_mask: Option<&candle_core::Tensor>,
                position_ids: &candle_core::Tensor,
                cache: Option<&mut $crate::lm::LmCache>,
            ) -> candle_core::Result<candle_core::Tensor> {
                use $crate::decoder::DecoderLm;
                let h = self.hidden_states(input_ids, attention_mask, position_ids, cache)?;
                let l = h.dim(1)?;
                self.logits(&h.narrow(1, l - 1, 1)?)
            }

            fn info(&self) -> &$crate::lm::LmInfo {
                &self.info
            }
        }
    };
}
pub(crate) use impl_causal_lm;

/// Position ids as `generate` derives them from a mask: `cumsum(mask) - 1`, 0 on padding.
pub fn positions_from_mask(mask: &[Vec<u32>]) -> Vec<Vec<u32>> {
    mask.iter()
        .map(|row| {
            let mut n = 0u32;
            row.iter()
                .map(|&m| {
                    n += m;
                    if m == 0 { 0 } else { n - 1 }
                })
                .collect()
        })
        .collect()
}

/// Greedy decoding as transformers' `generate(do_sample=False)`: prompt rows may be left-padded
/// (`attention_mask`), a row that emits an eos id is finished and continues with the pad id,
/// and decoding stops after `max_new_tokens` or when every row is finished. Returns the prompt
/// plus the new tokens, one row per prompt.
///
/// Minimal on purpose (no sampling, no logits processors): the parity reference for the
/// generation module.
pub fn greedy_generate<M: DecoderLm + ?Sized>(
    model: &M,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let device = input_ids.device();
    let (b, l) = input_ids.dims2()?;
    let mut seqs: Vec<Vec<u32>> = input_ids.to_dtype(DType::U32)?.to_vec2()?;
    let mut mask: Vec<Vec<u32>> = match attention_mask {
        Some(m) => m.to_dtype(DType::U32)?.to_vec2()?,
        None => vec![vec![1; l]; b],
    };
    let info = model.info();
    let eos = &info.eos_token_ids;
    let pad = info.pad_token_id.or(eos.first().copied()).unwrap_or(0);
    let positions = positions_from_mask(&mask);
    let mut last_pos: Vec<u32> = positions.iter().map(|r| r[l - 1]).collect();
    let mut unfinished = vec![true; b];
    let mut cache = model.new_cache();
    let mut step_ids = input_ids.to_dtype(DType::U32)?;
    let mut step_pos = Tensor::new(positions, device)?;
    for _ in 0..max_new_tokens {
        let flat: Vec<u32> = mask.concat();
        let mask_t = Tensor::from_vec(flat, (b, mask[0].len()), device)?;
        let h = model.hidden_states(&step_ids, Some(&mask_t), &step_pos, Some(&mut cache))?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        let next: Vec<u32> = model
            .logits(&last)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .argmax(D::Minus1)?
            .to_vec1()?;
        let mut tokens = Vec::with_capacity(b);
        for i in 0..b {
            let t = if unfinished[i] { next[i] } else { pad };
            if eos.contains(&t) {
                unfinished[i] = false;
            }
            seqs[i].push(t);
            mask[i].push(1);
            last_pos[i] += 1;
            tokens.push(t);
        }
        if !unfinished.iter().any(|&u| u) {
            break;
        }
        step_ids = Tensor::from_vec(tokens, (b, 1), device)?;
        step_pos = Tensor::from_vec(last_pos.clone(), (b, 1), device)?;
    }
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_gelu_is_the_tanh_form_in_f16_with_its_gradient() -> Result<()> {
        let xs = [
            -12.0f32,
            -10.0,
            -3.3,
            -0.5,
            0.0,
            0.123_456,
            1.0,
            2.718_281_7,
            9.99,
            10.0,
            25.0,
        ];
        let x = Tensor::new(&xs[..], &Device::Cpu)?;
        let y: Vec<f32> = Activation::GeluTanhF16.apply(&x)?.to_vec1()?;
        let smooth: Vec<f32> = x.gelu()?.to_vec1()?;
        for ((&x, &y), &s) in xs.iter().zip(&y).zip(&smooth) {
            if x <= -10.0 {
                assert_eq!(y, 0.0);
            } else if x >= 10.0 {
                assert_eq!(y, x);
            } else {
                assert_eq!(half::f16::from_f32(y).to_f32(), y, "{x}: not an f16 value");
                // One f16 rounding of the input and one of the output.
                assert!(
                    (y - s).abs() <= 1e-3 * (s.abs() + x.abs()) + 1e-7,
                    "{x}: {y} vs {s}"
                );
            }
        }
        let v = candle_core::Var::from_tensor(&x)?;
        let g = Activation::GeluTanhF16
            .apply(v.as_tensor())?
            .sum_all()?
            .backward()?;
        let g_smooth = v.as_tensor().gelu()?.sum_all()?.backward()?;
        let grad = |g: &candle_core::backprop::GradStore| -> Result<Vec<f32>> {
            g.get(v.as_tensor()).expect("gradient").to_vec1()
        };
        assert_eq!(grad(&g)?, grad(&g_smooth)?);
        Ok(())
    }

    #[test]
    fn rope_spellings_agree() -> Result<()> {
        let v4: Value = serde_json::json!({"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let v5: Value = serde_json::json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let a = RopeParams::resolve(
            v4.get("rope_parameters"),
            v4.get("rope_scaling"),
            v4.get("rope_theta").and_then(Value::as_f64),
            10_000.0,
            131072,
        )?;
        let b = RopeParams::resolve(v5.get("rope_parameters"), None, None, 10_000.0, 131072)?;
        assert_eq!(a.theta, 500000.0);
        assert_eq!(a.scaling, b.scaling);
        let none = RopeParams::resolve(None, Some(&Value::Null), Some(1e6), 1e4, 10)?;
        assert_eq!((none.theta, none.scaling), (1e6, RopeScaling::Default));
        let yarn = RopeParams::resolve(
            Some(&serde_json::json!({"rope_type": "yarn", "original_max_position_embeddings": 16})),
            None,
            None,
            1e4,
            64,
        )?;
        assert!(matches!(yarn.scaling, RopeScaling::Yarn { factor, .. } if factor == 4.0));
        let err = RopeParams::resolve(
            Some(&serde_json::json!({"rope_type": "dynamic", "factor": 2.0})),
            None,
            None,
            1e4,
            64,
        )
        .unwrap_err();
        assert_eq!(
            error_message(&err),
            "unsupported rope_type \"dynamic\" (supported: default, linear, llama3, yarn)"
        );
        Ok(())
    }

    #[test]
    fn fp8_block_dequantisation() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::ones((4, 6), DType::F32, &dev)?;
        let s = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev)?;
        let d: Vec<Vec<f32>> = dequantize_fp8(&w, &s)?.to_vec2()?;
        assert_eq!(d[0], vec![1., 1., 2., 2., 3., 3.]);
        assert_eq!(d[3], vec![4., 4., 5., 5., 6., 6.]);
        let scalar = Tensor::new(0.5f32, &dev)?;
        let d: Vec<Vec<f32>> = dequantize_fp8(&w, &scalar)?.to_vec2()?;
        assert_eq!(d[2][5], 0.5);
        let bad = Tensor::ones((3, 3), DType::F32, &dev)?;
        assert_eq!(
            error_message(&dequantize_fp8(&w, &bad).unwrap_err()),
            "weight shape (4, 6) not divisible by the scale grid (3, 3)"
        );
        Ok(())
    }

    #[test]
    fn generate_positions() {
        assert_eq!(
            positions_from_mask(&[vec![0, 0, 1, 1], vec![1, 1, 1, 1]]),
            vec![vec![0, 0, 0, 1], vec![0, 1, 2, 3]]
        );
    }
}
