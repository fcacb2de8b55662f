//! `clinstruct lora train` and `lora merge` end to end on a tiny random Llama: the output
//! files, PEFT format, keep-best, bit-identical resume after `--stop-after` and after a real
//! SIGKILL, merging, bad input, and that logs never contain training text.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde_json::{Value, json};

use common::{bin, max_diff, run, stderr, stdout, tiny_model};

const SECRET: &str = "Jane Roe";

fn write_data(path: &Path, n: usize, offset: usize) {
    let mut text = String::new();
    for i in 0..n {
        let row = json!({
            "prompt": format!("Dialogue {}: patient {SECRET} reports cough for {} days.", i + offset, i % 5 + 1),
            "completion": format!(" S: cough {} days. A: bronchitis. P: rest.", i % 5 + 1),
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn train_args<'a>(model: &'a str, data: &'a str, eval: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "lora",
        "train",
        "--model",
        model,
        "--data",
        data,
        "--eval-data",
        eval,
        "--output",
        out,
        "--max-steps",
        "12",
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--dropout",
        "0.1",
        "--lr",
        "5e-3",
        "--warmup-ratio",
        "0.1",
        "--eval-every",
        "4",
        "--log-every",
        "1",
        "--max-length",
        "48",
        "--no-progress",
        "--json",
    ]
}

fn ok_json(args: &[&str]) -> Value {
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains(SECRET) && !stdout(&o).contains(SECRET),
        "training text leaked into the output: {}",
        stderr(&o)
    );
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Losses of the step records, in order.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|r| Some((r["step"].as_u64()?, r["loss"].as_f64()?)))
        .collect()
}

fn assert_same_run(a: &Path, b: &Path) {
    for f in [
        "adapter_model.safetensors",
        "checkpoint/trainable.safetensors",
        "checkpoint/optimizer.safetensors",
        "best/adapter_model.safetensors",
    ] {
        assert!(
            bytes(&a.join(f)) == bytes(&b.join(f)),
            "{f} differs between the uninterrupted and the resumed run"
        );
    }
    assert_eq!(losses(a), losses(b));
}

