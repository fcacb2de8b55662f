//! What every decoder LM offers the generation loop and the training engine.

use candle_core::{Result, Tensor};
use clinstruct_nn::kv_cache::KvCache;

/// Per-layer key/value caches of one generation.
#[derive(Debug, Clone, Default)]
pub struct LmCache {
    pub layers: Vec<KvCache>,
}

impl LmCache {
    pub fn new(num_layers: usize) -> LmCache {
        LmCache {
            layers: vec![KvCache::new(); num_layers],
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Facts about a decoder that generation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LmInfo {
    pub vocab_size: usize,
    pub num_layers: usize,
    pub max_position_embeddings: usize,
    /// Token ids that end a generation (config `eos_token_id`, one or several).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

pub trait CausalLm {
    /// Logits `(b, L, vocab)` for `input_ids (b, L)`.
    ///
    /// - `attention_mask (b, past + L)`: 1 for real tokens, 0 for padding (left or right), over
    ///   the cached positions and the new ones; `None` means no padding.
    /// - `position_ids (b, L)`: positions of the new tokens (for left-padded batches,
    ///   `cumsum(mask) - 1` as transformers' `generate` computes them).
    /// - `cache`: keys/values of earlier positions, extended in place; `None` for a plain
    ///   full-sequence forward (training, scoring).
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor>;

    /// Logits `(b, 1, vocab)` of the last position only, arguments as [`CausalLm::forward`]:
    /// what generation needs. Decoders override it to skip the LM head on earlier positions
    /// (with a 262k vocabulary that head dominates a long prefill).
    fn forward_last(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor> {
        let logits = self.forward(input_ids, attention_mask, position_ids, cache)?;
        let l = logits.dim(1)?;
        logits.narrow(1, l - 1, 1)
    }

    fn info(&self) -> &LmInfo;

    fn new_cache(&self) -> LmCache {
        LmCache::new(self.info().num_layers)
    }
}
