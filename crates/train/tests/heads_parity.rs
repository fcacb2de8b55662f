//! The seed system's three-head loss (masked partial labels, inverse-frequency class weights)
//! and the optimiser against PyTorch (fixture `heads.safetensors` from
//! scripts/fixtures/make_engine_fixtures.py): step-0 loss and gradients, three AdamW steps with
//! per-parameter weight decay, clip_grad_norm_ and warmup + cosine.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use clinstruct_nn::Linear;
use clinstruct_nn::lora::{AdapterControl, Lora};
use clinstruct_train::{
    AdamW, AdamWConfig, Head, HeadNorm, LrSchedule, Reduction, clip_grad_norm, cross_entropy,
    inverse_frequency_weights, label_counts, masked_multi_head_loss,
};
use common::{fixtures, load_st, rel_err};

const TOL: f64 = 1e-4;
const HEADS: [(&str, usize); 3] = [("t", 4), ("n", 4), ("m", 2)];

fn labels(exp: &HashMap<String, Tensor>, step: usize, head: &str) -> Vec<i64> {
    exp[&format!("batch{step}.{head}")].to_vec1().unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

struct Model {
    pooler: Linear,
    heads: Vec<Linear>,
    /// Trainable variables under the fixture's names.
    vars: Vec<(String, Var)>,
}

fn model(exp: &HashMap<String, Tensor>) -> Result<Model> {
    let init = |k: &str| exp[&format!("init.{k}")].clone();
    let lora = Lora::from_weights(
        init("pooler.lora_A"),
        init("pooler.lora_B"),
        4.0 / 2.0,
        0.0,
        AdapterControl::new(0),
    )?;
    let pooler = Linear::new(init("pooler.weight"), Some(init("pooler.bias")))?
        .freeze()
        .with_lora(lora.clone())?;
    let mut vars = vec![
        ("pooler.lora_A".to_string(), lora.a().clone()),
        ("pooler.lora_B".to_string(), lora.b().clone()),
    ];
    let mut heads = Vec::new();
    for (h, _) in HEADS {
        let w = Var::from_tensor(&init(&format!("{h}.weight")))?;
        let b = Var::from_tensor(&init(&format!("{h}.bias")))?;
        heads.push(Linear::new(
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
        )?);
        vars.push((format!("{h}.weight"), w));
        vars.push((format!("{h}.bias"), b));
    }
    Ok(Model {
        pooler,
        heads,
        vars,
    })
}

fn loss(
    m: &Model,
    exp: &HashMap<String, Tensor>,
    weights: &[Vec<f32>],
    step: usize,
) -> Result<(Tensor, Vec<Option<f32>>)> {
    let x = &exp[&format!("batch{step}.x")];
    let hid = m.pooler.forward(x)?.tanh()?;
    let logits: Vec<Tensor> = m
        .heads
        .iter()
        .map(|h| h.forward(&hid))
        .collect::<Result<_>>()?;
    let ys: Vec<Vec<i64>> = HEADS.iter().map(|(h, _)| labels(exp, step, h)).collect();
    let heads: Vec<Head> = (0..3)
        .map(|i| Head {
            logits: &logits[i],
            labels: &ys[i],
            class_weights: Some(&weights[i]),
        })
        .collect();
    let out = masked_multi_head_loss(&heads, HeadNorm::Count)?;
    Ok((out.total, out.per_head))
}

fn class_weights(exp: &HashMap<String, Tensor>) -> Vec<Vec<f32>> {
    HEADS
        .iter()
        .map(|(h, c)| {
            let all: Vec<i64> = (0..3).flat_map(|s| labels(exp, s, h)).collect();
            let w = inverse_frequency_weights(&label_counts(&all, *c));
            let want = f32s(&exp[&format!("class_weights.{h}")]);
            for (a, b) in w.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-6 * b, "class weights of {h}");
            }
            w
        })
        .collect()
}

