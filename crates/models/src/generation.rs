//! Text generation over any [`CausalLm`]: greedy and seeded sampling (temperature, top-k,
//! top-p, repetition penalty with transformers' semantics), EOS ids and stop strings, batched
//! prompts of different lengths, streaming text deltas, and timing.
//!
//! Batches are left-padded; the attention mask covers past and new positions and position ids
//! are `cumsum(mask) - 1` (1 on padding), as transformers' `generate` builds them, so a
//! prompt gives the same tokens alone or inside a batch. Finished rows keep stepping with the
//! pad token until every row is done.

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};

use crate::lm::CausalLm;
use crate::tokenizer::{DecodeStream, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("generation: {0}")]
    Invalid(String),
}

pub type Result<T, E = GenerationError> = std::result::Result<T, E>;

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// `0` (or `None`-like values below 1e-5) means greedy decoding.
    pub temperature: f64,
    /// Keep the `k` most likely tokens (ties at the k-th logit kept); `None`/0: off.
    pub top_k: Option<usize>,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `p`; `None`/1: off.
    pub top_p: Option<f64>,
    /// transformers' `repetition_penalty`: logits of tokens already in the sequence (prompt
    /// included) are divided by it when positive, multiplied when negative. `None`/1: off.
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampling RNG; row `i` of a batch uses its own stream `(seed, i)`.
    pub seed: u64,
    /// Generation ends at any of these ids (the id is kept in `token_ids`).
    pub eos_token_ids: Vec<u32>,
    /// Generation ends when the decoded text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Padding id for batches (falls back to the first EOS id, then 0).
    pub pad_token_id: Option<u32>,
    /// Drop special tokens from the returned and streamed text.
    pub skip_special_tokens: bool,
}

impl Default for GenerationConfig {
    fn default() -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            seed: 0,
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            pad_token_id: None,
            skip_special_tokens: true,
        }
    }
}

impl GenerationConfig {
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An EOS id was generated.
    Eos,
    /// A stop string appeared in the text.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

/// One row's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerationOutput {
    /// Generated ids, including the EOS id or the token that completed a stop string.
    pub token_ids: Vec<u32>,
    /// Decoded text, cut before a stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    /// The stop string that ended generation, if any.
    pub stop_string: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenerationStats {
    /// Prompt tokens (padding excluded).
    pub prompt_tokens: usize,
    /// Generated tokens over all rows.
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub prefill_tokens_per_second: f64,
    /// Tokens produced by the decode steps (each row's first token comes from the prefill).
    pub decode_tokens_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generation {
    pub outputs: Vec<GenerationOutput>,
    pub stats: GenerationStats,
}

/// A streamed piece of text of one batch row.
#[derive(Debug, Clone, Copy)]
pub struct TextDelta<'a> {
    pub row: usize,
    pub text: &'a str,
}

// ---------------------------------------------------------------------------------------------
// Sampling

/// SplitMix64: small, seedable and identical on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor` over the ids seen so far.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &id in seen {
        let i = id as usize;
        if i < logits.len() && done.insert(id) {
            let x = logits[i];
            logits[i] = if x < 0.0 { x * penalty } else { x / penalty };
        }
    }
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Picks the next token from one row's logits (already penalised).
pub fn sample(logits: &[f32], cfg: &GenerationConfig, rng: &mut Rng) -> u32 {
    if cfg.is_greedy() {
        return argmax(logits);
    }
    let t = cfg.temperature as f32;
    // Candidates sorted by logit, descending; ties keep the lower id first.
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite() || **x == f32::INFINITY)
        .map(|(i, &x)| (i as u32, x / t))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = cfg.top_k.filter(|&k| k > 0 && k < cand.len()) {
        // TopKLogitsWarper removes logits below the k-th largest value: ties stay.
        let kth = cand[k - 1].1;
        let keep = cand.iter().take_while(|c| c.1 >= kth).count();
        cand.truncate(keep);
    }
    let max = cand.first().map_or(0.0, |c| c.1);
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - max) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
        // TopPLogitsWarper drops tokens whose ascending cumulative mass is <= 1 - p, which in
        // descending order keeps every token up to and including the one reaching p.
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            cum += q;
            if cum >= p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
        cand.truncate(keep.max(1));
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (i, q) in probs.iter().enumerate() {
        cum += q;
        if u < cum {
            return cand[i].0;
        }
    }
    cand.last().map_or(0, |c| c.0)
}

