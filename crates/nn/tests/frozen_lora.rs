//! Gradients of the frozen bases (dense, NF4, ggml) and of LoRA adapters: finite differences,
//! which parameters get gradients, and which tensors never do.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use clinstruct_nn::attention::{AttentionOpts, MaskKind, build_mask, scaled_dot_product};
use clinstruct_nn::lora::{AdapterControl, BaseMode, Lora, LoraConfig, Targets};
use clinstruct_nn::quant::nf4::Nf4Config;
use clinstruct_nn::{Linear, LinearBase, LinearHook, LinearPlan, Weights};

fn randn(shape: &[usize], std: f64, dtype: DType) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Central differences of `f` at `coords` of `x`, against the analytic gradient.
fn check_fd(
    what: &str,
    x: &Tensor,
    analytic: &Tensor,
    coords: &[usize],
    f: &dyn Fn(&Tensor) -> Result<f64>,
) {
    let base = values(x);
    let grad = values(analytic);
    let eps = 1e-4;
    for &i in coords {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let fp = f(&Tensor::from_vec(plus, x.shape(), &Device::Cpu).unwrap()).unwrap();
        let fm = f(&Tensor::from_vec(minus, x.shape(), &Device::Cpu).unwrap()).unwrap();
        let fd = (fp - fm) / (2.0 * eps);
        let tol = 1e-6 * fd.abs().max(1.0);
        assert!(
            (fd - grad[i]).abs() <= tol,
            "{what}: coordinate {i}: finite difference {fd:e} vs analytic {:e}",
            grad[i]
        );
    }
}

fn coords(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| (i * 7919 + 13) % n).collect()
}

/// Turns a dense linear into one base kind.
type MakeBase = Box<dyn Fn(Linear) -> Linear>;

fn base_kinds() -> Vec<(&'static str, MakeBase)> {
    vec![
        ("frozen", Box::new(|l: Linear| l.freeze())),
        (
            "nf4",
            Box::new(|l: Linear| l.quantize_nf4(Nf4Config::default()).unwrap()),
        ),
        (
            "q4_0",
            Box::new(|l: Linear| l.quantize_ggml(GgmlDType::Q4_0).unwrap()),
        ),
        (
            "q8_0",
            Box::new(|l: Linear| l.quantize_ggml(GgmlDType::Q8_0).unwrap()),
        ),
        (
            "q4_k",
            Box::new(|l: Linear| l.quantize_ggml(GgmlDType::Q4K).unwrap()),
        ),
        (
            "q6_k",
            Box::new(|l: Linear| l.quantize_ggml(GgmlDType::Q6K).unwrap()),
        ),
    ]
}

#[test]
fn frozen_bases_input_gradient_matches_finite_differences() -> Result<()> {
    // 40 outputs: not a multiple of 16, so no ggml type takes candle's repacked kernel and the
    // forward is the exactly linear dequantise + gemm.
    let (inp, out) = (256, 40);
    for (name, make) in base_kinds() {
        let lin = make(Linear::new(randn(&[out, inp], 0.05, DType::F32), None)?);
        // f64 and 24 rows: the dequantise + gemm path, exactly linear in x.
        let x = Var::from_tensor(&randn(&[3, 8, inp], 1.0, DType::F64))?;
        let r = randn(&[3, 8, out], 1.0, DType::F64);
        let y = lin.forward(x.as_tensor())?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        // The backward is exactly g · W with the (dequantised) weight.
        let w = lin.weight()?.to_dtype(DType::F64)?;
        let want = r.reshape((24, out))?.matmul(&w)?.reshape(x.shape())?;
        let err = (gx - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-9, "{name}: dx differs from g·W by {err:e}");
        // The probes are tracked like a training input: an untracked (inference) input of up to
        // 256 rows takes the Q8_0 kernel, which quantises activations and is not linear.
        let f = |xp: &Tensor| -> Result<f64> {
            let xp = Var::from_tensor(xp)?;
            (lin.forward(xp.as_tensor())? * &r)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        check_fd(name, x.as_tensor(), gx, &coords(x.elem_count(), 12), &f);
    }
    Ok(())
}

#[test]
fn ggml_kernel_path_for_few_rows() -> Result<()> {
    // Up to 16 rows the ggml kernel runs (activations quantised to 8 bits on the way): the
    // output is close to the dequantised product and the input gradient is exactly g · W.
    let (inp, out) = (256, 64);
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let lin = Linear::new(randn(&[out, inp], 0.05, DType::F32), None)?.quantize_ggml(dtype)?;
        let x = Var::from_tensor(&randn(&[4, inp], 1.0, DType::F32))?;
        let y = lin.forward(x.as_tensor())?;
        let w = lin.weight()?;
        let exact = x.as_tensor().matmul(&w.t()?)?;
        let rel = ((&y - &exact)?.sqr()?.sum_all()?.to_scalar::<f32>()?
            / exact.sqr()?.sum_all()?.to_scalar::<f32>()?)
        .sqrt();
        assert!(rel < 2e-2, "{dtype:?}: kernel output off by {rel}");
        let r = randn(&[4, out], 1.0, DType::F32);
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let err = (gx - r.matmul(&w)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "{dtype:?}: dx differs from g·W by {err}");
    }
    Ok(())
}

