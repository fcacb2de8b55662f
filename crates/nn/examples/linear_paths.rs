//! Times the pieces of a frozen-base linear on CPU, to pick paths: the f32 gemm, NF4
//! dequantisation, and for ggml types the quantized-kernel matmul against dequantise + gemm
//! by number of rows (what `frozen::GGML_KERNEL_MAX_ROWS` is set from).
//!
//! RAYON_NUM_THREADS=2 cargo run --release -p clinstruct-nn --example linear_paths

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor, Var};
use clinstruct_nn::Linear;
use clinstruct_nn::quant::nf4::{Nf4Config, Nf4Tensor};

fn best_of(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let (out, inp) = (8192, 2048);
    let w = Tensor::randn(0f32, 0.02, (out, inp), &dev)?;
    let x = Tensor::randn(0f32, 1.0, (256, inp), &dev)?;
    let gflop = 2.0 * 256.0 * out as f64 * inp as f64 / 1e9;
    let t = best_of(3, || x.matmul(&w.t()?).map(|_| ()))?;
    println!(
        "f32 gemm 256x{inp}x{out} (W^T view): {:.1} ms, {:.0} GFLOP/s",
        t * 1e3,
        gflop / t
    );
    let wt = w.t()?.contiguous()?;
    let t = best_of(3, || x.matmul(&wt).map(|_| ()))?;
    println!(
        "f32 gemm 256x{inp}x{out} (contiguous W^T): {:.1} ms, {:.0} GFLOP/s",
        t * 1e3,
        gflop / t
    );
    // The frozen linear against the bare products it is made of.
    let frozen = Linear::new(w.clone(), None)?.freeze();
    let xv = Var::from_tensor(&x)?;
    let r = Tensor::randn(0f32, 1.0, (256, out), &dev)?;
    let t = best_of(3, || frozen.forward(xv.as_tensor()).map(|_| ()))?;
    println!("frozen linear forward (tracked input): {:.1} ms", t * 1e3);
    let y = frozen.forward(xv.as_tensor())?;
    let t = best_of(3, || (&y * &r)?.sum_all()?.backward().map(|_| ()))?;
    println!("frozen linear backward (incl. mul/sum): {:.1} ms", t * 1e3);
    let t = best_of(3, || r.matmul(&w).map(|_| ()))?;
    println!("bare g·W: {:.1} ms", t * 1e3);
    let q = Nf4Tensor::quantize(&w, Nf4Config::default())?;
    let t = best_of(3, || q.dequantize().map(|_| ()))?;
    println!("nf4 dequantise {out}x{inp}: {:.1} ms", t * 1e3);
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let qt = QTensor::quantize(&w, dtype)?;
        let t = best_of(3, || qt.dequantize(&dev).map(|_| ()))?;
        print!("{dtype:?}: dequantise {:.1} ms;", t * 1e3);
        for rows in [1usize, 4, 16, 32, 64, 256] {
            let xr = x.narrow(0, 0, rows)?.contiguous()?;
            let tk = best_of(3, || xr.apply_op1_no_bwd(&qt).map(|_| ()))?;
            let td = best_of(3, || xr.matmul(&qt.dequantize(&dev)?.t()?).map(|_| ()))?;
            print!(
                " rows {rows}: kernel {:.1} / dequant+gemm {:.1} ms;",
                tk * 1e3,
                td * 1e3
            );
        }
        println!();
    }
    Ok(())
}
