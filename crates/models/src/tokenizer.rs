//! Tokenizers: the hub's `tokenizer.json` (through the `tokenizers` crate) and the vocabulary
//! embedded in a GGUF file (`tokenizer.ggml.*`).
//!
//! A GGUF `gpt2` vocabulary becomes a byte-level BPE `tokenizers` pipeline; a `llama`
//! (SentencePiece) vocabulary is tokenized with llama.cpp's own algorithm (score-ordered bigram
//! merges with byte fallback), so ids match the runtime the file was made for.
//! Special ids come from `tokenizer_config.json`, `config.json` and `generation_config.json`
//! (or the GGUF metadata); [`DecodeStream`] turns generated ids into text deltas that never end
//! inside a UTF-8 character or a byte-fallback sequence.

use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as GgufValue;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::sequence::Sequence as ProcessorSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::tokenizer::SplitDelimiterBehavior;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::chat_template::ChatTemplates;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Load { path: PathBuf, message: String },
    #[error("GGUF tokenizer: {0}")]
    Gguf(String),
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

fn tk_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// Special tokens and the ids generation stops on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<(String, u32)>,
    pub eos: Option<(String, u32)>,
    pub pad: Option<(String, u32)>,
    pub unk: Option<(String, u32)>,
    /// Every id that ends a generation: the tokenizer's eos plus `config.json` /
    /// `generation_config.json` `eos_token_id` (one or a list), deduplicated, in that order.
    pub eos_ids: Vec<u32>,
}

enum Backend {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Box<SpmTokenizer>),
}

