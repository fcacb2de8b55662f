//! Where model code gets its tensors: a candle `VarBuilder` (safetensors checkpoints, or a
//! `VarMap` when training) or a GGUF file. Model files ask for HF names through one type, so the
//! same `load` serves every source; a GGUF source translates names with the architecture's map
//! and keeps block-quantized weights quantized for [`crate::Linear`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::linear::LinearHook;

/// Maps a full HF tensor name to its GGUF name (`None`: the file has no such tensor).
pub type NameMap = dyn Fn(&str) -> Option<String> + Send + Sync;

/// The tensors of one GGUF file, with its metadata.
pub struct GgufStore {
    pub path: PathBuf,
    pub metadata: HashMap<String, gguf_file::Value>,
    tensors: HashMap<String, Arc<QTensor>>,
    rename: Box<NameMap>,
}

impl std::fmt::Debug for GgufStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufStore")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufStore {
    /// Reads every tensor of `path` onto `device` (still quantized).
    pub fn open(path: &Path, device: &Device, rename: Box<NameMap>) -> Result<GgufStore> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| candle_core::Error::msg(format!("{}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            candle_core::Error::msg(format!("{}: not a GGUF file: {e}", path.display()))
        })?;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for name in content.tensor_infos.keys() {
            let t = content.tensor(&mut file, name, device).map_err(|e| {
                candle_core::Error::msg(format!("{}: tensor {name}: {e}", path.display()))
            })?;
            tensors.insert(name.clone(), Arc::new(t));
        }
        Ok(GgufStore {
            path: path.to_path_buf(),
            metadata: content.metadata,
            tensors,
            rename,
        })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The tensor stored under its GGUF name.
    pub fn tensor(&self, gguf_name: &str) -> Option<&Arc<QTensor>> {
        self.tensors.get(gguf_name)
    }

    /// Rewrites tensors after loading, by GGUF name: converters bake conventions into some
    /// tensors (Gemma's `1 + w` norms, llama's interleaved Q/K rows) that HF-layout model code
    /// does not share.
    pub fn map_tensors<F>(&mut self, mut f: F) -> Result<()>
    where
        F: FnMut(&str, Arc<QTensor>) -> Result<Arc<QTensor>>,
    {
        for (name, t) in self.tensors.iter_mut() {
            *t = f(name, t.clone())?;
        }
        Ok(())
    }

    fn lookup(&self, hf_name: &str) -> Option<(String, &Arc<QTensor>)> {
        let gguf_name = (self.rename)(hf_name)?;
        self.tensors.get(&gguf_name).map(|t| (gguf_name, t))
    }
}

#[derive(Clone)]
enum Source<'a> {
    Vb(VarBuilder<'a>),
    Gguf {
        store: Arc<GgufStore>,
        dtype: DType,
        device: Device,
    },
}

/// A view of a weight source at a name prefix (`w.pp("model").pp("layers.0")`).
#[derive(Clone)]
pub struct Weights<'a> {
    source: Source<'a>,
    prefix: Vec<String>,
    /// Sees every `Linear::load` below this view (the training engine's bases and adapters).
    hook: Option<Arc<dyn LinearHook>>,
}

impl<'a> Weights<'a> {
    pub fn from_var_builder(vb: VarBuilder<'a>) -> Weights<'a> {
        Weights {
            source: Source::Vb(vb),
            prefix: Vec::new(),
            hook: None,
        }
    }

    /// Dense tensors come out in `dtype`; quantized linear weights stay quantized.
    pub fn from_gguf(store: Arc<GgufStore>, dtype: DType, device: &Device) -> Weights<'a> {
        Weights {
            source: Source::Gguf {
                store,
                dtype,
                device: device.clone(),
            },
            prefix: Vec::new(),
            hook: None,
        }
    }

