//! Full fine-tuning of a tiny ModernBERT with the seed system's three heads against PyTorch
//! (fixture `modernbert_train/` from scripts/fixtures/make_modernbert_train_fixture.py):
//! step-0 loss and the gradients of every encoder and head parameter (with and without
//! gradient checkpointing), then the parameters after three AdamW steps with clipping (1.0) and
//! warmup + cosine, all within 1e-4 relative.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clinstruct_models::modernbert::{Config, ModernBert, Pooling, pool};
use clinstruct_nn::checkpoint::Checkpointed;
use clinstruct_nn::{Linear, Weights};
use clinstruct_train::{
    AdamW, AdamWConfig, Head, HeadNorm, LrSchedule, clip_grad_norm, masked_multi_head_loss,
};
use common::{fixtures, load_st, rel_err};

const TOL: f64 = 1e-4;
const HEADS: [&str; 3] = ["t", "n", "m"];

struct Setup {
    exp: HashMap<String, Tensor>,
    model: ModernBert,
    heads: Vec<Linear>,
    /// Every trainable variable under PyTorch's parameter name.
    vars: Vec<(String, Var)>,
}

fn setup() -> Result<Setup> {
    let dir = fixtures().join("modernbert_train");
    let exp = load_st(&dir.join("expected.safetensors"));
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = Config::from_json(&cfg_json).map_err(candle_core::Error::wrap)?;
    let varmap = VarMap::new();
    let mut vars = Vec::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in load_st(&dir.join("model.safetensors")) {
            let v = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
            vars.push((name.clone(), v.clone()));
            data.insert(name, v);
        }
    }
    let w = Weights::from_var_builder(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu));
    let model = ModernBert::load(&w, &cfg).map_err(candle_core::Error::wrap)?;
    let mut heads = Vec::new();
    for h in HEADS {
        let wv = Var::from_tensor(&exp[&format!("init.{h}.weight")])?;
        let bv = Var::from_tensor(&exp[&format!("init.{h}.bias")])?;
        heads.push(Linear::new(
            wv.as_tensor().clone(),
            Some(bv.as_tensor().clone()),
        )?);
        vars.push((format!("{h}.weight"), wv));
        vars.push((format!("{h}.bias"), bv));
    }
    Ok(Setup {
        exp,
        model,
        heads,
        vars,
    })
}

fn loss(s: &Setup, step: usize) -> Result<Tensor> {
    let ids = &s.exp[&format!("batch{step}.input_ids")];
    let mask = &s.exp[&format!("batch{step}.attention_mask")];
    let h = s.model.forward_t(ids, Some(mask), true)?;
    let cls = pool(&h, Some(mask), Pooling::Cls)?;
    let logits: Vec<Tensor> = s
        .heads
        .iter()
        .map(|l| l.forward(&cls))
        .collect::<Result<_>>()?;
    let labels: Vec<Vec<i64>> = HEADS
        .iter()
        .map(|h| s.exp[&format!("batch{step}.{h}")].to_vec1())
        .collect::<Result<_>>()?;
    let heads: Vec<Head> = (0..3)
        .map(|i| Head {
            logits: &logits[i],
            labels: &labels[i],
            class_weights: None,
        })
        .collect();
    Ok(masked_multi_head_loss(&heads, HeadNorm::Count)?.total)
}

#[test]
fn step0_loss_and_gradients_match_pytorch() -> Result<()> {
    let mut s = setup()?;
    for checkpointing in [false, true] {
        s.model.set_gradient_checkpointing(checkpointing);
        let l = loss(&s, 0)?;
        let want = s.exp["step0.loss"].to_vec1::<f32>()?[0];
        let got = l.to_scalar::<f32>()?;
        assert!((got - want).abs() <= 1e-5 * want, "loss {got} vs {want}");
        let grads = s.model.gradients().backward(&l)?;
        assert_eq!(
            s.vars.len(),
            20 + 6,
            "every backbone tensor and head parameter"
        );
        for (name, var) in &s.vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let e = rel_err(g, &s.exp[&format!("step0.grad.{name}")]);
            assert!(
                e < TOL,
                "checkpointing {checkpointing}: grad {name} rel err {e:e}"
            );
        }
    }
    Ok(())
}

#[test]
fn three_adamw_steps_with_clipping_and_cosine_match_pytorch() -> Result<()> {
    let mut s = setup()?;
    s.model.set_gradient_checkpointing(true);
    let mut opt = AdamW::new(
        s.vars.clone(),
        AdamWConfig {
            lr: 1e-3,
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
    )?;
    let sched = LrSchedule::cosine(1e-3, 1, 5);
    let losses = s.exp["train.losses"].to_vec1::<f64>()?;
    let norms = s.exp["train.norms"].to_vec1::<f64>()?;
    let vars: Vec<Var> = s.vars.iter().map(|(_, v)| v.clone()).collect();
    for step in 0..3 {
        let l = loss(&s, step)?;
        let lv = f64::from(l.to_scalar::<f32>()?);
        assert!(
            (lv - losses[step]).abs() <= TOL * losses[step],
            "step {step}: loss {lv}"
        );
        let mut grads = s.model.gradients().backward(&l)?;
        let norm = clip_grad_norm(&mut grads, &vars, 1.0)?;
        assert!(
            (norm - norms[step]).abs() <= TOL * norms[step],
            "step {step}: norm {norm}"
        );
        opt.set_learning_rate(sched.lr(step));
        opt.step(&grads)?;
    }
    for (name, var) in &s.vars {
        let e = rel_err(var.as_tensor(), &s.exp[&format!("after3.{name}")]);
        assert!(e < TOL, "after 3 steps: {name} rel err {e:e}");
    }
    Ok(())
}
