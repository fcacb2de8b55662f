//! `clinstruct embed` and `clinstruct model forward` on the committed ModernBERT fixtures
//! (crates/models/tests/fixtures/modernbert, expectations computed by transformers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, IndexOp, Tensor};

mod common;

use common::{max_diff, run, stderr};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/modernbert")
        .join(case)
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    m.metadata().clone().unwrap()
}

/// Per row of a fixture's io file: its length and expected `(len, hidden)` states.
fn expected(case: &str) -> (Vec<Vec<u32>>, Vec<Tensor>) {
    let io = load(&fixture(case).join("io.safetensors"));
    let ids: Vec<Vec<i64>> = io["input_ids"].to_vec2().unwrap();
    let mask: Vec<Vec<i64>> = io["attention_mask"].to_vec2().unwrap();
    let mut seqs = Vec::new();
    let mut states = Vec::new();
    for (r, (ids, mask)) in ids.iter().zip(&mask).enumerate() {
        let n = mask.iter().filter(|&&m| m == 1).count();
        seqs.push(ids[..n].iter().map(|&t| t as u32).collect());
        states.push(io["last_hidden_state"].i((r, ..n)).unwrap());
    }
    (seqs, states)
}

const TOL: f32 = 1e-4;

#[test]
fn embed_text_matches_transformers_for_every_pooling() {
    let case = fixture("mlm_v4_g3_tok");
    let (_, want) = expected("mlm_v4_g3_tok");
    let tmp = tempfile::tempdir().unwrap();
    let input = case.join("texts.jsonl");
    for (pooling, batch) in [("all", "8"), ("cls", "2"), ("mean", "1")] {
        let out = tmp.path().join(format!("{pooling}.safetensors"));
        let o = ok(&[
            "embed",
            "--model",
            case.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--pooling",
            pooling,
            "--batch-size",
            batch,
        ]);
        let log = stderr(&o);
        assert!(log.contains("embed: 3 inputs, 126 tokens"), "{log}");
        // Counts and ids only: no word of the notes reaches the log.
        for word in ["carcinoma", "Café", "biopsy", "margins"] {
            assert!(!log.contains(word), "text leaked into the log: {log}");
        }
        let got = load(&out);
        let meta = metadata(&out);
        assert_eq!(meta["ids"], r#"["note-0","note-1","note-2"]"#);
        assert_eq!(meta["pooling"], pooling);
        assert_eq!(meta["architecture"], "ModernBertForMaskedLM");
        for (i, w) in want.iter().enumerate() {
            let w = match pooling {
                "all" => w.clone(),
                "cls" => w.get(0).unwrap(),
                _ => w.mean(0).unwrap(),
            };
            let g = &got[&format!("note-{i}")];
            assert_eq!(g.dtype(), DType::F32);
            assert_eq!(g.dims(), w.dims(), "{pooling} note-{i}");
            let d = max_diff(g, &w);
            assert!(d <= TOL, "{pooling} note-{i}: {d}");
        }
    }
}

#[test]
fn embed_truncates_text_and_names_the_ids() {
    let case = fixture("mlm_v4_g3_tok");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("e.safetensors");
    let o = ok(&[
        "embed",
        "--model",
        case.to_str().unwrap(),
        "--input",
        case.join("texts.jsonl").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--pooling",
        "all",
        "--max-length",
        "40",
    ]);
    // Lengths 37, 46 and 43: two are cut to 40.
    assert!(
        stderr(&o).contains("embed: 2 inputs truncated to 40 tokens: note-1, note-2"),
        "{}",
        stderr(&o)
    );
    let got = load(&out);
    assert_eq!(got["note-0"].dims(), &[37, 32]);
    assert_eq!(got["note-1"].dims(), &[40, 32]);
}

fn write_ids_jsonl(path: &Path, seqs: &[Vec<u32>]) {
    let lines: Vec<String> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"id": i, "input_ids": s}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn model_forward_and_embed_ids_match_transformers() {
    for case in [
        "base_v5_g2_noprefix",
        "seqcls_v4_bias_bf16",
        "mlm_v5_g2_f16_tanh",
    ] {
        let (seqs, want) = expected(case);
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("ids.jsonl");
        write_ids_jsonl(&input, &seqs);
        for (cmd, batch) in [("forward", "1"), ("forward", "4"), ("embed", "2")] {
            let out = tmp.path().join(format!("{cmd}{batch}.safetensors"));
            let args: Vec<&str> = if cmd == "forward" {
                vec!["model", "forward", "--input-ids"]
            } else {
                vec!["embed", "--pooling", "all", "--input"]
            };
            let model = fixture(case);
            let mut args = args;
            args.extend([
                input.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--batch-size",
                batch,
            ]);
            ok(&args);
            let got = load(&out);
            for (i, w) in want.iter().enumerate() {
                let d = max_diff(&got[&i.to_string()], w);
                assert!(d <= TOL, "{case} {cmd} batch {batch} row {i}: {d}");
            }
        }
    }
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.safetensors");
    let base = fixture("base_v5_g2_noprefix");
    let ids = tmp.path().join("ids.jsonl");
    let texts = tmp.path().join("texts.jsonl");
    std::fs::write(&ids, "{\"id\":\"a\",\"input_ids\":[1,5,999,2]}\n").unwrap();
    std::fs::write(&texts, "{\"id\":\"a\",\"text\":\"secret words\"}\n").unwrap();
    let fails = |args: &[&str]| {
        let o = run(args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!out.exists(), "no output on failure");
        stderr(&o)
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (base_s, ids_s, texts_s, out_s) = (s(&base), s(&ids), s(&texts), s(&out));

    let e = fails(&[
        "model",
        "forward",
        "--model",
        &base_s,
        "--input-ids",
        &ids_s,
        "--output",
        &out_s,
    ]);
    assert_eq!(
        e,
        format!("error: {ids_s}:1 (id a): token id 999 is outside the vocabulary (size 200)\n")
    );
    let e = fails(&[
        "model",
        "forward",
        "--model",
        &base_s,
        "--input-ids",
        &texts_s,
        "--output",
        &out_s,
    ]);
    assert_eq!(
        e,
        format!(
            "error: {texts_s}:1 (id a): expected \"input_ids\" (token ids; `clinstruct embed` takes text)\n"
        )
    );
    let e = fails(&[
        "embed", "--model", &base_s, "--input", &texts_s, "--output", &out_s,
    ]);
    assert_eq!(
        e,
        format!(
            "error: {base_s}: no tokenizer.json (text inputs need one; give input_ids instead)\n"
        )
    );
    assert!(!e.contains("secret"));

    // An architecture nobody implements yet.
    let other = tmp.path().join("llama");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(
        base.join("model.safetensors"),
        other.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        other.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#,
    )
    .unwrap();
    let other_s = s(&other);
    let e = fails(&[
        "model",
        "forward",
        "--model",
        &other_s,
        "--input-ids",
        &ids_s,
        "--output",
        &out_s,
    ]);
    assert_eq!(
        e,
        format!(
            "error: {other_s}: unknown architecture GPT2LMHeadModel (supported: ModernBertModel, ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertForTokenClassification, ModernBertForQuestionAnswering, ModernBertForMultipleChoice, LlamaForCausalLM, MistralForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Ministral3ForCausalLM, Mistral3ForConditionalGeneration)\n"
        )
    );

    let dup = tmp.path().join("dup.jsonl");
    std::fs::write(
        &dup,
        "{\"id\":1,\"input_ids\":[1,2]}\n\n{\"id\":\"1\",\"input_ids\":[1,2]}\n",
    )
    .unwrap();
    let e = fails(&[
        "embed",
        "--model",
        &base_s,
        "--input",
        &s(&dup),
        "--output",
        &out_s,
    ]);
    assert_eq!(e, format!("error: {}:3: duplicate id 1\n", s(&dup)));
    let e = fails(&[
        "embed",
        "--model",
        &base_s,
        "--input",
        &s(&dup),
        "--output",
        &out_s,
        "--max-length",
        "1",
    ]);
    assert_eq!(e, "error: --max-length must be at least 2 (got 1)\n");
}

#[test]
fn help_texts() {
    for args in [
        vec!["embed", "--help"],
        vec!["model", "--help"],
        vec!["model", "forward", "--help"],
    ] {
        let o = ok(&args);
        assert!(
            String::from_utf8(o.stdout)
                .unwrap()
                .contains("Usage: clinstruct")
        );
    }
}
