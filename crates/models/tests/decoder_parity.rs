//! The decoders against transformers 5.23 (fixtures from scripts/fixtures/make_decoder_fixtures.py):
//! logits of left- and right-padded batches, KV-cached decoding, greedy generation, gradients
//! through the LM loss, low-precision loading, and error messages.
//!
//! Run with `-- --nocapture` to see the per-case max-abs differences.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clinstruct_models::decoder::{dequantize_fp8, error_message, greedy_generate};
use clinstruct_models::{AnyCausalLm, AnyConfig, CausalLm, Checkpoint, DecoderLm};
use clinstruct_nn::Weights;

/// Logits must agree with transformers to this max-abs difference (f32) at masked-in positions.
const TOL: f32 = 1e-4;

struct Case {
    arch: String,
    name: String,
    dir: PathBuf,
    max_new_tokens: usize,
}

impl Case {
    fn id(&self) -> String {
        format!("{}/{}", self.arch, self.name)
    }

    fn model(&self, dtype: DType) -> AnyCausalLm {
        let ckpt = Checkpoint::open_dir(&self.dir).unwrap();
        AnyCausalLm::load(&ckpt, dtype, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", self.id()))
    }

    fn io(&self) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(self.dir.join("io.safetensors"), &Device::Cpu).unwrap()
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Vec<Case> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("decoders.json")).unwrap())
            .unwrap();
    let cases: Vec<Case> = manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let arch = c["arch"].as_str().unwrap().to_string();
            let name = c["case"].as_str().unwrap().to_string();
            Case {
                dir: fixtures().join(&arch).join(&name),
                max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
                arch,
                name,
            }
        })
        .collect();
    for arch in ["llama", "mistral", "gemma3", "ministral3"] {
        assert!(
            cases.iter().filter(|c| c.arch == arch).count() >= 3,
            "{arch}: fewer than 3 fixture cases"
        );
    }
    cases
}

