//! LoRA adapters with PEFT's semantics and file format.
//!
//! `y = base(x) + (dropout(x) · Aᵀ · Bᵀ) · scale` with `A (r, in)`, `B (out, r)`,
//! `scale = alpha / r` (or `alpha / sqrt(r)` with rsLoRA). The scale multiplies the adapter
//! branch only (candle-lora scales the frozen base output too). Initialisation as PEFT's
//! default: `A ~ kaiming_uniform(a = sqrt(5))`, i.e. `U(-1/sqrt(in), 1/sqrt(in))`, and `B = 0`,
//! so a fresh adapter leaves the model unchanged.
//!
//! How a model gets adapters: build a [`LinearPlan`] and attach it to the [`crate::Weights`]
//! the model loads from (`Weights::with_linear_hook`). Every `Linear::load` then passes
//! through the plan with its HF module path: the base is frozen or quantised (`--quantize nf4`),
//! and target modules get an adapter, fresh or loaded from a PEFT directory. Model files need no
//! change. The plan keeps the adapters for the optimiser, for saving (PEFT's
//! `adapter_config.json` + `adapter_model.safetensors`, keys
//! `base_model.model.<module path>.lora_{A,B}.weight`) and for exporting a merged checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::linear::{Linear, LinearBase, LinearHook};
use crate::quant::nf4::Nf4Config;

/// Training mode and dropout randomness shared by the adapters of one model.
#[derive(Debug)]
pub struct AdapterControl {
    training: AtomicBool,
    seed: u64,
    calls: AtomicU64,
}

impl AdapterControl {
    pub fn new(seed: u64) -> Arc<AdapterControl> {
        Arc::new(AdapterControl {
            training: AtomicBool::new(false),
            seed,
            calls: AtomicU64::new(0),
        })
    }

    /// Dropout is active only in training mode.
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// Dropout masks drawn so far: saved with a checkpoint and restored with
    /// [`Self::set_calls`], resumed training draws the same masks.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn set_calls(&self, calls: u64) {
        self.calls.store(calls, Ordering::Relaxed);
    }

    fn next_rng(&self) -> ChaCha8Rng {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        ChaCha8Rng::seed_from_u64(self.seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// Which linear layers get adapters (PEFT's `target_modules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Module names: a layer matches when its path equals a name or ends with `.name`.
    Names(Vec<String>),
    /// Every linear layer except the output layer (`lm_head`) and kept-trainable modules.
    AllLinear,
}

impl Targets {
    /// Parses `q_proj,k_proj,v_proj` or `all-linear`.
    pub fn parse(spec: &str) -> Targets {
        if spec.trim() == "all-linear" {
            return Targets::AllLinear;
        }
        Targets::Names(
            spec.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Targets::Names(names) => names.iter().any(|n| path_matches(path, n)),
            Targets::AllLinear => !path_matches(path, "lm_head"),
        }
    }
}

/// PEFT's rule: the module path equals the name or ends with `.name`.
pub fn path_matches(path: &str, name: &str) -> bool {
    path == name
        || path
            .strip_suffix(name)
            .is_some_and(|head| head.ends_with('.'))
}

/// Hyper-parameters of the adapters (PEFT's `LoraConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    /// Dropout probability on the adapter input.
    pub dropout: f32,
    /// rsLoRA: `scale = alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    pub targets: Targets,
}

impl LoraConfig {
    pub fn new(r: usize, alpha: f64, targets: Targets) -> LoraConfig {
        LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            use_rslora: false,
            targets,
        }
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// One adapter: trainable `A (r, in)` and `B (out, r)`.
#[derive(Clone)]
pub struct Lora {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f32,
    control: Arc<AdapterControl>,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora")
            .field("r", &self.rank())
            .field("in", &self.in_dim())
            .field("out", &self.out_dim())
            .field("scale", &self.scale)
            .field("dropout", &self.dropout)
            .finish()
    }
}

