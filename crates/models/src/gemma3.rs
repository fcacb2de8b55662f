//! Gemma 3 text (`Gemma3ForCausalLM`, e.g. Gemma-3-1B-it) and the text tower of
//! `Gemma3ForConditionalGeneration` (Gemma 3 4B+, MedGemma), read out of the multimodal
//! checkpoint with its `text_config`.
//!
//! Differences from Llama: embeddings times `sqrt(hidden)` (rounded to the model dtype), RMSNorm
//! scales `1 + w`, q/k norms, four norms per block (pre/post attention, pre/post MLP), GELU-tanh,
//! scores scaled by `query_pre_attn_scalar^-0.5`, sliding-window and full layers (`layer_types`
//! or every `sliding_window_pattern`-th layer full) with their own rope (local theta, no scaling;
//! global theta with the configured scaling), and final logit soft-capping when configured.
//!
//! `attn_logit_softcapping` is read but not applied: transformers' Gemma 3 attention never
//! passes it to the attention function (Gemma 3 replaced Gemma 2's score capping with q/k
//! norms; released configs set it to null), and parity with transformers is the contract.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use clinstruct_nn::Weights;
use clinstruct_nn::checkpoint::{Block, Gradients};
use clinstruct_nn::kv_cache::KvCache;
use clinstruct_nn::norm::RmsNorm;
use clinstruct_nn::rope::RotaryEmbedding;
use serde::Deserialize;
use serde_json::Value;

use crate::decoder::{
    Activation, Attention, AttentionSpec, DecoderLm, Embedding, LmHead, Masks, Mlp, RopeParams,
    TokenIds, check_inputs, impl_causal_lm, layer_caches, parse_config, run_layer,
};
use crate::lm::{LmCache, LmInfo};

// transformers' Gemma3TextConfig defaults: multimodal configs on the hub rely on them (their
// `text_config` often lists only the sizes).
fn d_vocab() -> usize {
    262_208
}
fn d_hidden() -> usize {
    2304
}
fn d_intermediate() -> usize {
    9216
}
fn d_layers() -> usize {
    26
}
fn d_heads() -> usize {
    8
}
fn d_kv_heads() -> usize {
    4
}
fn d_head_dim() -> usize {
    256
}
fn d_max_pos() -> usize {
    131_072
}
fn d_eps() -> f64 {
    1e-6
}
fn d_scalar() -> f64 {
    256.0
}
fn d_window() -> Option<usize> {
    Some(4096)
}
fn d_true() -> bool {
    true
}
fn d_eos() -> Option<TokenIds> {
    Some(TokenIds::One(1))
}
fn d_bos() -> Option<u32> {
    Some(2)
}
fn d_pad() -> Option<u32> {
    Some(0)
}

/// `config.json` of `Gemma3ForCausalLM`, or the `text_config` of a multimodal Gemma 3.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_head_dim")]
    pub head_dim: usize,
    /// v5 and v4 name; `hidden_act` is an older alias.
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    /// v5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// v4: global theta, local theta and the global layers' scaling.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "d_scalar")]
    pub query_pre_attn_scalar: f64,
    #[serde(default = "d_window")]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// v4: every n-th layer is global (default 6).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_bos")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<u32>,
    /// Not an HF key: set by clinstruct's GGUF loader for llama.cpp's CPU numerics where they
    /// differ from transformers' (f16 GELU table, f16 KV cache), so greedy decoding follows
    /// llama.cpp through near-ties.
    #[serde(default)]
    pub ggml_numerics: bool,
}

/// Resolved hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Spec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub act: Activation,
    pub rms_norm_eps: f64,
    pub attention_bias: bool,
    pub query_pre_attn_scalar: f64,
    pub sliding_window: Option<usize>,
    /// Per layer: true for sliding-window layers.
    pub sliding: Vec<bool>,
    pub global_rope: RopeParams,
    pub local_rope: RopeParams,
    /// `attn_logit_softcapping` as configured; unused (see the module docs).
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// llama.cpp's f16 KV cache numerics in attention (`ggml_numerics`).
    pub f16_kv: bool,
    pub tie_word_embeddings: bool,
    pub info: LmInfo,
}