/// Max |a - b| over positions where `mask (b, L)` is 1.
fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<f32> {
    let m = mask
        .to_dtype(DType::F32)?
        .unsqueeze(2)?
        .broadcast_as(a.shape())?;
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    (d * m)?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn forward_full(model: &AnyCausalLm, io: &HashMap<String, Tensor>, tag: &str) -> Result<Tensor> {
    model.forward(
        &io[&format!("{tag}.input_ids")],
        Some(&io[&format!("{tag}.attention_mask")]),
        &io[&format!("{tag}.position_ids")],
        None,
    )
}

#[test]
fn logits_match_transformers() -> Result<()> {
    let mut failures = Vec::new();
    for case in cases() {
        let model = case.model(DType::F32);
        let io = case.io();
        for tag in ["left", "right"] {
            let logits = forward_full(&model, &io, tag)?;
            let expected = &io[&format!("{tag}.logits")];
            assert_eq!(logits.dims(), expected.dims(), "{}", case.id());
            let d = masked_max_diff(&logits, expected, &io[&format!("{tag}.attention_mask")])?;
            eprintln!("logits   {:<48} {tag:<5} max|diff| = {d:.2e}", case.id());
            if d.is_nan() || d > TOL {
                failures.push(format!("{} {tag}: {d:e}", case.id()));
            }
        }
    }
    assert!(failures.is_empty(), "logits differ: {failures:?}");
    Ok(())
}

/// Feeds a batch in chunks of `chunks` tokens through the KV cache and returns the logits of
/// every position, concatenated.
fn forward_cached(
    model: &AnyCausalLm,
    ids: &Tensor,
    mask: &Tensor,
    pos: &Tensor,
    chunks: &[usize],
) -> Result<Tensor> {
    let mut cache = model.new_cache();
    let mut outs = Vec::new();
    let mut start = 0;
    for &n in chunks {
        let logits = model.forward(
            &ids.narrow(1, start, n)?,
            Some(&mask.narrow(1, 0, start + n)?),
            &pos.narrow(1, start, n)?,
            Some(&mut cache),
        )?;
        outs.push(logits);
        start += n;
        assert_eq!(cache.len(), start);
    }
    assert_eq!(start, ids.dim(1)?);
    Tensor::cat(&outs, 1)
}

#[test]
fn cached_decoding_matches_full_forward() -> Result<()> {
    let mut failures = Vec::new();
    for case in cases() {
        let model = case.model(DType::F32);
        let io = case.io();
        for tag in ["left", "right"] {
            let ids = &io[&format!("{tag}.input_ids")];
            let mask = &io[&format!("{tag}.attention_mask")];
            let pos = &io[&format!("{tag}.position_ids")];
            let l = ids.dim(1)?;
            let full = forward_full(&model, &io, tag)?;
            // Token by token after a 2-token prefill, and uneven multi-token chunks: both cross
            // the sliding windows (3 to 6) of the fixtures.
            let one_by_one: Vec<usize> = std::iter::once(2)
                .chain(std::iter::repeat_n(1, l - 2))
                .collect();
            let mut uneven = vec![5, 3];
            uneven.push(l - 8);
            for chunks in [one_by_one, uneven] {
                let cached = forward_cached(&model, ids, mask, pos, &chunks)?;
                let d_full = masked_max_diff(&cached, &full, mask)?;
                let d_ref = masked_max_diff(&cached, &io[&format!("{tag}.logits")], mask)?;
                eprintln!(
                    "cached   {:<48} {tag:<5} chunks {:>2}: vs full {d_full:.2e}, vs transformers {d_ref:.2e}",
                    case.id(),
                    chunks.len()
                );
                if d_full.is_nan() || d_full > TOL || d_ref.is_nan() || d_ref > TOL {
                    failures.push(format!(
                        "{} {tag} {chunks:?}: {d_full:e} / {d_ref:e}",
                        case.id()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "cached decoding differs: {failures:?}");
    Ok(())
}

fn rows(t: &Tensor) -> Result<Vec<Vec<u32>>> {
    t.to_dtype(DType::U32)?.to_vec2()
}

#[test]
fn greedy_generation_matches_transformers() -> Result<()> {
    let mut failures = Vec::new();
    for case in cases() {
        let model = case.model(DType::F32);
        let io = case.io();
        let batch = greedy_generate(
            &model,
            &io["left.input_ids"],
            Some(&io["left.attention_mask"]),
            case.max_new_tokens,
        )?;
        let single = greedy_generate(&model, &io["gen.single_input"], None, case.max_new_tokens)?;
        let ok_batch = batch == rows(&io["gen.batch_sequences"])?;
        let ok_single = single == rows(&io["gen.single_sequences"])?;
        eprintln!(
            "generate {:<48} batch {} single {}",
            case.id(),
            if ok_batch { "same" } else { "DIFFERENT" },
            if ok_single { "same" } else { "DIFFERENT" }
        );
        if !ok_batch || !ok_single {
            failures.push(case.id());
        }
    }
    assert!(failures.is_empty(), "generations differ: {failures:?}");
    Ok(())
}

/// A `VarMap` cannot report a tensor's shape, which block-wise FP8 scales need: as the
/// training engine does, dequantise those weights before filling it (per-tensor scales stay,
/// and receive gradients like any parameter).
fn dequantise_block_scaled(tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    let scales: Vec<String> = tensors
        .iter()
        .filter(|(k, v)| k.ends_with(".weight_scale_inv") && v.elem_count() > 1)
        .map(|(k, _)| k.clone())
        .collect();
    for s in scales {
        let scale = tensors.remove(&s).unwrap();
        let wname = s.replace(".weight_scale_inv", ".weight");
        let w = tensors[&wname].to_dtype(DType::F32)?;
        tensors.insert(wname, dequantize_fp8(&w, &scale)?);
    }
    Ok(())
}

/// Every checkpoint tensor of the language model, loaded as a `Var` from a pre-filled `VarMap`
/// (the training engine's path), receives a non-zero gradient from the masked next-token loss.
#[test]
fn every_parameter_gets_a_gradient() -> Result<()> {
    let dev = Device::Cpu;
    for case in cases() {
        let mut tensors = candle_core::safetensors::load(case.dir.join("model.safetensors"), &dev)?;
        dequantise_block_scaled(&mut tensors)?;
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap();
            for (name, t) in tensors {
                data.insert(name, Var::from_tensor(&t.to_dtype(DType::F32)?)?);
            }
        }
        let before = varmap.all_vars().len();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(case.dir.join("config.json")).unwrap())
                .unwrap();
        let w = Weights::from_var_builder(VarBuilder::from_varmap(&varmap, DType::F32, &dev));
        let model = AnyCausalLm::new(&AnyConfig::parse(&config)?, &w)?;
        assert_eq!(
            varmap.all_vars().len(),
            before,
            "{}: loading created variables the checkpoint lacks",
            case.id()
        );

        let io = case.io();
        let (ids, mask) = (&io["right.input_ids"], &io["right.attention_mask"]);
        let logits = model.forward(ids, Some(mask), &io["right.position_ids"], None)?;
        let l = ids.dim(1)?;
        let logp = candle_nn::ops::log_softmax(&logits.narrow(1, 0, l - 1)?, D::Minus1)?;
        let target = ids
            .narrow(1, 1, l - 1)?
            .to_dtype(DType::U32)?
            .unsqueeze(2)?;
        let picked = logp.gather(&target, 2)?.squeeze(2)?;
        let m = mask.to_dtype(DType::F32)?;
        let valid = (m.narrow(1, 1, l - 1)? * m.narrow(1, 0, l - 1)?)?;
        let loss =
            ((picked * &valid)?.sum_all()?.neg()? / valid.sum_all()?.to_scalar::<f32>()? as f64)?;
        let grads = loss.backward()?;

        let data = varmap.data().lock().unwrap();
        let mut checked = 0;
        for (name, var) in data.iter() {
            // The vision tower is not part of the text model; FP8 activation scales are
            // dropped by dequantisation, as in transformers.
            if name.contains("vision_tower")
                || name.contains("multi_modal_projector")
                || name.ends_with("activation_scale")
            {
                continue;
            }
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", case.id()));
            let norm = g.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{}: gradient of {name} is {norm}",
                case.id()
            );
            checked += 1;
        }
        eprintln!(
            "grads    {:<48} loss {:.4}, {checked} parameters, all non-zero",
            case.id(),
            loss.to_scalar::<f32>()?
        );
    }
    Ok(())
}

/// f32, bf16 and f16 checkpoints all load as f32 (covered above); here the f32 checkpoints load
/// and run in bf16 and f16, and stay close to transformers' f32 logits.
#[test]
fn runs_in_bf16_and_f16() -> Result<()> {
    let picked = [
        "gqa_llama3_tied",
        "window4_gqa",
        "multimodal",
        "yarn_llama4_tied",
        "yarn_fp8",
    ];
    for case in cases()
        .into_iter()
        .filter(|c| picked.contains(&c.name.as_str()))
    {
        let io = case.io();
        for dtype in [DType::BF16, DType::F16] {
            let model = case.model(dtype);
            let logits = forward_full(&model, &io, "left")?;
            assert_eq!(logits.dtype(), dtype);
            let d = masked_max_diff(&logits, &io["left.logits"], &io["left.attention_mask"])?;
            eprintln!("lowprec  {:<48} {dtype:?}: max|diff| = {d:.3}", case.id());
            assert!(d.is_finite() && d < 0.25, "{} {dtype:?}: {d}", case.id());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A copy of a fixture checkpoint whose tensors and config can be edited.
fn edited_checkpoint(
    case: &str,
    edit_tensors: impl FnOnce(&mut HashMap<String, Tensor>),
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let src = fixtures().join(case);
    let dir = tempfile::tempdir().unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit_tensors(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    let ckpt = Checkpoint::open_dir(dir).unwrap();
    AnyCausalLm::load(&ckpt, DType::F32, &Device::Cpu)
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn wrong_shape_names_the_tensor() {
    let dir = edited_checkpoint(
        "llama/gqa_llama3_tied",
        |t| {
            let k = "model.layers.1.self_attn.k_proj.weight".to_string();
            let bad = Tensor::zeros((8, 32), DType::F32, &Device::Cpu).unwrap();
            t.insert(k, bad);
        },
        |_| {},
    );
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{}: shape mismatch for model.layers.1.self_attn.k_proj.weight, expected: [16, 32], got: [8, 32]",
            dir.path().display()
        )
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = edited_checkpoint(
        "gemma3/multimodal",
        |t| {
            t.remove("language_model.model.layers.2.self_attn.k_norm.weight");
        },
        |_| {},
    );
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{}: cannot find tensor language_model.model.layers.2.self_attn.k_norm.weight",
            dir.path().display()
        )
    );
    // An untied head needs its weight.
    let dir = edited_checkpoint(
        "mistral/window4_gqa",
        |t| {
            t.remove("lm_head.weight");
        },
        |_| {},
    );
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{}: cannot find tensor lm_head.weight",
            dir.path().display()
        )
    );
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let dir = edited_checkpoint(
        "llama/gqa_llama3_tied",
        |_| {},
        |c| c["architectures"] = serde_json::json!(["FalconForCausalLM"]),
    );
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{}: unknown architecture FalconForCausalLM (supported: LlamaForCausalLM, MistralForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Ministral3ForCausalLM, Mistral3ForConditionalGeneration)",
            dir.path().join("config.json").display()
        )
    );
}

#[test]
fn bad_configs_are_reported_against_config_json() {
    let dir = edited_checkpoint(
        "ministral3/yarn_fp8",
        |_| {},
        |c| c["quantization_config"]["quant_method"] = serde_json::json!("gptq"),
    );
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{}: unsupported quantization_config.quant_method \"gptq\" (supported: fp8, dequantised on load)",
            dir.path().join("config.json").display()
        )
    );
    let dir = edited_checkpoint(
        "llama/gqa_llama3_tied",
        |_| {},
        |c| c["rope_parameters"]["rope_type"] = serde_json::json!("longrope"),
    );
    assert_eq!(
        load_error(dir.path()),
        format!(
            "{}: unsupported rope_type \"longrope\" (supported: default, linear, llama3, yarn)",
            dir.path().join("config.json").display()
        )
    );
}