/// f32 products over quantized bases go through dequantised tiles of 1024 weight rows: with
/// 1040 outputs the second tile is short. Both products equal the dense ones with the
/// dequantised weight, for NF4 and the ggml types.
#[test]
fn tiled_quantized_products_over_several_tiles() -> Result<()> {
    let (inp, out, rows) = (256, 1040, 20);
    for (name, make) in base_kinds().into_iter().skip(1) {
        let lin = make(Linear::new(randn(&[out, inp], 0.05, DType::F32), None)?);
        let w = lin.weight()?;
        let x = Var::from_tensor(&randn(&[rows, inp], 1.0, DType::F32))?;
        let y = lin.forward(x.as_tensor())?;
        let r = randn(&[rows, out], 1.0, DType::F32);
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let rel = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?
                / b.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let dx = rel(gx, &r.matmul(&w)?)?;
        assert!(
            dx < 1e-5,
            "{name}: dx differs from g·W by {dx:e} (relative)"
        );
        // 20 rows: above the ggml kernels' 16, so the forward is dequantise + gemm too, except
        // for the repacked types (Q4_K, Q6K, Q8_0 with outputs a multiple of 16), whose kernels
        // quantise the activations.
        let fwd = rel(&y, &x.as_tensor().matmul(&w.t()?)?)?;
        let tol = if matches!(name, "q4_k" | "q6_k" | "q8_0") {
            2e-2
        } else {
            1e-5
        };
        assert!(
            fwd < tol,
            "{name}: y differs from x·Wᵀ by {fwd:e} (relative)"
        );
    }
    Ok(())
}

#[test]
fn untracked_input_gives_untracked_output() -> Result<()> {
    let lin = Linear::new(randn(&[8, 16], 0.1, DType::F32), None)?.freeze();
    let y = lin.forward(&randn(&[2, 16], 1.0, DType::F32))?;
    assert!(!y.track_op(), "nothing upstream can learn");
    Ok(())
}

fn lora_linear(dtype: DType, base: &dyn Fn(Linear) -> Linear) -> Result<(Linear, Lora)> {
    let lin = base(Linear::new(
        randn(&[24, 256], 0.1, DType::F32).to_dtype(dtype)?,
        Some(randn(&[24], 0.1, dtype)),
    )?);
    // A non-zero B: with PEFT's B = 0 the gradient of A is exactly zero.
    let lora = Lora::from_weights(
        randn(&[3, 256], 0.2, dtype),
        randn(&[24, 3], 0.2, dtype),
        2.0,
        0.0,
        AdapterControl::new(0),
    )?;
    Ok((lin.with_lora(lora.clone())?, lora))
}

#[test]
fn lora_gradients_match_finite_differences() -> Result<()> {
    for (name, make) in base_kinds().into_iter().take(2) {
        let (lin, lora) = lora_linear(DType::F64, make.as_ref())?;
        // A tracked input too: dx = g·W + scale·g·B·A.
        let x = Var::from_tensor(&randn(&[5, 256], 1.0, DType::F64))?;
        let r = randn(&[5, 24], 1.0, DType::F64);
        let loss = (lin.forward(x.as_tensor())? * &r)?.sum_all()?;
        let grads = loss.backward()?;
        for (what, var) in [("A", lora.a()), ("B", lora.b())] {
            let g = grads.get(var.as_tensor()).expect("adapter gradient");
            let f = |p: &Tensor| -> Result<f64> {
                let saved = var.as_tensor().copy()?;
                var.set(p)?;
                let v = (lin.forward(x.as_tensor())? * &r)?
                    .sum_all()?
                    .to_scalar::<f64>();
                var.set(&saved)?;
                v
            };
            check_fd(
                &format!("{name} lora {what}"),
                var.as_tensor(),
                g,
                &coords(var.elem_count(), 10),
                &f,
            );
        }
        let gx = grads.get(x.as_tensor()).expect("input gradient");
        let f =
            |xp: &Tensor| -> Result<f64> { (lin.forward(xp)? * &r)?.sum_all()?.to_scalar::<f64>() };
        check_fd(
            &format!("{name} lora x"),
            x.as_tensor(),
            gx,
            &coords(x.elem_count(), 10),
            &f,
        );
    }
    Ok(())
}