// ---------------------------------------------------------------------------------------------
// Stop strings over streamed text

/// Holds back text that may be the start of a stop string, and cuts at a complete one.
#[derive(Debug, Clone, Default)]
struct StopMatcher {
    stops: Vec<String>,
    /// Text decoded so far (after any cut, the final text).
    text: String,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
}

impl StopMatcher {
    /// Appends `delta`; returns the text that is safe to emit and the stop string, if hit.
    fn push(&mut self, delta: &str) -> (String, Option<String>) {
        let search_from = self
            .emitted
            .saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        self.text.push_str(delta);
        // The earliest complete stop string wins.
        let mut hit: Option<(usize, &String)> = None;
        for s in &self.stops {
            if s.is_empty() {
                continue;
            }
            let from = floor_char_boundary(&self.text, search_from);
            if let Some(p) = self.text[from..].find(s.as_str()) {
                let p = p + from;
                if hit.is_none_or(|(q, _)| p < q) {
                    hit = Some((p, s));
                }
            }
        }
        if let Some((p, s)) = hit {
            let s = s.clone();
            self.text.truncate(p);
            let out = self.text[self.emitted.min(p)..].to_string();
            self.emitted = self.text.len();
            return (out, Some(s));
        }
        // Hold back the longest suffix that is a proper prefix of a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > hold && self.text.ends_with(&s[..i]) {
                    hold = i;
                }
            }
        }
        let upto = self.text.len() - hold;
        let out = if upto > self.emitted {
            self.text[self.emitted..upto].to_string()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(upto);
        (out, None)
    }

    /// Everything not yet emitted.
    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// The loop

struct Row<'t> {
    prompt_len: usize,
    /// Prompt and generated ids (for the repetition penalty).
    seen: Vec<u32>,
    generated: Vec<u32>,
    stream: Option<DecodeStream<'t>>,
    stop: StopMatcher,
    finish: Option<(FinishReason, Option<String>)>,
    rng: Rng,
    next_pos: u32,
}

