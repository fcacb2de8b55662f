//! Forward + backward of a Llama-3.2-1B-shaped stack of LoRA linears (hidden 2048,
//! intermediate 8192, q/k/v/o/gate/up/down per layer, LoRA r=16 on all seven), over a frozen
//! dense (f32), NF4 or Q4_K base. One base per process, so peak RSS is that base's; prints one
//! JSON line. `bench/lora_linear.py` runs it next to PyTorch + PEFT.
//!
//! RAYON_NUM_THREADS=2 cargo run --release -p clinstruct-train --example lora_linear -- \
//!     --base nf4 [--tokens 256] [--layers 2] [--iters 3] [--no-alloc-tune]

use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor};
use clinstruct_nn::Linear;
use clinstruct_nn::lora::{AdapterControl, Lora, LoraConfig, Targets};
use clinstruct_nn::quant::nf4::Nf4Config;
use rand::SeedableRng;

mod common;
use common::{arg, status_mb};

const HIDDEN: usize = 2048;
const INTER: usize = 8192;
const KV: usize = 512;

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

fn linear(inp: usize, out: usize, base: &str, seed: u64) -> Result<Linear> {
    let w = Tensor::randn(0f32, 0.02, (out, inp), &Device::Cpu)?;
    let lin = Linear::new(w, None)?;
    let lin = match base {
        "dense" => lin.freeze(),
        "nf4" => lin.quantize_nf4(Nf4Config::default())?,
        "q4k" => lin.quantize_ggml(GgmlDType::Q4K)?,
        other => candle_core::bail!("unknown base {other}"),
    };
    let cfg = LoraConfig::new(16, 32.0, Targets::AllLinear);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let lora = Lora::init(
        inp,
        out,
        &cfg,
        DType::F32,
        &Device::Cpu,
        &mut rng,
        AdapterControl::new(seed),
    )?;
    // A non-zero B, as after some training (the cost is the same).
    lora.b()
        .set(&Tensor::randn(0f32, 0.01, (out, 16), &Device::Cpu)?)?;
    lin.with_lora(lora)
}

fn forward(layers: &[Layer], x: &Tensor) -> Result<Tensor> {
    let mut h = x.clone();
    for l in layers {
        let kv = (l.k.forward(&h)? + l.v.forward(&h)?)?;
        let kv4 = Tensor::cat(&[&kv, &kv, &kv, &kv], 1)?;
        h = (&h + l.o.forward(&(l.q.forward(&h)? + kv4)?)?)?;
        let g = candle_nn::ops::silu(&l.gate.forward(&h)?)?;
        h = (&h + l.down.forward(&(g * l.up.forward(&h)?)?)?)?;
    }
    Ok(h)
}

fn main() -> Result<()> {
    let base = arg("--base", "dense");
    let tokens: usize = arg("--tokens", "256").parse().expect("--tokens");
    let n_layers: usize = arg("--layers", "2").parse().expect("--layers");
    let iters: usize = arg("--iters", "3").parse().expect("--iters");
    let tuned = !std::env::args().any(|a| a == "--no-alloc-tune");
    if tuned {
        clinstruct_models::runtime::keep_freed_memory();
    }
    let t0 = Instant::now();
    let mut layers = Vec::new();
    for i in 0..n_layers {
        let s = 100 * i as u64;
        layers.push(Layer {
            q: linear(HIDDEN, HIDDEN, &base, s + 1)?,
            k: linear(HIDDEN, KV, &base, s + 2)?,
            v: linear(HIDDEN, KV, &base, s + 3)?,
            o: linear(HIDDEN, HIDDEN, &base, s + 4)?,
            gate: linear(HIDDEN, INTER, &base, s + 5)?,
            up: linear(HIDDEN, INTER, &base, s + 6)?,
            down: linear(INTER, HIDDEN, &base, s + 7)?,
        });
    }
    let setup_s = t0.elapsed().as_secs_f64();
    let x = Tensor::randn(0f32, 1.0, (tokens, HIDDEN), &Device::Cpu)?;
    let r = Tensor::randn(0f32, 1.0, (tokens, HIDDEN), &Device::Cpu)?;
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for it in 0..=iters {
        let t = Instant::now();
        let loss = (forward(&layers, &x)? * &r)?.sum_all()?;
        let _ = loss.to_scalar::<f32>()?;
        let tf = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = loss.backward()?;
        let tb = t.elapsed().as_secs_f64();
        drop(grads);
        if it > 0 {
            // The first iteration warms up allocators and thread pools.
            fwd.push(tf);
            bwd.push(tb);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "{{\"impl\": \"candle\", \"base\": \"{base}\", \"tokens\": {tokens}, \"layers\": {n_layers}, \
         \"fwd_s\": {:.4}, \"bwd_s\": {:.4}, \"peak_rss_mb\": {:.1}, \"setup_s\": {setup_s:.2}, \
         \"threads\": {}, \"alloc_tuned\": {tuned}}}",
        median(&mut fwd),
        median(&mut bwd),
        status_mb("VmHWM:"),
        rayon::current_num_threads()
    );
    Ok(())
}
