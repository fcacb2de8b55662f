//! Parity with the reference Python scorers (sacrebleu 2.6.0, rouge-score 0.1.2,
//! nltk 3.10.4 + WordNet 3.0 + punkt_tab). Fixtures are committed and were produced by
//! `scripts/fixtures/make_soap_metric_fixtures.py`; CI never runs Python.

use std::collections::HashMap;

use clinstruct_metrics::soap::{
    self, SoapOptions, meteor, porter, rouge,
    tokenize::{punkt, tok13a, word_tokenize},
    wordnet::WordNet,
};
use serde_json::Value;

const TOL_BLEU_ROUGE: f64 = 1e-9;
const TOL_METEOR: f64 = 1e-6;

struct Case {
    id: String,
    pred: String,
    reference: String,
}

fn load() -> (Vec<Case>, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let cases = std::fs::read_to_string(format!("{dir}/soap_cases.jsonl")).expect("cases");
    let cases = cases
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("case json");
            Case {
                id: v["id"].as_str().expect("id").to_owned(),
                pred: v["prediction"].as_str().expect("prediction").to_owned(),
                reference: v["reference"].as_str().expect("reference").to_owned(),
            }
        })
        .collect();
    let exp = std::fs::read_to_string(format!("{dir}/soap_expected.json")).expect("expected");
    (cases, serde_json::from_str(&exp).expect("expected json"))
}

#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn num(&mut self, what: &str, got: f64, want: &Value, tol: f64) {
        let want = want.as_f64().unwrap_or(f64::NAN);
        if (got - want).abs().is_nan() || (got - want).abs() > tol {
            self.0
                .push(format!("{what}: got {got:.15} want {want:.15}"));
        }
    }

    fn tokens(&mut self, what: &str, got: &[String], want: &Value) {
        let want: Vec<String> = want
            .as_array()
            .expect("token list")
            .iter()
            .map(|t| t.as_str().expect("token").to_owned())
            .collect();
        if got != want.as_slice() {
            let i = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            self.0.push(format!(
                "{what}: {} vs {} tokens, first difference at {i}: {:?} vs {:?}",
                got.len(),
                want.len(),
                got.get(i),
                want.get(i)
            ));
        }
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} mismatches:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