#[test]
fn bad_input_shapes_are_reported() -> Result<()> {
    let case = cases().into_iter().next().unwrap();
    let model = case.model(DType::F32);
    let io = case.io();
    let ids = &io["left.input_ids"];
    let err = model
        .forward(
            ids,
            Some(&io["left.attention_mask"].narrow(1, 0, 5)?),
            &io["left.position_ids"],
            None,
        )
        .unwrap_err();
    assert_eq!(
        error_message(&err),
        format!(
            "attention_mask has shape [3, 5], expected (batch, cached + new) = (3, {})",
            ids.dim(1)?
        )
    );
    let err = model
        .forward(ids, None, &io["left.position_ids"].narrow(1, 0, 2)?, None)
        .unwrap_err();
    assert_eq!(
        error_message(&err),
        format!(
            "position_ids has shape [3, 2], expected (batch, len) = (3, {})",
            ids.dim(1)?
        )
    );
    Ok(())
}

#[test]
fn info_comes_from_the_checkpoint() {
    for case in cases() {
        let model = case.model(DType::F32);
        let info = model.info();
        assert_eq!(info.vocab_size, 200, "{}", case.id());
        assert_eq!(info.pad_token_id, Some(0), "{}", case.id());
        assert!(info.eos_token_ids.contains(&1), "{}", case.id());
        assert_eq!(model.new_cache().layers.len(), info.num_layers);
    }
    let gemma = cases()
        .into_iter()
        .find(|c| c.name == "causal_softcap_linear")
        .unwrap()
        .model(DType::F32);
    // generation_config.json's eos ids (the third was added by the fixture generator).
    assert_eq!(gemma.info().eos_token_ids.len(), 3);
    assert!(matches!(gemma, AnyCausalLm::Gemma3(_)));
    let _: &dyn DecoderLm = gemma.as_decoder();
}