impl Config {
    pub fn spec(&self) -> Result<Gemma3Spec> {
        if self.use_bidirectional_attention == Some(true) {
            candle_core::bail!(
                "use_bidirectional_attention (EmbeddingGemma) is not a causal LM; not supported"
            );
        }
        let n = self.num_hidden_layers;
        let sliding = match &self.layer_types {
            Some(types) => {
                if types.len() != n {
                    candle_core::bail!("layer_types has {} entries for {n} layers", types.len());
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(candle_core::Error::msg(format!(
                            "unknown layer type {other:?} (expected sliding_attention or full_attention)"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => {
                let p = self.sliding_window_pattern.unwrap_or(6).max(1);
                (0..n).map(|i| !(i + 1).is_multiple_of(p)).collect()
            }
        };
        let nested = |key: &str| {
            self.rope_parameters
                .as_ref()
                .and_then(|r| r.get(key))
                .filter(|v| !v.is_null())
        };
        // transformers merges a v4 `rope_scaling` into the global layers' parameters only.
        let global = match (nested("full_attention"), &self.rope_scaling) {
            (Some(Value::Object(full)), Some(Value::Object(scaling))) => {
                let mut merged = full.clone();
                merged.extend(scaling.clone());
                Some(Value::Object(merged))
            }
            (Some(full), None | Some(Value::Null)) => Some(full.clone()),
            (_, scaling) => scaling.clone(),
        };
        let max_pos = self.max_position_embeddings;
        let global_rope =
            RopeParams::resolve(global.as_ref(), None, self.rope_theta, 1_000_000.0, max_pos)?;
        let local_rope = RopeParams::resolve(
            nested("sliding_attention"),
            None,
            self.rope_local_base_freq,
            10_000.0,
            max_pos,
        )?;
        let act = self
            .hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
            .unwrap_or("gelu_pytorch_tanh");
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            candle_core::bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        Ok(Gemma3Spec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            act: match Activation::from_hf(act)? {
                Activation::GeluTanh if self.ggml_numerics => Activation::GeluTanhF16,
                a => a,
            },
            rms_norm_eps: self.rms_norm_eps,
            attention_bias: self.attention_bias,
            query_pre_attn_scalar: self.query_pre_attn_scalar,
            sliding_window: self.sliding_window,
            sliding,
            global_rope,
            local_rope,
            attn_softcap: self.attn_logit_softcapping,
            final_softcap: self.final_logit_softcapping,
            f16_kv: self.ggml_numerics,
            tie_word_embeddings: self.tie_word_embeddings,
            info: LmInfo {
                vocab_size: self.vocab_size,
                num_layers: n,
                max_position_embeddings: max_pos,
                eos_token_ids: self.eos_token_id.as_ref().map_or(vec![], TokenIds::to_vec),
                bos_token_id: self.bos_token_id,
                pad_token_id: self.pad_token_id,
            },
        })
    }
}

/// `config.json` of `Gemma3ForConditionalGeneration`: what the text tower needs.
#[derive(Debug, Clone, Deserialize)]
pub struct MultimodalConfig {
    pub text_config: Value,
    /// The wrapper's flag decides tying in transformers (class default true).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl MultimodalConfig {
    pub fn spec(&self) -> Result<Gemma3Spec> {
        let text: Config = parse_config(&self.text_config, "gemma3 text_config")?;
        let mut spec = text.spec()?;
        spec.tie_word_embeddings = self.tie_word_embeddings.unwrap_or(true);
        if let Some(e) = &self.eos_token_id {
            spec.info.eos_token_ids = e.to_vec();
        }
        spec.info.bos_token_id = self.bos_token_id.or(spec.info.bos_token_id);
        spec.info.pad_token_id = self.pad_token_id.or(spec.info.pad_token_id);
        Ok(spec)
    }
}

/// `layers.N`: norm → attention → norm, residual; norm → MLP → norm, residual.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub pre_feedforward_layernorm: RmsNorm,
    pub mlp: Mlp,
    pub post_feedforward_layernorm: RmsNorm,
    sliding: bool,
}

impl DecoderLayer {
    pub fn load(spec: &Gemma3Spec, sliding: bool, w: &Weights) -> Result<DecoderLayer> {
        let h = spec.hidden_size;
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm::new(
                w.pp(name).get(h, "weight")?,
                spec.rms_norm_eps,
                true,
            ))
        };
        let attn = AttentionSpec {
            hidden: h,
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            bias: spec.attention_bias,
            scale: spec.query_pre_attn_scalar.powf(-0.5),
            softcap: None,
            window: if sliding { spec.sliding_window } else { None },
            qk_norm_eps: Some(spec.rms_norm_eps),
            f16_kv: spec.f16_kv,
        };
        Ok(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(&attn, &w.pp("self_attn"))?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            pre_feedforward_layernorm: norm("pre_feedforward_layernorm")?,
            mlp: Mlp::load(h, spec.intermediate_size, false, spec.act, &w.pp("mlp"))?,
            post_feedforward_layernorm: norm("post_feedforward_layernorm")?,
            sliding,
        })
    }

    pub fn is_sliding(&self) -> bool {
        self.sliding
    }

    pub fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        masks: &Masks,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            &rope.0,
            &rope.1,
            None,
            masks,
            cache,
        )?;
        let x = (x + self.post_attention_layernorm.forward(&h)?)?;
        let h = self
            .mlp
            .forward(&self.pre_feedforward_layernorm.forward(&x)?)?;
        x + self.post_feedforward_layernorm.forward(&h)?
    }
}

/// A Gemma 3 causal LM (text).
#[derive(Debug, Clone)]
pub struct Gemma3 {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: LmHead,
    global_rotary: RotaryEmbedding,
    local_rotary: RotaryEmbedding,
    spec: Gemma3Spec,
    info: LmInfo,
    /// Set while gradient checkpointing is on: where the layers' parameter gradients go.
    checkpointing: Option<Gradients>,
}

clinstruct_nn::impl_checkpointed!(Gemma3);

