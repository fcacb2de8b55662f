//! The generation loop on a small deterministic `CausalLm` whose logits depend on the last
//! token and its position id; it also checks the mask and position ids the loop passes.

use std::cell::RefCell;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use clinstruct_models::generation::{FinishReason, GenerationConfig, TextDelta, generate};
use clinstruct_models::{CausalLm, LmCache, LmInfo, Tokenizer};

const EOS: u32 = 604; // <|eot_id|> in the llama3 fixture
const PAD: u32 = 606;

struct TableLm {
    info: LmInfo,
    /// Position at which EOS becomes the favourite.
    eos_at: u32,
    calls: RefCell<Vec<Vec<Vec<u32>>>>,
}

fn hash(a: u64) -> u64 {
    let mut z = a.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TableLm {
    fn new(eos_at: u32) -> TableLm {
        TableLm {
            info: LmInfo {
                vocab_size: 607,
                num_layers: 1,
                max_position_embeddings: 1024,
                eos_token_ids: vec![EOS],
                bos_token_id: Some(600),
                pad_token_id: Some(PAD),
            },
            eos_at,
            calls: RefCell::new(Vec::new()),
        }
    }

    fn row_logits(&self, tok: u32, pos: u32) -> Vec<f32> {
        let v = self.info.vocab_size;
        let mut out: Vec<f32> = (0..v as u64)
            .map(|i| (hash(tok as u64 * 1_000_003 + pos as u64 * 7919 + i) % 1000) as f32 / 400.0)
            .collect();
        // A clear favourite among ordinary tokens (ids < 256 are single bytes; > 256 merges).
        let fav = if pos >= self.eos_at {
            EOS as usize
        } else {
            (hash(tok as u64 * 31 + pos as u64) % 590) as usize
        };
        out[fav] += 4.0;
        out
    }
}

impl CausalLm for TableLm {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: &Tensor,
        cache: Option<&mut LmCache>,
    ) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        assert_eq!(position_ids.dims2()?, (b, l));
        let cache = cache.expect("generation uses the cache");
        let past = cache.len();
        let ids: Vec<Vec<u32>> = input_ids.to_vec2()?;
        let pos: Vec<Vec<u32>> = position_ids.to_vec2()?;
        if let Some(mask) = attention_mask {
            assert_eq!(
                mask.dims2()?,
                (b, past + l),
                "mask covers past + new positions"
            );
            let m: Vec<Vec<u32>> = mask.to_dtype(DType::U32)?.to_vec2()?;
            for (mrow, prow) in m.iter().zip(&pos) {
                for (j, &p) in prow.iter().enumerate() {
                    let col = past + j;
                    if mrow[col] == 1 {
                        let before: u32 = mrow[..=col].iter().sum();
                        assert_eq!(p, before - 1, "position = cumsum(mask) - 1");
                    }
                }
            }
        } else {
            for row in &pos {
                assert_eq!(
                    row[0] as usize, past,
                    "unpadded positions continue the cache"
                );
            }
        }
        let k = Tensor::zeros((b, 1, l, 1), DType::F32, input_ids.device())?;
        cache.layers[0].append(&k, &k)?;
        self.calls.borrow_mut().push(ids.clone());
        let mut data = Vec::with_capacity(b * l * self.info.vocab_size);
        for r in 0..b {
            for j in 0..l {
                data.extend(self.row_logits(ids[r][j], pos[r][j]));
            }
        }
        Tensor::from_vec(data, (b, l, self.info.vocab_size), input_ids.device())
    }

    fn info(&self) -> &LmInfo {
        &self.info
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/llama3"),
    )
    .unwrap()
}

fn cfg() -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: 40,
        eos_token_ids: vec![EOS],
        pad_token_id: Some(PAD),
        ..GenerationConfig::default()
    }
}