/// Generates from pre-tokenized prompts (one or more rows of any lengths).
///
/// `on_text` receives text deltas as they become final (UTF-8 complete, not part of a stop
/// string); the concatenated deltas of a row equal its `text`. Without a tokenizer only ids
/// are produced (no text, no streaming, no stop strings).
pub fn generate(
    model: &dyn CausalLm,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    device: &Device,
    mut on_text: Option<&mut dyn FnMut(TextDelta<'_>)>,
) -> Result<Generation> {
    if prompts.is_empty() {
        return Err(GenerationError::Invalid("no prompts".into()));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(GenerationError::Invalid(format!("prompt {i} is empty")));
    }
    if tokenizer.is_none() && !cfg.stop_strings.is_empty() {
        return Err(GenerationError::Invalid(
            "stop strings need a tokenizer".into(),
        ));
    }
    let b = prompts.len();
    let pad = cfg
        .pad_token_id
        .or_else(|| cfg.eos_token_ids.first().copied())
        .unwrap_or(0);
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let padded = prompts.iter().any(|p| p.len() != max_len);

    let mut ids = Vec::with_capacity(b * max_len);
    let mut mask = Vec::with_capacity(b * max_len);
    let mut pos = Vec::with_capacity(b * max_len);
    let mut rows = Vec::with_capacity(b);
    for (i, p) in prompts.iter().enumerate() {
        let n_pad = max_len - p.len();
        ids.extend(std::iter::repeat_n(pad, n_pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0u32, n_pad).chain(std::iter::repeat_n(1, p.len())));
        // cumsum(mask) - 1, with 1 where masked (transformers' masked_fill).
        pos.extend(std::iter::repeat_n(1u32, n_pad).chain(0..p.len() as u32));
        rows.push(Row {
            prompt_len: p.len(),
            seen: p.clone(),
            generated: Vec::new(),
            stream: tokenizer.map(|t| t.decode_stream(cfg.skip_special_tokens)),
            stop: StopMatcher {
                stops: cfg.stop_strings.clone(),
                ..StopMatcher::default()
            },
            finish: None,
            rng: Rng::new(cfg.seed, i as u64),
            next_pos: p.len() as u32,
        });
    }
    let mut mask_all = mask; // grows by one column per step
    let mut cache = model.new_cache();
    let mut stats = GenerationStats {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..GenerationStats::default()
    };
    if cfg.max_new_tokens == 0 {
        let outputs = rows
            .into_iter()
            .map(|_| GenerationOutput {
                token_ids: Vec::new(),
                text: String::new(),
                finish_reason: FinishReason::Length,
                stop_string: None,
            })
            .collect();
        return Ok(Generation { outputs, stats });
    }

    let t0 = Instant::now();
    let input = Tensor::from_vec(ids, (b, max_len), device)?;
    let positions = Tensor::from_vec(pos, (b, max_len), device)?;
    let mask_t = if padded {
        Some(Tensor::from_vec(mask_all.clone(), (b, max_len), device)?)
    } else {
        None
    };
    let logits = model.forward_last(&input, mask_t.as_ref(), &positions, Some(&mut cache))?;
    let mut last = last_logits(&logits)?;
    stats.prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut width = max_len;
    let mut decode_tokens = 0usize;

    for step in 0..cfg.max_new_tokens {
        let mut next = Vec::with_capacity(b);
        for (r, row) in rows.iter_mut().enumerate() {
            if row.finish.is_some() {
                next.push(pad);
                continue;
            }
            let logits_row = &mut last[r];
            if let Some(p) = cfg.repetition_penalty {
                apply_repetition_penalty(logits_row, &row.seen, p);
            }
            let tok = sample(logits_row, cfg, &mut row.rng);
            if step > 0 {
                decode_tokens += 1;
            }
            row.generated.push(tok);
            row.seen.push(tok);
            next.push(tok);
            if cfg.eos_token_ids.contains(&tok) {
                row.finish = Some((FinishReason::Eos, None));
            } else if let Some(delta) = match row.stream.as_mut() {
                Some(s) => s.step(tok)?,
                None => None,
            } {
                let (out, hit) = row.stop.push(&delta);
                emit(&mut on_text, r, &out);
                if let Some(s) = hit {
                    row.finish = Some((FinishReason::Stop, Some(s)));
                }
            }
            if row.finish.is_none() && row.generated.len() >= cfg.max_new_tokens {
                row.finish = Some((FinishReason::Length, None));
            }
            if let Some((reason, _)) = &row.finish
                && *reason != FinishReason::Stop
            {
                // Release held-back bytes and any partial stop-string prefix.
                let rest = match row.stream.as_mut() {
                    Some(s) => s.finish()?,
                    None => None,
                };
                if let Some(rest) = rest {
                    let (out, hit) = row.stop.push(&rest);
                    emit(&mut on_text, r, &out);
                    if hit.is_some() {
                        row.finish = Some((FinishReason::Stop, hit));
                    }
                }
                let out = row.stop.flush();
                emit(&mut on_text, r, &out);
            }
        }
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        // One new position for every row; finished rows feed padding that nothing reads.
        width += 1;
        let mut new_mask = Vec::with_capacity(b * width);
        for r in 0..b {
            new_mask.extend_from_slice(&mask_all[r * (width - 1)..(r + 1) * (width - 1)]);
            new_mask.push(1);
        }
        mask_all = new_mask;
        let step_pos: Vec<u32> = rows
            .iter_mut()
            .map(|row| {
                let p = row.next_pos;
                row.next_pos += 1;
                p
            })
            .collect();
        let input = Tensor::from_vec(next, (b, 1), device)?;
        let positions = Tensor::from_vec(step_pos, (b, 1), device)?;
        let mask_t = if padded {
            Some(Tensor::from_vec(mask_all.clone(), (b, width), device)?)
        } else {
            None
        };
        let logits = model.forward_last(&input, mask_t.as_ref(), &positions, Some(&mut cache))?;
        last = last_logits(&logits)?;
    }
    stats.decode_seconds = t1.elapsed().as_secs_f64();

    let mut outputs = Vec::with_capacity(b);
    for row in rows {
        let (finish_reason, stop_string) = row.finish.unwrap_or((FinishReason::Length, None));
        debug_assert!(row.prompt_len > 0);
        stats.generated_tokens += row.generated.len();
        outputs.push(GenerationOutput {
            token_ids: row.generated,
            text: row.stop.text,
            finish_reason,
            stop_string,
        });
    }
    stats.prefill_tokens_per_second = rate(stats.prompt_tokens, stats.prefill_seconds);
    stats.decode_tokens_per_second = rate(decode_tokens, stats.decode_seconds);
    Ok(Generation { outputs, stats })
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn emit(on_text: &mut Option<&mut dyn FnMut(TextDelta<'_>)>, row: usize, text: &str) {
    if !text.is_empty()
        && let Some(f) = on_text.as_mut()
    {
        f(TextDelta { row, text });
    }
}

/// The last position's logits of every row, as f32 vectors.
fn last_logits(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let l = logits.dim(1)?;
    let last = logits.narrow(1, l - 1, 1)?.squeeze(1)?;
    Ok(last.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// Greedy next tokens of a full-sequence forward, for scoring without a cache.
pub fn greedy_next(logits: &Tensor) -> Result<Vec<u32>> {
    let l = logits.dim(1)?;
    let last = logits.narrow(1, l - 1, 1)?.squeeze(1)?;
    Ok(last.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_top_p_and_greedy() {
        let logits = vec![1.0, 3.0, 2.0, 3.0, -1.0];
        let greedy = GenerationConfig::default();
        assert_eq!(sample(&logits, &greedy, &mut Rng::new(0, 0)), 1);
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_k: Some(1),
            ..GenerationConfig::default()
        };
        // Ties at the k-th value stay: ids 1 and 3 only.
        for s in 0..50 {
            let t = sample(&logits, &cfg, &mut Rng::new(s, 0));
            assert!(t == 1 || t == 3);
        }
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_p: Some(0.1),
            ..GenerationConfig::default()
        };
        for s in 0..50 {
            assert_eq!(
                sample(&logits, &cfg, &mut Rng::new(s, 0)),
                1,
                "top-p keeps one"
            );
        }
        let cfg = GenerationConfig {
            temperature: 0.7,
            ..GenerationConfig::default()
        };
        let a: Vec<u32> = (0..20)
            .map(|s| sample(&logits, &cfg, &mut Rng::new(s, 0)))
            .collect();
        let b: Vec<u32> = (0..20)
            .map(|s| sample(&logits, &cfg, &mut Rng::new(s, 0)))
            .collect();
        assert_eq!(a, b);
        assert!(
            a.iter().any(|&t| t != a[0]),
            "sampling varies with the seed"
        );
    }

    #[test]
    fn sampling_frequencies_follow_softmax() {
        let logits = vec![0.0, (2.0f32).ln(), (3.0f32).ln()];
        let cfg = GenerationConfig {
            temperature: 1.0,
            ..GenerationConfig::default()
        };
        let mut rng = Rng::new(7, 0);
        let mut counts = [0usize; 3];
        for _ in 0..60_000 {
            counts[sample(&logits, &cfg, &mut rng) as usize] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = (i + 1) as f64 / 6.0;
            assert!((*c as f64 / 60_000.0 - want).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn stop_matcher_holds_back_prefixes_and_cuts() {
        let mut m = StopMatcher {
            stops: vec!["END".into(), "\n\n".into()],
            ..StopMatcher::default()
        };
        assert_eq!(m.push("abc E"), ("abc ".into(), None));
        assert_eq!(m.push("N"), (String::new(), None));
        assert_eq!(m.push("Xx"), ("ENXx".into(), None));
        assert_eq!(m.push("y\n"), ("y".into(), None));
        assert_eq!(m.push("\nzzz"), (String::new(), Some("\n\n".into())));
        assert_eq!(m.text, "abc ENXxy");
        let mut m = StopMatcher {
            stops: vec!["END".into()],
            ..StopMatcher::default()
        };
        assert_eq!(m.push("xE"), ("x".into(), None));
        assert_eq!(m.flush(), "E");
    }
}