/// A loaded tokenizer with its special tokens and chat templates.
pub struct Tokenizer {
    backend: Backend,
    special: SpecialTokens,
    templates: ChatTemplates,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field(
                "backend",
                &match self.backend {
                    Backend::Hf(_) => "tokenizer.json",
                    Backend::Spm(_) => "gguf-spm",
                },
            )
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| TokenizerError::Load {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// `"<s>"` or `{"content": "<s>", ...}` (both appear in tokenizer_config.json).
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `eos_token_id` as one id or a list.
fn id_list(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|n| vec![n as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn push_unique(ids: &mut Vec<u32>, id: u32) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` alone (no special-token config, no chat template).
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let tok = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Tokenizer {
            backend: Backend::Hf(Box::new(tok)),
            special: SpecialTokens::default(),
            templates: ChatTemplates::default(),
        })
    }

    /// Loads `dir/tokenizer.json` with `tokenizer_config.json`, `config.json` and
    /// `generation_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TokenizerError::Load {
                path: dir.to_path_buf(),
                message: "missing tokenizer.json".into(),
            });
        }
        let opt = |name: &str| {
            let p = dir.join(name);
            p.is_file().then_some(p)
        };
        Tokenizer::from_files(
            &path,
            opt("tokenizer_config.json").as_deref(),
            opt("config.json").as_deref(),
            opt("generation_config.json").as_deref(),
        )
    }

    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        config: Option<&Path>,
        generation_config: Option<&Path>,
    ) -> Result<Tokenizer> {
        let mut tok = Tokenizer::from_file(tokenizer_json)?;
        let tc = tokenizer_config.map(read_json).transpose()?;
        let mc = config.map(read_json).transpose()?;
        let gc = generation_config.map(read_json).transpose()?;
        let named = |key: &str| -> Option<(String, u32)> {
            let s = token_string(tc.as_ref()?.get(key))?;
            let id = tok.token_to_id(&s)?;
            Some((s, id))
        };
        // A model config's id stands in when the tokenizer config names no token.
        let by_id = |key: &str| -> Option<(String, u32)> {
            let id = [mc.as_ref(), gc.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|c| id_list(c.get(key)).first().copied())?;
            Some((tok.id_to_token(id)?, id))
        };
        let mut special = SpecialTokens {
            bos: named("bos_token").or_else(|| by_id("bos_token_id")),
            eos: named("eos_token").or_else(|| by_id("eos_token_id")),
            pad: named("pad_token").or_else(|| by_id("pad_token_id")),
            unk: named("unk_token"),
            eos_ids: Vec::new(),
        };
        if let Some((_, id)) = &special.eos {
            special.eos_ids.push(*id);
        }
        for c in [mc.as_ref(), gc.as_ref()].into_iter().flatten() {
            for id in id_list(c.get("eos_token_id")) {
                push_unique(&mut special.eos_ids, id);
            }
        }
        if let Some(tc) = &tc {
            tok.templates = ChatTemplates::from_tokenizer_config(tc).map_err(|message| {
                TokenizerError::Load {
                    path: tokenizer_config.unwrap_or(tokenizer_json).to_path_buf(),
                    message,
                }
            })?;
        }
        // A separate chat_template.jinja (newer checkpoints) wins over the config's.
        if let Some(dir) = tokenizer_json.parent() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                let text =
                    std::fs::read_to_string(&jinja).map_err(|source| TokenizerError::Io {
                        path: jinja.clone(),
                        source,
                    })?;
                tok.templates.set_default(text);
            }
        }
        tok.special = special;
        Ok(tok)
    }

    /// Builds the tokenizer a GGUF file embeds (`tokenizer.ggml.model` `llama` or `gpt2`).
    pub fn from_gguf(metadata: &HashMap<String, GgufValue>) -> Result<Tokenizer> {
        let g = GgufMeta(metadata);
        let model = g.string("tokenizer.ggml.model")?;
        let tokens = g.strings("tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let types = match metadata.get("tokenizer.ggml.token_type") {
            Some(v) => gguf_ints(v, "tokenizer.ggml.token_type")?,
            None => vec![TOKEN_NORMAL; n],
        };
        if types.len() != n {
            return Err(TokenizerError::Gguf(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            )));
        }
        let id = |key: &str| -> Result<Option<u32>> {
            match metadata.get(key) {
                None => Ok(None),
                Some(v) => {
                    let id = gguf_int(v).ok_or_else(|| {
                        TokenizerError::Gguf(format!("{key} is not an integer: {v:?}"))
                    })?;
                    // llama.cpp writes -1 / out-of-range ids for "none".
                    Ok((id >= 0 && (id as usize) < n).then_some(id as u32))
                }
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        let eot_id = id("tokenizer.ggml.eot_token_id")?;
        let pad_id = id("tokenizer.ggml.padding_token_id")?;
        let unk_id = id("tokenizer.ggml.unknown_token_id")?;
        let add_bos = g.bool_or("tokenizer.ggml.add_bos_token", model == "llama")?;
        let add_eos = g.bool_or("tokenizer.ggml.add_eos_token", false)?;
        let backend = match model.as_str() {
            "llama" => {
                let scores = match metadata.get("tokenizer.ggml.scores") {
                    Some(v) => gguf_floats(v, "tokenizer.ggml.scores")?,
                    None => vec![0.0; n],
                };
                let add_space_prefix = g.bool_or("tokenizer.ggml.add_space_prefix", true)?;
                Backend::Spm(Box::new(SpmTokenizer::new(
                    tokens.clone(),
                    scores,
                    types.clone(),
                    add_space_prefix,
                    add_bos.then_some(bos_id).flatten(),
                    add_eos.then_some(eos_id).flatten(),
                    unk_id,
                )?))
            }
            "gpt2" => {
                let merges = g.strings("tokenizer.ggml.merges")?;
                let pre = g.string_or("tokenizer.ggml.pre", "default")?;
                Backend::Hf(Box::new(gpt2_from_gguf(
                    &tokens,
                    &types,
                    &merges,
                    &pre,
                    add_bos.then_some(bos_id).flatten(),
                    add_eos.then_some(eos_id).flatten(),
                )?))
            }
            other => {
                return Err(TokenizerError::Gguf(format!(
                    "unsupported tokenizer.ggml.model `{other}` (supported: llama, gpt2)"
                )));
            }
        };
        let named = |id: Option<u32>| id.map(|i| (tokens[i as usize].clone(), i));
        let mut eos_ids = Vec::new();
        for i in [eos_id, eot_id].into_iter().flatten() {
            push_unique(&mut eos_ids, i);
        }
        // llama.cpp also ends generation at end-of-turn control tokens it finds by text
        // (Gemma's <end_of_turn>, Llama 3's <|eot_id|>), which chat models emit instead of EOS.
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == TOKEN_CONTROL && EOT_TEXTS.contains(&t.as_str()) {
                push_unique(&mut eos_ids, i as u32);
            }
        }
        let mut templates = ChatTemplates::default();
        if let Some(t) = metadata.get("tokenizer.chat_template") {
            let t = t.to_string().map_err(|_| {
                TokenizerError::Gguf("tokenizer.chat_template is not a string".into())
            })?;
            templates.set_default(t.clone());
        }
        Ok(Tokenizer {
            backend,
            special: SpecialTokens {
                bos: named(bos_id),
                eos: named(eos_id),
                pad: named(pad_id),
                unk: named(unk_id),
                eos_ids,
            },
            templates,
        })
    }

    /// Token ids of `text`; with `add_special_tokens`, the model's BOS/EOS as its post-processor
    /// adds them. Special tokens written in `text` are always recognised (transformers' default).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf(t) => Ok(t
                .encode(text, add_special_tokens)
                .map_err(tk_err)?
                .get_ids()
                .to_vec()),
            Backend::Spm(t) => Ok(t.encode(text, add_special_tokens)),
        }
    }

    pub fn encode_batch(&self, texts: &[&str], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        match &self.backend {
            Backend::Hf(t) => Ok(t
                .encode_batch(texts.to_vec(), add_special_tokens)
                .map_err(tk_err)?
                .into_iter()
                .map(|e| e.get_ids().to_vec())
                .collect()),
            Backend::Spm(t) => Ok(texts
                .iter()
                .map(|s| t.encode(s, add_special_tokens))
                .collect()),
        }
    }

    /// Text of `ids`; invalid UTF-8 from byte pieces becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        match &self.backend {
            Backend::Hf(t) => t.decode(ids, skip_special_tokens).map_err(tk_err),
            Backend::Spm(t) => Ok(t.decode(ids, skip_special_tokens)),
        }
    }

    /// Incremental decoder for streaming generated ids.
    pub fn decode_stream(&self, skip_special_tokens: bool) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf(t) => t.token_to_id(token),
            Backend::Spm(t) => t.token_to_id.get(token).copied(),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::Spm(t) => t.tokens.get(id as usize).cloned(),
        }
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Spm(t) => t.tokens.len(),
        }
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn special_tokens_mut(&mut self) -> &mut SpecialTokens {
        &mut self.special
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.special.bos.as_ref().map(|t| t.1)
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.special.eos_ids
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.special.pad.as_ref().map(|t| t.1)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.special.bos.as_ref().map(|t| t.0.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.special.eos.as_ref().map(|t| t.0.as_str())
    }

    pub fn chat_templates(&self) -> &ChatTemplates {
        &self.templates
    }

    pub fn chat_templates_mut(&mut self) -> &mut ChatTemplates {
        &mut self.templates
    }

    /// The underlying `tokenizers` pipeline (`None` for GGUF SentencePiece vocabularies).
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.backend {
            Backend::Hf(t) => Some(t),
            Backend::Spm(_) => None,
        }
    }
}

