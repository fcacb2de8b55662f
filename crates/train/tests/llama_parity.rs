//! llm.c-style parity with PyTorch + PEFT on a tiny LlamaForCausalLM (fixture from
//! scripts/fixtures/make_engine_fixtures.py): PEFT adapter loading, step-0 logits, loss and
//! LoRA gradients, three AdamW steps with clipping and warmup + cosine, PEFT files written
//! back, merging, and QLoRA on a bitsandbytes-identical NF4 base.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use clinstruct_nn::lora::{BaseMode, LinearPlan, PeftAdapter, PeftMeta, export_merged};
use clinstruct_nn::quant::nf4::Nf4Config;
use clinstruct_nn::{LinearHook, Weights};
use clinstruct_train::{
    AdamW, AdamWConfig, LrSchedule, causal_lm_loss, clip_coefficient, grad_norm,
};
use common::{Config, TinyLlama, batch, fixtures, load_st, rel_err};

const TOL: f64 = 1e-4;

struct Setup {
    model: TinyLlama,
    plan: Arc<LinearPlan>,
    exp: HashMap<String, Tensor>,
}

fn setup(base: BaseMode) -> Result<Setup> {
    let dir = fixtures().join("tiny_llama");
    let cfg = Config::read(&dir.join("base/config.json"));
    let adapter = PeftAdapter::load(&dir.join("adapter"))?;
    assert_eq!(adapter.config.r, 4);
    assert!(adapter.config.use_rslora);
    assert_eq!(adapter.config.scale(), 8.0 / 2.0);
    let plan = Arc::new(LinearPlan::from_peft(base, adapter, 0));
    // SAFETY: the fixture file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("base/model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )?
    };
    let w = Weights::from_var_builder(vb).with_linear_hook(plan.clone() as Arc<dyn LinearHook>);
    let model = TinyLlama::load(&w, &cfg)?;
    plan.check_all_loaded()?;
    Ok(Setup {
        model,
        plan,
        exp: load_st(&dir.join("expected.safetensors")),
    })
}

fn scalar(t: &Tensor) -> f64 {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0]
}

fn vec64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Step-0 logits, loss and adapter gradients against `prefix` (`step0` or `qlora`).
fn check_step0(s: &Setup, prefix: &str) -> Result<()> {
    let b = batch(&s.exp, 0);
    s.plan.set_training(true);
    let logits = s.model.forward(&b.ids, &b.mask)?;
    let e = rel_err(&logits, &s.exp[&format!("{prefix}.logits")]);
    assert!(e < TOL, "{prefix}: logits rel err {e:e}");
    let loss = causal_lm_loss(&logits, &b.labels)?;
    let want = scalar(&s.exp[&format!("{prefix}.loss")]);
    let got = scalar(&loss);
    assert!(
        (got - want).abs() / want < TOL,
        "{prefix}: loss {got} vs {want}"
    );
    let grads = loss.backward()?;
    let vars = s.plan.trainable_vars();
    assert_eq!(vars.len(), 28);
    let mut worst = 0f64;
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor()).expect("adapter gradient");
        let e = rel_err(g, &s.exp[&format!("{prefix}.grad.{name}")]);
        worst = worst.max(e);
        assert!(e < TOL, "{prefix}: grad {name} rel err {e:e}");
    }
    println!(
        "{prefix}: logits {:.2e}, loss {got:.6} vs {want:.6}, worst grad rel err {worst:.2e}",
        e
    );
    Ok(())
}

#[test]
fn lora_step0_matches_peft() -> Result<()> {
    check_step0(&setup(BaseMode::Freeze)?, "step0")
}

#[test]
fn qlora_step0_matches_peft_on_bitsandbytes_nf4() -> Result<()> {
    check_step0(&setup(BaseMode::Nf4(Nf4Config::default()))?, "qlora")
}