impl Lora {
    /// A fresh adapter with PEFT's default initialisation, drawn from `rng`.
    pub fn init(
        in_dim: usize,
        out_dim: usize,
        cfg: &LoraConfig,
        dtype: DType,
        device: &Device,
        rng: &mut ChaCha8Rng,
        control: Arc<AdapterControl>,
    ) -> Result<Lora> {
        // kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain·sqrt(3 / fan_in).
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_dim)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
            .collect();
        let a = Tensor::from_vec(a, (cfg.r, in_dim), device)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_dim, cfg.r), dtype, device)?;
        Lora::from_weights(a, b, cfg.scale(), cfg.dropout, control)
    }

    /// An adapter with given weights (copied into new `Var`s).
    pub fn from_weights(
        a: Tensor,
        b: Tensor,
        scale: f64,
        dropout: f32,
        control: Arc<AdapterControl>,
    ) -> Result<Lora> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            candle_core::bail!("lora: A has rank {r}, B has rank {rb}");
        }
        // A detached tensor is not a variable, so `Var::from_tensor` copies it.
        Ok(Lora {
            a: Var::from_tensor(&a.detach())?,
            b: Var::from_tensor(&b.detach())?,
            scale,
            dropout,
            control,
        })
    }

    pub fn a(&self) -> &Var {
        &self.a
    }

    pub fn b(&self) -> &Var {
        &self.b
    }

    pub fn rank(&self) -> usize {
        self.a.dim(0).unwrap_or(0)
    }

    pub fn in_dim(&self) -> usize {
        self.a.dim(1).unwrap_or(0)
    }

    pub fn out_dim(&self) -> usize {
        self.b.dim(0).unwrap_or(0)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn dtype(&self) -> DType {
        self.a.dtype()
    }

    pub fn control(&self) -> &Arc<AdapterControl> {
        &self.control
    }

    /// `(dropout(x) · Aᵀ · Bᵀ) · scale` for `x (rows, in)`, computed in the adapter dtype and
    /// returned in `x`'s dtype (PEFT casts the input to the adapter dtype).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let mut h = x.to_dtype(self.a.dtype())?;
        if self.dropout > 0.0 && self.control.is_training() {
            h = h.broadcast_mul(&self.dropout_mask(h.dims(), h.dtype(), h.device())?)?;
        }
        let h = h.matmul(&self.a.t()?)?;
        (h.matmul(&self.b.t()?)? * self.scale)?.to_dtype(dtype)
    }

    /// `base(x) + (dropout(x) · Aᵀ · Bᵀ) · scale` over the last dimension of `x` (any leading
    /// dims, `x` in the adapter dtype) as one graph node with its own backward.
    ///
    /// Composed from candle ops the same layer is about eight nodes (two reshapes, the base,
    /// two matmuls, the scale, the sum, transposes of A and B), and candle's backward gives
    /// every node's gradient a zero-filled buffer plus an add: for an MLP projection of a
    /// 256-token sequence that is several 8 MB passes per layer and step, and on a 2-core
    /// machine the add kernels mostly wait at candle's thread barrier. Here the value is
    /// computed without a graph and the backward writes `dx`, `dA` and `dB` directly:
    /// `gB = g·B`, `dA = scale·gBᵀ·h`, `dB = scale·gᵀ·(h·Aᵀ)`, `dx = g·W + scale·(gB·A)⊙mask`
    /// (with `h = x⊙mask`, the dropout mask scaled by `1/(1-p)`).
    pub fn forward_with_base(&self, x: &Tensor, base: &LinearBase) -> Result<Tensor> {
        let (x2, out_dims) = crate::frozen::as_rows(x, self.out_dim())?;
        let mask = if self.dropout > 0.0 && self.control.is_training() {
            Some(self.dropout_mask(x2.dims(), x2.dtype(), x2.device())?)
        } else {
            None
        };
        let h = match &mask {
            Some(m) => x2.mul(m)?,
            None => x2.clone(),
        };
        let (a, b) = (self.a.as_tensor().detach(), self.b.as_tensor().detach());
        // The scale goes on the rank-sized product, not on the output-sized one.
        let lora = (h.matmul(&a.t()?)? * self.scale)?.matmul(&b.t()?)?;
        let y = (crate::frozen::base_value(&x2, base)? + lora)?.reshape(out_dims)?;
        let op = LoraLinear {
            value: Mutex::new(Some(y)),
            base: base.clone(),
            scale: self.scale,
            mask,
        };
        x.apply_op3(self.a.as_tensor(), self.b.as_tensor(), op)
    }

    fn dropout_mask(&self, dims: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let keep = 1.0 - self.dropout;
        // Inside a checkpointed block the scope's generator, so the recompute draws the same.
        let mut rng = crate::dropout::scoped_rng().unwrap_or_else(|| self.control.next_rng());
        let n: usize = dims.iter().product();
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if rng.random::<f32>() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(mask, dims, device)?.to_dtype(dtype)
    }

    /// `scale · B · A`, the weight update the adapter stands for `(out, in)`.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale
    }
}

