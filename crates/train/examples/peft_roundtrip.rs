//! Writes what `scripts/fixtures/check_peft_roundtrip.py` checks with Python's peft: the tiny
//! Llama fixture's adapter after 3 AdamW steps in Rust, saved in PEFT's format, the Rust
//! logits of batch 0 with it, and a merged checkpoint.
//!
//! cargo run -p clinstruct-train --example peft_roundtrip -- OUT_DIR

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Result};
use candle_nn::VarBuilder;
use clinstruct_nn::lora::{BaseMode, LinearPlan, PeftAdapter, PeftMeta, export_merged};
use clinstruct_nn::{LinearHook, Weights};
use clinstruct_train::{
    AdamW, AdamWConfig, LrSchedule, causal_lm_loss, clip_coefficient, grad_norm,
};

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: peft_roundtrip OUT_DIR"),
    );
    let dir = common::fixtures().join("tiny_llama");
    let cfg = common::Config::read(&dir.join("base/config.json"));
    let plan = Arc::new(LinearPlan::from_peft(
        BaseMode::Freeze,
        PeftAdapter::load(&dir.join("adapter"))?,
        0,
    ));
    // SAFETY: the fixture file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("base/model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )?
    };
    let w = Weights::from_var_builder(vb).with_linear_hook(plan.clone() as Arc<dyn LinearHook>);
    let model = common::TinyLlama::load(&w, &cfg)?;
    let exp = common::load_st(&dir.join("expected.safetensors"));
    let vars = plan.trainable_vars();
    let all: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = AdamW::new(
        vars,
        AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
    )?;
    let sched = LrSchedule::cosine(1e-2, 1, 10);
    for step in 0..3 {
        let b = common::batch(&exp, step);
        let loss = causal_lm_loss(&model.forward(&b.ids, &b.mask)?, &b.labels)?;
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, &all)?;
        opt.set_learning_rate(sched.lr(step));
        opt.step_scaled(&grads, clip_coefficient(norm, 1.0))?;
    }
    let meta = PeftMeta {
        base_model_name_or_path: Some(dir.join("base").display().to_string()),
        task_type: Some("CAUSAL_LM".into()),
    };
    plan.save_peft(&out.join("adapter"), &meta)?;
    let b = common::batch(&exp, 0);
    let logits = model.forward(&b.ids, &b.mask)?;
    candle_core::safetensors::save(
        &HashMap::from([("logits".to_string(), logits)]),
        out.join("rust_logits.safetensors"),
    )?;
    export_merged(
        &[dir.join("base/model.safetensors")],
        &plan.adapters(),
        &out.join("merged"),
    )?;
    std::fs::copy(dir.join("base/config.json"), out.join("merged/config.json"))
        .map_err(candle_core::Error::wrap)?;
    println!("wrote {}", out.display());
    Ok(())
}