/// Three AdamW steps with clipping and warmup + cosine, as the fixture's PyTorch loop.
fn train3(s: &Setup) -> Result<()> {
    let vars = s.plan.trainable_vars();
    let cfg = AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(vars.clone(), cfg)?;
    let sched = LrSchedule::cosine(1e-2, 2, 10);
    let max_norm = scalar(&s.exp["train.max_norm"]);
    let (want_losses, want_norms, want_lrs) = (
        vec64(&s.exp["train.losses"]),
        vec64(&s.exp["train.norms"]),
        vec64(&s.exp["train.lrs"]),
    );
    let all: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    s.plan.set_training(true);
    for step in 0..3 {
        let b = batch(&s.exp, step);
        let loss = causal_lm_loss(&s.model.forward(&b.ids, &b.mask)?, &b.labels)?;
        let l = scalar(&loss);
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, &all)?;
        assert!(
            (l - want_losses[step]).abs() / want_losses[step] < TOL,
            "step {step}: loss"
        );
        assert!(
            (norm - want_norms[step]).abs() / want_norms[step] < TOL,
            "step {step}: norm"
        );
        assert!(norm > max_norm, "clipping must be active in this fixture");
        let lr = sched.lr(step);
        assert!((lr - want_lrs[step]).abs() < 1e-12, "step {step}: lr");
        opt.set_learning_rate(lr);
        opt.step_scaled(&grads, clip_coefficient(norm, max_norm))?;
    }
    let mut worst = 0f64;
    for (name, var) in &vars {
        let e = rel_err(var.as_tensor(), &s.exp[&format!("after3.{name}")]);
        worst = worst.max(e);
        assert!(e < TOL, "after 3 steps: {name} rel err {e:e}");
    }
    println!("after 3 AdamW steps: worst parameter rel err {worst:.2e}");
    Ok(())
}

#[test]
fn three_adamw_steps_match_pytorch_and_merge_matches_peft() -> Result<()> {
    let s = setup(BaseMode::Freeze)?;
    train3(&s)?;
    // Merge the trained adapters into a copy of the checkpoint; compare with PEFT's merge and
    // with the adapter forward.
    let dir = fixtures().join("tiny_llama");
    let tmp = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let files = export_merged(
        &[dir.join("base/model.safetensors")],
        &s.plan.adapters(),
        tmp.path(),
    )?;
    let merged = load_st(&files[0]);
    let name = "model.layers.1.mlp.down_proj.weight";
    let e = rel_err(&merged[name], &s.exp[&format!("merged.{name}")]);
    assert!(e < TOL, "merged weight vs PEFT merge_and_unload: {e:e}");
    s.plan.set_training(false);
    let cfg = Config::read(&dir.join("base/config.json"));
    // SAFETY: the temporary file is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu)? };
    let plain = TinyLlama::load(&Weights::from_var_builder(vb), &cfg)?;
    let b = batch(&s.exp, 0);
    let e = rel_err(
        &plain.forward(&b.ids, &b.mask)?,
        &s.model.forward(&b.ids, &b.mask)?,
    );
    assert!(e < 1e-5, "merged model vs adapter forward: {e:e}");
    Ok(())
}

#[test]
fn peft_files_round_trip() -> Result<()> {
    let s = setup(BaseMode::Freeze)?;
    let dir = fixtures().join("tiny_llama/adapter");
    let tmp = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let meta = PeftMeta {
        base_model_name_or_path: Some("tiny-llama".into()),
        task_type: Some("CAUSAL_LM".into()),
    };
    s.plan.save_peft(tmp.path(), &meta)?;
    // Same tensors under the same keys as PEFT's save_pretrained.
    let ours = load_st(&tmp.path().join("adapter_model.safetensors"));
    let theirs = load_st(&dir.join("adapter_model.safetensors"));
    let mut keys: Vec<_> = ours.keys().collect();
    keys.sort();
    let mut want: Vec<_> = theirs.keys().collect();
    want.sort();
    assert_eq!(keys, want);
    for k in keys {
        assert_eq!(ours[k].dims(), theirs[k].dims(), "{k}");
        assert_eq!(rel_err(&ours[k], &theirs[k]), 0.0, "{k}");
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8);
    assert_eq!(cfg["use_rslora"], true);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["target_modules"].as_array().map(Vec::len), Some(7));
    // And it reads back identically.
    let back = PeftAdapter::load(tmp.path())?;
    let orig = PeftAdapter::load(&dir)?;
    assert_eq!(back.config, orig.config);
    assert_eq!(back.weights.len(), 14);
    Ok(())
}