/// The graph node of [`Lora::forward_with_base`]: arguments `(x, A, B)`, the value computed
/// beforehand (handed over once by the forward), the backward written out.
struct LoraLinear {
    value: Mutex<Option<Tensor>>,
    base: LinearBase,
    scale: f64,
    mask: Option<Tensor>,
}

impl LoraLinear {
    fn take_value(&self) -> Result<Tensor> {
        self.value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| candle_core::Error::msg("lora-linear: forward ran twice"))
    }
}

macro_rules! lora_linear_fwd {
    ($name:ident, $storage:ident, $variant:ident) => {
        fn $name(
            &self,
            _: &candle_core::$storage,
            _: &candle_core::Layout,
            _: &candle_core::$storage,
            _: &candle_core::Layout,
            _: &candle_core::$storage,
            _: &candle_core::Layout,
        ) -> Result<(candle_core::$storage, candle_core::Shape)> {
            use candle_core::backend::BackendStorage;
            let value = self.take_value()?;
            let (storage, layout) = value.storage_and_layout();
            match &*storage {
                // A fresh tensor: its buffer holds exactly the value.
                candle_core::Storage::$variant(s) => {
                    if !layout.is_contiguous() || layout.start_offset() != 0 {
                        candle_core::bail!("lora-linear: the value must be contiguous");
                    }
                    Ok((s.try_clone(layout)?, layout.shape().clone()))
                }
                _ => candle_core::bail!("lora-linear: the value is on another device"),
            }
        }
    };
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    lora_linear_fwd!(cpu_fwd, CpuStorage, Cpu);
    lora_linear_fwd!(cuda_fwd, CudaStorage, Cuda);
    lora_linear_fwd!(metal_fwd, MetalStorage, Metal);

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (in_dim, out_dim) = (a.dim(1)?, b.dim(0)?);
        let rows = x.elem_count() / in_dim;
        let x2 = x.detach().contiguous()?.reshape((rows, in_dim))?;
        let h = match &self.mask {
            Some(m) => x2.mul(m)?,
            None => x2,
        };
        let g2 = g.detach().contiguous()?.reshape((rows, out_dim))?;
        let (a, b) = (a.detach(), b.detach());
        let gb = g2.matmul(&b)?;
        let da = (gb.t()?.matmul(&h)? * self.scale)?;
        let db = (g2.t()?.matmul(&h.matmul(&a.t()?)?)? * self.scale)?;
        // An untracked input (frozen embeddings feeding layer 0) needs no gradient.
        let dx = if x.track_op() {
            let lora = (gb.clone() * self.scale)?.matmul(&a)?;
            let lora = match &self.mask {
                Some(m) => lora.mul(m)?,
                None => lora,
            };
            let base = crate::frozen::base_input_grad(&g2, &self.base)?;
            Some((base + lora)?.reshape(x.shape())?)
        } else {
            None
        };
        Ok((dx, Some(da), Some(db)))
    }
}

/// What happens to the frozen base of each linear layer on load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaseMode {
    /// As loaded (dense weights stay under plain autograd).
    Keep,
    /// Dense weights get the input-only backward.
    Freeze,
    /// Quantise to NF4 (QLoRA); `no_quantize` modules are only frozen.
    Nf4(Nf4Config),
    /// Quantise to a ggml block type; `no_quantize` modules are only frozen.
    Ggml(GgmlDType),
}

/// The adapters of one model, and what the plan does to each loaded linear layer.
pub struct LinearPlan {
    base: BaseMode,
    /// Modules kept in full precision under `Nf4`/`Ggml` (default: `lm_head`).
    no_quantize: Vec<String>,
    /// Modules left exactly as loaded and excluded from adapters (trainable heads, PEFT's
    /// `modules_to_save`).
    keep: Vec<String>,
    lora: Option<LoraConfig>,
    adapter_dtype: DType,
    seed: u64,
    /// Adapter weights from a PEFT directory, by module path; `None`: fresh adapters.
    loaded: Option<BTreeMap<String, (Tensor, Tensor)>>,
    control: Arc<AdapterControl>,
    adapters: Mutex<BTreeMap<String, Lora>>,
}

impl std::fmt::Debug for LinearPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearPlan")
            .field("base", &self.base)
            .field("lora", &self.lora)
            .field("adapters", &self.adapter_paths().len())
            .finish()
    }
}

