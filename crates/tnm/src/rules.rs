//! The rule-based stager: explicit stage strings, with evidence spans.
//!
//! Rules, in the order they apply:
//! 1. A candidate is a token `[prefix]T|N|M<category>[suffix]` on a word boundary (`pT2a`,
//!    `ypN1mi`, `cM0`, `pTX`); glued sequences (`pT2N1M0`) split into tokens. `Tissue` and
//!    `M0del` are not tokens: the character after a token must not continue a word.
//! 2. Clinical T and N (`cT3 cN1`, pre-treatment staging) are never the pathologic label;
//!    clinical M (`cM0`) is, because pathologists stage M clinically.
//! 3. A bare token (`T4`) counts only inside a sequence of at least two stage tokens
//!    (`T4 N2 M0`) or right after a staging cue (`TNM:`, `stage`); a p/yp token always counts.
//! 4. Tokens in the clinical history section, or in a sentence about an earlier cancer ("prior",
//!    "history of", "resected 2014"), are ignored: a prior cancer's stage is not this report's.
//! 5. The last valid mention of each stage wins, so an addendum that revises the stage decides.
//!
//! X values (`pNX`) are evidence that the stage is not determinable: the result is missing,
//! with the span kept.

use std::sync::OnceLock;

use clinstruct_data::Stage;
use clinstruct_data::ajcc;
use clinstruct_data::tnm::TnmLabels;
use regex::Regex;
use serde::Serialize;

/// One stage read from the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Category (T1–4, N0–3, M0–1); `None` for X / not determinable.
    pub category: Option<u8>,
    /// Byte span of the token in the report.
    pub start: usize,
    pub end: usize,
    /// y-prefixed (post-neoadjuvant) classification.
    pub post_therapy: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleStaging {
    pub t: Option<Evidence>,
    pub n: Option<Evidence>,
    pub m: Option<Evidence>,
}

impl RuleStaging {
    pub fn get(&self, stage: Stage) -> Option<&Evidence> {
        match stage {
            Stage::T => self.t.as_ref(),
            Stage::N => self.n.as_ref(),
            Stage::M => self.m.as_ref(),
        }
    }

    /// The category per stage, `None` where the text states none (or states X).
    pub fn category(&self, stage: Stage) -> Option<u8> {
        self.get(stage).and_then(|e| e.category)
    }

    /// The stated categories as corpus labels.
    pub fn labels(&self) -> TnmLabels {
        TnmLabels {
            t: self.category(Stage::T),
            n: self.category(Stage::N),
            m: self.category(Stage::M),
        }
    }
}

struct Token {
    stage: Stage,
    /// The token with OCR look-alikes of its category digit repaired (`pNO` → `pN0`).
    repaired: String,
    clinical: bool,
    prefixed: bool,
    start: usize,
    end: usize,
}

fn token_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(y?p|y?c|r|a)?([TNM])(is|X|x|[0-4]|[OoIl])([a-d]?[0-9]?(?:mi)?(?:\((?:i[+-]|sn|mol[+-]|m|f)\))?)")
            .expect("valid regex")
    })
}

fn cue_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)(tnm|stage|staging|ajcc)[^.;]{0,12}$").expect("valid regex"))
}

fn history_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // From the history header to the next upper-case section header ("FINAL DIAGNOSIS:", ...).
    RE.get_or_init(|| {
        Regex::new(r"(?:CLINICAL (?:HISTORY|DATA|INFORMATION)|Clinical (?:[Hh]istory|[Dd]ata|[Ii]nformation)|HISTORY)\s*:(?:[^:]|:[^ A-Z])*?(?:\s[A-Z][A-Z ()/&-]{3,}:|$)")
            .expect("valid regex")
    })
}

fn prior_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // A sentence about an earlier cancer: "Prior history: ... pT2N0M0, resected 2014".
    RE.get_or_init(|| {
        Regex::new(r"(?i)\b(prior|previous|history of|remote|recurrence of|resected (?:in )?(?:19|20)\d\d|in (?:19|20)\d\d)\b")
            .expect("valid regex")
    })
}

/// The sentence around `start..end`: from the last ". " before to the first ". " after.
fn sentence(text: &str, start: usize, end: usize) -> &str {
    let from = text[..start].rfind(". ").map_or(0, |i| i + 2);
    let to = text[end..].find(". ").map_or(text.len(), |i| end + i);
    &text[from..to]
}

