//! Parity with transformers/tokenizers on real-format tokenizer files
//! (scripts/fixtures/make_tokenizer_fixtures.py): token ids, decoding, streaming decoding,
//! special ids, chat templates, and the same vocabularies rebuilt from GGUF metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as G;
use clinstruct_models::chat_template::RenderOptions;
use clinstruct_models::{ChatTemplateError, Tokenizer};
use serde_json::Value;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(name)
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

const NAMES: [&str; 4] = ["llama3", "gemma", "tekken", "unigram"];

fn check_encodings(name: &str, tok: &Tokenizer, exp: &Value, what: &str) {
    let mut n = 0;
    for case in exp["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "{what} {name}: ids of {text:?}"
        );
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids_no_special"]),
            "{what} {name}: ids without specials of {text:?}"
        );
        let with = ids(&case["ids"]);
        assert_eq!(
            tok.decode(&with, false).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{what} {name}: decode of {text:?}"
        );
        assert_eq!(
            tok.decode(&with, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "{what} {name}: decode(skip_special) of {text:?}"
        );
        n += 1;
    }
    assert!(n >= 15, "{name}: only {n} cases");
}

#[test]
fn tokenizer_json_ids_and_decoding_match_transformers() {
    for name in NAMES {
        let exp = expected(name);
        let tok = Tokenizer::from_dir(&fixture_dir(name)).unwrap();
        check_encodings(name, &tok, &exp, "tokenizer.json");
        let batch: Vec<Vec<u32>> = exp["batch"].as_array().unwrap().iter().map(ids).collect();
        let got = tok
            .encode_batch(
                &[
                    "Short text",
                    "A much longer clinical sentence with 120/80 mmHg",
                    "",
                ],
                true,
            )
            .unwrap();
        assert_eq!(got, batch, "{name}: batch");
        assert_eq!(tok.vocab_size() as u64, exp["vocab_size"].as_u64().unwrap());
    }
}

#[test]
fn special_token_ids() {
    for name in NAMES {
        let exp = expected(name);
        let tok = Tokenizer::from_dir(&fixture_dir(name)).unwrap();
        let id = |k: &str| exp[k].as_u64().map(|x| x as u32);
        assert_eq!(tok.bos_token_id(), id("bos_token_id"), "{name} bos");
        assert_eq!(tok.pad_token_id(), id("pad_token_id"), "{name} pad");
        let eos = id("eos_token_id").unwrap();
        assert_eq!(
            tok.eos_token_ids()[0],
            eos,
            "{name}: tokenizer eos comes first"
        );
        let cfg = match &exp["config_eos_token_ids"] {
            Value::Array(_) => ids(&exp["config_eos_token_ids"]),
            v => vec![v.as_u64().unwrap() as u32],
        };
        for e in cfg {
            assert!(
                tok.eos_token_ids().contains(&e),
                "{name}: eos {e} from config.json"
            );
        }
        assert_eq!(tok.bos_token(), exp["bos_token"].as_str());
        assert_eq!(tok.eos_token(), exp["eos_token"].as_str());
    }
}

#[test]
fn streaming_decode_equals_full_decode() {
    for name in NAMES {
        let exp = expected(name);
        let tok = Tokenizer::from_dir(&fixture_dir(name)).unwrap();
        for case in exp["encodings"].as_array().unwrap() {
            for skip in [false, true] {
                let all = ids(&case["ids"]);
                let mut stream = tok.decode_stream(skip);
                let mut text = String::new();
                for &id in &all {
                    if let Some(delta) = stream.step(id).unwrap() {
                        // A delta never ends inside a character or a byte-fallback sequence.
                        assert!(
                            !delta.ends_with('\u{FFFD}'),
                            "{name}: split delta {delta:?}"
                        );
                        text.push_str(&delta);
                    }
                }
                if let Some(rest) = stream.finish().unwrap() {
                    text.push_str(&rest);
                }
                assert_eq!(
                    text,
                    tok.decode(&all, skip).unwrap(),
                    "{name}: stream of {:?}",
                    case["text"]
                );
            }
        }
    }
}

#[test]
fn chat_templates_render_like_transformers() {
    let mut total = 0;
    for name in ["llama3", "gemma", "tekken"] {
        let exp = expected(name);
        let tok = Tokenizer::from_dir(&fixture_dir(name)).unwrap();
        let tmpl = tok.compile_chat_template(None).unwrap();
        for chat in exp["chats"].as_array().unwrap() {
            let mut opts: RenderOptions =
                tok.render_options(chat["add_generation_prompt"].as_bool().unwrap());
            for (k, v) in chat["kwargs"].as_object().unwrap() {
                opts.extra.insert(k.clone(), v.clone());
            }
            let got = tmpl.render_json(&chat["messages"], &opts);
            match (&chat["rendered"], &chat["error"]) {
                (Value::String(want), _) => {
                    let got = got.unwrap();
                    assert_eq!(&got, want, "{name}: {}", chat["messages"]);
                    // The rendered prompt also tokenizes identically (specials inside text).
                    assert_eq!(
                        tok.encode(&got, false).unwrap(),
                        ids(&chat["ids"]),
                        "{name}"
                    );
                }
                (_, Value::String(err)) => {
                    assert_eq!(
                        got.unwrap_err(),
                        ChatTemplateError::Raised(err.clone()),
                        "{name}"
                    );
                }
                _ => panic!("bad fixture"),
            }
            total += 1;
        }
    }
    assert_eq!(total, 27);
}

