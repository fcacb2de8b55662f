//! One entry point for every decoder: [`AnyCausalLm::load`] reads a checkpoint's
//! `architectures` (else `model_type`) and builds the matching model.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use clinstruct_nn::checkpoint::{Checkpointed, Gradients};
use clinstruct_nn::{LinearHook, Weights};
use serde_json::Value;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::decoder::{DecoderLm, TokenIds, error_message, parse_config};
use crate::gemma3::{self, Gemma3};
use crate::llama::{self, Llama};
use crate::lm::{CausalLm, LmCache, LmInfo};
use crate::ministral3::{self, Ministral3};
use crate::mistral::{self, Mistral};

/// Architectures [`AnyCausalLm`] loads (the `architectures` entry of `config.json`).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
    "Ministral3ForCausalLM",
    "Mistral3ForConditionalGeneration",
];

/// A parsed decoder config.
#[derive(Debug, Clone)]
pub enum AnyConfig {
    Llama(llama::Config),
    Mistral(mistral::Config),
    Gemma3(gemma3::Config),
    /// `Gemma3ForConditionalGeneration` (Gemma 3 4B+, MedGemma): its text tower.
    Gemma3Multimodal(gemma3::MultimodalConfig),
    Ministral3(ministral3::Config),
    /// `Mistral3ForConditionalGeneration` (Ministral-3): its text tower.
    Mistral3Multimodal(ministral3::MultimodalConfig),
}

