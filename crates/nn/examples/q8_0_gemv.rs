//! Speed of the Q8_0 kernel on an LM-head-shaped weight (Gemma-3-270M: 262144 x 640) against a
//! plain read of the same bytes and candle's ggml kernel.
//!
//! RAYON_NUM_THREADS=1 cargo run --release -p clinstruct-nn --example q8_0_gemv [ROWS K N]

use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};
use clinstruct_nn::quant::Q8_0Matrix;

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() -> candle_core::Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("number"))
        .collect();
    let (rows, k, n) = (
        *a.first().unwrap_or(&262_144),
        *a.get(1).unwrap_or(&640),
        *a.get(2).unwrap_or(&1),
    );
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (rows, k), &dev)?;
    let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?);
    let m = Q8_0Matrix::new(q.clone())?;
    let x = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let bytes = q.data()?.len();
    let data = q.data()?;
    let mut sink = 0u64;
    let t_read = best(5, || {
        sink = sink.wrapping_add(
            data.chunks_exact(64)
                .map(|c| u64::from_le_bytes(c[..8].try_into().unwrap()) ^ u64::from(c[40]))
                .fold(0u64, u64::wrapping_add),
        )
    });
    let t_ours = best(5, || {
        std::hint::black_box(m.matmul(&xs, n).unwrap());
    });
    let qm = candle_core::quantized::QMatMul::from_arc(q.clone())?;
    let t_candle = best(5, || {
        std::hint::black_box(qm.forward(&x).unwrap());
    });
    println!(
        "{rows}x{k}, {n} rows, {} threads: read {:.2} ms ({:.1} GB/s), ours {:.2} ms ({:.1} GB/s), candle {:.2} ms [{sink}]",
        rayon::current_num_threads(),
        t_read * 1e3,
        bytes as f64 / t_read / 1e9,
        t_ours * 1e3,
        bytes as f64 / t_ours / 1e9,
        t_candle * 1e3
    );
    Ok(())
}