/// Generated ids to text deltas. Text is emitted only once it is stable: a delta never ends in
/// the middle of a UTF-8 character or of a byte-fallback sequence (decoding it would end in
/// U+FFFD), and leading-space handling of the decoder is applied as for the whole sequence.
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl DecodeStream<'_> {
    /// Adds one id; returns the new text, if any is complete.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && let Some(delta) = full.strip_prefix(prefix.as_str())
        {
            // Keep one token of left context: decoders that drop a leading space (Metaspace,
            // SentencePiece) decode it as they would inside the full sequence.
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(Some(delta.to_string()));
        }
        Ok(None)
    }

    /// Whatever is still held back (an incomplete byte sequence decodes to U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(d) => d.to_string(),
            None => full,
        };
        Ok((!delta.is_empty()).then_some(delta))
    }

    /// Every id stepped so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata helpers

// llama.cpp's token types (llama_token_type).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_BYTE: i64 = 6;

const EOT_TEXTS: [&str; 7] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
];

struct GgufMeta<'a>(&'a HashMap<String, GgufValue>);

impl GgufMeta<'_> {
    fn get(&self, key: &str) -> Result<&GgufValue> {
        self.0
            .get(key)
            .ok_or_else(|| TokenizerError::Gguf(format!("missing metadata key {key}")))
    }
    fn string(&self, key: &str) -> Result<String> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|_| TokenizerError::Gguf(format!("{key} is not a string")))
    }
    fn string_or(&self, key: &str, default: &str) -> Result<String> {
        if self.0.contains_key(key) {
            self.string(key)
        } else {
            Ok(default.to_string())
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .to_bool()
                .map_err(|_| TokenizerError::Gguf(format!("{key} is not a bool"))),
        }
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|_| TokenizerError::Gguf(format!("{key} is not an array")))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|_| TokenizerError::Gguf(format!("{key}: element is not a string")))
            })
            .collect()
    }
}