impl LinearPlan {
    /// A plan with fresh adapters (`lora`) or none, seeded for reproducible initialisation and
    /// dropout.
    pub fn new(base: BaseMode, lora: Option<LoraConfig>, seed: u64) -> LinearPlan {
        LinearPlan {
            base,
            no_quantize: vec!["lm_head".to_string()],
            keep: Vec::new(),
            lora,
            adapter_dtype: DType::F32,
            seed,
            loaded: None,
            control: AdapterControl::new(seed),
            adapters: Mutex::new(BTreeMap::new()),
        }
    }

    /// A plan that puts the adapters of a PEFT directory back on their modules.
    pub fn from_peft(base: BaseMode, adapter: PeftAdapter, seed: u64) -> LinearPlan {
        let mut plan = LinearPlan::new(base, Some(adapter.config), seed);
        plan.loaded = Some(adapter.weights);
        plan
    }

    pub fn with_no_quantize(mut self, modules: &[&str]) -> LinearPlan {
        self.no_quantize = modules.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn with_keep(mut self, modules: &[&str]) -> LinearPlan {
        self.keep = modules.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adapter weights and optimiser see this dtype (default f32, also for bf16 bases).
    pub fn with_adapter_dtype(mut self, dtype: DType) -> LinearPlan {
        self.adapter_dtype = dtype;
        self
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    pub fn control(&self) -> &Arc<AdapterControl> {
        &self.control
    }

    /// Dropout on (training) or off (evaluation).
    pub fn set_training(&self, training: bool) {
        self.control.set_training(training);
    }

    pub fn adapter_paths(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The adapters by module path (sorted).
    pub fn adapters(&self) -> Vec<(String, Lora)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Trainable variables under their PEFT names.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (path, lora) in self.adapters() {
            out.push((peft_key(&path, "lora_A"), lora.a.clone()));
            out.push((peft_key(&path, "lora_B"), lora.b.clone()));
        }
        out
    }

    /// Errors when loaded adapters were not all placed (a model/adapter mismatch).
    pub fn check_all_loaded(&self) -> Result<()> {
        let Some(loaded) = &self.loaded else {
            return Ok(());
        };
        let placed = self.lock();
        let missing: Vec<&String> = loaded.keys().filter(|k| !placed.contains_key(*k)).collect();
        if !missing.is_empty() {
            candle_core::bail!(
                "{} adapter(s) matched no linear layer of the model, e.g. {}",
                missing.len(),
                missing[0]
            );
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Lora>> {
        self.adapters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rng_for(&self, path: &str) -> ChaCha8Rng {
        // One stream per module, so initial adapters do not depend on load order.
        let h = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        ChaCha8Rng::seed_from_u64(self.seed ^ h)
    }

    fn is_kept(&self, path: &str) -> bool {
        self.keep.iter().any(|n| path_matches(path, n))
    }

    /// Writes the adapters as PEFT does (`save_pretrained`).
    pub fn save_peft(&self, dir: &Path, meta: &PeftMeta) -> Result<()> {
        let cfg = self
            .lora
            .as_ref()
            .ok_or_else(|| candle_core::Error::msg("save_peft: the plan has no LoRA config"))?;
        save_peft(dir, cfg, &self.adapters(), meta)
    }
}

impl LinearHook for LinearPlan {
    fn on_load(&self, path: &str, linear: Linear) -> Result<Linear> {
        if self.is_kept(path) {
            return Ok(linear);
        }
        let quantize = !self.no_quantize.iter().any(|n| path_matches(path, n));
        let linear = match self.base {
            BaseMode::Keep => linear,
            BaseMode::Freeze => linear.freeze(),
            BaseMode::Nf4(cfg) if quantize => linear.quantize_nf4(cfg)?,
            BaseMode::Ggml(dtype) if quantize => linear.quantize_ggml(dtype)?,
            BaseMode::Nf4(_) | BaseMode::Ggml(_) => linear.freeze(),
        };
        let Some(cfg) = &self.lora else {
            return Ok(linear);
        };
        let device = match linear.base() {
            crate::linear::LinearBase::Dense(w) | crate::linear::LinearBase::Frozen(w) => {
                w.device().clone()
            }
            crate::linear::LinearBase::Nf4(q) => q.device().clone(),
            crate::linear::LinearBase::Quantized(q) => q.device(),
        };
        let lora = match &self.loaded {
            Some(loaded) => match loaded.get(path) {
                Some((a, b)) => Lora::from_weights(
                    a.to_device(&device)?.to_dtype(self.adapter_dtype)?,
                    b.to_device(&device)?.to_dtype(self.adapter_dtype)?,
                    cfg.scale(),
                    cfg.dropout,
                    self.control.clone(),
                )?,
                None => return Ok(linear),
            },
            None if cfg.targets.matches(path) => Lora::init(
                linear.in_dim(),
                linear.out_dim(),
                cfg,
                self.adapter_dtype,
                &device,
                &mut self.rng_for(path),
                self.control.clone(),
            )?,
            None => return Ok(linear),
        };
        self.lock().insert(path.to_string(), lora.clone());
        linear.with_lora(lora)
    }
}

/// `base_model.model.<path>.<which>.weight`, PEFT's key for an adapter matrix.
pub fn peft_key(path: &str, which: &str) -> String {
    format!("base_model.model.{path}.{which}.weight")
}

/// Fields of `adapter_config.json` that are not LoRA hyper-parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeftMeta {
    pub base_model_name_or_path: Option<String>,
    /// `CAUSAL_LM`, `SEQ_CLS`, `FEATURE_EXTRACTION`, ...
    pub task_type: Option<String>,
}

/// The subset of PEFT's `adapter_config.json` we read and write.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdapterConfigJson {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    r: usize,
    lora_alpha: serde_json::Value,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default = "bias_none")]
    bias: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    init_lora_weights: serde_json::Value,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: serde_json::Map<String, serde_json::Value>,
}

fn bias_none() -> String {
    "none".to_string()
}

/// An adapter read from a PEFT directory.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: LoraConfig,
    pub meta: PeftMeta,
    /// `(A, B)` by module path.
    pub weights: BTreeMap<String, (Tensor, Tensor)>,
}

impl PeftAdapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir` (on the CPU).
    pub fn load(dir: &Path) -> Result<PeftAdapter> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", cfg_path.display())))?;
        let json: AdapterConfigJson = serde_json::from_str(&text)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", cfg_path.display())))?;
        if json.peft_type != "LORA" {
            candle_core::bail!(
                "{}: peft_type {} is not LORA",
                cfg_path.display(),
                json.peft_type
            );
        }
        // Refuse what we would silently get wrong.
        if json.use_dora || json.fan_in_fan_out || json.bias != "none" {
            candle_core::bail!(
                "{}: DoRA, fan_in_fan_out and trained biases are not supported",
                cfg_path.display()
            );
        }
        if !json.rank_pattern.is_empty() || !json.alpha_pattern.is_empty() {
            candle_core::bail!(
                "{}: rank_pattern/alpha_pattern are not supported",
                cfg_path.display()
            );
        }
        let alpha = json.lora_alpha.as_f64().ok_or_else(|| {
            candle_core::Error::msg("adapter_config.json: lora_alpha is not a number")
        })?;
        let targets = match &json.target_modules {
            Some(serde_json::Value::String(s)) => Targets::parse(s),
            Some(serde_json::Value::Array(v)) => Targets::Names(
                v.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
            ),
            _ => Targets::Names(Vec::new()),
        };
        let file = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)?;
        let mut a_by: HashMap<String, Tensor> = HashMap::new();
        let mut b_by: HashMap<String, Tensor> = HashMap::new();
        for (key, t) in tensors {
            let Some(rest) = key.strip_prefix("base_model.model.") else {
                candle_core::bail!("{}: unexpected key {key}", file.display());
            };
            if let Some(path) = rest.strip_suffix(".lora_A.weight") {
                a_by.insert(path.to_string(), t);
            } else if let Some(path) = rest.strip_suffix(".lora_B.weight") {
                b_by.insert(path.to_string(), t);
            } else {
                candle_core::bail!(
                    "{}: unsupported key {key} (only lora_A/lora_B weights)",
                    file.display()
                );
            }
        }
        let mut weights = BTreeMap::new();
        for (path, a) in a_by {
            let b = b_by.remove(&path).ok_or_else(|| {
                candle_core::Error::msg(format!(
                    "{}: {path} has lora_A but no lora_B",
                    file.display()
                ))
            })?;
            if a.dim(0)? != json.r || b.dim(1)? != json.r {
                candle_core::bail!("{}: {path} does not have rank {}", file.display(), json.r);
            }
            weights.insert(path, (a, b));
        }
        if let Some(path) = b_by.keys().next() {
            candle_core::bail!("{}: {path} has lora_B but no lora_A", file.display());
        }
        Ok(PeftAdapter {
            config: LoraConfig {
                r: json.r,
                alpha,
                dropout: json.lora_dropout as f32,
                use_rslora: json.use_rslora,
                targets,
            },
            meta: PeftMeta {
                base_model_name_or_path: json.base_model_name_or_path,
                task_type: json.task_type,
            },
            weights,
        })
    }
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (f32 or the adapters' dtype)
/// so that `PeftModel.from_pretrained(base, dir)` loads them.
pub fn save_peft(
    dir: &Path,
    cfg: &LoraConfig,
    adapters: &[(String, Lora)],
    meta: &PeftMeta,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| candle_core::Error::msg(format!("{}: {e}", dir.display())))?;
    let targets: Vec<String> = match &cfg.targets {
        Targets::Names(n) => n.clone(),
        // PEFT expands all-linear into the leaf names it adapted.
        Targets::AllLinear => {
            let mut leaves: Vec<String> = adapters
                .iter()
                .map(|(p, _)| p.rsplit('.').next().unwrap_or(p).to_string())
                .collect();
            leaves.sort();
            leaves.dedup();
            leaves
        }
    };
    let alpha = if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 {
        serde_json::json!(cfg.alpha as i64)
    } else {
        serde_json::json!(cfg.alpha)
    };
    let json = AdapterConfigJson {
        peft_type: "LORA".to_string(),
        task_type: meta.task_type.clone(),
        base_model_name_or_path: meta.base_model_name_or_path.clone(),
        r: cfg.r,
        lora_alpha: alpha,
        lora_dropout: f64::from(cfg.dropout),
        target_modules: Some(serde_json::json!(targets)),
        use_rslora: cfg.use_rslora,
        bias: "none".to_string(),
        fan_in_fan_out: false,
        use_dora: false,
        inference_mode: true,
        init_lora_weights: serde_json::json!(true),
        modules_to_save: None,
        rank_pattern: serde_json::Map::new(),
        alpha_pattern: serde_json::Map::new(),
    };
    let text = serde_json::to_string_pretty(&json).map_err(candle_core::Error::wrap)?;
    let cfg_path = dir.join("adapter_config.json");
    std::fs::write(&cfg_path, text)
        .map_err(|e| candle_core::Error::msg(format!("{}: {e}", cfg_path.display())))?;
    let mut tensors = HashMap::new();
    for (path, lora) in adapters {
        tensors.insert(
            peft_key(path, "lora_A"),
            lora.a.as_tensor().to_device(&Device::Cpu)?,
        );
        tensors.insert(
            peft_key(path, "lora_B"),
            lora.b.as_tensor().to_device(&Device::Cpu)?,
        );
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))
}

/// Writes a merged copy of a safetensors checkpoint: each `<path>.weight` with an adapter
/// becomes `W + scale·B·A` in W's dtype (merged from the original weights, also for QLoRA),
/// every other tensor is copied. Shards keep their names, and `model.safetensors.index.json`
/// is copied when present (names do not change). Returns the files written.
pub fn export_merged(
    base_files: &[PathBuf],
    adapters: &[(String, Lora)],
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| candle_core::Error::msg(format!("{}: {e}", out_dir.display())))?;
    let by_weight: HashMap<String, &Lora> = adapters
        .iter()
        .map(|(p, l)| (format!("{p}.weight"), l))
        .collect();
    let mut merged = 0usize;
    let mut written = Vec::new();
    for file in base_files {
        let mut tensors = candle_core::safetensors::load(file, &Device::Cpu)?;
        for (name, t) in tensors.iter_mut() {
            if let Some(lora) = by_weight.get(name) {
                let delta = lora.delta_weight()?.to_device(&Device::Cpu)?;
                *t =
                    (t.to_dtype(DType::F32)? + delta.to_dtype(DType::F32)?)?.to_dtype(t.dtype())?;
                merged += 1;
            }
        }
        let name = file
            .file_name()
            .ok_or_else(|| candle_core::Error::msg(format!("{}: no file name", file.display())))?;
        let out = out_dir.join(name);
        candle_core::safetensors::save(&tensors, &out)?;
        written.push(out);
        if let Some(index) = file
            .parent()
            .map(|d| d.join("model.safetensors.index.json"))
            && index.exists()
        {
            let dst = out_dir.join("model.safetensors.index.json");
            if !dst.exists() {
                std::fs::copy(&index, &dst)
                    .map_err(|e| candle_core::Error::msg(format!("{}: {e}", index.display())))?;
            }
        }
    }
    if merged != adapters.len() {
        candle_core::bail!(
            "export_merged: {} adapter(s) but {merged} weight(s) found in the checkpoint",
            adapters.len()
        );
    }
    Ok(written)
}
