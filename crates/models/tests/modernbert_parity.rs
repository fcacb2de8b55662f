//! ModernBERT against transformers 5.23 on the committed fixtures
//! (scripts/fixtures/make_modernbert_fixtures.py), plus gradients, dropout and load errors.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clinstruct_models::Checkpoint;
use clinstruct_models::modernbert::{Config, LayerType, ModernBert, Pooling, pool};
use clinstruct_nn::Weights;

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/modernbert")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    v.sort();
    assert!(v.len() >= 4, "fixtures missing: {v:?}");
    v
}

fn io_files(case: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(case)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("io") && n.ends_with(".safetensors")
        })
        .collect();
    v.sort();
    v
}

fn load(case: &Path, dtype: DType) -> ModernBert {
    let ckpt = Checkpoint::resolve(case.to_str().unwrap()).unwrap();
    ModernBert::from_checkpoint(&ckpt, dtype, &Device::Cpu).unwrap()
}

struct Io {
    ids: Tensor,
    mask: Tensor,
    expected: Tensor,
}

fn read_io(path: &Path) -> Io {
    let mut t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    Io {
        ids: t.remove("input_ids").unwrap(),
        mask: t.remove("attention_mask").unwrap(),
        expected: t.remove("last_hidden_state").unwrap(),
    }
}

/// Max |a - b| over positions where `mask` is 1.
fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let m = mask
        .to_dtype(DType::F32)
        .unwrap()
        .unsqueeze(D::Minus1)
        .unwrap();
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .broadcast_mul(&m)
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn last_hidden_state_matches_transformers() {
    let mut report = Vec::new();
    let mut banded_cases = 0;
    for case in cases() {
        let model = load(&case, DType::F32);
        for io_path in io_files(&case) {
            let io = read_io(&io_path);
            let h = model.forward(&io.ids, Some(&io.mask)).unwrap();
            assert_eq!(h.dims(), io.expected.dims());
            let diff = masked_max_diff(&h, &io.expected, &io.mask);
            let len = io.ids.dim(1).unwrap();
            let banded = model.local_attention_is_banded(len);
            banded_cases += usize::from(banded);
            let name = format!(
                "{}/{} (L {len}, {})",
                case.file_name().unwrap().to_string_lossy(),
                io_path.file_name().unwrap().to_string_lossy(),
                if banded { "banded" } else { "dense local" }
            );
            eprintln!("{name}: max abs diff {diff:.3e}");
            report.push((name, diff));
        }
    }
    assert!(banded_cases >= 4, "the banded path must be exercised");
    let bad: Vec<_> = report
        .iter()
        .filter(|(_, d)| d.is_nan() || *d > TOL)
        .collect();
    assert!(bad.is_empty(), "over {TOL}: {bad:?}");
}

#[test]
fn padded_rows_equal_rows_alone() {
    let case = fixtures().join("base_v5_g2_noprefix");
    let model = load(&case, DType::F32);
    let io = read_io(&case.join("io.safetensors"));
    let batch = model.forward(&io.ids, Some(&io.mask)).unwrap();
    let lens: Vec<i64> = io.mask.sum(1).unwrap().to_vec1().unwrap();
    for (r, &n) in lens.iter().enumerate() {
        let n = n as usize;
        let ids = io.ids.i((r..r + 1, ..n)).unwrap();
        let alone = model.forward(&ids, None).unwrap();
        let padded = batch.i((r..r + 1, ..n)).unwrap();
        let d = masked_max_diff(
            &alone,
            &padded,
            &Tensor::ones((1, n), DType::F32, &Device::Cpu).unwrap(),
        );
        assert!(d < 1e-5, "row {r}: {d}");
    }
}