    pub fn pp(&self, name: impl ToString) -> Weights<'a> {
        let name = name.to_string();
        match &self.source {
            Source::Vb(vb) => Weights {
                source: Source::Vb(vb.pp(&name)),
                prefix: self.prefix.clone(),
                hook: self.hook.clone(),
            },
            Source::Gguf { .. } => {
                let mut prefix = self.prefix.clone();
                prefix.push(name);
                Weights {
                    source: self.source.clone(),
                    prefix,
                    hook: self.hook.clone(),
                }
            }
        }
    }

    /// Every `Linear::load` below this view goes through `hook` (quantise-on-load, freezing,
    /// LoRA adapters); model code does not change.
    pub fn with_linear_hook(mut self, hook: Arc<dyn LinearHook>) -> Weights<'a> {
        self.hook = Some(hook);
        self
    }

    pub fn linear_hook(&self) -> Option<&Arc<dyn LinearHook>> {
        self.hook.as_ref()
    }

    /// The HF module path of this view (`model.layers.0.self_attn.q_proj`).
    pub fn path(&self) -> String {
        match &self.source {
            Source::Vb(vb) => vb.prefix(),
            Source::Gguf { .. } => self.prefix.join("."),
        }
    }

    fn full_name(&self, name: &str) -> String {
        let mut parts = self.prefix.clone();
        parts.push(name.to_string());
        parts.join(".")
    }

    pub fn dtype(&self) -> DType {
        match &self.source {
            Source::Vb(vb) => vb.dtype(),
            Source::Gguf { dtype, .. } => *dtype,
        }
    }

    pub fn device(&self) -> &Device {
        match &self.source {
            Source::Vb(vb) => vb.device(),
            Source::Gguf { device, .. } => device,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Vb(vb) => vb.contains_tensor(name),
            Source::Gguf { store, .. } => store.lookup(&self.full_name(name)).is_some(),
        }
    }

    /// The tensor `name` with the expected shape, in the source dtype; errors name the tensor.
    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        match &self.source {
            Source::Vb(vb) => vb.get(shape, name),
            Source::Gguf {
                store,
                dtype,
                device,
            } => {
                let shape: Shape = shape.into();
                let q = self.gguf_tensor(store, &shape, name)?;
                q.dequantize(device)?.to_dtype(*dtype)
            }
        }
    }

    /// The tensor as stored, without a shape check (for embeddings whose size a config omits).
    pub fn get_unchecked(&self, name: &str) -> Result<Tensor> {
        match &self.source {
            Source::Vb(vb) => vb.get_unchecked(name),
            Source::Gguf {
                store,
                dtype,
                device,
            } => {
                let full = self.full_name(name);
                let (_, q) = store.lookup(&full).ok_or_else(|| missing(store, &full))?;
                q.dequantize(device)?.to_dtype(*dtype)
            }
        }
    }

    /// A block-quantized GGUF weight (`None` for dense sources and f32/f16/bf16 GGUF tensors).
    pub fn get_quantized<S: Into<Shape>>(
        &self,
        shape: S,
        name: &str,
    ) -> Result<Option<Arc<QTensor>>> {
        let Source::Gguf { store, .. } = &self.source else {
            return Ok(None);
        };
        let q = self.gguf_tensor(store, &shape.into(), name)?;
        Ok(match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => None,
            _ => Some(q.clone()),
        })
    }

    fn gguf_tensor<'s>(
        &self,
        store: &'s GgufStore,
        shape: &Shape,
        name: &str,
    ) -> Result<&'s Arc<QTensor>> {
        let full = self.full_name(name);
        let (gguf_name, q) = store.lookup(&full).ok_or_else(|| missing(store, &full))?;
        if q.shape() != shape {
            candle_core::bail!(
                "{}: shape mismatch for {full} (gguf {gguf_name}): expected {:?}, got {:?}",
                store.path.display(),
                shape.dims(),
                q.shape().dims()
            );
        }
        Ok(q)
    }
}

fn missing(store: &GgufStore, full: &str) -> candle_core::Error {
    let gguf = (store.rename)(full).unwrap_or_else(|| "no GGUF name".to_string());
    candle_core::Error::msg(format!(
        "{}: tensor {full} ({gguf}) not found",
        store.path.display()
    ))
}
