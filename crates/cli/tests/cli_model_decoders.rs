//! `clinstruct model forward` on decoder checkpoints: logits equal transformers' (the committed
//! decoder fixtures) for right-padded batches, through the CLI's own batching.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(case)
}

#[test]
fn decoder_logits_match_transformers() {
    for case in [
        "llama/gqa_llama3_tied",
        "mistral/window4_gqa",
        "gemma3/causal_pattern_f16_v4",
        "ministral3/yarn_llama4_tied",
    ] {
        let dir = fixture(case);
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        let ids: Vec<Vec<i64>> = io["right.input_ids"].to_vec2().unwrap();
        let mask: Vec<Vec<i64>> = io["right.attention_mask"].to_vec2().unwrap();
        let logits = &io["right.logits"];
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("ids.jsonl");
        let mut lines = String::new();
        for (i, (row, m)) in ids.iter().zip(&mask).enumerate() {
            let real: Vec<i64> = row
                .iter()
                .zip(m)
                .filter(|(_, m)| **m == 1)
                .map(|(t, _)| *t)
                .collect();
            lines += &format!("{{\"id\":\"{i}\",\"input_ids\":{real:?}}}\n");
        }
        std::fs::write(&input, lines).unwrap();
        let out = tmp.path().join("logits.safetensors");
        let o = Command::new(env!("CARGO_BIN_EXE_clinstruct"))
            .args(["model", "forward", "--model"])
            .arg(&dir)
            .arg("--input-ids")
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .args(["--batch-size", "2"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        for (i, m) in mask.iter().enumerate() {
            let n = m.iter().filter(|&&x| x == 1).count();
            let want: Tensor = logits.get(i).unwrap().narrow(0, 0, n).unwrap();
            let d = (&got[&i.to_string()] - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-4, "{case} row {i}: max-abs {d}");
        }
    }
}
