//! How far clinstruct's logits are from llama.cpp's at every step of an incremental greedy
//! decode of Gemma-3-270M (Q4_K_M), both fed llama.cpp's tokens (a diagnostic for the
//! numerics behind crates/models/tests/gemma3_gguf.rs, not a test).
//!
//!   ~/.cache/clinstruct/venv/bin/python bench/llamacpp_step_logits.py /tmp/llama_steps.f32
//!   cargo run --release -p clinstruct-models --example gguf_logit_diff -- /tmp/llama_steps.f32
//!
//! Per step: llama.cpp's top-2 gap, ours for the same two tokens, the largest and RMS logit
//! difference, and whether our argmax is llama.cpp's token.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clinstruct_models::CausalLm;
use clinstruct_models::gguf::GgufModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let logits_path = args
        .get(1)
        .ok_or("usage: gguf_logit_diff LLAMA_STEPS.f32 [MODEL.gguf]")?;
    let model = match args.get(2) {
        Some(m) => PathBuf::from(m),
        None => {
            Path::new(&std::env::var("HOME")?).join(".cache/clinstruct/gemma-3-270m-q4_k_m.gguf")
        }
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma3_270m_llamacpp.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    let prompt = ids(&r["prompt_ids"]);
    let want = ids(&r["greedy_ids"]);
    let raw = std::fs::read(logits_path)?;
    let theirs: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let vocab = theirs.len() / want.len();

    let dev = Device::Cpu;
    let m = GgufModel::open(&model, &dev)?;
    let lm = m.load_lm(DType::F32, &dev)?;
    let mut cache = lm.new_cache();
    let mut input = prompt.clone();
    let mut pos0 = 0u32;
    let (mut sum_rms, mut worst) = (0f64, 0f64);
    let mut free_running = None;
    println!("step  llama_gap  our_gap  max|d|   rms_d  argmax");
    for (i, &tok) in want.iter().enumerate() {
        let n = input.len();
        let x = Tensor::from_vec(input.clone(), (1, n), &dev)?;
        let pos = Tensor::arange(pos0, pos0 + n as u32, &dev)?.unsqueeze(0)?;
        let ours: Vec<f32> = lm
            .forward_last(&x, None, &pos, Some(&mut cache))?
            .flatten_all()?
            .to_vec1()?;
        pos0 += n as u32;
        let t = &theirs[i * vocab..(i + 1) * vocab];
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| t[b].total_cmp(&t[a]));
        let (a, b) = (order[0], order[1]);
        let (mut max_d, mut sq) = (0f64, 0f64);
        for (o, t) in ours.iter().zip(t) {
            let d = (*o - *t) as f64;
            max_d = max_d.max(d.abs());
            sq += d * d;
        }
        let rms = (sq / vocab as f64).sqrt();
        sum_rms += rms;
        worst = worst.max(max_d);
        let argmax = ours
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(j, _)| j)
            .unwrap_or(0);
        if argmax != tok as usize && free_running.is_none() {
            free_running = Some(i);
        }
        println!(
            "{i:4}  {:9.4}  {:7.4}  {max_d:6.4}  {rms:6.4}  {}",
            t[a] - t[b],
            ours[a] - ours[b],
            if argmax == tok as usize {
                "same"
            } else {
                "DIFF"
            }
        );
        input = vec![tok];
    }
    println!(
        "mean rms {:.4}, worst max|d| {worst:.4}, first differing argmax: {free_running:?}",
        sum_rms / want.len() as f64
    );
    Ok(())
}