#[test]
fn train_resume_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    tiny_model(&model_dir);
    let model = model_dir.to_str().unwrap();
    let data = dir.path().join("train.jsonl");
    let eval = dir.path().join("eval.jsonl");
    write_data(&data, 10, 0);
    write_data(&eval, 4, 100);
    let (data, eval) = (data.to_str().unwrap(), eval.to_str().unwrap());

    // An uninterrupted run.
    let a = dir.path().join("a");
    let sa = ok_json(&train_args(model, data, eval, a.to_str().unwrap()));
    assert_eq!(sa["steps"], 12);
    assert_eq!(sa["interrupted"], false);
    assert_eq!(sa["adapters"], 14, "7 linear layers × 2 blocks");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
        "training_curve.svg",
        "checkpoint/trainer_state.json",
        "checkpoint/optimizer.safetensors",
        "checkpoint/adapter_model.safetensors",
        "best/adapter_model.safetensors",
        "best/metrics.json",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    let log = losses(&a);
    assert_eq!(log.len(), 12);
    assert!(
        log[11].1 < log[0].1,
        "the loss did not go down: {:?}",
        log.iter().map(|l| l.1).collect::<Vec<_>>()
    );
    let evals = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("eval_loss"))
        .count();
    assert_eq!(evals, 3);
    // The top-level adapter is the best evaluation's.
    assert_eq!(
        bytes(&a.join("adapter_model.safetensors")),
        bytes(&a.join("best/adapter_model.safetensors"))
    );
    let best = sa["best_step"].as_u64().unwrap();
    assert!([4, 8, 12].contains(&best));

    // Gradient checkpointing recomputes layers (same dropout masks) and trains the same.
    let g = dir.path().join("g");
    let g_args = train_args(model, data, eval, g.to_str().unwrap());
    ok_json(&[&g_args[..], &["--gradient-checkpointing"]].concat());
    for ((sa, la), (sg, lg)) in losses(&a).into_iter().zip(losses(&g)) {
        assert_eq!(sa, sg);
        assert!(
            (la - lg).abs() < 1e-5,
            "step {sa}: loss {la} vs {lg} with checkpointing"
        );
    }

    // Stopped after 5 steps (checkpoint at 4), then resumed: bit-identical.
    let b = dir.path().join("b");
    let b_args = train_args(model, data, eval, b.to_str().unwrap());
    let sb = ok_json(&[&b_args[..], &["--stop-after", "5"]].concat());
    assert_eq!(sb["interrupted"], true);
    assert_eq!(sb["steps"], 5);
    assert!(!b.join("adapter_model.safetensors").exists());
    let sb = ok_json(&[&b_args[..], &["--resume"]].concat());
    assert_eq!(sb["resumed_from"], 4);
    assert_eq!(sb["steps"], 12);
    assert_same_run(&a, &b);

    // Killed with SIGKILL while checkpointing every step, then resumed: bit-identical.
    let c = dir.path().join("c");
    let c_args = train_args(model, data, eval, c.to_str().unwrap());
    let mut child = bin()
        .args([&c_args[..], &["--save-every", "1"]].concat())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = c.join("checkpoint/trainer_state.json");
    let t0 = Instant::now();
    loop {
        let step = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["step"].as_u64());
        if step.is_some_and(|s| s >= 2) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before it was killed");
    let sc = ok_json(&[&c_args[..], &["--resume"]].concat());
    assert!(sc["resumed_from"].as_u64().unwrap() >= 2);
    assert_same_run(&a, &c);

    // Without --resume, an existing run is not overwritten; with other settings, not resumed.
    let o = run(&train_args(model, data, eval, a.to_str().unwrap()));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("checkpoint of an earlier run"),
        "{}",
        stderr(&o)
    );
    let mut other = train_args(model, data, eval, a.to_str().unwrap());
    other.extend(["--resume"]);
    let i = other.iter().position(|a| *a == "--batch-size").unwrap();
    other[i + 1] = "1";
    let o = run(&other);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot resume, batch_size was 2 and is now 1"),
        "{}",
        stderr(&o)
    );

    // Merge: each adapted weight becomes W + scale·B·A.
    let merged = dir.path().join("merged");
    let o = run(&[
        "lora",
        "merge",
        "--model",
        model,
        "--adapter",
        a.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(
            merged.join(f).is_file(),
            "{f} missing from the merged model"
        );
    }
    let dev = Device::Cpu;
    let base = candle_core::safetensors::load(model_dir.join("model.safetensors"), &dev).unwrap();
    let out = candle_core::safetensors::load(merged.join("model.safetensors"), &dev).unwrap();
    let adapter =
        candle_core::safetensors::load(a.join("adapter_model.safetensors"), &dev).unwrap();
    let key = "model.layers.1.self_attn.q_proj";
    let la = &adapter[&format!("base_model.model.{key}.lora_A.weight")];
    let lb = &adapter[&format!("base_model.model.{key}.lora_B.weight")];
    let expect =
        (&base[&format!("{key}.weight")] + (lb.matmul(la).unwrap() * 2.0).unwrap()).unwrap();
    let diff = max_diff(&out[&format!("{key}.weight")], &expect);
    assert!(diff < 1e-6, "merged weight off by {diff}");
    let untouched = (&out["model.norm.weight"] - &base["model.norm.weight"])
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(untouched, 0.0);
    // The merged directory is a model `generate` loads.
    let o = run(&[
        "generate",
        "--model",
        merged.to_str().unwrap(),
        "--prompt",
        "cough",
        "--max-new-tokens",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Merging into a non-empty directory is refused.
    let o = run(&[
        "lora",
        "merge",
        "--model",
        model,
        "--adapter",
        a.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
}

#[test]
fn bad_training_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    tiny_model(&model_dir);
    let model = model_dir.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    let data = dir.path().join("no_completion.jsonl");
    std::fs::write(&data, format!("{}\n", json!({"prompt": SECRET}))).unwrap();
    let o = run(&[
        "lora",
        "train",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--output",
        out,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("no_completion.jsonl") && e.contains("\"prompt\" and \"completion\""),
        "{e}"
    );
    assert!(!e.contains(SECRET));

    let data = dir.path().join("broken.jsonl");
    std::fs::write(&data, format!("{}\nnot json\n", json!({"text": "fine"}))).unwrap();
    let o = run(&[
        "lora",
        "train",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--output",
        out,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("broken.jsonl") && e.contains("line 2"), "{e}");

    let o = run(&[
        "lora",
        "train",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--output",
        out,
        "--target-modules",
        "nothing_like_this",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no linear layer of the model matches"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn chat_format_trains_on_the_assistant_turn() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).unwrap();
    tiny_model(&model_dir);
    let data = dir.path().join("train.jsonl");
    write_data(&data, 3, 0);
    let out = dir.path().join("out");
    let s = ok_json(&[
        "lora",
        "train",
        "--model",
        model_dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--format",
        "chat",
        "--system",
        "Write a SOAP note.",
        "--max-steps",
        "2",
        "--quantize",
        "nf4",
        "--no-progress",
        "--json",
    ]);
    assert_eq!(s["steps"], 2);
    assert!(out.join("adapter_model.safetensors").is_file());
}
