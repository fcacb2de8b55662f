//! One LoRA training step on a Llama-3.2-1B-shaped decoder (the real `clinstruct_models`
//! Llama, fewer layers), random weights: forward, completion-only causal-LM loss, backward,
//! gradient clipping at 1.0 and an AdamW step. `bench/lora_step.py` is the PyTorch + PEFT peer
//! (same weights, same token ids, same JSON); `bench/lora_step.sh` runs both.
//!
//! Weights come from a counter-based hash both programs compute bit for bit (uniform with the
//! std of Llama's `initializer_range` 0.02, norms 1; LoRA A within PEFT's bound, B = 0), so
//! both sides train the same model from the same start and their losses agree step by step.
//!
//! RAYON_NUM_THREADS=2 cargo run --release -p clinstruct-train --example lora_step -- \
//!     --base dense|nf4|q4k [--layers 2] [--seq 256] [--completion 128] [--steps 4] \
//!     [--threads 2] [--dropout 0]
//!
//! Prints one JSON line: median step time without the warm-up step (and of its phases), peak
//! RSS of the process (getrusage `ru_maxrss`) and of the steps alone (`VmHWM` reset after
//! loading), RSS after loading, and the loss of every step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use clinstruct_models::decoder::DecoderLm;
use clinstruct_models::{AnyCausalLm, AnyConfig};
use clinstruct_nn::lora::{BaseMode, LinearPlan, LoraConfig, Targets};
use clinstruct_nn::quant::nf4::Nf4Config;
use clinstruct_nn::{LinearHook, Weights};
use clinstruct_train::{AdamW, AdamWConfig, causal_lm_loss_on_hidden, clip_coefficient, grad_norm};
use rayon::prelude::*;

mod common;
use common::{arg, status_mb};

const HIDDEN: usize = 2048;
const INTER: usize = 8192;
const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 64;
const VOCAB: usize = 128_256;

fn num(name: &str, default: &str) -> usize {
    arg(name, default)
        .parse()
        .unwrap_or_else(|_| panic!("{name} takes a number"))
}

/// Llama-3.2-1B's `config.json` with `layers` layers.
fn config(layers: usize) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "head_dim": HEAD_DIM, "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "max_position_embeddings": 131072,
        "model_type": "llama", "num_attention_heads": HEADS, "num_hidden_layers": layers,
        "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": true, "vocab_size": VOCAB
    })
}

/// FNV-1a of a tensor name: the stream key of its values.
fn key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// splitmix64 of element `i` of stream `k` (bench/lora_step.py computes the same).
fn mix(k: u64, i: u64) -> u64 {
    let mut z = k.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform weights on `[-a, a)`: `(2u - 1) · a`, u on a 2⁻²⁴ grid.
fn uniform_in(name: &str, n: usize, a: f64) -> Vec<f32> {
    let k = key(name);
    let a = a as f32;
    (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let u = (mix(k, i) >> 40) as f32 / (1u32 << 24) as f32;
            (u * 2.0 - 1.0) * a
        })
        .collect()
}

/// Llama's init std 0.02 (`a = 0.02·√3`).
fn uniform(name: &str, n: usize) -> Vec<f32> {
    uniform_in(name, n, 0.02 * 3f64.sqrt())
}

fn weights(layers: usize) -> Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut map = HashMap::new();
    let mut put = |name: String, shape: (usize, usize)| -> Result<()> {
        let t = Tensor::from_vec(uniform(&name, shape.0 * shape.1), shape, &dev)?;
        map.insert(name, t);
        Ok(())
    };
    put("model.embed_tokens.weight".into(), (VOCAB, HIDDEN))?;
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        put(format!("{p}.self_attn.q_proj.weight"), (q, HIDDEN))?;
        put(format!("{p}.self_attn.k_proj.weight"), (kv, HIDDEN))?;
        put(format!("{p}.self_attn.v_proj.weight"), (kv, HIDDEN))?;
        put(format!("{p}.self_attn.o_proj.weight"), (HIDDEN, q))?;
        put(format!("{p}.mlp.gate_proj.weight"), (INTER, HIDDEN))?;
        put(format!("{p}.mlp.up_proj.weight"), (INTER, HIDDEN))?;
        put(format!("{p}.mlp.down_proj.weight"), (HIDDEN, INTER))?;
    }
    let ones = Tensor::ones(HIDDEN, DType::F32, &dev)?;
    for i in 0..layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            map.insert(format!("model.layers.{i}.{n}.weight"), ones.clone());
        }
    }
    map.insert("model.norm.weight".into(), ones);
    Ok(map)
}

/// Token ids of the one sequence: stream `input_ids` modulo the vocabulary.
fn token_ids(seq: usize) -> Vec<u32> {
    let k = key("input_ids");
    (0..seq as u64)
        .map(|i| (mix(k, i) % VOCAB as u64) as u32)
        .collect()
}