fn gguf_int(v: &GgufValue) -> Option<i64> {
    use GgufValue::*;
    Some(match v {
        U8(x) => *x as i64,
        I8(x) => *x as i64,
        U16(x) => *x as i64,
        I16(x) => *x as i64,
        U32(x) => *x as i64,
        I32(x) => *x as i64,
        U64(x) => *x as i64,
        I64(x) => *x,
        _ => return None,
    })
}

fn gguf_ints(v: &GgufValue, key: &str) -> Result<Vec<i64>> {
    let arr = v
        .to_vec()
        .map_err(|_| TokenizerError::Gguf(format!("{key} is not an array")))?;
    arr.iter()
        .map(|x| gguf_int(x).ok_or_else(|| TokenizerError::Gguf(format!("{key}: not an integer"))))
        .collect()
}

fn gguf_floats(v: &GgufValue, key: &str) -> Result<Vec<f32>> {
    let arr = v
        .to_vec()
        .map_err(|_| TokenizerError::Gguf(format!("{key} is not an array")))?;
    arr.iter()
        .map(|x| match x {
            GgufValue::F32(f) => Ok(*f),
            GgufValue::F64(f) => Ok(*f as f32),
            _ => Err(TokenizerError::Gguf(format!("{key}: not a float"))),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// GGUF `gpt2`: byte-level BPE in a tokenizers pipeline

// llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), by `tokenizer.ggml.pre`.
const REGEX_GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_regex(pre: &str) -> Result<&'static str> {
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" | "starcoder" | "refact" | "olmo" | "jais" | "poro-chat"
        | "viking" => REGEX_GPT2,
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "pixtral" | "lfm2" => {
            REGEX_LLAMA3
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" => REGEX_QWEN2,
        "tekken" => REGEX_TEKKEN,
        other => {
            return Err(TokenizerError::Gguf(format!(
                "unsupported tokenizer.ggml.pre `{other}` for a gpt2 vocabulary \
                 (supported: default/gpt-2, llama-bpe/llama3/smaug-bpe, qwen2, tekken)"
            )));
        }
    })
}

fn gpt2_from_gguf(
    tokens: &[String],
    types: &[i64],
    merges: &[String],
    pre: &str,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<tokenizers::Tokenizer> {
    let regex = pre_regex(pre)?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Gguf(format!("invalid merge `{m}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tk_err)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tk_err)?;
    let pre_tok: PreTokenizerWrapper = PreSequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])
    .into();
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevel::new(false, false, false)));
    let byte_level: PostProcessorWrapper = ByteLevel::new(false, false, false).into();
    let mut steps = vec![byte_level];
    if let Some(t) = template_processing(tokens, bos, eos)? {
        steps.push(t);
    }
    tok.with_post_processor(Some(PostProcessorWrapper::Sequence(
        ProcessorSequence::new(steps),
    )));
    // Control and unknown tokens are special (skipped by skip_special_tokens); user-defined
    // ones are matched in text but decoded as text, as llama.cpp does.
    let mut added = Vec::new();
    for (t, ty) in tokens.iter().zip(types) {
        let special = matches!(*ty, TOKEN_CONTROL | TOKEN_UNKNOWN);
        if special || *ty == TOKEN_USER_DEFINED {
            added.push(AddedToken::from(t.clone(), special).normalized(false));
        }
    }
    let specials: Vec<_> = added.iter().filter(|t| t.special).cloned().collect();
    let users: Vec<_> = added.into_iter().filter(|t| !t.special).collect();
    tok.add_special_tokens(specials).map_err(tk_err)?;
    tok.add_tokens(users).map_err(tk_err)?;
    Ok(tok)
}