#[test]
fn multi_head_loss_and_gradients_match_pytorch() -> Result<()> {
    let exp = load_st(&fixtures().join("heads.safetensors"));
    let weights = class_weights(&exp);
    let m = model(&exp)?;
    let (total, per_head) = loss(&m, &exp, &weights, 0)?;
    let want = f32s(&exp["step0.per_head"]);
    for (i, (got, want)) in per_head.iter().zip(&want).enumerate() {
        let got = got.expect("every head is labelled in batch 0");
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "head {i}: {got} vs {want}"
        );
    }
    let l = total.to_scalar::<f32>()?;
    let lw = f32s(&exp["step0.loss"])[0];
    assert!((l - lw).abs() <= 1e-5 * lw, "loss {l} vs {lw}");
    let grads = total.backward()?;
    for (name, var) in &m.vars {
        let e = rel_err(
            grads.get(var.as_tensor()).expect("gradient"),
            &exp[&format!("step0.grad.{name}")],
        );
        assert!(e < TOL, "grad {name}: rel err {e:e}");
    }
    // A batch where one head has no label: that head contributes 0 and gets no gradient.
    let (total, per_head) = loss(&m, &exp, &weights, 2)?;
    assert!(per_head[2].is_none());
    let grads = total.backward()?;
    assert!(
        grads.get(m.vars[6].1.as_tensor()).is_none(),
        "unlabelled head m gets no gradient"
    );
    Ok(())
}

#[test]
fn three_adamw_steps_match_pytorch() -> Result<()> {
    let exp = load_st(&fixtures().join("heads.safetensors"));
    let weights = class_weights(&exp);
    let m = model(&exp)?;
    let cfg = AdamWConfig {
        lr: 2e-2,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(m.vars.clone(), cfg)?;
    opt.set_weight_decay_where(|n| n.ends_with("bias"), 0.0);
    let sched = LrSchedule::cosine(2e-2, 1, 5);
    let max_norm = exp["train.max_norm"].to_vec1::<f64>()?[0];
    let losses = exp["train.losses"].to_vec1::<f64>()?;
    let norms = exp["train.norms"].to_vec1::<f64>()?;
    let vars: Vec<Var> = m.vars.iter().map(|(_, v)| v.clone()).collect();
    for step in 0..3 {
        let (total, _) = loss(&m, &exp, &weights, step)?;
        let l = f64::from(total.to_scalar::<f32>()?);
        assert!(
            (l - losses[step]).abs() <= TOL * losses[step],
            "step {step}: loss {l}"
        );
        let mut grads = total.backward()?;
        let norm = clip_grad_norm(&mut grads, &vars, max_norm)?;
        assert!(
            (norm - norms[step]).abs() <= TOL * norms[step],
            "step {step}: norm {norm}"
        );
        opt.set_learning_rate(sched.lr(step));
        opt.step(&grads)?;
    }
    for (name, var) in &m.vars {
        let e = rel_err(var.as_tensor(), &exp[&format!("after3.{name}")]);
        assert!(e < TOL, "after 3 steps: {name} rel err {e:e}");
    }
    Ok(())
}

#[test]
fn weighted_mean_with_ignore_index_is_pytorchs() -> Result<()> {
    let exp = load_st(&fixtures().join("heads.safetensors"));
    let logits = Var::from_tensor(&exp["ce.logits"])?;
    let target: Vec<i64> = exp["ce.target"].to_vec1()?;
    let w = f32s(&exp["ce.weight"]);
    let l = cross_entropy(logits.as_tensor(), &target, Some(&w), Reduction::Mean)?;
    let want = f32s(&exp["ce.loss"])[0];
    assert!((l.to_scalar::<f32>()? - want).abs() <= 1e-6 * want);
    let g = l.backward()?;
    let e = rel_err(
        g.get(logits.as_tensor()).expect("gradient"),
        &exp["ce.grad"],
    );
    assert!(e < 1e-5, "gradient rel err {e:e}");
    Ok(())
}