fn run(
    lm: &TableLm,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> (clinstruct_models::generation::Generation, Vec<String>) {
    let mut streamed = vec![String::new(); prompts.len()];
    let mut cb = |d: TextDelta<'_>| streamed[d.row].push_str(d.text);
    let g = generate(lm, Some(tok), prompts, cfg, &Device::Cpu, Some(&mut cb)).unwrap();
    (g, streamed)
}

#[test]
fn greedy_follows_the_table_and_stops_at_eos() {
    let tok = tokenizer();
    let lm = TableLm::new(20);
    let prompt = tok.encode("Patient reports cough", true).unwrap();
    let (g, streamed) = run(&lm, &tok, std::slice::from_ref(&prompt), &cfg());
    let out = &g.outputs[0];
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(*out.token_ids.last().unwrap(), EOS);
    // Token i comes from the logits at position prompt_len - 1 + i; position 20 picks EOS.
    assert_eq!(out.token_ids.len(), 20 - (prompt.len() - 1) + 1);
    let mut last = *prompt.last().unwrap();
    for (i, &t) in out.token_ids.iter().enumerate() {
        let pos = (prompt.len() - 1 + i) as u32;
        let want = clinstruct_models::generation::argmax(&lm.row_logits(last, pos));
        assert_eq!(t, want, "step {i}");
        last = t;
    }
    assert_eq!(out.text, tok.decode(&out.token_ids, true).unwrap());
    assert_eq!(streamed[0], out.text, "streamed deltas add up to the text");
    assert_eq!(g.stats.prompt_tokens, prompt.len());
    assert_eq!(g.stats.generated_tokens, out.token_ids.len());
    assert!(g.stats.prefill_seconds > 0.0 && g.stats.decode_tokens_per_second > 0.0);
}

#[test]
fn max_new_tokens_and_batches_of_different_lengths() {
    let tok = tokenizer();
    let lm = TableLm::new(1000);
    let prompts: Vec<Vec<u32>> = ["a", "Blood pressure 120/80 mmHg today", "Café 😀"]
        .iter()
        .map(|s| tok.encode(s, true).unwrap())
        .collect();
    let c = GenerationConfig {
        max_new_tokens: 12,
        ..cfg()
    };
    let (batch, streamed) = run(&lm, &tok, &prompts, &c);
    for (i, p) in prompts.iter().enumerate() {
        let (single, _) = run(&TableLm::new(1000), &tok, std::slice::from_ref(p), &c);
        assert_eq!(
            batch.outputs[i].token_ids, single.outputs[0].token_ids,
            "row {i}"
        );
        assert_eq!(batch.outputs[i].finish_reason, FinishReason::Length);
        assert_eq!(batch.outputs[i].token_ids.len(), 12);
        assert_eq!(streamed[i], batch.outputs[i].text);
    }
}

#[test]
fn finished_rows_are_padded() {
    let tok = tokenizer();
    // EOS is favoured from position 8: the longer prompt (row 1) gets there first.
    let lm = TableLm::new(8);
    let prompts = vec![vec![600, 300], vec![600, 301, 302, 303, 304, 305]];
    let (g, _) = run(&lm, &tok, &prompts, &cfg());
    assert_eq!(g.outputs[0].finish_reason, FinishReason::Eos);
    assert_eq!(g.outputs[0].token_ids.len(), 8);
    assert_eq!(g.outputs[1].token_ids.len(), 4);
    let calls = lm.calls.borrow();
    // Call 0 is the prefill, call k feeds token k-1; row 1's EOS was its 4th token.
    assert_eq!(calls.len(), 8);
    assert_eq!(calls[4][1], vec![EOS]);
    for call in &calls[5..] {
        assert_eq!(call[1], vec![PAD], "a finished row is fed padding");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let tok = tokenizer();
    let prompt = vec![tok.encode("Assessment:", true).unwrap()];
    let c = GenerationConfig {
        temperature: 0.9,
        top_k: Some(50),
        top_p: Some(0.95),
        repetition_penalty: Some(1.3),
        seed: 1234,
        ..cfg()
    };
    let (a, _) = run(&TableLm::new(1000), &tok, &prompt, &c);
    let (b, _) = run(&TableLm::new(1000), &tok, &prompt, &c);
    assert_eq!(a.outputs, b.outputs);
    let (other, _) = run(
        &TableLm::new(1000),
        &tok,
        &prompt,
        &GenerationConfig {
            seed: 99,
            ..c.clone()
        },
    );
    assert_ne!(a.outputs[0].token_ids, other.outputs[0].token_ids);
    let (greedy, _) = run(&TableLm::new(1000), &tok, &prompt, &cfg());
    assert_ne!(a.outputs[0].token_ids, greedy.outputs[0].token_ids);
}

#[test]
fn stop_strings_match_across_tokens_and_are_not_emitted() {
    let tok = tokenizer();
    let prompt = vec![tok.encode("Plan:", true).unwrap()];
    let (full, _) = run(&TableLm::new(1000), &tok, &prompt, &cfg());
    let text = &full.outputs[0].text;
    // A stop string that straddles a token boundary: a few chars around the 3rd token's end.
    let ids = &full.outputs[0].token_ids;
    let cut = tok.decode(&ids[..3], true).unwrap().len();
    let start = (cut - 2..cut).find(|&i| text.is_char_boundary(i)).unwrap();
    let end = (cut + 2..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap();
    let stop = text[start..end].to_string();
    let first = text.find(&stop).unwrap();
    let c = GenerationConfig {
        stop_strings: vec!["never appears".into(), stop.clone()],
        ..cfg()
    };
    let (g, streamed) = run(&TableLm::new(1000), &tok, &prompt, &c);
    let out = &g.outputs[0];
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.stop_string.as_deref(), Some(stop.as_str()));
    assert_eq!(out.text, text[..first]);
    assert_eq!(streamed[0], out.text, "the stop string is never streamed");
    assert!(out.token_ids.len() < full.outputs[0].token_ids.len());
}