fn is_word_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric())
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::new();
    for caps in token_regex().captures_iter(text) {
        let m = caps.get(0).expect("whole match");
        let before = text[..m.start()].chars().next_back();
        let glued_to_previous = out.last().is_some_and(|t| t.end == m.start());
        if is_word_char(before) && !glued_to_previous {
            continue;
        }
        let after = text[m.end()..].chars().next();
        // A token must end the word, unless another stage token follows glued (`pT2N1`).
        let next_is_token = token_regex()
            .find(&text[m.end()..])
            .is_some_and(|n| n.start() == 0);
        if is_word_char(after) && !next_is_token {
            continue;
        }
        let prefix = caps.get(1).map_or("", |p| p.as_str());
        // OCR reads 0 as O and 1 as l or I ("pNO", "pTla"); trust that only after a p/c prefix,
        // where no English word starts ("No", "Ill" do).
        let category = &caps[3];
        let repaired_digit = match category {
            "O" | "o" => "0",
            "I" | "l" => "1",
            other => other,
        };
        if repaired_digit != category && prefix.is_empty() {
            continue;
        }
        let repaired = format!(
            "{prefix}{}{repaired_digit}{}",
            &caps[2],
            caps.get(4).map_or("", |m| m.as_str())
        );
        let stage = match &caps[2] {
            "T" => Stage::T,
            "N" => Stage::N,
            _ => Stage::M,
        };
        out.push(Token {
            stage,
            repaired,
            clinical: prefix.ends_with('c'),
            prefixed: prefix.contains('p'),
            start: m.start(),
            end: m.end(),
        });
    }
    out
}

/// Stages written in `text`.
pub fn stage_report(text: &str) -> RuleStaging {
    let history: Vec<(usize, usize)> = history_regex()
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect();
    let toks = tokens(text);
    let mut result = RuleStaging::default();
    for (i, tok) in toks.iter().enumerate() {
        if history
            .iter()
            .any(|&(s, e)| tok.start >= s && tok.start < e)
        {
            continue;
        }
        if tok.clinical && tok.stage != Stage::M {
            continue;
        }
        if prior_regex().is_match(sentence(text, tok.start, tok.end)) {
            continue;
        }
        // Neighbours within a few characters make a sequence ("T4 N2 M0", "pT2, pN1").
        let near = |j: usize| -> bool {
            let (a, b) = if j < i {
                (&toks[j], tok)
            } else {
                (tok, &toks[j])
            };
            a.stage != b.stage && b.start.saturating_sub(a.end) <= 3
        };
        let in_sequence = (i > 0 && near(i - 1)) || (i + 1 < toks.len() && near(i + 1));
        let cued = cue_regex().is_match(&text[..tok.start]);
        if !(tok.prefixed || tok.clinical || in_sequence || cued) {
            continue;
        }
        let Ok(value) = ajcc::normalize(tok.stage, &tok.repaired) else {
            continue;
        };
        let evidence = Evidence {
            category: value.category,
            start: tok.start,
            end: tok.end,
            post_therapy: value.post_therapy,
        };
        match tok.stage {
            Stage::T => result.t = Some(evidence),
            Stage::N => result.n = Some(evidence),
            Stage::M => result.m = Some(evidence),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cats(text: &str) -> [Option<u8>; 3] {
        let r = stage_report(text);
        [
            r.category(Stage::T),
            r.category(Stage::N),
            r.category(Stage::M),
        ]
    }

    #[test]
    fn explicit_strings() {
        assert_eq!(
            cats("Pathologic Staging (pTNM): pT2a pN1mi pMX"),
            [Some(2), Some(1), None]
        );
        assert_eq!(
            cats("TNM: T4 N2 M0 GROSS: ..."),
            [Some(4), Some(2), Some(0)]
        );
        assert_eq!(
            cats("STAGE (pTNM): pT3 pN2 cM0 Tissue blocks"),
            [Some(3), Some(2), Some(0)]
        );
        assert_eq!(cats("stage pT2N1M0."), [Some(2), Some(1), Some(0)]);
        assert_eq!(cats("pT1b(m), pN0(i+)"), [Some(1), Some(0), None]);
    }

    #[test]
    fn clinical_history_and_clinical_stage_are_not_labels() {
        let text = "CLINICAL HISTORY: prior breast cancer pT1 N0 in 2010. Pre-treatment cT3 cN1. FINAL DIAGNOSIS: see synoptic. SYNOPTIC: ypT2 ypN1a";
        let r = stage_report(text);
        assert_eq!(r.category(Stage::T), Some(2));
        assert_eq!(r.category(Stage::N), Some(1));
        assert!(r.t.as_ref().unwrap().post_therapy);
        assert_eq!(
            &text[r.t.as_ref().unwrap().start..r.t.as_ref().unwrap().end],
            "ypT2"
        );
    }

    #[test]
    fn addendum_revision_wins() {
        assert_eq!(
            cats(
                "Pathologic stage: pT2b pN0. ADDENDUM: The pathologic stage is revised to pT3a pN0."
            ),
            [Some(3), Some(0), None]
        );
    }

    #[test]
    fn words_are_not_tokens() {
        assert_eq!(
            cats("Tissue from T1-weighted imaging; M0del N2O"),
            [None, None, None]
        );
        assert_eq!(cats("tumor size 2 cm, margins free"), [None, None, None]);
    }

    #[test]
    fn ocr_look_alikes_after_a_prefix() {
        assert_eq!(
            cats("Pathologic stage: pTla pNO pMX"),
            [Some(1), Some(0), None]
        );
        assert_eq!(
            cats("No tumor. Ill-defined margins. TO be continued"),
            [None, None, None]
        );
    }

    #[test]
    fn x_values_are_missing_with_evidence() {
        let r = stage_report("pT2 pNX");
        assert_eq!(r.category(Stage::N), None);
        assert!(r.n.is_some());
    }
}