fn check_corpus(r: &mut Report, name: &str, preds: &[&str], refs: &[&str], want: &Value) {
    let s = soap::score_corpus(preds, refs, &SoapOptions::default()).expect("scores");
    assert_eq!(s.n as u64, want["n"].as_u64().unwrap(), "{name}: n");
    match (s.bleu, want["bleu_evaluate"].as_f64()) {
        (Some(b), Some(w)) => r.num(&format!("{name}: bleu"), b, &w.into(), TOL_BLEU_ROUGE),
        (None, None) => {
            let err = s
                .bleu_error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let want_err = want["bleu_evaluate_error"].as_str().unwrap_or("?");
            if !err.starts_with(want_err) {
                r.0.push(format!("{name}: bleu error {err:?} vs {want_err:?}"));
            }
        }
        (got, w) => r.0.push(format!("{name}: bleu {got:?} vs {w:?}")),
    }
    if let (Some(d), Some(w)) = (&s.bleu_detail, want.get("bleu_evaluate_detail")) {
        for k in 0..4 {
            r.num(
                &format!("{name}: bleu precision {k}"),
                d.precisions[k],
                &w["precisions"][k],
                TOL_BLEU_ROUGE,
            );
        }
        r.num(
            &format!("{name}: bleu bp"),
            d.brevity_penalty,
            &w["brevity_penalty"],
            TOL_BLEU_ROUGE,
        );
        r.num(
            &format!("{name}: bleu ratio"),
            d.length_ratio,
            &w["length_ratio"],
            TOL_BLEU_ROUGE,
        );
        assert_eq!(
            d.translation_length,
            w["translation_length"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            d.reference_length,
            w["reference_length"].as_u64().unwrap(),
            "{name}"
        );
    }
    let sb = &want["sacrebleu_detail"];
    r.num(
        &format!("{name}: sacrebleu"),
        s.bleu_sacrebleu,
        &want["bleu_sacrebleu"],
        TOL_BLEU_ROUGE,
    );
    assert_eq!(
        s.sacrebleu_signature,
        sb["signature"].as_str().unwrap(),
        "{name}"
    );
    assert_eq!(
        s.sacrebleu_detail.sys_len,
        sb["sys_len"].as_u64().unwrap(),
        "{name}: sys_len"
    );
    assert_eq!(
        s.sacrebleu_detail.ref_len,
        sb["ref_len"].as_u64().unwrap(),
        "{name}: ref_len"
    );
    for k in 0..4 {
        assert_eq!(
            s.sacrebleu_detail.counts[k],
            sb["counts"][k].as_u64().unwrap(),
            "{name}: counts"
        );
        assert_eq!(
            s.sacrebleu_detail.totals[k],
            sb["totals"][k].as_u64().unwrap(),
            "{name}: totals"
        );
        r.num(
            &format!("{name}: sacrebleu precision {k}"),
            s.sacrebleu_detail.precisions[k],
            &sb["precisions"][k],
            TOL_BLEU_ROUGE,
        );
    }
    r.num(
        &format!("{name}: sacrebleu bp"),
        s.sacrebleu_detail.bp,
        &sb["bp"],
        TOL_BLEU_ROUGE,
    );
    r.num(
        &format!("{name}: rouge1"),
        s.rouge1,
        &want["rouge1"],
        TOL_BLEU_ROUGE,
    );
    r.num(
        &format!("{name}: rouge2"),
        s.rouge2,
        &want["rouge2"],
        TOL_BLEU_ROUGE,
    );
    r.num(
        &format!("{name}: rougeL"),
        s.rouge_l,
        &want["rougeL"],
        TOL_BLEU_ROUGE,
    );
    r.num(
        &format!("{name}: rougeLsum"),
        s.rouge_lsum,
        &want["rougeLsum"],
        TOL_BLEU_ROUGE,
    );
    r.num(
        &format!("{name}: meteor"),
        s.meteor,
        &want["meteor"],
        TOL_METEOR,
    );
    match (s.average, want["average"].as_f64()) {
        (Some(a), Some(w)) => r.num(&format!("{name}: average"), a, &w.into(), TOL_METEOR),
        (None, None) => {}
        (a, w) => r.0.push(format!("{name}: average {a:?} vs {w:?}")),
    }
    r.num(
        &format!("{name}: average_with_sacrebleu"),
        s.average_with_sacrebleu,
        &want["average_with_sacrebleu"],
        TOL_METEOR,
    );
}

#[test]
fn corpus_and_subsets_match_oracle() {
    let (cases, exp) = load();
    assert!(cases.len() >= 60);
    let mut r = Report::default();
    let preds: Vec<&str> = cases.iter().map(|c| c.pred.as_str()).collect();
    let refs: Vec<&str> = cases.iter().map(|c| c.reference.as_str()).collect();
    check_corpus(&mut r, "corpus", &preds, &refs, &exp["corpus"]);
    let by_id: HashMap<&str, &Case> = cases.iter().map(|c| (c.id.as_str(), c)).collect();
    for (name, sub) in exp["subsets"].as_object().expect("subsets") {
        let ids: Vec<&str> = sub["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let p: Vec<&str> = ids.iter().map(|i| by_id[i].pred.as_str()).collect();
        let q: Vec<&str> = ids.iter().map(|i| by_id[i].reference.as_str()).collect();
        check_corpus(&mut r, &format!("subset {name}"), &p, &q, &sub["scores"]);
    }
    r.finish();
}

#[test]
fn every_case_as_its_own_corpus_matches_oracle() {
    let (cases, exp) = load();
    let mut r = Report::default();
    for c in &cases {
        check_corpus(
            &mut r,
            &c.id,
            &[&c.pred],
            &[&c.reference],
            &exp["per_case"][&c.id],
        );
    }
    r.finish();
}

#[test]
fn per_example_tokens_and_scores_match_oracle() {
    let (cases, exp) = load();
    let mut r = Report::default();
    let per = exp["corpus"]["per_example"]
        .as_array()
        .expect("per_example");
    assert_eq!(per.len(), cases.len());
    for (c, e) in cases.iter().zip(per) {
        let id = &c.id;
        assert_eq!(e["id"].as_str(), Some(id.as_str()));
        r.tokens(
            &format!("{id}: 13a pred"),
            &tok13a::tokenize_13a(&c.pred),
            &e["bleu13a_tokens_pred"],
        );
        r.tokens(
            &format!("{id}: 13a ref"),
            &tok13a::tokenize_13a(&c.reference),
            &e["bleu13a_tokens_ref"],
        );
        r.tokens(
            &format!("{id}: rouge pred"),
            &rouge::tokenize(&c.pred, false),
            &e["rouge_tokens_pred"],
        );
        r.tokens(
            &format!("{id}: rouge ref"),
            &rouge::tokenize(&c.reference, false),
            &e["rouge_tokens_ref"],
        );
        r.tokens(
            &format!("{id}: word_tokenize pred"),
            &word_tokenize(&c.pred),
            &e["meteor_tokens_pred"],
        );
        r.tokens(
            &format!("{id}: word_tokenize ref"),
            &word_tokenize(&c.reference),
            &e["meteor_tokens_ref"],
        );
        let d = rouge::score(&c.reference, &c.pred, false);
        for (name, s) in [
            ("rouge1", d.rouge1),
            ("rouge2", d.rouge2),
            ("rougeL", d.rouge_l),
            ("rougeLsum", d.rouge_lsum),
        ] {
            let w = &e["rouge"][name];
            r.num(
                &format!("{id}: {name} P"),
                s.precision,
                &w["precision"],
                TOL_BLEU_ROUGE,
            );
            r.num(
                &format!("{id}: {name} R"),
                s.recall,
                &w["recall"],
                TOL_BLEU_ROUGE,
            );
            r.num(
                &format!("{id}: {name} F"),
                s.fmeasure,
                &w["fmeasure"],
                TOL_BLEU_ROUGE,
            );
        }
        let m = meteor::meteor(&c.reference, &c.pred, Default::default());
        r.num(&format!("{id}: meteor"), m, &e["meteor"], TOL_METEOR);
    }
    r.finish();
}

#[test]
fn stemmed_rouge_matches_oracle() {
    let (cases, exp) = load();
    let mut r = Report::default();
    for c in &cases {
        let e = &exp["rouge_stemmed"][&c.id];
        r.tokens(
            &format!("{}: stemmed tokens", c.id),
            &rouge::tokenize(&c.pred, true),
            &e["tokens_pred"],
        );
        let d = rouge::score(&c.reference, &c.pred, true);
        for (name, f) in ["rouge1", "rouge2", "rougeL", "rougeLsum"]
            .iter()
            .zip(d.fmeasures())
        {
            r.num(
                &format!("{}: stemmed {name}", c.id),
                f,
                &e["scores"][name],
                TOL_BLEU_ROUGE,
            );
        }
    }
    r.finish();
}

#[test]
fn porter_wordnet_and_punkt_match_nltk() {
    let (_, exp) = load();
    let mut r = Report::default();
    for (w, s) in exp["porter"].as_object().expect("porter") {
        let got = porter::stem(w);
        if got != s.as_str().unwrap() {
            r.0.push(format!("stem({w:?}) = {got:?}, nltk {s}"));
        }
    }
    let wn = WordNet::get();
    for (w, syn) in exp["wordnet_synonyms"].as_object().expect("wordnet") {
        r.tokens(&format!("synonyms({w:?})"), &wn.synonyms(w), syn);
    }
    for e in exp["sent_tokenize"].as_array().expect("sent_tokenize") {
        let text = e["text"].as_str().unwrap();
        let got: Vec<String> = punkt::sent_tokenize(text)
            .into_iter()
            .map(str::to_owned)
            .collect();
        r.tokens("sent_tokenize", &got, &e["sentences"]);
    }
    r.finish();
}

#[test]
fn zero_token_bleu_is_an_error_value() {
    let s = soap::score_corpus(&["", "  "], &["a b", "c"], &SoapOptions::default()).unwrap();
    assert!(s.bleu.is_none() && s.average.is_none());
    assert_eq!(s.bleu_error, Some(soap::BleuError::NoPredictionTokens));
    assert_eq!(s.bleu_sacrebleu, 0.0);
    let s = soap::score_corpus(&["a"], &[""], &SoapOptions::default()).unwrap();
    assert_eq!(s.bleu_error, Some(soap::BleuError::NoReferenceTokens));
    assert!(soap::score_corpus(&[], &[], &SoapOptions::default()).is_err());
    assert!(soap::score_corpus(&["a"], &[], &SoapOptions::default()).is_err());
}

#[test]
fn parallel_and_serial_agree() {
    let (cases, _) = load();
    let preds: Vec<&str> = cases.iter().map(|c| c.pred.as_str()).collect();
    let refs: Vec<&str> = cases.iter().map(|c| c.reference.as_str()).collect();
    let par = soap::score_corpus(&preds, &refs, &SoapOptions::default()).unwrap();
    let ser = soap::score_corpus(
        &preds,
        &refs,
        &SoapOptions {
            parallel: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(par, ser);
    let docs = soap::per_document(&preds, &refs, &SoapOptions::default()).unwrap();
    let b = soap::rouge_bootstrap(&docs, 1000, 42).unwrap();
    assert_eq!(Some(b), soap::rouge_bootstrap(&docs, 1000, 42));
    assert!(b.rouge1.low <= par.rouge1 && par.rouge1 <= b.rouge1.high);
}

#[test]
fn never_panics_on_odd_input() {
    let odd = [
        "",
        " ",
        "\n",
        ".",
        "..",
        ". . .",
        "!?",
        "'",
        "''",
        "\"",
        "``",
        "--",
        "-\n",
        "\u{0}",
        "\u{1c}\u{1d}",
        "😀",
        "İ",
        "ǅ",
        "\u{301}",
        "a.b.c.",
        "(((",
        ")))",
        "&amp;&",
        "<skipped>",
        "'t is",
        "ſ",
        "\r\n\r\n",
        "e.g. i.e. Dr. St. b.i.d.",
        "1.",
        "-1.5,",
        ".,",
        "a, b: c;",
    ];
    for a in odd {
        for b in odd {
            let s = soap::score_corpus(&[a], &[b], &SoapOptions::default()).unwrap();
            assert!(
                s.meteor.is_finite() && s.rouge_lsum.is_finite() && s.bleu_sacrebleu.is_finite()
            );
        }
    }
}

#[test]
fn never_panics_on_random_text() {
    // Deterministic fuzz over characters that drive the tokenizers' special cases.
    const ALPHABET: &[&str] = &[
        "a",
        "A",
        "s",
        "t",
        "I",
        ".",
        ",",
        ":",
        ";",
        "!",
        "?",
        "'",
        "\"",
        "`",
        "-",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        "<",
        ">",
        "*",
        "#",
        "&",
        " ",
        "\n",
        "\t",
        "\r",
        "0",
        "9",
        "é",
        "😀",
        "—",
        "’",
        "“",
        "”",
        "«",
        "»",
        "Σ",
        "İ",
        "ı",
        "ſ",
        "\u{a0}",
        "\u{1c}",
        "\u{301}",
        "Dr.",
        "can",
        "not",
        "'s",
        "n't",
        "e.g.",
        "..",
        "--",
        "&amp;",
        "<skipped>",
        "-\n",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut text =
        |len: usize| -> String { (0..len).map(|_| ALPHABET[next(ALPHABET.len())]).collect() };
    let docs: Vec<(String, String)> = (0..400)
        .map(|i| (text(i % 37), text((i * 7) % 53)))
        .collect();
    let preds: Vec<&str> = docs.iter().map(|d| d.0.as_str()).collect();
    let refs: Vec<&str> = docs.iter().map(|d| d.1.as_str()).collect();
    let opts = SoapOptions {
        rouge_stemmer: true,
        sentence_bleu: true,
        ..Default::default()
    };
    let per = soap::per_document(&preds, &refs, &opts).unwrap();
    assert!(
        per.iter()
            .all(|d| (0.0..=1.0).contains(&d.meteor) && (0.0..=1.0).contains(&d.rouge_lsum))
    );
    let s = soap::aggregate(&per).unwrap();
    assert!(s.average_with_sacrebleu.is_finite());
}