/// `getrusage(RUSAGE_SELF)`: `(ru_maxrss in MiB, user + system CPU seconds)`, as Python's
/// `resource` reads it (Linux reports KiB).
fn rusage() -> (f64, f64) {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Rusage {
            utime: [i64; 2],
            stime: [i64; 2],
            maxrss: i64,
            rest: [i64; 13],
        }
        unsafe extern "C" {
            fn getrusage(who: i32, usage: *mut Rusage) -> i32;
        }
        let mut r = Rusage {
            utime: [0; 2],
            stime: [0; 2],
            maxrss: 0,
            rest: [0; 13],
        };
        // SAFETY: `Rusage` has the layout of Linux's `struct rusage` on 64-bit targets.
        if unsafe { getrusage(0, &mut r) } == 0 {
            let secs = |t: [i64; 2]| t[0] as f64 + t[1] as f64 * 1e-6;
            return (r.maxrss as f64 / 1024.0, secs(r.utime) + secs(r.stime));
        }
    }
    (f64::NAN, f64::NAN)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs`), so the peak of the steps alone can be
/// read; `ru_maxrss` keeps the peak of the whole process.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<()> {
    let base = arg("--base", "dense");
    let layers = num("--layers", "2");
    let seq = num("--seq", "256");
    let completion = num("--completion", &(seq / 2).to_string());
    let steps = num("--steps", "4").max(2);
    let threads = num("--threads", "2");
    let dropout: f32 = arg("--dropout", "0").parse().expect("--dropout");
    // Before rayon or candle read it: the gemm and every parallel loop use this many threads.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    clinstruct_models::runtime::keep_freed_memory();
    assert!(completion < seq, "--completion must be below --seq");

    let mode = match base.as_str() {
        "dense" => BaseMode::Freeze,
        "nf4" => BaseMode::Nf4(Nf4Config::default()),
        "q4k" => BaseMode::Ggml(GgmlDType::Q4K),
        other => panic!("--base {other}: expected dense, nf4 or q4k"),
    };
    let t0 = Instant::now();
    let lora = LoraConfig {
        dropout,
        ..LoraConfig::new(16, 32.0, Targets::AllLinear)
    };
    let plan = Arc::new(LinearPlan::new(mode, Some(lora), 0));
    let cfg = AnyConfig::parse(&config(layers))?;
    let model = {
        let vb = VarBuilder::from_tensors(weights(layers)?, DType::F32, &Device::Cpu);
        let w = Weights::from_var_builder(vb).with_linear_hook(plan.clone() as Arc<dyn LinearHook>);
        AnyCausalLm::new(&cfg, &w)?
        // The dense originals of quantised layers are dropped here.
    };
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = status_mb("VmRSS:");
    reset_peak();

    let vars = plan.trainable_vars();
    // Both sides start from the same adapters: A from the hash with PEFT's bound
    // 1/sqrt(in_features) (its distribution, not its RNG), B = 0.
    for (name, var) in &vars {
        if name.contains("lora_A") {
            let (r, inp) = var.dims2()?;
            let a = uniform_in(name, r * inp, 1.0 / (inp as f64).sqrt());
            var.set(&Tensor::from_vec(a, (r, inp), &Device::Cpu)?)?;
        }
    }
    let all: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    let trainable: usize = all.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: 2e-4,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    plan.set_training(true);

    let dev = Device::Cpu;
    let ids = token_ids(seq);
    let labels: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if i < seq - completion {
                -100
            } else {
                i64::from(t)
            }
        })
        .collect();
    let input = Tensor::from_vec(ids, (1, seq), &dev)?;
    let pos = Tensor::arange(0u32, seq as u32, &dev)?.reshape((1, seq))?;

    let (mut step_s, mut fwd_s, mut bwd_s, mut opt_s) = (vec![], vec![], vec![], vec![]);
    let mut cpu_s = vec![];
    let (mut losses, mut norms) = (vec![], vec![]);
    for step in 0..steps {
        let t = Instant::now();
        let cpu0 = rusage().1;
        let hidden = model.hidden_states(&input, None, &pos, None)?;
        let loss = causal_lm_loss_on_hidden(&hidden, &labels, model.lm_head())?;
        let l = loss.to_scalar::<f32>()?;
        let tf = t.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        drop((hidden, loss));
        let tb = t.elapsed().as_secs_f64();
        let norm = grad_norm(&grads, &all)?;
        opt.step_scaled(&grads, clip_coefficient(norm, 1.0))?;
        drop(grads);
        let total = t.elapsed().as_secs_f64();
        losses.push(l);
        norms.push(norm);
        if step > 0 {
            // Step 0 warms up the allocator, thread pool and page tables.
            step_s.push(total);
            cpu_s.push(rusage().1 - cpu0);
            fwd_s.push(tf);
            bwd_s.push(tb - tf);
            opt_s.push(total - tb);
        }
    }
    let out = serde_json::json!({
        "impl": "clinstruct",
        "base": base,
        "layers": layers,
        "seq": seq,
        "completion": completion,
        "threads": threads,
        "dropout": dropout,
        "trainable_params": trainable,
        "step_s": median(step_s.clone()),
        "fwd_s": median(fwd_s),
        "bwd_s": median(bwd_s),
        "opt_s": median(opt_s),
        "cpu_s": median(cpu_s),
        "steps_s": step_s,
        "losses": losses,
        "grad_norms": norms,
        "load_s": load_s,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": rusage().0,
        "peak_rss_steps_mb": status_mb("VmHWM:"),
    });
    println!("{out}");
    Ok(())
}
