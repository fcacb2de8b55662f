//! Gemma-3-270M (Q4_K_M GGUF, a real pretrained model) against llama.cpp: prompt tokenization,
//! tokenization of tricky strings with the real 262k vocabulary, and greedy generation.
//!
//! The model is not in the repository: `scripts/models/fetch_gemma3_270m.sh` puts it in
//! `~/.cache/clinstruct/` (or `$CLINSTRUCT_MODELS`); `CLINSTRUCT_GEMMA3_270M_GGUF` may point at
//! it directly. Without it the test prints why it is skipped and passes. The reference
//! (`tests/fixtures/gemma3_270m_llamacpp.json`) comes from
//! `scripts/fixtures/make_llamacpp_reference.py` (llama-cpp-python).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use clinstruct_models::generation::{GenerationConfig, generate};
use clinstruct_models::gguf::GgufModel;
use serde_json::Value;

/// Tokens that must equal llama.cpp's greedy tokens (the brief's floor is 32).
const MIN_MATCH: usize = 32;

fn model_path() -> Option<PathBuf> {
    let p = match std::env::var_os("CLINSTRUCT_GEMMA3_270M_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let base = std::env::var_os("CLINSTRUCT_MODELS")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/clinstruct"))
                })?;
            base.join("gemma-3-270m-q4_k_m.gguf")
        }
    };
    p.is_file().then_some(p)
}

fn reference() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_270m_llamacpp.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gemma3_270m_matches_llama_cpp() {
    let Some(path) = model_path() else {
        eprintln!(
            "SKIPPED gemma3_270m_matches_llama_cpp: Gemma-3-270M GGUF not found (run \
             scripts/models/fetch_gemma3_270m.sh or set CLINSTRUCT_GEMMA3_270M_GGUF)"
        );
        return;
    };
    let r = reference();
    let dev = Device::Cpu;
    let m = GgufModel::open(&path, &dev).unwrap();

    // The real vocabulary tokenizes like llama.cpp (specials in text recognised, BOS added).
    for case in r["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            m.tokenizer.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
    let prompt = r["prompt"].as_str().unwrap();
    let prompt_ids = m.tokenizer.encode(prompt, false).unwrap();
    assert_eq!(prompt_ids, ids(&r["prompt_ids"]), "chat prompt ids");

    let lm = m.load_lm(DType::F32, &dev).unwrap();
    let want = ids(&r["greedy_ids"]);
    let cfg = GenerationConfig {
        max_new_tokens: want.len(),
        eos_token_ids: m.tokenizer.eos_token_ids().to_vec(),
        ..GenerationConfig::default()
    };
    let g = generate(&lm, Some(&m.tokenizer), &[prompt_ids], &cfg, &dev, None).unwrap();
    let got = &g.outputs[0].token_ids;
    let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
    let gaps: Vec<f64> = r["logit_gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    eprintln!(
        "gemma3-270m: {same}/{} greedy tokens equal llama.cpp's; ours {:?}; llama.cpp {:?}; \
         decode {:.1} tok/s",
        want.len(),
        g.outputs[0].text,
        r["greedy_text"].as_str().unwrap(),
        g.stats.decode_tokens_per_second
    );
    if same < want.len() {
        eprintln!(
            "first difference at step {same}: llama.cpp's top-2 logit gap there is {:.4}",
            gaps.get(same).copied().unwrap_or(f64::NAN)
        );
    }
    assert!(
        same >= MIN_MATCH.min(want.len()),
        "only {same} tokens match llama.cpp (ours {got:?}, llama.cpp {want:?})"
    );
}