#[test]
fn half_precision_forward_is_close() {
    // bf16/f16 compute: no NaN and no dtype mismatch, within low-precision noise of f32.
    for (case, dtype, tol) in [
        ("mlm_v4_g3_tok", DType::BF16, 0.5),
        ("seqcls_v4_bias_bf16", DType::BF16, 0.5),
        ("mlm_v5_g2_f16_tanh", DType::F16, 0.1),
    ] {
        let dir = fixtures().join(case);
        let model = load(&dir, dtype);
        let io = read_io(&dir.join("io.safetensors"));
        let h = model.forward(&io.ids, Some(&io.mask)).unwrap();
        assert_eq!(h.dtype(), dtype);
        let diff = masked_max_diff(&h, &io.expected, &io.mask);
        eprintln!("{case} in {dtype:?}: max abs diff {diff:.3e}");
        assert!(diff < tol, "{case} {dtype:?}: {diff}");
    }
}

fn config(case: &str) -> Config {
    let text = std::fs::read_to_string(fixtures().join(case).join("config.json")).unwrap();
    Config::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

#[test]
fn config_spellings() {
    let v4 = config("mlm_v4_g3_tok");
    use LayerType::{Global as G, Local as L};
    assert_eq!(v4.layer_types, vec![G, L, L, G]);
    assert_eq!(
        (v4.global_rope.theta, v4.local_rope.theta),
        (160000.0, 10000.0)
    );
    assert_eq!(v4.local_half_width(), 4);
    let v5 = config("base_v5_g2_noprefix");
    assert_eq!(v5.layer_types, vec![G, L, G]);
    assert_eq!(
        (v5.global_rope.theta, v5.local_rope.theta),
        (50000.0, 5000.0)
    );
    let only_layer_norm_eps = config("seqcls_v4_bias_bf16");
    assert_eq!(only_layer_norm_eps.norm_eps, 1e-5);
    assert!(only_layer_norm_eps.norm_bias && only_layer_norm_eps.attention_bias);
    assert_eq!(config("mlm_v5_g2_f16_tanh").norm_eps, 1e-6);

    let base = serde_json::json!({
        "model_type": "modernbert", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
        "num_hidden_layers": 4, "num_attention_heads": 2,
    });
    let with = |extra: serde_json::Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Config::from_json(&v)
    };
    // Defaults: transformers' (every 3rd layer global, 160k/10k thetas, window 128).
    let d = with(serde_json::json!({})).unwrap();
    assert_eq!(d.layer_types, vec![G, L, L, G]);
    assert_eq!(
        (d.global_rope.theta, d.local_rope.theta, d.local_attention),
        (160000.0, 10000.0, 128)
    );
    // v4: `local_rope_theta: null` means the global theta.
    let c =
        with(serde_json::json!({"global_rope_theta": 1000.0, "local_rope_theta": null})).unwrap();
    assert_eq!(c.local_rope.theta, 1000.0);
    // v5 keys win over v4 keys when both are present.
    let c = with(serde_json::json!({
        "global_rope_theta": 1.0, "global_attn_every_n_layers": 2,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 7.0},
                            "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 3.0}},
        "layer_types": ["full_attention", "full_attention", "sliding_attention", "full_attention"],
    }))
    .unwrap();
    assert_eq!(c.layer_types, vec![G, G, L, G]);
    assert_eq!(c.global_rope.theta, 7.0);
    assert_eq!(c.local_rope.theta, 3.0);
    assert_eq!(
        c.local_rope.scaling,
        clinstruct_nn::rope::RopeScaling::Linear { factor: 2.0 }
    );
    // Dropouts and the classifier keys are read.
    let c = with(
        serde_json::json!({"embedding_dropout": 0.1, "attention_dropout": 0.2, "mlp_dropout": 0.3,
        "classifier_pooling": "mean", "classifier_dropout": 0.4, "hidden_activation": "gelu_new"}),
    )
    .unwrap();
    assert_eq!(
        (
            c.embedding_dropout,
            c.attention_dropout,
            c.mlp_dropout,
            c.classifier_dropout
        ),
        (0.1, 0.2, 0.3, 0.4)
    );
    // Clear errors.
    let e = with(serde_json::json!({"hidden_activation": "mish"}))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("invalid config: unsupported activation \"mish\""),
        "{e}"
    );
    let e = with(serde_json::json!({"layer_types": ["full_attention"]}))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "invalid config: layer_types has 1 entries for 4 layers");
    let e = with(serde_json::json!({"model_type": "llama"}))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "unknown model_type \"llama\" (expected \"modernbert\")");
    // serde's own entry point resolves the same way.
    let c: Config = serde_json::from_value(base.clone()).unwrap();
    assert_eq!(c, d);
}

