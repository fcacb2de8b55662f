//! `clinstruct generate` end to end on a tiny random Llama written here (HF directory with the
//! Llama-3.2 tokenizer fixture): JSON fields, streaming, chat, stop strings, seeds, errors, and
//! that logs never contain the prompt.

mod common;

use serde_json::Value;

use common::{run, stderr, stdout, tiny_model};

const PROMPT: &str = "Patient Jane Roe reports chest pain since Monday";

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