impl AnyConfig {
    /// Picks the architecture from `architectures[0]`, else `model_type`, and checks that the
    /// config resolves (sizes, rope parameters, layer types).
    pub fn parse(config: &Value) -> Result<AnyConfig> {
        let arch = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| config.get("model_type").and_then(Value::as_str))
            .ok_or_else(|| candle_core::Error::msg("no \"architectures\" and no \"model_type\""))?;
        let cfg = match arch {
            "LlamaForCausalLM" | "llama" => AnyConfig::Llama(parse_config(config, "llama")?),
            "MistralForCausalLM" | "mistral" => {
                AnyConfig::Mistral(parse_config(config, "mistral")?)
            }
            "Gemma3ForCausalLM" | "gemma3_text" => {
                AnyConfig::Gemma3(parse_config(config, "gemma3")?)
            }
            "Gemma3ForConditionalGeneration" | "gemma3" => {
                AnyConfig::Gemma3Multimodal(parse_config(config, "gemma3")?)
            }
            "Ministral3ForCausalLM" | "ministral3" => {
                AnyConfig::Ministral3(parse_config(config, "ministral3")?)
            }
            "Mistral3ForConditionalGeneration" | "mistral3" => {
                AnyConfig::Mistral3Multimodal(parse_config(config, "mistral3")?)
            }
            other => candle_core::bail!(
                "unknown architecture {other} (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        };
        check_quantization(config)?;
        cfg.info()?;
        Ok(cfg)
    }

    /// What the resolved config says about vocabulary, layers and special tokens.
    pub fn info(&self) -> Result<LmInfo> {
        Ok(match self {
            AnyConfig::Llama(c) => c.spec()?.info,
            AnyConfig::Mistral(c) => c.spec()?.info,
            AnyConfig::Gemma3(c) => c.spec()?.info,
            AnyConfig::Gemma3Multimodal(c) => c.spec()?.info,
            AnyConfig::Ministral3(c) => c.spec()?.info,
            AnyConfig::Mistral3Multimodal(c) => c.spec()?.info,
        })
    }
}

/// FP8 checkpoints are dequantised on load; other quantisation formats are refused rather than
/// read as garbage.
fn check_quantization(config: &Value) -> Result<()> {
    let Some(q) = config.get("quantization_config").filter(|q| !q.is_null()) else {
        return Ok(());
    };
    match q.get("quant_method").and_then(Value::as_str) {
        Some("fp8") => Ok(()),
        other => candle_core::bail!(
            "unsupported quantization_config.quant_method {} (supported: fp8, dequantised on load)",
            other.map_or("(none)".to_string(), |m| format!("{m:?}"))
        ),
    }
}

/// Any supported decoder.
#[derive(Debug, Clone)]
pub enum AnyCausalLm {
    Llama(Llama),
    Mistral(Mistral),
    Gemma3(Gemma3),
    Ministral3(Ministral3),
}

impl AnyCausalLm {
    /// Loads the checkpoint's decoder with weights converted to `dtype` on `device` (f32 is the
    /// CPU default: candle has no bf16 gemm on CPU). Errors name `config.json` for config
    /// problems and the checkpoint directory for weight problems; eos/bos/pad ids come from
    /// `generation_config.json` when present, as `generate` takes them.
    pub fn load(
        ckpt: &Checkpoint,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<AnyCausalLm, CheckpointError> {
        AnyCausalLm::load_with_hook(ckpt, dtype, device, None)
    }

    /// [`Self::load`] with every linear layer passed through `hook` as it loads (freezing,
    /// quantise-on-load, LoRA adapters: a `clinstruct_nn::lora::LinearPlan`).
    pub fn load_with_hook(
        ckpt: &Checkpoint,
        dtype: DType,
        device: &Device,
        hook: Option<Arc<dyn LinearHook>>,
    ) -> std::result::Result<AnyCausalLm, CheckpointError> {
        let config_path = ckpt.dir.join("config.json");
        let invalid = |path: &Path, e: candle_core::Error| CheckpointError::Invalid {
            path: path.to_path_buf(),
            message: error_message(&e),
        };
        let cfg = AnyConfig::parse(ckpt.config()?).map_err(|e| invalid(&config_path, e))?;
        let mut w = ckpt.weights(dtype, device)?;
        if let Some(hook) = hook {
            w = w.with_linear_hook(hook);
        }
        let mut model = AnyCausalLm::new(&cfg, &w).map_err(|e| invalid(&ckpt.dir, e))?;
        let gen_path = ckpt.dir.join("generation_config.json");
        if gen_path.is_file() {
            let text =
                std::fs::read_to_string(&gen_path).map_err(|source| CheckpointError::Io {
                    path: gen_path.clone(),
                    source,
                })?;
            let gen_cfg: Value =
                serde_json::from_str(&text).map_err(|e| CheckpointError::BadJson {
                    path: gen_path.clone(),
                    message: e.to_string(),
                })?;
            apply_generation_config(model.info_mut(), &gen_cfg)
                .map_err(|e| invalid(&gen_path, e))?;
        }
        Ok(model)
    }

    /// Builds the model from a parsed config and any weight source (a checkpoint, or a
    /// `VarMap` for training).
    pub fn new(cfg: &AnyConfig, w: &Weights) -> Result<AnyCausalLm> {
        Ok(match cfg {
            AnyConfig::Llama(c) => AnyCausalLm::Llama(Llama::load(c, w)?),
            AnyConfig::Mistral(c) => AnyCausalLm::Mistral(Mistral::load(c, w)?),
            AnyConfig::Gemma3(c) => AnyCausalLm::Gemma3(Gemma3::load(c, w)?),
            AnyConfig::Gemma3Multimodal(c) => AnyCausalLm::Gemma3(Gemma3::load_multimodal(c, w)?),
            AnyConfig::Ministral3(c) => AnyCausalLm::Ministral3(Ministral3::load(c, w)?),
            AnyConfig::Mistral3Multimodal(c) => {
                AnyCausalLm::Ministral3(Ministral3::load_multimodal(c, w)?)
            }
        })
    }

    pub fn as_decoder(&self) -> &dyn DecoderLm {
        match self {
            AnyCausalLm::Llama(m) => m,
            AnyCausalLm::Mistral(m) => m,
            AnyCausalLm::Gemma3(m) => m,
            AnyCausalLm::Ministral3(m) => m,
        }
    }

    fn info_mut(&mut self) -> &mut LmInfo {
        match self {
            AnyCausalLm::Llama(m) => m.info_mut(),
            AnyCausalLm::Mistral(m) => m.info_mut(),
            AnyCausalLm::Gemma3(m) => m.info_mut(),
            AnyCausalLm::Ministral3(m) => m.info_mut(),
        }
    }
}

fn apply_generation_config(info: &mut LmInfo, g: &Value) -> Result<()> {
    let id = |key: &str| -> Result<Option<u32>> {
        match g.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| candle_core::Error::msg(format!("{key}: {e}"))),
        }
    };
    if let Some(v) = g.get("eos_token_id").filter(|v| !v.is_null()) {
        let ids: TokenIds = serde_json::from_value(v.clone())
            .map_err(|e| candle_core::Error::msg(format!("eos_token_id: {e}")))?;
        info.eos_token_ids = ids.to_vec();
    }
    if let Some(b) = id("bos_token_id")? {
        info.bos_token_id = Some(b);
    }
    if let Some(p) = id("pad_token_id")? {
        info.pad_token_id = Some(p);
    }
    Ok(())
}

impl CausalLm for AnyCausalLm {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor> {
        self.as_decoder()
            .forward(input_ids, attention_mask, position_ids, cache)
    }

