//! Mistral: the Llama block with a sliding window on every layer (`sliding_window`, absent means
//! transformers' default 4096, `null` means none). The numerics are [`crate::llama::Llama`]'s.

use candle_core::{Result, Tensor};
use clinstruct_nn::Weights;
use serde::Deserialize;
use serde_json::Value;

use crate::decoder::{Activation, DecoderLm, RopeParams, TokenIds, impl_causal_lm, present};
use crate::llama::{Llama, LlamaSpec};
use crate::lm::{LmCache, LmInfo};

fn default_act() -> String {
    "silu".into()
}
fn default_max_pos() -> usize {
    4096 * 32
}
fn default_eps() -> f64 {
    1e-6
}

/// `config.json` of `MistralForCausalLM` (also the `text_config` of Mistral-Small-3.1 style
/// `Mistral3ForConditionalGeneration` checkpoints).
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
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// `None`: absent (4096); `Some(None)`: `null`, no window.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
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
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            sliding_window: self.sliding_window.unwrap_or(Some(4096)),
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

/// A Mistral causal LM.
#[derive(Debug, Clone)]
pub struct Mistral {
    pub model: Llama,
    info: LmInfo,
}

impl Mistral {
    /// A `MistralForCausalLM` checkpoint: `model.*` and `lm_head.weight`.
    pub fn load(cfg: &Config, w: &Weights) -> Result<Mistral> {
        let model = Llama::new(&cfg.spec()?, &w.pp("model"), &w.pp("lm_head"))?;
        Ok(Mistral {
            info: model.info.clone(),
            model,
        })
    }

    pub(crate) fn info_mut(&mut self) -> &mut LmInfo {
        &mut self.info
    }
}

impl DecoderLm for Mistral {
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

impl_causal_lm!(Mistral);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let s = format!(
            r#"{{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                 "num_hidden_layers": 1, "num_attention_heads": 2 {extra}}}"#
        );
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn sliding_window_default_null_and_value() -> Result<()> {
        assert_eq!(cfg("").spec()?.sliding_window, Some(4096));
        assert_eq!(
            cfg(r#", "sliding_window": null"#).spec()?.sliding_window,
            None
        );
        assert_eq!(
            cfg(r#", "sliding_window": 7"#).spec()?.sliding_window,
            Some(7)
        );
        Ok(())
    }
}
