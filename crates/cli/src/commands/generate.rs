//! `clinstruct generate`: text from a decoder LM (an HF model directory or a GGUF file), streamed
//! to stdout, or as JSON with token ids, finish reason and timing.
//!
//! Prompts may hold patient data: logs (stderr) give token counts and a fingerprint of the
//! prompt, never its text.

use anyhow::{Result, bail};
use candle_core::Device;
use clap::Args;
use clinstruct_models::generation::{
    FinishReason, Generation, GenerationConfig, TextDelta, generate,
};
use clinstruct_models::{CausalLm, ChatMessage};

use super::load::{LoadedLm, load_lm};
use serde::Serialize;

#[derive(Args)]
pub struct GenerateArgs {
    /// Model: a directory with config.json, weights and tokenizer.json, a .gguf file, or a hub
    /// id in the local Hugging Face cache.
    #[arg(long)]
    pub model: String,
    /// The prompt text (raw, or the user turn with --chat).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Stop when the text contains this string (repeatable); the string is not printed.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep going past end-of-sequence tokens (benchmarks: exactly --max-new-tokens tokens).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object (text, token ids, finish reason, timing) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    model: &'a str,
    text: &'a str,
    token_ids: &'a [u32],
    finish_reason: FinishReason,
    stop_string: Option<&'a str>,
    prompt_tokens: usize,
    generated_tokens: usize,
    timing: Timing,
}

#[derive(Serialize)]
struct Timing {
    load_seconds: f64,
    prefill_seconds: f64,
    decode_seconds: f64,
    prefill_tokens_per_second: f64,
    decode_tokens_per_second: f64,
}

/// FNV-1a: a fingerprint to correlate log lines with a prompt without logging the prompt.
fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.temperature < 0.0 {
        bail!("--temperature must be >= 0, got {}", args.temperature);
    }
    if let Some(p) = args.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        bail!("--top-p must be in (0, 1], got {p}");
    }
    if let Some(r) = args.repetition_penalty
        && r <= 0.0
    {
        bail!("--repetition-penalty must be > 0, got {r}");
    }
    let device = Device::Cpu;
    let t0 = std::time::Instant::now();
    let LoadedLm {
        lm,
        tokenizer: tok,
        description: desc,
        ..
    } = load_lm(&args.model, &device, None)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    eprintln!("model: {desc}, loaded in {load_seconds:.2}s");

    let prompt_ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::system(s.clone()));
        }
        messages.push(ChatMessage::user(args.prompt.clone()));
        let text = tok.apply_chat_template(&messages, true)?;
        // The template writes BOS itself.
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    eprintln!(
        "prompt: {} tokens, fingerprint {}{}",
        prompt_ids.len(),
        fingerprint(&args.prompt),
        if args.chat { ", chat template" } else { "" }
    );
    let mut eos = tok.eos_token_ids().to_vec();
    for &e in &lm.info().eos_token_ids {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    if args.ignore_eos {
        eos.clear();
    }
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        eos_token_ids: eos,
        stop_strings: args.stop.clone(),
        pad_token_id: tok.pad_token_id().or(lm.info().pad_token_id),
        skip_special_tokens: true,
    };
    let mut stream_err: Option<anyhow::Error> = None;
    let mut print = |d: TextDelta<'_>| {
        if stream_err.is_none()
            && let Err(e) = super::out(d.text)
        {
            stream_err = Some(e);
        }
    };
    let on_text: Option<&mut dyn FnMut(TextDelta<'_>)> =
        if args.json { None } else { Some(&mut print) };
    let Generation { outputs, stats } =
        generate(&lm, Some(&tok), &[prompt_ids], &cfg, &device, on_text)?;
    if let Some(e) = stream_err {
        return Err(e);
    }
    let out = &outputs[0];
    eprintln!(
        "generated {} tokens ({:?}); prefill {:.1} tok/s, decode {:.1} tok/s",
        out.token_ids.len(),
        out.finish_reason,
        stats.prefill_tokens_per_second,
        stats.decode_tokens_per_second
    );
    if args.json {
        super::print_json(&JsonOutput {
            model: &args.model,
            text: &out.text,
            token_ids: &out.token_ids,
            finish_reason: out.finish_reason,
            stop_string: out.stop_string.as_deref(),
            prompt_tokens: stats.prompt_tokens,
            generated_tokens: stats.generated_tokens,
            timing: Timing {
                load_seconds,
                prefill_seconds: stats.prefill_seconds,
                decode_seconds: stats.decode_seconds,
                prefill_tokens_per_second: stats.prefill_tokens_per_second,
                decode_tokens_per_second: stats.decode_tokens_per_second,
            },
        })
    } else {
        super::out("\n")
    }
}