#[test]
fn lora_scale_multiplies_the_adapter_only() -> Result<()> {
    let (lin, lora) = lora_linear(DType::F32, &|l: Linear| l.freeze())?;
    let x = randn(&[4, 256], 1.0, DType::F32);
    let base = lin.clone().without_lora().forward(&x)?;
    let full = lin.forward(&x)?;
    let adapter = x
        .matmul(&lora.a().t()?)?
        .matmul(&lora.b().t()?)?
        .affine(2.0, 0.0)?;
    let err = ((full - base)? - adapter)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(
        err < 1e-5,
        "y - base(x) must be scale·x·Aᵀ·Bᵀ, off by {err}"
    );
    // PEFT's init leaves the model unchanged.
    let cfg = LoraConfig::new(4, 8.0, Targets::AllLinear);
    let fresh = Lora::init(
        256,
        24,
        &cfg,
        DType::F32,
        &Device::Cpu,
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1),
        AdapterControl::new(0),
    )?;
    let bound = 1.0 / 256f32.sqrt();
    let a_max = fresh.a().abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(
        a_max <= bound && a_max > 0.5 * bound,
        "A ~ U(-1/sqrt(in), 1/sqrt(in))"
    );
    let l2 = lin.clone().without_lora().with_lora(fresh)?;
    let err = (l2.forward(&x)? - lin.without_lora().forward(&x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(err, 0.0);
    Ok(())
}

#[test]
fn merge_equals_the_adapter_forward() -> Result<()> {
    for (name, make) in base_kinds() {
        let (lin, _) = lora_linear(DType::F32, make.as_ref())?;
        let merged = lin.merge_lora()?;
        assert!(merged.lora().is_none());
        let x = randn(&[6, 256], 1.0, DType::F32);
        let a = lin.forward(&x)?;
        let b = merged.forward(&x)?;
        // ggml kernels quantise activations, so compare through the dense product there.
        let tol = if name.starts_with('q') { 5e-2 } else { 1e-5 };
        let err = ((a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?)
            / b.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < tol, "{name}: merged differs by {err}");
    }
    Ok(())
}

/// A tiny Llama-like stack (attention + gated MLP, two layers) loaded through `Linear::load`,
/// so a [`LinearPlan`] on the weights decides bases and adapters.
struct Block {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

const HIDDEN: usize = 256;
const INTER: usize = 512;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;

fn stack_weights() -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let dims = [
            ("self_attn.q_proj", HIDDEN, HIDDEN),
            ("self_attn.k_proj", KV_HEADS * HEAD_DIM, HIDDEN),
            ("self_attn.v_proj", KV_HEADS * HEAD_DIM, HIDDEN),
            ("self_attn.o_proj", HIDDEN, HIDDEN),
            ("mlp.gate_proj", INTER, HIDDEN),
            ("mlp.up_proj", INTER, HIDDEN),
            ("mlp.down_proj", HIDDEN, INTER),
        ];
        for (name, out, inp) in dims {
            m.insert(
                format!("{p}.{name}.weight"),
                randn(&[out, inp], 0.05, DType::F32),
            );
        }
    }
    m
}

fn load_stack(w: &Weights) -> Result<Vec<Block>> {
    (0..2)
        .map(|l| {
            let w = w.pp("model").pp("layers").pp(l);
            let a = w.pp("self_attn");
            let m = w.pp("mlp");
            Ok(Block {
                q: Linear::load(HIDDEN, HIDDEN, false, &a.pp("q_proj"))?,
                k: Linear::load(HIDDEN, KV_HEADS * HEAD_DIM, false, &a.pp("k_proj"))?,
                v: Linear::load(HIDDEN, KV_HEADS * HEAD_DIM, false, &a.pp("v_proj"))?,
                o: Linear::load(HIDDEN, HIDDEN, false, &a.pp("o_proj"))?,
                gate: Linear::load(HIDDEN, INTER, false, &m.pp("gate_proj"))?,
                up: Linear::load(HIDDEN, INTER, false, &m.pp("up_proj"))?,
                down: Linear::load(INTER, HIDDEN, false, &m.pp("down_proj"))?,
            })
        })
        .collect()
}