    fn forward_last(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor> {
        self.as_decoder()
            .forward_last(input_ids, attention_mask, position_ids, cache)
    }

    fn info(&self) -> &LmInfo {
        self.as_decoder().info()
    }
}

/// Gradient checkpointing per decoder layer, in the wrapped model.
impl Checkpointed for AnyCausalLm {
    fn checkpoint_store(&self) -> &Option<Gradients> {
        match self {
            AnyCausalLm::Llama(m) => m.checkpoint_store(),
            AnyCausalLm::Mistral(m) => m.model.checkpoint_store(),
            AnyCausalLm::Gemma3(m) => m.checkpoint_store(),
            AnyCausalLm::Ministral3(m) => m.model.checkpoint_store(),
        }
    }

    fn checkpoint_store_mut(&mut self) -> &mut Option<Gradients> {
        match self {
            AnyCausalLm::Llama(m) => m.checkpoint_store_mut(),
            AnyCausalLm::Mistral(m) => m.model.checkpoint_store_mut(),
            AnyCausalLm::Gemma3(m) => m.checkpoint_store_mut(),
            AnyCausalLm::Ministral3(m) => m.model.checkpoint_store_mut(),
        }
    }
}

impl DecoderLm for AnyCausalLm {
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor> {
        self.as_decoder()
            .hidden_states(input_ids, attention_mask, position_ids, cache)
    }

    fn lm_head(&self) -> &crate::decoder::LmHead {
        self.as_decoder().lm_head()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clinstruct_nn::rope::RopeScaling;
    use serde_json::json;

    /// The configs of the project's target checkpoints (as published, minus unused keys)
    /// resolve to the right architecture and hyper-parameters.
    #[test]
    fn target_checkpoint_configs() -> Result<()> {
        let llama = AnyConfig::parse(&json!({
            "architectures": ["LlamaForCausalLM"], "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
            "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072,
            "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rope_theta": 500000.0, "tie_word_embeddings": true, "vocab_size": 128256
        }))?;
        let AnyConfig::Llama(c) = &llama else {
            panic!("{llama:?}")
        };
        let s = c.spec()?;
        assert_eq!((s.num_layers, s.num_kv_heads, s.head_dim), (16, 8, 64));
        assert!(s.tie_word_embeddings);
        assert!(matches!(s.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        assert_eq!(s.info.eos_token_ids, vec![128001, 128008, 128009]);

        let gemma = AnyConfig::parse(&json!({
            "architectures": ["Gemma3ForCausalLM"], "attn_logit_softcapping": null,
            "bos_token_id": 2, "eos_token_id": [1, 106], "final_logit_softcapping": null,
            "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
            "intermediate_size": 6912, "max_position_embeddings": 32768,
            "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 26,
            "num_key_value_heads": 1, "pad_token_id": 0, "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": null,
            "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
            "vocab_size": 262144
        }))?;
        let AnyConfig::Gemma3(c) = &gemma else {
            panic!("{gemma:?}")
        };
        let s = c.spec()?;
        let full: Vec<usize> = (0..26).filter(|&i| !s.sliding[i]).collect();
        assert_eq!(full, vec![5, 11, 17, 23]);
        assert_eq!(
            (s.sliding_window, s.global_rope.theta, s.local_rope.theta),
            (Some(512), 1e6, 1e4)
        );
        assert_eq!(s.global_rope.scaling, RopeScaling::Default);

        // MedGemma 4B: the text tower's config lists little; Gemma3TextConfig's defaults fill in.
        let medgemma = AnyConfig::parse(&json!({
            "architectures": ["Gemma3ForConditionalGeneration"], "eos_token_id": [1, 106],
            "model_type": "gemma3", "mm_tokens_per_image": 256,
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                "model_type": "gemma3_text", "num_attention_heads": 8, "num_hidden_layers": 34,
                "num_key_value_heads": 4, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                "sliding_window": 1024},
            "vision_config": {"model_type": "siglip_vision_model"}
        }))?;
        let AnyConfig::Gemma3Multimodal(c) = &medgemma else {
            panic!("{medgemma:?}")
        };
        let s = c.spec()?;
        assert_eq!(
            (s.head_dim, s.vocab_size, s.query_pre_attn_scalar),
            (256, 262_208, 256.0)
        );
        assert_eq!(s.global_rope.scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(s.local_rope.scaling, RopeScaling::Default);
        assert!(s.tie_word_embeddings);
        assert_eq!(s.info.eos_token_ids, vec![1, 106]);

        // Without `architectures`, `model_type` decides.
        let m = AnyConfig::parse(&json!({"model_type": "mistral", "vocab_size": 10,
            "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2}))?;
        assert!(matches!(m, AnyConfig::Mistral(_)));
        Ok(())
    }
}
