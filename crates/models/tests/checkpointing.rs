//! Gradient checkpointing: the same gradients as the plain graph (1e-6) for every parameter of
//! a ModernBERT fixture (with and without dropout, flash and op-by-op attention) and of a Llama
//! fixture, all trainable.

use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clinstruct_models::CausalLm;
use clinstruct_models::llama::{self, Llama};
use clinstruct_models::modernbert::{Config, ModernBert};
use clinstruct_nn::Weights;
use clinstruct_nn::checkpoint::Checkpointed;
use clinstruct_nn::dropout;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn varmap_from(file: &Path) -> VarMap {
    let tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in tensors {
            data.insert(
                name,
                Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap(),
            );
        }
    }
    varmap
}

/// Every variable has a non-zero gradient in both stores and they agree within 1e-6
/// (relative to the gradient's scale).
fn compare(varmap: &VarMap, with: &GradStore, plain: &GradStore, what: &str) -> Result<usize> {
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let a = with
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{what}: no checkpointed gradient for {name}"));
        let b = plain.get(var.as_tensor()).unwrap();
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(scale > 0.0, "{what}: gradient of {name} is zero");
        assert!(
            diff <= 1e-6 * scale.max(1.0),
            "{what}: {name} differs by {diff} (scale {scale})"
        );
    }
    Ok(data.len())
}

#[test]
fn modernbert_gradients_equal_without_checkpointing() -> Result<()> {
    let dir = fixtures().join("modernbert/base_v5_g2_noprefix");
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu)?;
    let (ids, mask) = (&io["input_ids"], &io["attention_mask"]);
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // Dropout off (flash attention), then every dropout on (attention falls back to the
    // op-by-op path, whose dropout the recompute must replay too).
    for p in [0.0, 0.1] {
        let mut cfg = Config::from_json(&cfg_json).unwrap();
        cfg.embedding_dropout = p;
        cfg.attention_dropout = p;
        cfg.mlp_dropout = p;
        let varmap = varmap_from(&dir.join("model.safetensors"));
        let w =
            Weights::from_var_builder(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu));
        let mut model = ModernBert::load(&w, &cfg).unwrap();
        let weights = Tensor::randn(
            0f32,
            1.,
            (ids.dim(0)?, ids.dim(1)?, cfg.hidden_size),
            &Device::Cpu,
        )?;
        let m = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let run = |model: &ModernBert| -> Result<GradStore> {
            dropout::scoped(42, || {
                let h = model.forward_t(ids, Some(mask), true)?;
                let loss = (h.broadcast_mul(&m)? * &weights)?.sum_all()?;
                model.gradients().backward(&loss)
            })
        };
        let plain = run(&model)?;
        model.set_gradient_checkpointing(true);
        let with = run(&model)?;
        let n = compare(&varmap, &with, &plain, &format!("modernbert, dropout {p}"))?;
        eprintln!("modernbert dropout {p}: {n} parameters, checkpointed gradients equal");
        // Another seed draws other masks: the comparison above is not vacuous.
        if p > 0.0 {
            let other = dropout::scoped(43, || {
                let h = model.forward_t(ids, Some(mask), true)?;
                model
                    .gradients()
                    .backward(&(h.broadcast_mul(&m)? * &weights)?.sum_all()?)
            })?;
            let v = varmap.all_vars()[0].clone();
            let d = (other.get(&v).unwrap() - plain.get(&v).unwrap())?
                .abs()?
                .max_all()?;
            assert!(d.to_scalar::<f32>()? > 1e-6);
        }
    }
    Ok(())
}

#[test]
fn llama_gradients_equal_without_checkpointing() -> Result<()> {
    let dir = fixtures().join("llama/gqa_llama3_tied");
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu)?;
    let (ids, mask, pos) = (
        &io["left.input_ids"],
        &io["left.attention_mask"],
        &io["left.position_ids"],
    );
    let cfg: llama::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let varmap = varmap_from(&dir.join("model.safetensors"));
    let w = Weights::from_var_builder(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu));
    let mut model = Llama::load(&cfg, &w)?;
    let m = mask.to_dtype(DType::F32)?;
    let run = |model: &Llama| -> Result<GradStore> {
        let logits = model.forward(ids, Some(mask), pos, None)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let loss = logp.max(D::Minus1)?.broadcast_mul(&m)?.sum_all()?;
        model.gradients().backward(&loss)
    };
    let plain = run(&model)?;
    model.set_gradient_checkpointing(true);
    let with = run(&model)?;
    assert!(model.gradients().is_empty(), "merged by backward");
    // The layers' weights are off the main graph: only the side store has their gradients.
    let logits = model.forward(ids, Some(mask), pos, None)?;
    let bare = logits.sum_all()?.backward()?;
    let q0 = varmap.data().lock().unwrap()["model.layers.0.self_attn.q_proj.weight"].clone();
    assert!(bare.get(q0.as_tensor()).is_none());
    assert!(!model.gradients().is_empty());
    let n = compare(&varmap, &with, &plain, "llama")?;
    eprintln!("llama: {n} parameters, checkpointed gradients equal");
    Ok(())
}
