//! GGUF loading on small files written here with candle's GGUF writer: config from metadata,
//! name map, quant types, converter conventions (Gemma norms, llama Q/K order), the embedded
//! tokenizer, and the exact error messages.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value as G};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use clinstruct_models::Tokenizer;
use clinstruct_models::gguf::{GgufArchitecture, GgufError, GgufModel};
use clinstruct_nn::Linear;
use serde_json::Value;

const HIDDEN: usize = 256;
const INTER: usize = 512;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 128;
const LAYERS: usize = 2;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(name)
}

/// tokenizer.json → llama.cpp-style `llama` (SentencePiece) vocabulary metadata.
fn spm_vocab(name: &str) -> Vec<(String, G)> {
    let j: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = j["model"]["vocab"].as_object().unwrap();
    let added = j["added_tokens"].as_array().unwrap();
    let n = added
        .iter()
        .map(|a| a["id"].as_u64().unwrap() as usize + 1)
        .chain(vocab.values().map(|v| v.as_u64().unwrap() as usize + 1))
        .max()
        .unwrap();
    let mut tokens = vec![String::new(); n];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let mut types: Vec<i32> = tokens
        .iter()
        .map(|t| {
            if t.len() == 6 && t.starts_with("<0x") {
                6
            } else {
                1
            }
        })
        .collect();
    for at in added {
        let id = at["id"].as_u64().unwrap() as usize;
        tokens[id] = at["content"].as_str().unwrap().to_string();
        types[id] = if at["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    let merges = j["model"]["merges"].as_array().unwrap();
    let mut scores = vec![-1e9f32; tokens.len()];
    for (rank, m) in merges.iter().enumerate() {
        let merged = match m {
            Value::Array(p) => format!("{}{}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            Value::String(s) => s.replacen(' ', "", 1),
            _ => unreachable!(),
        };
        if let Some(i) = tokens.iter().position(|t| *t == merged) {
            scores[i] = scores[i].max(-(rank as f32));
        }
    }
    vec![
        ("tokenizer.ggml.model".into(), G::String("llama".into())),
        ("tokenizer.ggml.pre".into(), G::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            G::Array(tokens.into_iter().map(G::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            G::Array(scores.into_iter().map(G::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            G::Array(types.into_iter().map(G::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), G::U32(2)),
        ("tokenizer.ggml.eos_token_id".into(), G::U32(1)),
        ("tokenizer.ggml.padding_token_id".into(), G::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), G::Bool(true)),
        ("tokenizer.ggml.add_space_prefix".into(), G::Bool(false)),
    ]
}

fn rand_tensor(seed: u64, shape: (usize, usize)) -> Tensor {
    let n = shape.0 * shape.1;
    let mut s = seed;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

struct Built {
    dense: Vec<(String, Tensor)>,
}

/// Writes a tiny model of `arch`; linear weights cycle through Q4_0, Q8_0, Q4_K and Q6_K.
/// `skip` leaves one tensor out; `arch_name` overrides general.architecture.
fn write_model(path: &Path, arch: &str, arch_name: &str, skip: Option<&str>) -> Built {
    let vocab_meta = spm_vocab("gemma");
    let vocab = match &vocab_meta[2].1 {
        G::Array(a) => a.len(),
        _ => unreachable!(),
    };
    let mut md: Vec<(String, G)> = vec![
        ("general.architecture".into(), G::String(arch_name.into())),
        (format!("{arch}.context_length"), G::U32(2048)),
        (format!("{arch}.embedding_length"), G::U32(HIDDEN as u32)),
        (format!("{arch}.block_count"), G::U32(LAYERS as u32)),
        (format!("{arch}.feed_forward_length"), G::U32(INTER as u32)),
        (format!("{arch}.attention.head_count"), G::U32(HEADS as u32)),
        (
            format!("{arch}.attention.head_count_kv"),
            G::U32(KV_HEADS as u32),
        ),
        (
            format!("{arch}.attention.key_length"),
            G::U32(HEAD_DIM as u32),
        ),
        (
            format!("{arch}.attention.value_length"),
            G::U32(HEAD_DIM as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            G::F32(1e-6),
        ),
        (format!("{arch}.rope.freq_base"), G::F32(1e6)),
        (format!("{arch}.attention.sliding_window"), G::U32(512)),
    ];
    md.extend(vocab_meta);
    let quants = [
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ];
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut dense = Vec::new();
    let mut add = |name: String, t: Tensor, dtype: GgmlDType| {
        if skip == Some(name.as_str()) {
            return;
        }
        tensors.push((name.clone(), QTensor::quantize(&t, dtype).unwrap()));
        dense.push((name, t));
    };
    add(
        "token_embd.weight".into(),
        rand_tensor(1, (vocab, HIDDEN)),
        GgmlDType::Q8_0,
    );
    add(
        "output_norm.weight".into(),
        rand_tensor(2, (1, HIDDEN)).squeeze(0).unwrap(),
        GgmlDType::F32,
    );
    let mut k = 0;
    for l in 0..LAYERS {
        let lin = [
            ("attn_q.weight", (HEADS * HEAD_DIM, HIDDEN)),
            ("attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            ("attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            ("attn_output.weight", (HIDDEN, HEADS * HEAD_DIM)),
            ("ffn_gate.weight", (INTER, HIDDEN)),
            ("ffn_up.weight", (INTER, HIDDEN)),
            ("ffn_down.weight", (HIDDEN, INTER)),
        ];
        for (n, shape) in lin {
            add(
                format!("blk.{l}.{n}"),
                rand_tensor(10 + k as u64, shape),
                quants[k % 4],
            );
            k += 1;
        }
        let mut norms = vec![("attn_norm.weight", HIDDEN), ("ffn_norm.weight", HIDDEN)];
        if arch == "gemma3" {
            norms.extend([
                ("attn_q_norm.weight", HEAD_DIM),
                ("attn_k_norm.weight", HEAD_DIM),
                ("post_attention_norm.weight", HIDDEN),
                ("post_ffw_norm.weight", HIDDEN),
            ]);
        }
        for (n, size) in norms {
            let t = (rand_tensor(100 + k as u64, (1, size)).squeeze(0).unwrap() + 1.0).unwrap();
            add(format!("blk.{l}.{n}"), t, GgmlDType::F32);
            k += 1;
        }
    }
    let mut f = std::fs::File::create(path).unwrap();
    let md_refs: Vec<(&str, &G)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    Built { dense }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn gemma3_gguf_config_weights_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-gemma3.gguf");
    let built = write_model(&path, "gemma3", "gemma3", None);
    let dev = Device::Cpu;
    let m = GgufModel::open(&path, &dev).unwrap();
    assert_eq!(m.architecture, GgufArchitecture::Gemma3);
    let c = &m.config;
    assert_eq!(c["hidden_size"], HIDDEN);
    assert_eq!(c["num_hidden_layers"], LAYERS);
    assert_eq!(c["num_key_value_heads"], KV_HEADS);
    assert_eq!(c["head_dim"], HEAD_DIM);
    assert_eq!(c["query_pre_attn_scalar"], HEAD_DIM);
    assert_eq!(c["sliding_window"], 512);
    assert_eq!(c["rope_theta"], 1e6);
    assert_eq!(c["rope_local_base_freq"], 10_000.0);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["vocab_size"], m.tokenizer.vocab_size());
    assert_eq!(c["layer_types"][0], "sliding_attention");
    assert_eq!(c["bos_token_id"], 2);
    // <eos> and the end-of-turn control token both stop generation.
    assert_eq!(c["eos_token_id"], serde_json::json!([1, 6]));
    let summary = m.quant_summary();
    for q in ["Q4_0", "Q8_0", "Q4K", "Q6K", "F32"] {
        assert!(summary.contains_key(q), "{q} in {summary:?}");
    }

    let w = m.weights(DType::F32, &dev);
    let get_dense = |n: &str| built.dense.iter().find(|(k, _)| k == n).unwrap().1.clone();
    // Norms come back as HF stores them: GGUF's (1 + w) minus one.
    let norm = w
        .pp("model.layers.1")
        .get(HIDDEN, "pre_feedforward_layernorm.weight")
        .unwrap();
    let want = (get_dense("blk.1.ffn_norm.weight") - 1.0).unwrap();
    assert!(max_diff(&norm, &want) < 1e-6);
    let qn = w
        .get(HEAD_DIM, "model.layers.0.self_attn.q_norm.weight")
        .unwrap();
    assert!(max_diff(&qn, &(get_dense("blk.0.attn_q_norm.weight") - 1.0).unwrap()) < 1e-6);

    // Linear layers stay quantized and multiply close to the dense original.
    let x = rand_tensor(999, (3, HIDDEN));
    for (hf, gg, tol) in [
        (
            "model.layers.0.self_attn.q_proj",
            "blk.0.attn_q.weight",
            0.12,
        ), // Q4_0
        (
            "model.layers.0.self_attn.k_proj",
            "blk.0.attn_k.weight",
            0.01,
        ), // Q8_0
        (
            "model.layers.0.self_attn.v_proj",
            "blk.0.attn_v.weight",
            0.12,
        ), // Q4_K
        (
            "model.layers.0.self_attn.o_proj",
            "blk.0.attn_output.weight",
            0.02,
        ), // Q6_K
    ] {
        let dense = get_dense(gg);
        let (out, inp) = dense.dims2().unwrap();
        let lin = Linear::load(inp, out, false, &w.pp(hf)).unwrap();
        assert!(
            matches!(lin.base(), clinstruct_nn::linear::LinearBase::Quantized(_)),
            "{hf}"
        );
        let x = if inp == HIDDEN {
            x.clone()
        } else {
            rand_tensor(5, (3, inp))
        };
        let y = lin.forward(&x).unwrap();
        let want = x.matmul(&dense.t().unwrap()).unwrap();
        let rel = max_diff(&y, &want)
            / want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        assert!(rel < tol, "{hf}: relative error {rel}");
    }
    let emb = w.get_unchecked("model.embed_tokens.weight").unwrap();
    assert!(max_diff(&emb, &get_dense("token_embd.weight")) < 0.01);

    // The embedded vocabulary tokenizes like the tokenizer.json it came from.
    let from_json = Tokenizer::from_dir(&fixture("gemma")).unwrap();
    let text = "Blood pressure 120/80 mmHg, Café 😀\n\nplan";
    assert_eq!(
        m.tokenizer.encode(text, true).unwrap(),
        from_json.encode(text, true).unwrap()
    );
    // No template in the file: the family's instruction template stands in.
    let prompt = m
        .tokenizer
        .apply_chat_template(&[clinstruct_models::ChatMessage::user("hi")], true)
        .unwrap();
    assert_eq!(
        prompt,
        "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn llama_gguf_q_k_rows_are_unpermuted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-llama.gguf");
    // The writer stores weights as given; treat them as llama.cpp-permuted and check that the
    // loader returns the inverse permutation.
    let built = write_model(&path, "llama", "llama", None);
    let dev = Device::Cpu;
    let m = GgufModel::open(&path, &dev).unwrap();
    assert_eq!(m.architecture, GgufArchitecture::Llama);
    assert_eq!(m.config["model_type"], "llama");
    assert_eq!(m.config["rope_scaling"], Value::Null);
    let w = m.weights(DType::F32, &dev);
    let stored = built
        .dense
        .iter()
        .find(|(k, _)| k == "blk.0.attn_k.weight")
        .unwrap()
        .1
        .clone();
    let stored = QTensor::quantize(&stored, GgmlDType::Q8_0)
        .unwrap()
        .dequantize(&dev)
        .unwrap();
    let got = w
        .get(
            (KV_HEADS * HEAD_DIM, HIDDEN),
            "model.layers.0.self_attn.k_proj.weight",
        )
        .unwrap();
    // HF = GGUF.reshape(h, d/2, 2, in).swapaxes(1, 2)
    let want = stored
        .reshape((KV_HEADS, HEAD_DIM / 2, 2, HIDDEN))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((KV_HEADS * HEAD_DIM, HIDDEN))
        .unwrap();
    assert_eq!(max_diff(&got, &want), 0.0);
    // Llama norms are stored as is.
    let n = w
        .get(HIDDEN, "model.layers.0.post_attention_layernorm.weight")
        .unwrap();
    let want = built
        .dense
        .iter()
        .find(|(k, _)| k == "blk.0.ffn_norm.weight")
        .unwrap()
        .1
        .clone();
    assert!(max_diff(&n, &want) < 1e-6);
}

#[test]
fn exact_error_messages() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;

    let not = dir.path().join("notes.gguf");
    std::fs::write(&not, b"S: cough\nO: T 38.1\n").unwrap();
    let e = GgufModel::open(&not, &dev).unwrap_err();
    assert!(matches!(e, GgufError::NotGguf { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: not a GGUF file (expected magic bytes \"GGUF\")",
            not.display()
        )
    );

    let unknown = dir.path().join("rwkv.gguf");
    write_model(&unknown, "gemma3", "rwkv6", None);
    assert_eq!(
        GgufModel::open(&unknown, &dev).unwrap_err().to_string(),
        format!(
            "{}: unknown GGUF architecture `rwkv6` (supported: gemma3, llama)",
            unknown.display()
        )
    );

    let missing = dir.path().join("missing.gguf");
    write_model(&missing, "gemma3", "gemma3", Some("blk.1.ffn_up.weight"));
    assert_eq!(
        GgufModel::open(&missing, &dev).unwrap_err().to_string(),
        format!(
            "{}: missing tensor blk.1.ffn_up.weight (model.layers.1.mlp.up_proj.weight)",
            missing.display()
        )
    );
}
