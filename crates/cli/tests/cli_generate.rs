//! `clinstruct generate` end to end on a tiny random Llama written here (HF directory with the
//! Llama-3.2 tokenizer fixture): JSON fields, streaming, chat, stop strings, seeds, errors, and
//! that logs never contain the prompt.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

const PROMPT: &str = "Patient Jane Roe reports chest pain since Monday";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clinstruct"))
}

fn tokenizer_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tokenizers/llama3")
}

/// A 2-layer Llama with random weights and the fixture's 607-token vocabulary.
fn tiny_model(dir: &Path) {
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
    let rand = |shape: (usize, usize)| Tensor::randn(0f32, 0.5, shape, &dev);
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

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json_run(args: &[&str]) -> Value {
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("Jane"),
        "the prompt leaked into logs: {}",
        stderr(&o)
    );
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn generate_json_stream_chat_stop_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let model = dir.path().to_str().unwrap();
    let base = [
        "generate",
        "--model",
        model,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "12",
    ];

    let a = json_run(&[&base[..], &["--json"]].concat());
    for key in [
        "text",
        "token_ids",
        "finish_reason",
        "prompt_tokens",
        "generated_tokens",
    ] {
        assert!(a.get(key).is_some(), "{key} in {a}");
    }
    for key in [
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "load_seconds",
    ] {
        assert!(a["timing"][key].as_f64().is_some(), "{key} in {a}");
    }
    assert!(a.get("prompt").is_none(), "the prompt is not echoed");
    let n = a["token_ids"].as_array().unwrap().len();
    assert!((1..=12).contains(&n));
    // Greedy output is deterministic; only timing varies between runs.
    let mut b = json_run(&[&base[..], &["--json"]].concat());
    let mut a0 = a.clone();
    a0["timing"] = Value::Null;
    b["timing"] = Value::Null;
    assert_eq!(a0, b);

    // Streaming prints the same text (plus a final newline).
    let o = run(&base);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{}\n", a["text"].as_str().unwrap()));
    assert!(!stderr(&o).contains("Jane"));

    // A stop string from the middle of the text cuts it there.
    let text = a["text"].as_str().unwrap();
    assert_eq!(
        a["finish_reason"], "length",
        "the random model runs to the limit"
    );
    {
        let start = text.char_indices().nth(3).unwrap().0;
        let end = text.char_indices().nth(5).unwrap().0;
        let stop = &text[start..end];
        // `--stop=` so a fragment starting with '-' is not read as a flag.
        let stop_arg = format!("--stop={stop}");
        let s = json_run(&[&base[..], &["--json", stop_arg.as_str()]].concat());
        assert_eq!(s["finish_reason"], "stop");
        assert_eq!(s["stop_string"], stop);
        assert_eq!(
            s["text"].as_str().unwrap(),
            &text[..text.find(stop).unwrap()]
        );
    }

    // Chat: the Llama-3.2 template wraps the prompt; seeded sampling repeats itself.
    let chat = [
        &base[..],
        &[
            "--json",
            "--chat",
            "--system",
            "Be brief.",
            "--temperature",
            "0.8",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--seed",
            "7",
        ],
    ]
    .concat();
    let c1 = json_run(&chat);
    let c2 = json_run(&chat);
    assert_eq!(c1["token_ids"], c2["token_ids"]);
    assert!(c1["prompt_tokens"].as_u64().unwrap() > a["prompt_tokens"].as_u64().unwrap());
}

#[test]
fn generate_errors() {
    let o = run(&["generate", "--model", "/nonexistent/model", "--prompt", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with("error: /nonexistent/model: no such file or directory"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.gguf");
    std::fs::write(&notes, "S: cough").unwrap();
    let o = run(&[
        "generate",
        "--model",
        notes.to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert_eq!(
        stderr(&o),
        format!(
            "error: {}: not a GGUF file (expected magic bytes \"GGUF\")\n",
            notes.display()
        )
    );

    let o = run(&[
        "generate", "--model", "m", "--prompt", "x", "--top-p", "1.5",
    ]);
    assert_eq!(stderr(&o), "error: --top-p must be in (0, 1], got 1.5\n");
}
