//! One full fine-tuning step of a ModernBERT-large-shaped encoder with the seed system's three
//! heads ([CLS] → dropout → Linear to 4/4/2, masked multi-head loss), AdamW over every weight:
//! forward + backward + optimiser step, batch 1. The Rust side of `bench/encoder_step.py`.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p clinstruct-train --example encoder_step -- \
//!     --len 4096 --steps 5 [--layers 2] [--checkpointing]
//! ```
//!
//! Prints one JSON line: median step seconds, the resident memory after building model and
//! optimiser (`baseline_mb`, VmRSS) and the process's peak (`peak_mb`, VmHWM), in MiB.

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clinstruct_models::modernbert::{Config, ModernBert};
use clinstruct_nn::checkpoint::Checkpointed;
use clinstruct_nn::{Linear, Weights};
use clinstruct_train::{AdamW, AdamWConfig, Head, HeadNorm, masked_multi_head_loss};

mod common;
use common::status_mb;

struct Args {
    len: usize,
    steps: usize,
    layers: usize,
    checkpointing: bool,
    /// `keep_freed_memory` (off with --no-alloc-tune, for A/B runs).
    alloc_tune: bool,
}

fn args() -> Args {
    let mut a = Args {
        len: 1024,
        steps: 5,
        layers: 2,
        checkpointing: false,
        alloc_tune: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} needs a number"))
        };
        match k.as_str() {
            "--len" => a.len = num(),
            "--steps" => a.steps = num(),
            "--layers" => a.layers = num(),
            "--checkpointing" => a.checkpointing = true,
            "--no-alloc-tune" => a.alloc_tune = false,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

const HIDDEN: usize = 1024;
const INTERMEDIATE: usize = 2624;
const VOCAB: usize = 1000;

fn main() -> Result<()> {
    let a = args();
    if a.alloc_tune {
        clinstruct_models::runtime::keep_freed_memory();
    }
    let dev = Device::Cpu;
    let cfg = Config::from_json(&serde_json::json!({
        "model_type": "modernbert",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": a.layers,
        "num_attention_heads": 16,
        "local_attention": 128,
        "global_attn_every_n_layers": 3,
        "max_position_embeddings": 8192,
        "norm_eps": 1e-5,
        "hidden_activation": "gelu",
    }))
    .map_err(candle_core::Error::wrap)?;
    // Every backbone tensor as a trainable variable, initialised like transformers (normal,
    // std 0.02; norms 1).
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        let mut add = |name: String, shape: &[usize]| -> Result<()> {
            let t = if shape.len() == 1 {
                Tensor::ones(shape, DType::F32, &dev)?
            } else {
                Tensor::randn(0f32, 0.02, shape, &dev)?
            };
            data.insert(name, Var::from_tensor(&t)?);
            Ok(())
        };
        add("embeddings.tok_embeddings.weight".into(), &[VOCAB, HIDDEN])?;
        add("embeddings.norm.weight".into(), &[HIDDEN])?;
        for i in 0..a.layers {
            let p = format!("layers.{i}");
            if i > 0 {
                add(format!("{p}.attn_norm.weight"), &[HIDDEN])?;
            }
            add(format!("{p}.attn.Wqkv.weight"), &[3 * HIDDEN, HIDDEN])?;
            add(format!("{p}.attn.Wo.weight"), &[HIDDEN, HIDDEN])?;
            add(format!("{p}.mlp_norm.weight"), &[HIDDEN])?;
            add(format!("{p}.mlp.Wi.weight"), &[2 * INTERMEDIATE, HIDDEN])?;
            add(format!("{p}.mlp.Wo.weight"), &[HIDDEN, INTERMEDIATE])?;
        }
        add("final_norm.weight".into(), &[HIDDEN])?;
    }
    let w = Weights::from_var_builder(VarBuilder::from_varmap(&varmap, DType::F32, &dev));
    let mut model = ModernBert::load(&w, &cfg).map_err(candle_core::Error::wrap)?;
    model.set_gradient_checkpointing(a.checkpointing);
    let mut params: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut heads = Vec::new();
    for (name, classes) in [("t", 4), ("n", 4), ("m", 2)] {
        let wv = Var::randn(0f32, 0.02, (classes, HIDDEN), &dev)?;
        let bv = Var::zeros(classes, DType::F32, &dev)?;
        heads.push(Linear::new(
            wv.as_tensor().clone(),
            Some(bv.as_tensor().clone()),
        )?);
        params.push((format!("{name}.weight"), wv));
        params.push((format!("{name}.bias"), bv));
    }
    let mut opt = AdamW::new(
        params,
        AdamWConfig {
            lr: 2e-5,
            ..AdamWConfig::default()
        },
    )?;
    let ids: Vec<u32> = (0..a.len).map(|i| (i * 7919 % VOCAB) as u32).collect();
    let ids = Tensor::from_vec(ids, (1, a.len), &dev)?;
    let labels: [&[i64]; 3] = [&[2], &[1], &[0]];
    let baseline = status_mb("VmRSS:");
    let mut times = Vec::new();
    let mut phases = Vec::new();
    for _ in 0..a.steps {
        let start = Instant::now();
        let h = model.forward_t(&ids, None, true)?;
        let cls = candle_nn::ops::dropout(&h.narrow(1, 0, 1)?.squeeze(1)?, 0.1)?;
        let logits: Vec<Tensor> = heads
            .iter()
            .map(|l| l.forward(&cls))
            .collect::<Result<_>>()?;
        let hs: Vec<Head> = (0..3)
            .map(|i| Head {
                logits: &logits[i],
                labels: labels[i],
                class_weights: None,
            })
            .collect();
        let loss = masked_multi_head_loss(&hs, HeadNorm::Count)?.total;
        let tf = start.elapsed().as_secs_f64();
        let grads = model.gradients().backward(&loss)?;
        let tb = start.elapsed().as_secs_f64();
        opt.step(&grads)?;
        let total = start.elapsed().as_secs_f64();
        times.push(total);
        phases.push([tf, tb - tf, total - tb]);
    }
    // Per phase, the median over steps.
    let phase = |i: usize| {
        let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "side": "clinstruct",
            "len": a.len,
            "layers": a.layers,
            "checkpointing": a.checkpointing,
            "threads": rayon::current_num_threads(),
            "median_s": sorted[sorted.len() / 2],
            "times_s": times,
            "fwd_s": phase(0),
            "bwd_s": phase(1),
            "opt_s": phase(2),
            "baseline_mb": baseline,
            "peak_mb": status_mb("VmHWM:"),
        })
    );
    Ok(())
}
