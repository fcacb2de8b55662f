//! A tiny Llama (transformers' LlamaForCausalLM semantics) built from the nn crate's blocks and
//! loaded through `Linear::load`, so a `LinearPlan` on the weights adds bases and adapters
//! without the model knowing, the way real model files get them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use clinstruct_nn::attention::{AttentionOpts, MaskKind, build_mask, scaled_dot_product};
use clinstruct_nn::norm::RmsNorm;
use clinstruct_nn::rope::{RopeScaling, RotaryEmbedding, apply_rotary};
use clinstruct_nn::{Linear, Weights};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn load_st(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).expect("fixture")
}

/// Largest |a - b| over largest |b| (0 when both are 0).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    if m == 0.0 { d } else { d / m }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub vocab: usize,
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub theta: f64,
    pub max_pos: usize,
}

impl Config {
    pub fn read(path: &Path) -> Config {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let u = |k: &str| v[k].as_u64().unwrap() as usize;
        let theta = v["rope_theta"]
            .as_f64()
            .or_else(|| v["rope_parameters"]["rope_theta"].as_f64())
            .unwrap();
        Config {
            vocab: u("vocab_size"),
            hidden: u("hidden_size"),
            inter: u("intermediate_size"),
            layers: u("num_hidden_layers"),
            heads: u("num_attention_heads"),
            kv_heads: u("num_key_value_heads"),
            head_dim: u("head_dim"),
            eps: v["rms_norm_eps"].as_f64().unwrap(),
            theta,
            max_pos: u("max_position_embeddings"),
        }
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct TinyLlama {
    cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RotaryEmbedding,
}

impl TinyLlama {
    pub fn load(w: &Weights, cfg: &Config) -> Result<TinyLlama> {
        let m = w.pp("model");
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let norm = |w: &Weights| -> Result<RmsNorm> {
            Ok(RmsNorm::new(w.get(h, "weight")?, cfg.eps, false))
        };
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let l = m.pp("layers").pp(i);
            let a = l.pp("self_attn");
            let p = l.pp("mlp");
            layers.push(Layer {
                input_norm: norm(&l.pp("input_layernorm"))?,
                q: Linear::load(h, cfg.heads * hd, false, &a.pp("q_proj"))?,
                k: Linear::load(h, cfg.kv_heads * hd, false, &a.pp("k_proj"))?,
                v: Linear::load(h, cfg.kv_heads * hd, false, &a.pp("v_proj"))?,
                o: Linear::load(cfg.heads * hd, h, false, &a.pp("o_proj"))?,
                post_norm: norm(&l.pp("post_attention_layernorm"))?,
                gate: Linear::load(h, cfg.inter, false, &p.pp("gate_proj"))?,
                up: Linear::load(h, cfg.inter, false, &p.pp("up_proj"))?,
                down: Linear::load(cfg.inter, h, false, &p.pp("down_proj"))?,
            });
        }
        Ok(TinyLlama {
            cfg: cfg.clone(),
            embed: m.pp("embed_tokens").get((cfg.vocab, h), "weight")?,
            layers,
            norm: norm(&m.pp("norm"))?,
            lm_head: Linear::load(h, cfg.vocab, false, &w.pp("lm_head"))?,
            rope: RotaryEmbedding::new(hd, cfg.theta, &RopeScaling::Default, cfg.max_pos),
        })
    }

    /// Logits `(b, L, vocab)` for `ids (b, L)` and `mask (b, L)` (1 = token), positions 0..L.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let cfg = &self.cfg;
        let dev = ids.device();
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, cfg.hidden))?;
        let att_mask = build_mask(b, l, l, MaskKind::Causal, None, Some(mask), dev)?;
        let pos = RotaryEmbedding::positions(b, l, 0, dev)?;
        let (cos, sin) = self.rope.cos_sin(&pos, x.dtype())?;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((b, l, n, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        for layer in &self.layers {
            let h = layer.input_norm.forward(&x)?;
            let q = apply_rotary(&split(layer.q.forward(&h)?, cfg.heads)?, &cos, &sin)?;
            let k = apply_rotary(&split(layer.k.forward(&h)?, cfg.kv_heads)?, &cos, &sin)?;
            let v = split(layer.v.forward(&h)?, cfg.kv_heads)?;
            let opts = AttentionOpts {
                scale: 1.0 / (cfg.head_dim as f64).sqrt(),
                softcap: None,
            };
            let a = scaled_dot_product(&q, &k, &v, Some(&att_mask), opts)?
                .transpose(1, 2)?
                .reshape((b, l, cfg.heads * cfg.head_dim))?;
            x = (x + layer.o.forward(&a)?)?;
            let h = layer.post_norm.forward(&x)?;
            let g = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
            x = (&x + layer.down.forward(&(g * layer.up.forward(&h)?)?)?)?;
        }
        self.lm_head.forward(&self.norm.forward(&x)?)
    }
}

/// A batch of the fixture: ids and mask as u32 tensors, labels as i64 values.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub labels: Vec<i64>,
}

pub fn batch(exp: &HashMap<String, Tensor>, i: usize) -> Batch {
    let get = |k: &str| exp[&format!("batch{i}.{k}")].clone();
    Batch {
        ids: get("input_ids").to_dtype(DType::U32).unwrap(),
        mask: get("attention_mask").to_dtype(DType::U32).unwrap(),
        labels: get("labels")
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap(),
    }
}
