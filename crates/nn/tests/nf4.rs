//! NF4 against bitsandbytes (fixture from scripts/fixtures/make_engine_fixtures.py) and its
//! memory footprint.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};
use clinstruct_nn::quant::dynamic;
use clinstruct_nn::quant::nf4::{Absmax, Nf4Config, Nf4Tensor};

fn fixture() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4_bnb.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).expect("nf4 fixture")
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Compares without printing data: the number of differing elements and the first index.
fn same<T: PartialEq + Copy>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(
        diff.is_empty(),
        "{what}: {} of {} elements differ (first at {})",
        diff.len(),
        got.len(),
        diff[0]
    );
}

const CASES: [&str; 5] = ["a", "b", "c", "d", "e"];

#[test]
fn code_books_match_bitsandbytes() {
    let fx = fixture();
    same(&f32s(&fx["a.dq.code"]), &dynamic::code(), "code");
}

#[test]
fn plain_nf4_is_bit_exact() -> Result<()> {
    let fx = fixture();
    for case in CASES {
        let input = &fx[&format!("{case}.input")];
        let cfg = Nf4Config {
            double_quant: false,
            ..Nf4Config::default()
        };
        let q = Nf4Tensor::quantize(input, cfg)?;
        same(
            &u8s(q.packed()),
            &u8s(&fx[&format!("{case}.packed")]),
            &format!("{case}: packed"),
        );
        let Absmax::F32(absmax) = q.absmax() else {
            panic!("plain absmax expected")
        };
        same(
            &f32s(absmax),
            &f32s(&fx[&format!("{case}.absmax")]),
            &format!("{case}: absmax"),
        );
        let deq = q.dequantize()?;
        assert_eq!(deq.dims(), input.dims());
        same(
            &f32s(&deq),
            &f32s(&fx[&format!("{case}.dequant")]),
            &format!("{case}: dequant"),
        );
        // The tensor-op path (other devices) gives the same values.
        same(
            &f32s(&q.dequantize_with_ops()?),
            &f32s(&deq),
            &format!("{case}: ops path"),
        );
    }
    Ok(())
}

#[test]
fn double_quantised_constants_match_bitsandbytes() -> Result<()> {
    let fx = fixture();
    for case in CASES {
        let input = &fx[&format!("{case}.input")];
        let q = Nf4Tensor::quantize(input, Nf4Config::default())?;
        let Absmax::Double {
            q: qa,
            absmax2,
            offset,
            block_size,
            ..
        } = q.absmax()
        else {
            panic!("double quantisation expected")
        };
        assert_eq!(*block_size, 256);
        let want_offset = f32s(&fx[&format!("{case}.dq.offset")])[0];
        assert!(
            (offset - want_offset).abs() <= want_offset.abs() * 2.0 * f32::EPSILON,
            "{case}: offset"
        );
        same(
            &u8s(qa),
            &u8s(&fx[&format!("{case}.dq.q")]),
            &format!("{case}: 8-bit absmax"),
        );
        let a2 = f32s(absmax2);
        let want_a2 = f32s(&fx[&format!("{case}.dq.absmax2")]);
        for (x, y) in a2.iter().zip(&want_a2) {
            assert!(
                (x - y).abs() <= y.abs() * 4.0 * f32::EPSILON,
                "{case}: absmax2"
            );
        }
        let deq = f32s(&q.dequantize()?);
        let want = f32s(&fx[&format!("{case}.dq.dequant")]);
        for (x, y) in deq.iter().zip(&want) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1e-3), "{case}: dequant");
        }
        same(
            &f32s(&q.dequantize_with_ops()?),
            &deq,
            &format!("{case}: ops path"),
        );
    }
    Ok(())
}

#[test]
fn bitsandbytes_parts_dequantise_exactly() -> Result<()> {
    // Dequantisation alone, from bitsandbytes' own stored parts.
    let fx = fixture();
    for case in CASES {
        let input = &fx[&format!("{case}.input")];
        let absmax = Absmax::Double {
            q: fx[&format!("{case}.dq.q")].clone(),
            absmax2: fx[&format!("{case}.dq.absmax2")].clone(),
            code: fx[&format!("{case}.dq.code")].clone(),
            offset: f32s(&fx[&format!("{case}.dq.offset")])[0],
            block_size: 256,
        };
        let q = Nf4Tensor::from_parts(
            input.shape().clone(),
            64,
            fx[&format!("{case}.packed")].clone(),
            absmax,
        )?;
        same(
            &f32s(&q.dequantize()?),
            &f32s(&fx[&format!("{case}.dq.dequant")]),
            case,
        );
    }
    Ok(())
}

#[test]
fn nf4_weight_is_under_a_third_of_bf16() -> Result<()> {
    let (rows, cols) = (2048, 8192);
    let w = Tensor::randn(0f32, 0.02, (rows, cols), &Device::Cpu)?;
    let q = Nf4Tensor::quantize(&w, Nf4Config::default())?;
    let bf16_bytes = rows * cols * DType::BF16.size_in_bytes();
    let ratio = q.storage_bytes() as f64 / bf16_bytes as f64;
    // 0.5 B packed + 1/64 B 8-bit absmax + 4/(64·256) B second-level absmax per weight.
    assert!(ratio <= 0.3, "nf4/bf16 = {ratio:.4}");
    assert!((ratio - 0.2581).abs() < 1e-3, "nf4/bf16 = {ratio:.4}");
    // And the error is what NF4 gives on Gaussian weights (relative RMSE about 0.09).
    let err = (q.dequantize()? - &w)?
        .sqr()?
        .mean_all()?
        .sqrt()?
        .to_scalar::<f32>()?;
    let rel = err / 0.02;
    assert!(rel > 0.05 && rel < 0.12, "relative rmse {rel}");
    Ok(())
}