#[test]
fn named_chat_templates_and_missing_template() {
    let tok = Tokenizer::from_dir(&fixture_dir("tekken")).unwrap();
    assert_eq!(
        tok.chat_templates().names().collect::<Vec<_>>(),
        ["default", "tool_use"]
    );
    let t = tok.compile_chat_template(Some("tool_use")).unwrap();
    assert_eq!(
        t.render(&[], &tok.render_options(false)).unwrap(),
        "<s>unused"
    );
    let plain = Tokenizer::from_dir(&fixture_dir("unigram")).unwrap();
    assert_eq!(
        plain.apply_chat_template(&[], true).unwrap_err(),
        ChatTemplateError::Missing
    );
}

// ---- the same vocabularies as llama.cpp's converter writes them into GGUF metadata

fn strings(v: &[String]) -> G {
    G::Array(v.iter().map(|s| G::String(s.clone())).collect())
}

struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
    scores: Vec<f32>,
}

/// tokenizer.json → GGUF-style vocabulary: ids in order, added tokens typed control (special)
/// or user-defined, `<0xNN>` pieces typed byte, and for SentencePiece scores from merge ranks.
fn vocab_from_tokenizer_json(name: &str) -> Vocab {
    let text = std::fs::read_to_string(fixture_dir(name).join("tokenizer.json")).unwrap();
    let j: Value = serde_json::from_str(&text).unwrap();
    let mut by_id: HashMap<u32, String> = HashMap::new();
    for (t, id) in j["model"]["vocab"].as_object().unwrap() {
        by_id.insert(id.as_u64().unwrap() as u32, t.clone());
    }
    let mut types: HashMap<u32, i32> = HashMap::new();
    for at in j["added_tokens"].as_array().unwrap() {
        let id = at["id"].as_u64().unwrap() as u32;
        by_id.insert(id, at["content"].as_str().unwrap().to_string());
        types.insert(
            id,
            if at["special"].as_bool().unwrap() {
                3
            } else {
                4
            },
        );
    }
    let n = by_id.len();
    let tokens: Vec<String> = (0..n as u32).map(|i| by_id[&i].clone()).collect();
    let merges: Vec<String> = j["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            _ => panic!(),
        })
        .collect();
    let mut scores = vec![-1e9f32; n];
    for (rank, m) in merges.iter().enumerate() {
        let merged = m.replacen(' ', "", 1);
        if let Some(i) = tokens.iter().position(|t| *t == merged) {
            scores[i] = scores[i].max(-(rank as f32));
        }
    }
    let types = (0..n as u32)
        .map(|i| {
            types.get(&i).copied().unwrap_or_else(|| {
                let t = &tokens[i as usize];
                if t.len() == 6 && t.starts_with("<0x") {
                    6
                } else {
                    1
                }
            })
        })
        .collect();
    Vocab {
        tokens,
        types,
        merges,
        scores,
    }
}

fn gguf_metadata(name: &str, model: &str, pre: &str, exp: &Value) -> HashMap<String, G> {
    let v = vocab_from_tokenizer_json(name);
    let mut m = HashMap::new();
    m.insert("tokenizer.ggml.model".into(), G::String(model.into()));
    m.insert("tokenizer.ggml.pre".into(), G::String(pre.into()));
    m.insert("tokenizer.ggml.tokens".into(), strings(&v.tokens));
    m.insert(
        "tokenizer.ggml.token_type".into(),
        G::Array(v.types.iter().map(|t| G::I32(*t)).collect()),
    );
    if model == "gpt2" {
        m.insert("tokenizer.ggml.merges".into(), strings(&v.merges));
    } else {
        m.insert(
            "tokenizer.ggml.scores".into(),
            G::Array(v.scores.iter().map(|s| G::F32(*s)).collect()),
        );
        m.insert("tokenizer.ggml.add_space_prefix".into(), G::Bool(false));
    }
    let bos = exp["bos_token_id"].as_u64().unwrap() as u32;
    m.insert("tokenizer.ggml.bos_token_id".into(), G::U32(bos));
    m.insert(
        "tokenizer.ggml.eos_token_id".into(),
        G::U32(exp["eos_token_id"].as_u64().unwrap() as u32),
    );
    m.insert("tokenizer.ggml.add_bos_token".into(), G::Bool(true));
    m.insert("tokenizer.ggml.add_eos_token".into(), G::Bool(false));
    m
}

#[test]
fn gguf_vocabularies_tokenize_like_their_tokenizer_json() {
    for (name, model, pre) in [
        ("llama3", "gpt2", "llama-bpe"),
        ("tekken", "gpt2", "tekken"),
        ("gemma", "llama", "default"),
    ] {
        let exp = expected(name);
        let meta = gguf_metadata(name, model, pre, &exp);
        let tok = Tokenizer::from_gguf(&meta).unwrap();
        check_encodings(name, &tok, &exp, "gguf");
        assert_eq!(
            tok.bos_token_id(),
            exp["bos_token_id"].as_u64().map(|x| x as u32)
        );
    }
}

#[test]
fn gguf_tokenizer_errors() {
    let exp = expected("llama3");
    let mut meta = gguf_metadata("llama3", "gpt2", "llama-bpe", &exp);
    meta.insert("tokenizer.ggml.model".into(), G::String("rwkv".into()));
    assert_eq!(
        Tokenizer::from_gguf(&meta).unwrap_err().to_string(),
        "GGUF tokenizer: unsupported tokenizer.ggml.model `rwkv` (supported: llama, gpt2)"
    );
    meta.remove("tokenizer.ggml.model");
    assert_eq!(
        Tokenizer::from_gguf(&meta).unwrap_err().to_string(),
        "GGUF tokenizer: missing metadata key tokenizer.ggml.model"
    );
}