fn template_processing(
    tokens: &[String],
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Option<PostProcessorWrapper>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    if let Some(b) = bos {
        let t = tokens[b as usize].clone();
        single.push(t.clone());
        pair.push(t.clone());
        specials.push((t, b));
    }
    single.push("$A".to_string());
    pair.push("$A".to_string());
    if let Some(e) = eos {
        let t = tokens[e as usize].clone();
        single.push(t.clone());
        pair.push(t.clone());
        specials.push((t, e));
    }
    pair.push("$B:1".to_string());
    let t = TemplateProcessing::builder()
        .try_single(single)
        .map_err(tk_err)?
        .try_pair(pair)
        .map_err(tk_err)?
        .special_tokens(specials)
        .build()
        .map_err(tk_err)?;
    Ok(Some(PostProcessorWrapper::Template(t)))
}

// ---------------------------------------------------------------------------------------------
// GGUF `llama`: SentencePiece vocabulary, tokenized as llama.cpp does

struct SpmTokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i64>,
    token_to_id: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    /// Control, user-defined and unknown tokens, longest first: matched in raw text before
    /// the bigram merges (llama.cpp's `tokenizer_st_partition`).
    specials: Vec<u32>,
    add_space_prefix: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    // Highest score first; ties go to the leftmost pair.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

