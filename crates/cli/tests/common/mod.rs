//! Shared by the CLI tests: the binary, and a tiny random Llama written as an HF directory with
//! the Llama-3.2 tokenizer fixture.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use serde_json::json;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clinstruct"))
}

pub fn tokenizer_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tokenizers/llama3")
}

/// Picks the tiny model's weights; with it the greedy test output runs to the length limit and
/// has no control characters (`cli_generate` passes pieces of it as arguments).
const WEIGHT_SEED: u64 = 1;

/// A 2-layer Llama with fixed pseudo-random weights and the fixture's 607-token vocabulary.
pub fn tiny_model(dir: &Path) {
    let (vocab, h, inter, layers) = (607usize, 32usize, 64usize, 2usize);
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 512, "tie_word_embeddings": true,
        "bos_token_id": 600, "eos_token_id": [601, 604], "hidden_act": "silu"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let dev = Device::Cpu;
    // Fixed weights (a counter-based hash, uniform with std 0.5): tests that rely on what the
    // model does (greedy output running to the length limit) must not depend on the draw.
    let stream = std::cell::Cell::new(WEIGHT_SEED << 32);
    let rand = |shape: (usize, usize)| {
        stream.set(stream.get() + 1);
        let key = stream.get().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let a = 0.5 * 3f32.sqrt();
        let v: Vec<f32> = (0..(shape.0 * shape.1) as u64)
            .map(|i| {
                let mut z = key ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 29;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
            })
            .collect();
        Tensor::from_vec(v, shape, &dev)
    };
    let mut tensors = std::collections::HashMap::new();
    tensors.insert(
        "model.embed_tokens.weight".to_string(),
        rand((vocab, h)).unwrap(),
    );
    tensors.insert(
        "model.norm.weight".to_string(),
        Tensor::ones(h, DType::F32, &dev).unwrap(),
    );
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("self_attn.q_proj.weight", (h, h)),
            ("self_attn.k_proj.weight", (h / 2, h)),
            ("self_attn.v_proj.weight", (h / 2, h)),
            ("self_attn.o_proj.weight", (h, h)),
            ("mlp.gate_proj.weight", (inter, h)),
            ("mlp.up_proj.weight", (inter, h)),
            ("mlp.down_proj.weight", (h, inter)),
        ] {
            tensors.insert(format!("{p}.{n}"), rand(shape).unwrap());
        }
        for n in ["input_layernorm.weight", "post_attention_layernorm.weight"] {
            tensors.insert(
                format!("{p}.{n}"),
                Tensor::ones(h, DType::F32, &dev).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_fixture().join(f), dir.join(f)).unwrap();
    }
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Largest absolute difference of two f32 tensors of one shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
