//! The Ministral-3 text tower (Ministral-3-3B-Instruct-2512 = `Mistral3ForConditionalGeneration`
//! with a `ministral3` text config in transformers 5.23).
//!
//! What it is, read off `modeling_ministral3.py`: the Llama block (no biases, GQA, SiLU MLP)
//! with YaRN rope and, after the rotation, queries multiplied by the llama-4 temperature
//! `1 + llama_4_scaling_beta · ln(1 + floor(position / original_max_position_embeddings))`
//! (`rope_parameters`' keys). Weights are read out of the multimodal checkpoint in the layout
//! transformers saves (`language_model.model.*`, `language_model.lm_head`) or its module
//! names (`model.language_model.*`, `lm_head`); FP8 linear weights (`weight_scale_inv`) are
//! dequantised on load. A `mistral` text config (Mistral-Small-3.1 style) loads as Mistral.

use candle_core::{Result, Tensor};
use clinstruct_nn::Weights;
use serde::Deserialize;
use serde_json::Value;

use crate::decoder::{
    Activation, DecoderLm, RopeParams, TokenIds, impl_causal_lm, parse_config, present,
};
use crate::gemma3::multimodal_prefixes;
use crate::llama::{Llama, LlamaSpec};
use crate::lm::{LmCache, LmInfo};

// transformers' Ministral3Config defaults.
fn d_vocab() -> usize {
    131_072
}
fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    14_336
}
fn d_layers() -> usize {
    34
}
fn d_heads() -> usize {
    32
}
fn d_kv_heads() -> usize {
    8
}
fn d_act() -> String {
    "silu".into()
}
fn d_max_pos() -> usize {
    262_144
}
fn d_eps() -> f64 {
    1e-5
}
fn d_pad() -> Option<u32> {
    Some(11)
}
fn d_bos() -> Option<u32> {
    Some(1)
}
fn d_eos() -> Option<TokenIds> {
    Some(TokenIds::One(2))
}

/// `config.json` of `Ministral3ForCausalLM`, or a `ministral3` `text_config`.
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
    /// Absent: 128; `null`: hidden / heads.
    #[serde(default, deserialize_with = "present")]
    pub head_dim: Option<Option<usize>>,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_bos")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_eos")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<u32>,
}

impl Config {
    pub fn spec(&self) -> Result<LlamaSpec> {
        let max_pos = self.max_position_embeddings;
        let default_rope = serde_json::json!({
            "rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 16.0,
            "original_max_position_embeddings": 16384, "max_position_embeddings": max_pos,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0,
            "llama_4_scaling_beta": 0.1,
        });
        let params = self
            .rope_parameters
            .as_ref()
            .filter(|v| !v.is_null())
            .unwrap_or(&default_rope);
        let rope = RopeParams::resolve(
            Some(params),
            self.rope_scaling.as_ref(),
            self.rope_theta,
            10_000.0,
            max_pos,
        )?;
        // Without `llama_4_scaling_beta` transformers fails; we read it as no temperature.
        let attn_temperature = rope
            .raw
            .get("llama_4_scaling_beta")
            .and_then(Value::as_f64)
            .map(|beta| {
                let original = rope
                    .raw
                    .get("original_max_position_embeddings")
                    .and_then(Value::as_f64)
                    .unwrap_or(max_pos as f64);
                (beta, original)
            });
        let heads = self.num_attention_heads;
        Ok(LlamaSpec {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: self.num_key_value_heads,
            head_dim: match self.head_dim {
                None => 128,
                Some(d) => d.unwrap_or(self.hidden_size / heads),
            },
            act: Activation::from_hf(&self.hidden_act)?,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            sliding_window: self.sliding_window,
            attn_temperature,
            info: LmInfo {
                vocab_size: self.vocab_size,
                num_layers: self.num_hidden_layers,
                max_position_embeddings: max_pos,
                eos_token_ids: self.eos_token_id.as_ref().map_or(vec![], TokenIds::to_vec),
                bos_token_id: self.bos_token_id,
                pad_token_id: self.pad_token_id,
            },
        })
    }
}

