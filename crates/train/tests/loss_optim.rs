//! Finite-difference checks of the losses, numerical stability, class weights, label helpers,
//! and the optimiser's mixed precision, state round trip, unfused path and accumulation.

use candle_core::{DType, Device, Result, Tensor, Var};
use clinstruct_train::loss::{completion_labels, per_sample_cross_entropy, shift_labels};
use clinstruct_train::{
    AdamW, AdamWConfig, GradAccumulator, Head, HeadNorm, IGNORE_INDEX, Reduction, causal_lm_loss,
    cross_entropy, inverse_frequency_weights, label_counts, masked_multi_head_loss,
};

fn randn(shape: &[usize], std: f32, dtype: DType) -> Tensor {
    Tensor::randn(0f32, std, shape, &Device::Cpu)
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

/// Central differences of `f` at every coordinate of `x` against `grad`.
fn check_fd(what: &str, x: &Tensor, grad: &Tensor, f: &dyn Fn(&Tensor) -> Result<f64>) {
    let base = values(x);
    let g = values(grad);
    let eps = 1e-5;
    for i in 0..base.len() {
        let mut p = base.clone();
        p[i] += eps;
        let mut m = base.clone();
        m[i] -= eps;
        let fp = f(&Tensor::from_vec(p, x.shape(), &Device::Cpu).unwrap()).unwrap();
        let fm = f(&Tensor::from_vec(m, x.shape(), &Device::Cpu).unwrap()).unwrap();
        let fd = (fp - fm) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() <= 1e-7 * fd.abs().max(1.0),
            "{what}: coordinate {i}: {fd:e} vs {:e}",
            g[i]
        );
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn cross_entropy_gradients_match_finite_differences() -> Result<()> {
    let targets = [2i64, -100, 0, 4, -1, 1];
    let w = [0.5f32, 2.0, 1.0, 0.25, 3.0];
    for reduction in [Reduction::Mean, Reduction::MeanOverCount, Reduction::Sum] {
        for weights in [None, Some(&w[..])] {
            let x = Var::from_tensor(&randn(&[6, 5], 2.0, DType::F64))?;
            let l = cross_entropy(x.as_tensor(), &targets, weights, reduction)?;
            let g = l.backward()?;
            let f = |p: &Tensor| Ok(scalar(&cross_entropy(p, &targets, weights, reduction)?));
            check_fd(
                &format!("{reduction:?} {}", weights.is_some()),
                x.as_tensor(),
                g.get(x.as_tensor()).unwrap(),
                &f,
            );
        }
    }
    Ok(())
}

#[test]
fn cross_entropy_values_and_stability() -> Result<()> {
    // Against the composed reference log_softmax + gather, in f64.
    let x = randn(&[7, 9], 3.0, DType::F64);
    let targets = [0i64, 8, 3, -100, 5, 5, 1];
    let w: Vec<f32> = (0..9).map(|i| 0.5 + i as f32 * 0.25).collect();
    let per = per_sample_cross_entropy(&x, &targets, Some(&w))?;
    let logp = candle_nn::ops::log_softmax(&x, 1)?;
    let lp = values(&logp);
    for (i, &t) in targets.iter().enumerate() {
        let want = if t < 0 {
            0.0
        } else {
            -f64::from(w[t as usize]) * lp[i * 9 + t as usize]
        };
        assert!((values(&per)[i] - want).abs() < 1e-12, "row {i}");
    }
    let mean = scalar(&cross_entropy(&x, &targets, Some(&w), Reduction::Mean)?);
    let wsum: f64 = targets
        .iter()
        .filter(|&&t| t >= 0)
        .map(|&t| f64::from(w[t as usize]))
        .sum();
    assert!((mean - values(&per).iter().sum::<f64>() / wsum).abs() < 1e-12);
    // Huge logits stay finite (log-sum-exp), in f32 too.
    let big = Tensor::new(&[[1e4f32, -1e4, 0.0], [3e4, 3e4, 3e4]], &Device::Cpu)?;
    let l = cross_entropy(&big, &[1, 2], None, Reduction::Sum)?.to_scalar::<f32>()?;
    assert!((l - (2e4 + 3f32.ln())).abs() < 1.0, "{l}");
    // Nothing kept: 0 without gradients (the optimiser skips the parameters, as torch skips
    // parameters whose .grad is None), not NaN.
    let x = Var::from_tensor(&randn(&[2, 3], 1.0, DType::F32))?;
    let l = cross_entropy(x.as_tensor(), &[-100, -1], None, Reduction::Mean)?;
    assert_eq!(l.to_scalar::<f32>()?, 0.0);
    assert!(l.backward()?.get(x.as_tensor()).is_none());
    // Out-of-range targets are errors.
    assert!(cross_entropy(&big, &[3, 0], None, Reduction::Sum).is_err());
    Ok(())
}

#[test]
fn multi_head_and_causal_lm_gradients_match_finite_differences() -> Result<()> {
    let a = Var::from_tensor(&randn(&[5, 4], 1.5, DType::F64))?;
    let b = Var::from_tensor(&randn(&[5, 2], 1.5, DType::F64))?;
    let ya = [1i64, -1, 3, 0, -1];
    let yb = [-1i64, 1, 0, -1, -1];
    let wa = [1.0f32, 2.0, 0.5, 1.5];
    let run = |la: &Tensor, lb: &Tensor| -> Result<Tensor> {
        let heads = [
            Head {
                logits: la,
                labels: &ya,
                class_weights: Some(&wa),
            },
            Head {
                logits: lb,
                labels: &yb,
                class_weights: None,
            },
        ];
        Ok(masked_multi_head_loss(&heads, HeadNorm::Count)?.total)
    };
    let g = run(a.as_tensor(), b.as_tensor())?.backward()?;
    let fa = |p: &Tensor| Ok(scalar(&run(p, b.as_tensor())?));
    check_fd("head a", a.as_tensor(), g.get(a.as_tensor()).unwrap(), &fa);
    let fb = |p: &Tensor| Ok(scalar(&run(a.as_tensor(), p)?));
    check_fd("head b", b.as_tensor(), g.get(b.as_tensor()).unwrap(), &fb);
    // The seed formula by hand: per head Σ mask·w·ℓ / Σ mask.
    let per = |x: &Tensor, y: &[i64], w: Option<&[f32]>| -> f64 {
        let v = values(&per_sample_cross_entropy(x, y, w).unwrap());
        v.iter().sum::<f64>() / y.iter().filter(|&&t| t >= 0).count() as f64
    };
    let want = per(a.as_tensor(), &ya, Some(&wa)) + per(b.as_tensor(), &yb, None);
    assert!((scalar(&run(a.as_tensor(), b.as_tensor())?) - want).abs() < 1e-12);

    let logits = Var::from_tensor(&randn(&[2, 4, 7], 1.0, DType::F64))?;
    let labels = [-100i64, -100, 3, 6, -100, 2, 5, -100];
    let g = causal_lm_loss(logits.as_tensor(), &labels)?.backward()?;
    let f = |p: &Tensor| Ok(scalar(&causal_lm_loss(p, &labels)?));
    check_fd(
        "causal lm",
        logits.as_tensor(),
        g.get(logits.as_tensor()).unwrap(),
        &f,
    );
    // Position t predicts label t+1; the last position of a row predicts nothing.
    assert_eq!(
        shift_labels(&labels, 2, 4)?,
        vec![-100, 3, 6, -100, 2, 5, -100, -100]
    );
    assert_eq!(
        completion_labels(&[5, 6, 7, 8, 0], 2, &[1, 1, 1, 1, 0]),
        vec![IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]
    );
    Ok(())
}

#[test]
fn inverse_frequency_is_sklearn_balanced() {
    let labels = [0i64, 0, 0, 1, 3, 3, 3, 3, -1, -1];
    let counts = label_counts(&labels, 4);
    assert_eq!(counts, vec![3, 1, 0, 4]);
    // n = 8 labelled, k = 3 classes present: n / (k · count).
    let w = inverse_frequency_weights(&counts);
    let want = [8.0 / 9.0, 8.0 / 3.0, 0.0, 8.0 / 12.0];
    for (a, b) in w.iter().zip(want) {
        assert!((f64::from(*a) - b).abs() < 1e-6);
    }
}

fn quadratic_grads(vars: &[Var], target: &Tensor) -> Result<candle_core::backprop::GradStore> {
    let mut l: Option<Tensor> = None;
    for v in vars {
        let d = (v.as_tensor().to_dtype(DType::F32)? - target)?
            .sqr()?
            .sum_all()?;
        l = Some(match l {
            None => d,
            Some(x) => (x + d)?,
        });
    }
    l.unwrap().backward()
}

#[test]
fn fused_unfused_and_bf16_master_agree() -> Result<()> {
    // bf16-exact starting values, far from the target (gradients keep their sign), and a rate
    // whose updates are below bf16's resolution: only an f32 master copy keeps them.
    let init = randn(&[300, 70], 1.0, DType::F32)
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?;
    let target = (&init + 3.0)?;
    let cfg = AdamWConfig {
        lr: 1e-4,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let fused = Var::from_tensor(&init)?;
    let unfused = Var::from_tensor(&init)?;
    let half = Var::from_tensor(&init.to_dtype(DType::BF16)?)?;
    let mut o1 = AdamW::new(vec![("p".into(), fused.clone())], cfg)?;
    let mut o2 = AdamW::new_unfused(vec![("p".into(), unfused.clone())], cfg)?;
    let mut o3 = AdamW::new(vec![("p".into(), half.clone())], cfg)?;
    for _ in 0..5 {
        o1.step_scaled(
            &quadratic_grads(std::slice::from_ref(&fused), &target)?,
            0.5,
        )?;
        o2.step_scaled(
            &quadratic_grads(std::slice::from_ref(&unfused), &target)?,
            0.5,
        )?;
        o3.step_scaled(&quadratic_grads(std::slice::from_ref(&half), &target)?, 0.5)?;
    }
    let d = (fused.as_tensor() - unfused.as_tensor())?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d < 1e-6, "fused vs unfused: {d}");
    // bf16 parameters: the f32 master copy carries the update, the parameter is its rounding.
    let state = o3.state_tensors()?;
    let master = &state["p.master"];
    assert_eq!(
        values(&master.to_dtype(DType::BF16)?),
        values(half.as_tensor())
    );
    let d = (master - fused.as_tensor())?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d < 2e-6, "bf16 master vs f32 run: {d}");
    let moved = (master - &init)?.abs()?.mean_all()?.to_scalar::<f32>()?;
    assert!(
        moved > 2e-4,
        "the updates accumulate in the master copy: {moved}"
    );
    Ok(())
}

#[test]
fn optimizer_state_round_trips() -> Result<()> {
    let init = randn(&[17, 5], 1.0, DType::F32);
    let target = randn(&[17, 5], 1.0, DType::F32);
    let cfg = AdamWConfig {
        lr: 0.1,
        ..AdamWConfig::default()
    };
    let a = Var::from_tensor(&init)?;
    let mut oa = AdamW::new(vec![("w".into(), a.clone())], cfg)?;
    for _ in 0..2 {
        oa.step(&quadratic_grads(std::slice::from_ref(&a), &target)?)?;
    }
    let tmp = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = tmp.path().join("optimizer.safetensors");
    oa.set_learning_rate(0.07);
    oa.save(&path)?;
    // Resume: same parameter values, fresh optimiser, loaded state.
    let b = Var::from_tensor(&a.as_tensor().copy()?)?;
    let mut ob = AdamW::new(vec![("w".into(), b.clone())], AdamWConfig::default())?;
    ob.load(&path)?;
    assert_eq!(ob.learning_rate(), 0.07);
    assert_eq!(ob.steps_taken(), 2);
    oa.step(&quadratic_grads(std::slice::from_ref(&a), &target)?)?;
    ob.step(&quadratic_grads(std::slice::from_ref(&b), &target)?)?;
    assert_eq!(values(a.as_tensor()), values(b.as_tensor()));
    Ok(())
}

#[test]
fn accumulated_halves_equal_the_full_batch() -> Result<()> {
    let w = Var::from_tensor(&randn(&[4, 3], 1.0, DType::F32))?;
    let x = randn(&[8, 4], 1.0, DType::F32);
    let loss = |x: &Tensor| -> Result<Tensor> { x.matmul(w.as_tensor())?.sqr()?.mean_all() };
    let full = loss(&x)?.backward()?;
    let mut acc = GradAccumulator::new(vec![w.clone()]);
    for half in 0..2 {
        let part = x.narrow(0, half * 4, 4)?;
        acc.add(&(loss(&part)? / 2.0)?.backward()?)?;
    }
    assert_eq!(acc.micro_steps(), 2);
    let summed = acc.take();
    let d = (summed.get(w.as_tensor()).unwrap() - full.get(w.as_tensor()).unwrap())?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(d < 1e-6, "{d}");
    assert_eq!(acc.micro_steps(), 0);
    Ok(())
}

/// The loss from hidden states (LM head on kept positions only) equals the full-logits loss,
/// with the same gradients for the hidden states and the head, for a contiguous completion
/// (narrow) and for scattered targets across rows (index_select).
#[test]
fn causal_lm_loss_on_hidden_equals_full_logits() -> Result<()> {
    let hidden = Var::from_tensor(&randn(&[2, 5, 4], 1.0, DType::F64))?;
    let head = Var::from_tensor(&randn(&[9, 4], 0.5, DType::F64))?;
    let logits = |h: &Tensor| h.broadcast_matmul(&head.as_tensor().t()?);
    for labels in [
        vec![-100i64, -100, -100, 3, 8, -100, -100, -100, -100, -100],
        vec![-100, 1, -100, 3, 8, 2, -100, 7, 0, -100],
    ] {
        let full = causal_lm_loss(&logits(hidden.as_tensor())?, &labels)?;
        let part =
            clinstruct_train::loss::causal_lm_loss_on_hidden(hidden.as_tensor(), &labels, &logits)?;
        assert!((scalar(&full) - scalar(&part)).abs() < 1e-12);
        let (gf, gp) = (full.backward()?, part.backward()?);
        for v in [&hidden, &head] {
            let (a, b) = (values(gf.get(v).unwrap()), values(gp.get(v).unwrap()));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-12, "gradient differs by {worst}");
        }
    }
    let none =
        clinstruct_train::loss::causal_lm_loss_on_hidden(hidden.as_tensor(), &[-100; 10], &logits)?;
    assert_eq!(scalar(&none), 0.0);
    Ok(())
}