fn run_stack(blocks: &[Block], x: &Tensor) -> Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    let mask = build_mask(b, l, l, MaskKind::Causal, None, None, x.device())?;
    let heads = |t: Tensor, n: usize| -> Result<Tensor> {
        t.reshape((b, l, n, HEAD_DIM))?
            .transpose(1, 2)?
            .contiguous()
    };
    let mut h = x.clone();
    for blk in blocks {
        let q = heads(blk.q.forward(&h)?, HEADS)?;
        let k = heads(blk.k.forward(&h)?, KV_HEADS)?;
        let v = heads(blk.v.forward(&h)?, KV_HEADS)?;
        let opts = AttentionOpts {
            scale: 1.0 / (HEAD_DIM as f64).sqrt(),
            softcap: None,
        };
        let att = scaled_dot_product(&q, &k, &v, Some(&mask), opts)?
            .transpose(1, 2)?
            .reshape((b, l, HIDDEN))?;
        h = (&h + blk.o.forward(&att)?)?;
        let g = candle_nn::ops::silu(&blk.gate.forward(&h)?)?;
        h = (&h + blk.down.forward(&(g * blk.up.forward(&h)?)?)?)?;
    }
    Ok(h)
}

#[test]
fn every_adapter_trains_and_frozen_bases_get_no_gradient() -> Result<()> {
    let weights = stack_weights();
    let weight_shapes: Vec<Vec<usize>> = weights.values().map(|t| t.dims().to_vec()).collect();
    let x = randn(&[2, 5, HIDDEN], 1.0, DType::F32);
    let r = randn(&[2, 5, HIDDEN], 1.0, DType::F32);
    let modes = [
        ("keep (plain autograd)", BaseMode::Keep),
        ("frozen", BaseMode::Freeze),
        ("nf4", BaseMode::Nf4(Nf4Config::default())),
        ("q4_0", BaseMode::Ggml(GgmlDType::Q4_0)),
        ("q8_0", BaseMode::Ggml(GgmlDType::Q8_0)),
        ("q4_k", BaseMode::Ggml(GgmlDType::Q4K)),
        ("q6_k", BaseMode::Ggml(GgmlDType::Q6K)),
    ];
    for (name, mode) in modes {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        let cfg = LoraConfig::new(
            8,
            16.0,
            Targets::parse("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
        );
        let plan = Arc::new(LinearPlan::new(mode, Some(cfg), 7));
        let w = Weights::from_var_builder(vb).with_linear_hook(plan.clone() as Arc<dyn LinearHook>);
        let blocks = load_stack(&w)?;
        assert_eq!(
            plan.adapters().len(),
            14,
            "{name}: one adapter per projection"
        );
        for blk in &blocks {
            let expect_quant = !matches!(mode, BaseMode::Keep | BaseMode::Freeze);
            match blk.q.base() {
                LinearBase::Dense(_) => assert!(matches!(mode, BaseMode::Keep)),
                LinearBase::Frozen(_) => assert!(matches!(mode, BaseMode::Freeze)),
                LinearBase::Nf4(_) | LinearBase::Quantized(_) => assert!(expect_quant),
            }
        }
        // Trained adapters have B ≠ 0; PEFT's B = 0 would zero A's gradient at step 0.
        for (_, lora) in plan.adapters() {
            lora.b().set(&randn(lora.b().dims(), 0.05, DType::F32))?;
        }
        let grads = (run_stack(&blocks, &x)? * &r)?.sum_all()?.backward()?;
        for (key, var) in plan.trainable_vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: {key} has no gradient"));
            let n = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(n > 0.0, "{name}: {key} has a zero gradient");
        }
        // No gradient tensor of any weight's shape exists: frozen and quantised bases have
        // an input-only backward, and a plain dense tensor (`Keep` over a checkpoint, not a
        // variable) takes the same path, since it can never receive a gradient.
        let weight_grads = grads
            .get_ids()
            .filter(|id| {
                grads
                    .get_id(**id)
                    .is_some_and(|g| weight_shapes.iter().any(|s| s.as_slice() == g.dims()))
            })
            .count();
        assert_eq!(weight_grads, 0, "{name}: a frozen base got a gradient");
    }
    // A variable weight under `Keep` still trains through plain autograd.
    let w = Var::from_tensor(&randn(&[6, HIDDEN], 0.1, DType::F32))?;
    let lin = Linear::new(w.as_tensor().clone(), None)?;
    let g = lin.forward(&x)?.sum_all()?.backward()?;
    assert_eq!(
        g.get(w.as_tensor()).map(|g| g.dims().to_vec()),
        Some(vec![6, HIDDEN])
    );
    Ok(())
}

