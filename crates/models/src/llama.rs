//! Llama (Llama-3.2-1B-Instruct and kin): pre-norm blocks, GQA, rope with llama3/linear/YaRN
//! scaling, optional q/k/v/o and MLP biases, explicit `head_dim`, tied or separate LM head.
//!
//! [`Llama`] is also the body of Mistral (a sliding window) and of the Ministral-3 text tower
//! (YaRN and a llama-4 query temperature): those files resolve their configs to a
//! [`LlamaSpec`] and name their weights; the numerics live here once.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use clinstruct_nn::Weights;
use clinstruct_nn::checkpoint::{Block, Gradients};
use clinstruct_nn::norm::RmsNorm;
use clinstruct_nn::rope::{RopeScaling, RotaryEmbedding};
use serde::Deserialize;
use serde_json::Value;

use crate::decoder::{
    Activation, Attention, AttentionSpec, DecoderLm, Embedding, LmHead, Masks, Mlp, RopeParams,
    TokenIds, check_inputs, impl_causal_lm, layer_caches, run_layer,
};
use crate::lm::{LmCache, LmInfo};

fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}

/// `config.json` of `LlamaForCausalLM` (transformers v4 and v5 spellings).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// v4: `rope_theta` + `rope_scaling`; v5: `rope_parameters`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl Config {
    pub fn spec(&self) -> Result<LlamaSpec> {
        let rope = RopeParams::resolve(
            self.rope_parameters.as_ref(),
            self.rope_scaling.as_ref(),
            self.rope_theta,
            10_000.0,
            self.max_position_embeddings,
        )?;
        Ok(LlamaSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads),
            act: Activation::from_hf(&self.hidden_act)?,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings,
            sliding_window: None,
            attn_temperature: None,
            info: LmInfo {
                vocab_size: self.vocab_size,
                num_layers: self.num_hidden_layers,
                max_position_embeddings: self.max_position_embeddings,
                eos_token_ids: self.eos_token_id.as_ref().map_or(vec![], TokenIds::to_vec),
                bos_token_id: self.bos_token_id,
                pad_token_id: self.pad_token_id,
            },
        })
    }
}

/// Resolved hyper-parameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaSpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub act: Activation,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    /// Mistral: every layer sees itself and `window - 1` earlier positions.
    pub sliding_window: Option<usize>,
    /// Ministral-3 (llama-4 style): queries times `1 + beta · ln(1 + floor(pos / original))`,
    /// as `(beta, original_max_position_embeddings)`.
    pub attn_temperature: Option<(f64, f64)>,
    pub info: LmInfo,
}

impl LlamaSpec {
    pub fn check(&self) -> Result<()> {
        if self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            candle_core::bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if self.sliding_window == Some(0) {
            candle_core::bail!("sliding_window must be positive");
        }
        Ok(())
    }
}

/// `model.layers.N`: input norm, attention, residual; post-attention norm, MLP, residual.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn load(spec: &LlamaSpec, w: &Weights) -> Result<DecoderLayer> {
        let h = spec.hidden_size;
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm::new(
                w.pp(name).get(h, "weight")?,
                spec.rms_norm_eps,
                false,
            ))
        };
        let attn = AttentionSpec {
            hidden: h,
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: spec.head_dim,
            bias: spec.attention_bias,
            scale: 1.0 / (spec.head_dim as f64).sqrt(),
            softcap: None,
            window: spec.sliding_window,
            qk_norm_eps: None,
            f16_kv: false,
        };
        Ok(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(&attn, &w.pp("self_attn"))?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp::load(
                h,
                spec.intermediate_size,
                spec.mlp_bias,
                spec.act,
                &w.pp("mlp"),
            )?,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        q_scale: Option<&Tensor>,
        masks: &Masks,
        cache: Option<&mut clinstruct_nn::kv_cache::KvCache>,
    ) -> Result<Tensor> {
        let h = self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            &rope.0,
            &rope.1,
            q_scale,
            masks,
            cache,
        )?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        x + h
    }
}

/// A Llama-family causal LM.
#[derive(Debug, Clone)]
pub struct Llama {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: LmHead,
    rotary: RotaryEmbedding,
    spec: LlamaSpec,
    pub(crate) info: LmInfo,
    /// Set while gradient checkpointing is on: where the layers' parameter gradients go.
    checkpointing: Option<Gradients>,
}

clinstruct_nn::impl_checkpointed!(Llama);

impl Llama {
    /// A `LlamaForCausalLM` checkpoint: `model.*` and `lm_head.weight`.
    pub fn load(cfg: &Config, w: &Weights) -> Result<Llama> {
        Llama::new(&cfg.spec()?, &w.pp("model"), &w.pp("lm_head"))
    }

    /// `model`: the decoder's weights (`embed_tokens`, `layers.N`, `norm`); `lm_head`: where
    /// `weight` of an untied head lives.
    pub fn new(spec: &LlamaSpec, model: &Weights, lm_head: &Weights) -> Result<Llama> {
        spec.check()?;
        let embed_tokens = Embedding::load(
            spec.vocab_size,
            spec.hidden_size,
            None,
            &model.pp("embed_tokens"),
        )?;
        let layers = (0..spec.num_layers)
            .map(|i| DecoderLayer::load(spec, &model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(
            model.pp("norm").get(spec.hidden_size, "weight")?,
            spec.rms_norm_eps,
            false,
        );
        let lm_head = LmHead::load(
            spec.hidden_size,
            spec.vocab_size,
            spec.tie_word_embeddings.then_some(&embed_tokens),
            None,
            lm_head,
        )?;
        let rotary = RotaryEmbedding::new(
            spec.head_dim,
            spec.rope_theta,
            &spec.rope_scaling,
            spec.info.max_position_embeddings,
        );
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            info: spec.info.clone(),
            spec: spec.clone(),
            checkpointing: None,
        })
    }

    pub fn spec(&self) -> &LlamaSpec {
        &self.spec
    }

    pub(crate) fn info_mut(&mut self) -> &mut LmInfo {
        &mut self.info
    }

    /// Ministral-3's query factor `(b, 1, L, 1)` for position ids `(b, L)`.
    fn temperature(&self, position_ids: &Tensor, dtype: DType) -> Result<Option<Tensor>> {
        let Some((beta, original)) = self.spec.attn_temperature else {
            return Ok(None);
        };
        let (b, l) = position_ids.dims2()?;
        let pos = position_ids.to_dtype(DType::F32)?;
        let t = ((pos / original)?.floor()? + 1.0)?.log()?;
        let t = ((t * beta)? + 1.0)?;
        Ok(Some(t.reshape((b, 1, l, 1))?.to_dtype(dtype)?))
    }
}

impl DecoderLm for Llama {
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
        let rope = self.rotary.cos_sin(position_ids, x.dtype())?;
        let q_scale = self.temperature(position_ids, x.dtype())?;
        for (layer, kv) in self
            .layers
            .iter()
            .zip(layer_caches(cache, self.layers.len())?)
        {
            let block = || -> Block {
                let (layer, rope, q_scale, masks) =
                    (layer.clone(), rope.clone(), q_scale.clone(), masks.clone());
                Arc::new(move |x: &Tensor| layer.forward(x, &rope, q_scale.as_ref(), &masks, None))
            };
            x = run_layer(&x, self.checkpointing.as_ref(), kv, block, |x, kv| {
                layer.forward(x, &rope, q_scale.as_ref(), &masks, kv)
            })?;
        }
        self.norm.forward(&x)
    }

    fn lm_head(&self) -> &LmHead {
        &self.lm_head
    }
}

impl_causal_lm!(Llama);