/// False for zero and NaN.
fn positive(x: f32) -> bool {
    x > 0.0
}

/// A `VarMap` holding every checkpoint tensor as a `Var` (the training path).
fn varmap_from(case: &Path) -> (VarMap, BTreeSet<String>) {
    let tensors =
        candle_core::safetensors::load(case.join("model.safetensors"), &Device::Cpu).unwrap();
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &tensors {
            data.insert(
                name.clone(),
                Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap(),
            );
        }
    }
    (varmap, tensors.into_keys().collect())
}

#[test]
fn every_parameter_gets_a_gradient_through_cls() {
    for case in ["base_v5_g2_noprefix", "seqcls_v4_bias_bf16"] {
        let dir = fixtures().join(case);
        let cfg = config(case);
        let (varmap, names) = varmap_from(&dir);
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ModernBert::load(&Weights::from_var_builder(vb), &cfg).unwrap();
        let after: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert_eq!(after, names, "{case}: loading created or dropped variables");
        assert!(!names.iter().any(|n| n.contains("layers.0.attn_norm")));
        assert!(!model.has_attn_norm(0) && model.has_attn_norm(1));

        let io = read_io(&dir.join("io.safetensors"));
        let h = model.forward_t(&io.ids, Some(&io.mask), false).unwrap();
        let cls = pool(&h, Some(&io.mask), Pooling::Cls).unwrap();
        let r = Tensor::randn(0f32, 1., cls.shape(), &Device::Cpu).unwrap();
        let loss = (cls * r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();

        let data = varmap.data().lock().unwrap();
        let prefix = if model.prefix().is_empty() {
            String::new()
        } else {
            format!("{}.", model.prefix())
        };
        let h = cfg.hidden_size;
        let mut zero = Vec::new();
        let mut checked = 0;
        for (name, var) in data.iter().filter(|(n, _)| n.starts_with(&prefix)) {
            let g = grads.get(var.as_tensor());
            let norm = |t: &Tensor| {
                t.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            match g {
                None => zero.push(format!("{name} (none)")),
                Some(g) if name.ends_with("attn.Wqkv.weight") => {
                    // q and k rows separately: a rotary op without backward zeroes exactly these.
                    for (part, i) in [("q", 0), ("k", 1), ("v", 2)] {
                        let n = norm(&g.narrow(0, i * h, h).unwrap());
                        if !positive(n) {
                            zero.push(format!("{name}[{part}]"));
                        }
                    }
                }
                Some(g) if !positive(norm(g)) => zero.push(name.clone()),
                Some(_) => {}
            }
            checked += 1;
        }
        eprintln!(
            "{case}: {checked} backbone parameters, all with non-zero gradients: {}",
            zero.is_empty()
        );
        assert!(checked >= 10);
        assert!(zero.is_empty(), "{case}: zero gradients: {zero:?}");
    }
}

#[test]
fn dropout_only_in_training() {
    let case = fixtures().join("base_v5_g2_noprefix");
    let mut cfg = config("base_v5_g2_noprefix");
    cfg.embedding_dropout = 0.1;
    cfg.attention_dropout = 0.1;
    cfg.mlp_dropout = 0.1;
    let ckpt = Checkpoint::resolve(case.to_str().unwrap()).unwrap();
    let w = ckpt.weights(DType::F32, &Device::Cpu).unwrap();
    let model = ModernBert::load(&w, &cfg).unwrap();
    let io = read_io(&case.join("io.safetensors"));
    let eval = model.forward_t(&io.ids, Some(&io.mask), false).unwrap();
    assert!(
        masked_max_diff(&eval, &io.expected, &io.mask) <= TOL,
        "eval ignores dropout"
    );
    let t1 = model.forward_t(&io.ids, Some(&io.mask), true).unwrap();
    let t2 = model.forward_t(&io.ids, Some(&io.mask), true).unwrap();
    assert!(
        masked_max_diff(&t1, &t2, &io.mask) > 1e-3,
        "train mode draws dropout masks"
    );
    assert!(masked_max_diff(&t1, &eval, &io.mask) > 1e-3);
    let finite = t1
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(finite.is_finite());
}

// ----- load errors ---------------------------------------------------------------------------

/// A copy of a fixture case in a temporary directory, to break.
fn scratch(case: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join(case)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    let ckpt = Checkpoint::resolve(dir.to_str().unwrap()).unwrap();
    ModernBert::from_checkpoint(&ckpt, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

#[test]
fn wrong_shape_is_named() {
    let tmp = scratch("mlm_v4_g3_tok");
    rewrite_weights(tmp.path(), |t| {
        let w = t["model.layers.2.attn.Wqkv.weight"]
            .narrow(0, 0, 90)
            .unwrap();
        t.insert("model.layers.2.attn.Wqkv.weight".into(), w);
    });
    let file = tmp.path().join("model.safetensors");
    assert_eq!(
        load_err(tmp.path()),
        format!(
            "{}: tensor model.layers.2.attn.Wqkv.weight has shape [90, 32], expected [96, 32]",
            file.display()
        )
    );
}

#[test]
fn missing_tensor_is_named() {
    let tmp = scratch("base_v5_g2_noprefix");
    rewrite_weights(tmp.path(), |t| {
        t.remove("layers.1.mlp_norm.weight").unwrap();
    });
    let file = tmp.path().join("model.safetensors");
    assert_eq!(
        load_err(tmp.path()),
        format!(
            "{}: missing tensor layers.1.mlp_norm.weight",
            file.display()
        )
    );
    // No backbone at all: both spellings of the first tensor are named.
    rewrite_weights(tmp.path(), |t| {
        t.remove("embeddings.tok_embeddings.weight").unwrap();
    });
    assert_eq!(
        load_err(tmp.path()),
        format!(
            "{}: missing tensor embeddings.tok_embeddings.weight (or model.embeddings.tok_embeddings.weight)",
            file.display()
        )
    );
}

#[test]
fn corrupt_safetensors_is_named() {
    let tmp = scratch("base_v5_g2_noprefix");
    let file = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(tmp.path());
    assert_eq!(
        e,
        format!(
            "{}: corrupt safetensors file: incomplete metadata, file not fully covered",
            file.display()
        )
    );
}

#[test]
fn unknown_model_type_and_architecture_are_named() {
    let tmp = scratch("mlm_v4_g3_tok");
    let cfg_path = tmp.path().join("config.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();

    let mut v = original.clone();
    v["model_type"] = "llama".into();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    assert_eq!(
        load_err(tmp.path()),
        format!(
            "{}: unknown model_type \"llama\" (expected \"modernbert\")",
            cfg_path.display()
        )
    );

    let mut v = original.clone();
    v["architectures"] = serde_json::json!(["ModernBertForCausalLM"]);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    assert_eq!(
        load_err(tmp.path()),
        format!(
            "{}: unknown architecture ModernBertForCausalLM (supported: ModernBertModel, ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertForTokenClassification, ModernBertForQuestionAnswering, ModernBertForMultipleChoice)",
            cfg_path.display()
        )
    );

    let mut v = original;
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    assert_eq!(
        load_err(tmp.path()),
        format!(
            "{}: invalid config: missing field `hidden_size`",
            cfg_path.display()
        )
    );
}