#[test]
fn plan_keeps_and_skips_modules() -> Result<()> {
    let mut weights = stack_weights();
    weights.insert(
        "lm_head.weight".into(),
        randn(&[32, HIDDEN], 0.05, DType::F32),
    );
    weights.insert("score.weight".into(), randn(&[3, HIDDEN], 0.05, DType::F32));
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let plan = Arc::new(
        LinearPlan::new(
            BaseMode::Nf4(Nf4Config::default()),
            Some(LoraConfig::new(4, 8.0, Targets::AllLinear)),
            1,
        )
        .with_keep(&["score"]),
    );
    let w = Weights::from_var_builder(vb).with_linear_hook(plan.clone() as Arc<dyn LinearHook>);
    let _ = load_stack(&w)?;
    let head = Linear::load(HIDDEN, 32, false, &w.pp("lm_head"))?;
    let score = Linear::load(HIDDEN, 3, false, &w.pp("score"))?;
    // lm_head: frozen, not quantised, no adapter (all-linear skips the output layer);
    // score: untouched.
    assert!(matches!(head.base(), LinearBase::Frozen(_)) && head.lora().is_none());
    assert!(matches!(score.base(), LinearBase::Dense(_)) && score.lora().is_none());
    assert_eq!(plan.adapters().len(), 14);
    assert!(
        plan.adapter_paths()
            .contains(&"model.layers.1.mlp.down_proj".to_string())
    );
    Ok(())
}

#[test]
fn dropout_only_in_training_and_unbiased() -> Result<()> {
    let mut cfg = LoraConfig::new(4, 4.0, Targets::AllLinear);
    cfg.dropout = 0.5;
    let control = AdapterControl::new(3);
    let lora = Lora::init(
        16,
        8,
        &cfg,
        DType::F32,
        &Device::Cpu,
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(2),
        control.clone(),
    )?;
    lora.b().set(&randn(&[8, 4], 0.5, DType::F32))?;
    let x = randn(&[64, 16], 1.0, DType::F32);
    let eval1 = lora.forward(&x)?;
    let eval2 = lora.forward(&x)?;
    assert_eq!(values(&eval1), values(&eval2));
    control.set_training(true);
    let t1 = lora.forward(&x)?;
    let t2 = lora.forward(&x)?;
    assert_ne!(values(&t1), values(&t2), "fresh masks per call");
    // Resuming the mask stream replays the same masks.
    let calls = control.calls();
    let t3 = lora.forward(&x)?;
    control.set_calls(calls);
    assert_eq!(values(&lora.forward(&x)?), values(&t3));
    // E[dropout(x)] = x: the mean over many calls approaches the eval output.
    let mut acc = t1.zeros_like()?;
    let n = 400;
    for _ in 0..n {
        acc = (acc + lora.forward(&x)?)?;
    }
    let mean = (acc / n as f64)?;
    let rel = ((&mean - &eval1)?.sqr()?.sum_all()?.to_scalar::<f32>()?
        / eval1.sqr()?.sum_all()?.to_scalar::<f32>()?)
    .sqrt();
    assert!(rel < 0.1, "dropout mean off by {rel}");
    Ok(())
}

#[test]
fn tiled_nf4_product_matches_the_dense_one() -> Result<()> {
    // Several tiles with a remainder (300 rows of 2048: tiles of 256), and rows that do not
    // hold whole 64-blocks (in = 100: blocks straddle rows).
    for (out, inp) in [(300, 2048), (7000, 100), (5, 64)] {
        let lin = Linear::new(randn(&[out, inp], 0.05, DType::F32), None)?
            .quantize_nf4(Nf4Config::default())?;
        let w = lin.weight()?;
        let x = Var::from_tensor(&randn(&[33, inp], 1.0, DType::F32))?;
        let y = lin.forward(x.as_tensor())?;
        let want = x.as_tensor().matmul(&w.t()?)?;
        let e = (&y - &want)?.abs()?.max_all()?.to_scalar::<f32>()?
            / want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(e < 1e-5, "{out}x{inp}: forward rel err {e}");
        let r = randn(&[33, out], 1.0, DType::F32);
        let g = (&y * &r)?.sum_all()?.backward()?;
        let dx = g.get(x.as_tensor()).expect("input gradient");
        let want = r.matmul(&w)?;
        let e = (dx - &want)?.abs()?.max_all()?.to_scalar::<f32>()?
            / want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(e < 1e-5, "{out}x{inp}: backward rel err {e}");
    }
    Ok(())
}