impl Gemma3 {
    /// A `Gemma3ForCausalLM` checkpoint: `model.*` (and `lm_head.weight` when untied).
    pub fn load(cfg: &Config, w: &Weights) -> Result<Gemma3> {
        Gemma3::new(&cfg.spec()?, &w.pp("model"), &w.pp("lm_head"))
    }

    /// The text tower of a `Gemma3ForConditionalGeneration` checkpoint, in the layout
    /// transformers saves (`language_model.model.*`, as on the hub) or in its module names
    /// (`model.language_model.*`).
    pub fn load_multimodal(cfg: &MultimodalConfig, w: &Weights) -> Result<Gemma3> {
        let (model, head) = multimodal_prefixes(w);
        Gemma3::new(&cfg.spec()?, &w.pp(model), &w.pp(head))
    }

    pub fn new(spec: &Gemma3Spec, model: &Weights, lm_head: &Weights) -> Result<Gemma3> {
        let h = spec.hidden_size;
        let embed_tokens = Embedding::load(
            spec.vocab_size,
            h,
            Some((h as f64).sqrt()),
            &model.pp("embed_tokens"),
        )?;
        let layers = spec
            .sliding
            .iter()
            .enumerate()
            .map(|(i, &s)| DecoderLayer::load(spec, s, &model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(model.pp("norm").get(h, "weight")?, spec.rms_norm_eps, true);
        let lm_head = LmHead::load(
            h,
            spec.vocab_size,
            spec.tie_word_embeddings.then_some(&embed_tokens),
            spec.final_softcap,
            lm_head,
        )?;
        let max_pos = spec.info.max_position_embeddings;
        let rotary =
            |r: &RopeParams| RotaryEmbedding::new(spec.head_dim, r.theta, &r.scaling, max_pos);
        Ok(Gemma3 {
            embed_tokens,
            layers,
            norm,
            lm_head,
            global_rotary: rotary(&spec.global_rope),
            local_rotary: rotary(&spec.local_rope),
            info: spec.info.clone(),
            spec: spec.clone(),
            checkpointing: None,
        })
    }

    pub fn spec(&self) -> &Gemma3Spec {
        &self.spec
    }

    pub(crate) fn info_mut(&mut self) -> &mut LmInfo {
        &mut self.info
    }
}

/// `(decoder prefix, lm_head prefix)` of a multimodal checkpoint: the saved (hub) layout
/// `language_model.model.*` or transformers 5's module names `model.language_model.*`.
pub(crate) fn multimodal_prefixes(w: &Weights) -> (&'static str, &'static str) {
    if w.contains("model.language_model.embed_tokens.weight") {
        ("model.language_model", "lm_head")
    } else {
        ("language_model.model", "language_model.lm_head")
    }
}

impl DecoderLm for Gemma3 {
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (b, l) = check_inputs(input_ids, attention_mask, position_ids, past)?;
        let masks = Arc::new(Masks::new(b, l, past, attention_mask, input_ids.device())?);
        let mut x = self.embed_tokens.forward(input_ids)?;
        let global = self.global_rotary.cos_sin(position_ids, x.dtype())?;
        let local = self.local_rotary.cos_sin(position_ids, x.dtype())?;
        for (layer, kv) in self
            .layers
            .iter()
            .zip(layer_caches(cache, self.layers.len())?)
        {
            let rope = if layer.sliding { &local } else { &global };
            let block = || -> Block {
                let (layer, rope, masks) = (layer.clone(), rope.clone(), masks.clone());
                Arc::new(move |x: &Tensor| layer.forward(x, &rope, &masks, None))
            };
            x = run_layer(&x, self.checkpointing.as_ref(), kv, block, |x, kv| {
                layer.forward(x, rope, &masks, kv)
            })?;
        }
        self.norm.forward(&x)
    }

    fn lm_head(&self) -> &LmHead {
        &self.lm_head
    }
}

impl_causal_lm!(Gemma3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v5_configs_resolve_alike() -> Result<()> {
        let v4: Config = serde_json::from_value(serde_json::json!({
            "hidden_size": 64, "num_hidden_layers": 7, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6
        }))
        .unwrap();
        let mut types = vec!["sliding_attention"; 7];
        types[5] = "full_attention";
        let v5: Config = serde_json::from_value(serde_json::json!({
            "hidden_size": 64, "num_hidden_layers": 7, "layer_types": types,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}
            }
        }))
        .unwrap();
        let (a, b) = (v4.spec()?, v5.spec()?);
        assert_eq!(a.sliding, vec![true, true, true, true, true, false, true]);
        assert_eq!(a.sliding, b.sliding);
        assert_eq!(a.global_rope.scaling, b.global_rope.scaling);
        assert_eq!((a.global_rope.theta, a.local_rope.theta), (1e6, 1e4));
        assert_eq!(a.local_rope.scaling, b.local_rope.scaling);
        // Defaults of Gemma3TextConfig.
        assert_eq!(
            (a.head_dim, a.vocab_size, a.query_pre_attn_scalar),
            (256, 262_208, 256.0)
        );
        assert_eq!(a.act, Activation::GeluTanh);
        Ok(())
    }
}
