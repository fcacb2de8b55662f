//! `generation::generate` (greedy) reproduces transformers' `generate` on the decoder fixtures
//! (scripts/fixtures/make_decoder_fixtures.py): left-padded batches and single prompts.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clinstruct_models::generation::{FinishReason, GenerationConfig, generate};
use clinstruct_models::{AnyCausalLm, CausalLm, Checkpoint};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::U32).unwrap().to_vec2().unwrap()
}

/// The generated part of transformers' sequences: after the prompt, up to and including EOS
/// (later positions are padding).
fn generated(seq: &[u32], prompt_width: usize, eos: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for &t in &seq[prompt_width..] {
        out.push(t);
        if eos.contains(&t) {
            break;
        }
    }
    out
}

#[test]
fn greedy_generate_matches_transformers_on_decoder_fixtures() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("decoders.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for case in manifest["cases"].as_array().unwrap() {
        let dir = fixtures()
            .join(case["arch"].as_str().unwrap())
            .join(case["case"].as_str().unwrap());
        let max_new = case["max_new_tokens"].as_u64().unwrap() as usize;
        let model = AnyCausalLm::load(
            &Checkpoint::open_dir(&dir).unwrap(),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
        let info = model.info().clone();
        let cfg = GenerationConfig {
            max_new_tokens: max_new,
            eos_token_ids: info.eos_token_ids.clone(),
            pad_token_id: info.pad_token_id,
            ..GenerationConfig::default()
        };
        // Left-padded batch: prompts are the unmasked ids of each row.
        let ids = rows(&io["left.input_ids"]);
        let mask = rows(&io["left.attention_mask"]);
        let width = ids[0].len();
        let prompts: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .filter(|(_, m)| **m == 1)
                    .map(|(t, _)| *t)
                    .collect()
            })
            .collect();
        let want = rows(&io["gen.batch_sequences"]);
        let got = generate(&model, None, &prompts, &cfg, &Device::Cpu, None).unwrap();
        for (i, out) in got.outputs.iter().enumerate() {
            let w = generated(&want[i], width, &info.eos_token_ids);
            assert_eq!(out.token_ids, w, "{dir:?} batch row {i}");
            let eos_end = w.last().is_some_and(|t| info.eos_token_ids.contains(t));
            let reason = if eos_end {
                FinishReason::Eos
            } else {
                FinishReason::Length
            };
            assert_eq!(out.finish_reason, reason);
        }
        let single = rows(&io["gen.single_input"]);
        let want = rows(&io["gen.single_sequences"]);
        let got = generate(&model, None, &single, &cfg, &Device::Cpu, None).unwrap();
        assert_eq!(
            got.outputs[0].token_ids,
            generated(&want[0], single[0].len(), &info.eos_token_ids),
            "{dir:?} single"
        );
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} fixture cases");
}