/// `config.json` of `Mistral3ForConditionalGeneration`: what the text tower needs.
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
    pub fn spec(&self) -> Result<LlamaSpec> {
        let model_type = self
            .text_config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("mistral");
        let mut spec = match model_type {
            "ministral3" => {
                parse_config::<Config>(&self.text_config, "ministral3 text_config")?.spec()?
            }
            "mistral" => {
                parse_config::<crate::mistral::Config>(&self.text_config, "mistral text_config")?
                    .spec()?
            }
            other => candle_core::bail!(
                "unsupported text_config model_type {other:?} in a Mistral3 checkpoint (supported: ministral3, mistral)"
            ),
        };
        spec.tie_word_embeddings = self.tie_word_embeddings.unwrap_or(true);
        if let Some(e) = &self.eos_token_id {
            spec.info.eos_token_ids = e.to_vec();
        }
        spec.info.bos_token_id = self.bos_token_id.or(spec.info.bos_token_id);
        spec.info.pad_token_id = self.pad_token_id.or(spec.info.pad_token_id);
        Ok(spec)
    }
}

/// The Ministral-3 text model.
#[derive(Debug, Clone)]
pub struct Ministral3 {
    pub model: Llama,
    info: LmInfo,
}

impl Ministral3 {
    fn wrap(model: Llama) -> Ministral3 {
        Ministral3 {
            info: model.info.clone(),
            model,
        }
    }

    /// A text-only `Ministral3ForCausalLM` checkpoint: `model.*` and `lm_head.weight`.
    pub fn load(cfg: &Config, w: &Weights) -> Result<Ministral3> {
        let model = Llama::new(&cfg.spec()?, &w.pp("model"), &w.pp("lm_head"))?;
        Ok(Ministral3::wrap(model))
    }

    /// The text tower of a `Mistral3ForConditionalGeneration` checkpoint.
    pub fn load_multimodal(cfg: &MultimodalConfig, w: &Weights) -> Result<Ministral3> {
        let (model, head) = multimodal_prefixes(w);
        let model = Llama::new(&cfg.spec()?, &w.pp(model), &w.pp(head))?;
        Ok(Ministral3::wrap(model))
    }

    pub(crate) fn info_mut(&mut self) -> &mut LmInfo {
        &mut self.info
    }
}

impl DecoderLm for Ministral3 {
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor> {
        self.model
            .hidden_states(input_ids, attention_mask, position_ids, cache)
    }

    fn lm_head(&self) -> &crate::decoder::LmHead {
        self.model.lm_head()
    }
}

impl_causal_lm!(Ministral3);

#[cfg(test)]
mod tests {
    use super::*;
    use clinstruct_nn::rope::RopeScaling;

    /// The text_config of Ministral-3-3B-Instruct-2512 as published.
    #[test]
    fn ministral_3_3b_text_config() -> Result<()> {
        let cfg: MultimodalConfig = serde_json::from_value(serde_json::json!({
            "text_config": {
                "head_dim": 128, "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 9216,
                "max_position_embeddings": 262144, "model_type": "ministral3", "num_attention_heads": 32,
                "num_hidden_layers": 26, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
                "rope_parameters": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 16.0,
                    "llama_4_scaling_beta": 0.1, "mscale": 1.0, "mscale_all_dim": 1.0,
                    "original_max_position_embeddings": 16384, "rope_theta": 1000000.0,
                    "rope_type": "yarn", "type": "yarn"},
                "sliding_window": null, "tie_word_embeddings": true, "vocab_size": 131072
            },
            "tie_word_embeddings": true
        }))
        .unwrap();
        let s = cfg.spec()?;
        assert_eq!((s.num_layers, s.head_dim, s.num_kv_heads), (26, 128, 8));
        assert_eq!(s.attn_temperature, Some((0.1, 16384.0)));
        assert!(s.tie_word_embeddings);
        assert!(matches!(s.rope_scaling, RopeScaling::Yarn { factor, .. } if factor == 16.0));
        assert_eq!(s.rope_theta, 1e6);
        assert_eq!(s.info.pad_token_id, Some(11));
        Ok(())
    }
}
