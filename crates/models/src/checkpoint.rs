//! Finding and opening a checkpoint: a local directory, a single safetensors/GGUF file, or a hub
//! id resolved through the local Hugging Face cache (and downloaded with the `hub-download`
//! feature). Errors name the path and the missing piece.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use clinstruct_nn::Weights;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0}: no such file or directory, and not a model id in the local Hugging Face cache")]
    NotFound(String),
    #[error("{}: missing {what}", .dir.display())]
    Missing { dir: PathBuf, what: String },
    #[error("{}: invalid JSON: {message}", .path.display())]
    BadJson { path: PathBuf, message: String },
    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// A Hugging Face style model directory (or a single weight file).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// `config.json`, when present (GGUF files carry their config inside).
    pub config: Option<serde_json::Value>,
    pub safetensors: Vec<PathBuf>,
    pub gguf: Option<PathBuf>,
    pub tokenizer_json: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::BadJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn existing(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = dir.join(name);
    p.is_file().then_some(p)
}

impl Checkpoint {
    /// `spec`: a directory, a `.safetensors` or `.gguf` file, or a hub id (`org/name`).
    pub fn resolve(spec: &str) -> Result<Checkpoint> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Checkpoint::open_dir(path);
        }
        if path.is_file() {
            return Checkpoint::open_file(path);
        }
        if let Some(dir) = hub_snapshot(spec) {
            return Checkpoint::open_dir(&dir);
        }
        Err(CheckpointError::NotFound(spec.to_string()))
    }

    pub fn open_file(path: &Path) -> Result<Checkpoint> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let mut c = Checkpoint {
            config: existing(&dir, "config.json")
                .map(|p| read_json(&p))
                .transpose()?,
            tokenizer_json: existing(&dir, "tokenizer.json"),
            tokenizer_config: existing(&dir, "tokenizer_config.json"),
            dir,
            safetensors: Vec::new(),
            gguf: None,
        };
        match ext {
            "gguf" => c.gguf = Some(path.to_path_buf()),
            "safetensors" => c.safetensors = vec![path.to_path_buf()],
            _ => {
                return Err(CheckpointError::Invalid {
                    path: path.to_path_buf(),
                    message: "expected a model directory, a .safetensors or a .gguf file".into(),
                });
            }
        }
        Ok(c)
    }

    pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let config_path = existing(dir, "config.json");
        let index = existing(dir, "model.safetensors.index.json");
        let safetensors = if let Some(index) = index {
            // Sharded checkpoints list their shards in the index's weight map.
            let v = read_json(&index)?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| CheckpointError::Invalid {
                    path: index.clone(),
                    message: "no \"weight_map\" object".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            let mut paths = Vec::with_capacity(shards.len());
            for s in shards {
                let p = dir.join(&s);
                if !p.is_file() {
                    return Err(CheckpointError::Missing {
                        dir: dir.to_path_buf(),
                        what: format!("shard {s} listed in model.safetensors.index.json"),
                    });
                }
                paths.push(p);
            }
            paths
        } else if let Some(p) = existing(dir, "model.safetensors") {
            vec![p]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| CheckpointError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            found.sort();
            found
        };
        let gguf = if safetensors.is_empty() {
            std::fs::read_dir(dir).ok().and_then(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|e| e == "gguf"))
            })
        } else {
            None
        };
        if safetensors.is_empty() && gguf.is_none() {
            return Err(CheckpointError::Missing {
                dir: dir.to_path_buf(),
                what: "weights (model.safetensors, a sharded index, or a .gguf file)".into(),
            });
        }
        if config_path.is_none() && gguf.is_none() {
            return Err(CheckpointError::Missing {
                dir: dir.to_path_buf(),
                what: "config.json".into(),
            });
        }
        Ok(Checkpoint {
            config: config_path.map(|p| read_json(&p)).transpose()?,
            tokenizer_json: existing(dir, "tokenizer.json"),
            tokenizer_config: existing(dir, "tokenizer_config.json"),
            dir: dir.to_path_buf(),
            safetensors,
            gguf,
        })
    }

    /// `config.json` or an error naming the directory.
    pub fn config(&self) -> Result<&serde_json::Value> {
        self.config
            .as_ref()
            .ok_or_else(|| CheckpointError::Missing {
                dir: self.dir.clone(),
                what: "config.json".into(),
            })
    }

    /// The first entry of `architectures`, else `model_type`.
    pub fn architecture(&self) -> Option<String> {
        let c = self.config.as_ref()?;
        c.get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .or_else(|| c.get("model_type").and_then(|m| m.as_str()))
            .map(str::to_string)
    }

    /// Memory-maps the safetensors shards; tensors convert to `dtype` on load.
    pub fn weights(&self, dtype: DType, device: &Device) -> Result<Weights<'static>> {
        if self.safetensors.is_empty() {
            return Err(CheckpointError::Missing {
                dir: self.dir.clone(),
                what: "safetensors weights".into(),
            });
        }
        for p in &self.safetensors {
            // Fail early with the file's name: candle's mmap error does not always carry it.
            let bytes = std::fs::read(p).map_err(|source| CheckpointError::Io {
                path: p.clone(),
                source,
            })?;
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                CheckpointError::Invalid {
                    path: p.clone(),
                    message: format!("corrupt safetensors file: {e}"),
                }
            })?;
        }
        // SAFETY: the files are opened read-only and not modified while the model lives; this
        // is how every candle model loads checkpoints without copying them.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&self.safetensors, dtype, device)? };
        Ok(Weights::from_var_builder(vb))
    }
}

/// The snapshot directory of `repo_id` in the local HF cache, if `config.json` or a GGUF is there.
fn hub_snapshot(repo_id: &str) -> Option<PathBuf> {
    if !repo_id.contains('/') || repo_id.starts_with('/') || repo_id.starts_with('.') {
        return None;
    }
    let repo = hf_hub::Cache::from_env().model(repo_id.to_string());
    if let Some(p) = repo.get("config.json") {
        return p.parent().map(Path::to_path_buf);
    }
    download(repo_id)
}

#[cfg(feature = "hub-download")]
fn download(repo_id: &str) -> Option<PathBuf> {
    let api = hf_hub::api::sync::Api::new().ok()?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").ok()?;
    let info = repo.info().ok()?;
    for s in info.siblings {
        let f = s.rfilename;
        if f.ends_with(".safetensors") || f.ends_with(".json") || f == "tokenizer.model" {
            repo.get(&f).ok()?;
        }
    }
    config.parent().map(Path::to_path_buf)
}

#[cfg(not(feature = "hub-download"))]
fn download(_repo_id: &str) -> Option<PathBuf> {
    None
}