impl SpmTokenizer {
    fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i64>,
        add_space_prefix: bool,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
    ) -> Result<SpmTokenizer> {
        if scores.len() != tokens.len() {
            return Err(TokenizerError::Gguf(format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                tokens.len()
            )));
        }
        let mut token_to_id = HashMap::with_capacity(tokens.len());
        let mut byte_ids = [None; 256];
        let mut specials = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            // The first id wins for duplicate texts, as in llama.cpp's map insertion.
            token_to_id.entry(t.clone()).or_insert(i as u32);
            match types[i] {
                TOKEN_BYTE => {
                    if let Some(b) = parse_byte_token(t) {
                        byte_ids[b as usize] = Some(i as u32);
                    }
                }
                TOKEN_CONTROL | TOKEN_USER_DEFINED | TOKEN_UNKNOWN if !t.is_empty() => {
                    specials.push(i as u32)
                }
                _ => {}
            }
        }
        // Some vocabularies mark byte pieces as normal tokens.
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = token_to_id.get(&format!("<0x{b:02X}>")).copied();
            }
        }
        specials.sort_by(|a, b| {
            tokens[*b as usize]
                .len()
                .cmp(&tokens[*a as usize].len())
                .then(a.cmp(b))
        });
        Ok(SpmTokenizer {
            tokens,
            scores,
            types,
            token_to_id,
            byte_ids,
            specials,
            add_space_prefix,
            bos,
            eos,
            unk,
        })
    }

    fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let needle = self.tokens[id as usize].as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
            {
                continue;
            }
            let mut out = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(pos) = t.find(needle) {
                            if pos > 0 {
                                out.push(Fragment::Text(&t[..pos]));
                            }
                            out.push(Fragment::Token(id));
                            t = &t[pos + needle.len()..];
                        }
                        if !t.is_empty() {
                            out.push(Fragment::Text(t));
                        }
                    }
                    tok => out.push(tok),
                }
            }
            frags = out;
        }
        frags
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        if add_special_tokens && let Some(b) = self.bos {
            out.push(b);
        }
        for frag in self.partition(text) {
            match frag {
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && prev_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    let s = s.replace(' ', "\u{2581}");
                    self.encode_piece(&s, &mut out);
                    prev_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
            }
        }
        if add_special_tokens && let Some(e) = self.eos {
            out.push(e);
        }
        out
    }

    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                symbols[i - 1].next = Some(i);
            }
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<&str, (usize, usize)> = HashMap::new();
        for i in 1..symbols.len() {
            self.try_add_bigram(
                text,
                Some(i - 1),
                Some(i),
                &symbols,
                &mut queue,
                &mut rev_merge,
            );
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            let prev = symbols[b.left].prev;
            let next = symbols[b.left].next;
            self.try_add_bigram(
                text,
                prev,
                Some(b.left),
                &symbols,
                &mut queue,
                &mut rev_merge,
            );
            self.try_add_bigram(
                text,
                Some(b.left),
                next,
                &symbols,
                &mut queue,
                &mut rev_merge,
            );
        }
        let mut i = Some(0);
        while let Some(idx) = i {
            let s = symbols[idx];
            self.resegment(text, &symbols, s.start, s.len, &rev_merge, out);
            i = s.next;
        }
    }

    fn try_add_bigram<'t>(
        &self,
        text: &'t str,
        left: Option<usize>,
        right: Option<usize>,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Bigram>,
        rev_merge: &mut HashMap<&'t str, (usize, usize)>,
    ) {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let start = symbols[l].start;
        let size = symbols[l].len + symbols[r].len;
        let piece = &text[start..start + size];
        let Some(&id) = self.token_to_id.get(piece) else {
            return;
        };
        queue.push(Bigram {
            score: self.scores[id as usize],
            left: l,
            right: r,
            size,
        });
        rev_merge.insert(piece, (l, r));
    }

    fn resegment(
        &self,
        text: &str,
        symbols: &[Symbol],
        start: usize,
        len: usize,
        rev_merge: &HashMap<&str, (usize, usize)>,
        out: &mut Vec<u32>,
    ) {
        let piece = &text[start..start + len];
        if let Some(&id) = self.token_to_id.get(piece) {
            out.push(id);
            return;
        }
        match rev_merge.get(piece) {
            Some(&(l, r)) => {
                // The halves as they were when this pair was queued.
                let ls = symbols[l].start;
                let llen = symbols[r].start - ls;
                self.resegment(text, symbols, ls, llen, rev_merge, out);
                self.resegment(text, symbols, symbols[r].start, len - llen, rev_merge, out);
            }
            None => {
                out.extend(
                    piece
                        .bytes()
                        .filter_map(|b| self.byte_ids[b as usize].or(self.unk)),
                );
            }
        }
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(t) = self.tokens.get(id as usize) else {
                continue;
            };
            match self.types[id as usize] {
                TOKEN_BYTE => match parse_byte_token(t) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(t.as_bytes()),
                },
                TOKEN_CONTROL | TOKEN_UNKNOWN if skip_special_tokens => {}
                TOKEN_CONTROL | TOKEN_UNKNOWN | TOKEN_USER_DEFINED => {
                    bytes.extend_from_slice(t.as_bytes())
                }
                _ => bytes.extend_from_slice(t.replace('\u{2581}', " ").as_bytes()),
            }
        }
        let mut s = String::from_utf8_lossy(&bytes).into_owned();
        // With a space prefix added on encode, decoding drops the first leading space.
        if self.add_space_prefix && s.starts_with(' ') {
            s.remove(0);
        }
        s
    }
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
