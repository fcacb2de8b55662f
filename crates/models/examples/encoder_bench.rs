//! Forward throughput of a ModernBERT checkpoint on random ids (driven by
//! bench/encoder_forward.py; see there for the side-by-side with transformers).
//!
//! `cargo run -p clinstruct-models --example encoder_bench -- DIR SEQ_LEN BATCH [REPS]`
//! prints one JSON line per repetition: `{"seq_len", "batch", "seconds", "tokens_per_s"}`.
//! Threads: `RAYON_NUM_THREADS`. Like the clinstruct binary, it calls
//! `runtime::tune_allocator` first.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clinstruct_models::Checkpoint;
use clinstruct_models::modernbert::ModernBert;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: encoder_bench DIR SEQ_LEN BATCH [REPS]".into());
    }
    let (dir, len, batch) = (
        &args[1],
        args[2].parse::<usize>()?,
        args[3].parse::<usize>()?,
    );
    let reps = args
        .get(4)
        .map(|r| r.parse::<usize>())
        .transpose()?
        .unwrap_or(1);
    clinstruct_models::runtime::tune_allocator();
    let dev = Device::Cpu;
    let ckpt = Checkpoint::resolve(dir)?;
    let model = ModernBert::from_checkpoint(&ckpt, DType::F32, &dev)?;
    let vocab = model.config().vocab_size as u32;
    // A fixed pseudo-random sequence (no rand dependency): ids are irrelevant to the cost.
    let ids: Vec<u32> = (0..batch * len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) % (vocab - 10) + 5)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, len), &dev)?;
    let mask = Tensor::ones((batch, len), DType::U32, &dev)?;
    for _ in 0..reps {
        let t = Instant::now();
        let h = model.forward(&ids, Some(&mask))?;
        // Force the result (candle is eager, this is only a guard against lazy backends).
        let _ = h.sum_all()?.to_scalar::<f32>()?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "{{\"seq_len\": {len}, \"batch\": {batch}, \"seconds\": {s:.4}, \"tokens_per_s\": {:.2}}}",
            (batch * len) as f64 / s
        );
    }
    Ok(())
}
