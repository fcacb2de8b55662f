//! Corpus statistics for `clinstruct data stats`: counts, label distributions, label coverage and
//! length quantiles. Only counts leave this module, never text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::ajcc::Stage;
use crate::soap::SoapCorpus;
use crate::text::word_count;
use crate::tnm::{JoinReport, TnmCorpus, TnmLabels, TnmRecord};

/// Length summary; quantiles interpolate linearly between order statistics (numpy's default).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quantiles {
    pub n: usize,
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub mean: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(values: &[usize]) -> Option<Quantiles> {
        if values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let pos = p * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Some(Quantiles {
            n: v.len(),
            min: v[0],
            p25: q(0.25),
            median: q(0.5),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p75: q(0.75),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            max: v[v.len() - 1],
        })
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what}: n {} · min {} · p25 {} · median {} · mean {:.1} · p75 {} · p90 {} · p95 {} · p99 {} · max {}",
            self.n,
            fmt_num(self.min),
            fmt_num(self.p25),
            fmt_num(self.median),
            self.mean,
            fmt_num(self.p75),
            fmt_num(self.p90),
            fmt_num(self.p95),
            fmt_num(self.p99),
            fmt_num(self.max)
        )
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub reason: String,
    pub count: usize,
}

fn dropped(list: &[(String, usize)]) -> Vec<Dropped> {
    list.iter()
        .map(|(reason, count)| Dropped {
            reason: reason.clone(),
            count: *count,
        })
        .collect()
}

/// Distribution of one stage's labels.
#[derive(Debug, Clone, Serialize)]
pub struct StageDistribution {
    pub labelled: usize,
    pub missing: usize,
    /// Class name (T1…T4, N0…N3, M0/M1) → count, in class order.
    pub counts: BTreeMap<String, usize>,
    /// Class name → share of the labelled records.
    pub shares: BTreeMap<String, f64>,
}

impl StageDistribution {
    fn of<'a>(stage: Stage, labels: impl Iterator<Item = &'a TnmLabels>) -> StageDistribution {
        let mut per_class = vec![0usize; stage.num_classes()];
        let mut missing = 0;
        for l in labels {
            match l.get(stage) {
                Some(c) => per_class[stage.class_index(c)] += 1,
                None => missing += 1,
            }
        }
        let labelled: usize = per_class.iter().sum();
        let mut counts = BTreeMap::new();
        let mut shares = BTreeMap::new();
        for (k, &c) in per_class.iter().enumerate() {
            counts.insert(stage.class_name(k), c);
            shares.insert(
                stage.class_name(k),
                if labelled == 0 {
                    0.0
                } else {
                    c as f64 / labelled as f64
                },
            );
        }
        StageDistribution {
            labelled,
            missing,
            counts,
            shares,
        }
    }

    fn render(&self, stage: Stage) -> String {
        let classes: Vec<String> = self
            .counts
            .iter()
            .map(|(name, c)| format!("{name} {c} ({:.1}%)", 100.0 * self.shares[name]))
            .collect();
        format!(
            "{stage}: {} labelled, {} missing · {}",
            self.labelled,
            self.missing,
            classes.join(" · ")
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelsByStage {
    pub t: StageDistribution,
    pub n: StageDistribution,
    pub m: StageDistribution,
}

impl LabelsByStage {
    fn of(records: &[&TnmRecord]) -> LabelsByStage {
        LabelsByStage {
            t: StageDistribution::of(Stage::T, records.iter().map(|r| &r.labels)),
            n: StageDistribution::of(Stage::N, records.iter().map(|r| &r.labels)),
            m: StageDistribution::of(Stage::M, records.iter().map(|r| &r.labels)),
        }
    }

    fn render(&self, out: &mut String, indent: &str) {
        for (stage, d) in [
            (Stage::T, &self.t),
            (Stage::N, &self.n),
            (Stage::M, &self.m),
        ] {
            let _ = writeln!(out, "{indent}{}", d.render(stage));
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub all_three: usize,
    pub two: usize,
    pub one: usize,
    pub none: usize,
    /// Which stages are labelled ("T+N+M", "T+N", …, "none") → records.
    pub patterns: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TnmStats {
    pub task: &'static str,
    pub file: String,
    pub format: crate::tnm::TnmFormat,
    pub rows_read: usize,
    /// What a record is: "reports" for report corpora, "patients" for label files.
    pub unit: &'static str,
    pub records: usize,
    pub dropped: Vec<Dropped>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinReport>,
    pub labels: LabelsByStage,
    pub coverage: Coverage,
    /// Label distribution among the records that carry all three labels.
    pub fully_labelled: LabelsByStage,
    pub post_therapy: usize,
    pub cancer_types: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_words: Option<Quantiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_tokens: Option<Quantiles>,
}

impl TnmStats {
    /// `token_lengths`: one token count per record, when the caller has a tokenizer.
    pub fn compute(
        corpus: &TnmCorpus,
        join: Option<JoinReport>,
        token_lengths: Option<&[usize]>,
    ) -> TnmStats {
        let all: Vec<&TnmRecord> = corpus.records.iter().collect();
        let full: Vec<&TnmRecord> = all
            .iter()
            .copied()
            .filter(|r| r.labels.count() == 3)
            .collect();
        let mut coverage = Coverage {
            all_three: 0,
            two: 0,
            one: 0,
            none: 0,
            patterns: BTreeMap::new(),
        };
        let mut cancer_types = BTreeMap::new();
        for r in &all {
            match r.labels.count() {
                3 => coverage.all_three += 1,
                2 => coverage.two += 1,
                1 => coverage.one += 1,
                _ => coverage.none += 1,
            }
            let pattern: Vec<String> = Stage::ALL
                .iter()
                .filter(|s| r.labels.get(**s).is_some())
                .map(|s| s.to_string())
                .collect();
            let key = if pattern.is_empty() {
                "none".to_string()
            } else {
                pattern.join("+")
            };
            *coverage.patterns.entry(key).or_default() += 1;
            if let Some(ct) = &r.cancer_type {
                *cancer_types.entry(ct.clone()).or_default() += 1;
            }
        }
        let words: Vec<usize> = all
            .iter()
            .filter_map(|r| r.text.as_deref().map(word_count))
            .collect();
        TnmStats {
            task: "tnm",
            file: corpus.path.display().to_string(),
            format: corpus.format,
            rows_read: corpus.rows_read,
            unit: if corpus.has_text() {
                "reports"
            } else {
                "patients"
            },
            records: all.len(),
            dropped: dropped(&corpus.dropped),
            join,
            labels: LabelsByStage::of(&all),
            coverage,
            fully_labelled: LabelsByStage::of(&full),
            post_therapy: all.iter().filter(|r| r.post_therapy).count(),
            cancer_types,
            text_words: Quantiles::of(&words),
            text_tokens: token_lengths.and_then(Quantiles::of),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} ({:?}, TNM)", self.file, self.format);
        let _ = writeln!(
            out,
            "rows read {} · {} {}",
            self.rows_read, self.unit, self.records
        );
        for d in &self.dropped {
            let _ = writeln!(out, "  dropped {}: {}", d.count, d.reason);
        }
        if let Some(j) = self.join.as_ref().filter(|_| self.unit == "patients") {
            let _ = writeln!(
                out,
                "outer join of {} label files by patient barcode",
                j.label_files.len() + 1
            );
        } else if let Some(j) = &self.join {
            let _ = writeln!(
                out,
                "label files joined: {} ({} patients) · records matched {} · label patients without a report {} · conflicts {} (corpus value kept)",
                j.label_files.len(),
                j.label_patients,
                j.matched_records,
                j.unmatched_label_patients,
                j.conflicts
            );
        }
        let _ = writeln!(out, "labels:");
        self.labels.render(&mut out, "  ");
        let c = &self.coverage;
        let patterns: Vec<String> = c.patterns.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "coverage: all three {} · two {} · one {} · none {}  ({})",
            c.all_three,
            c.two,
            c.one,
            c.none,
            patterns.join(" · ")
        );
        let _ = writeln!(out, "fully labelled ({}):", c.all_three);
        self.fully_labelled.render(&mut out, "  ");
        if self.post_therapy > 0 {
            let _ = writeln!(
                out,
                "post-therapy (y-prefixed) labels: {}",
                self.post_therapy
            );
        }
        if !self.cancer_types.is_empty() {
            let types: Vec<String> = self
                .cancer_types
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "cancer types: {}", types.join(" · "));
        }
        if let Some(q) = &self.text_words {
            let _ = writeln!(out, "{}", q.line("text length (words)"));
        }
        if let Some(q) = &self.text_tokens {
            let _ = writeln!(out, "{}", q.line("text length (tokens)"));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SoapStats {
    pub task: &'static str,
    pub file: String,
    pub format: crate::soap::SoapFormat,
    pub rows_read: usize,
    pub examples: usize,
    pub dropped: Vec<Dropped>,
    /// Speaker-tag style → dialogues using it.
    pub speaker_tags: BTreeMap<String, usize>,
    /// Notes that carry all four SOAP section headers.
    pub notes_with_all_sections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialogue_words: Option<Quantiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note_words: Option<Quantiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialogue_tokens: Option<Quantiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note_tokens: Option<Quantiles>,
}

/// The speaker-tag conventions seen in MedSynth dialogues.
pub fn speaker_tag_style(dialogue: &str) -> &'static str {
    let lower = dialogue.to_ascii_lowercase();
    if lower.contains("[doctor]:") || lower.contains("[patient]:") {
        "[doctor]:"
    } else if lower.contains("[doctor]") || lower.contains("[patient]") {
        "[doctor] (no colon)"
    } else if lower.contains("**doctor:**") || lower.contains("**patient:**") {
        "**Doctor:**"
    } else if lower.contains("doctor:") || lower.contains("patient:") {
        "Doctor:"
    } else {
        "other"
    }
}

/// True when the note has Subjective, Objective, Assessment and Plan headers.
pub fn has_all_soap_sections(note: &str) -> bool {
    let lower = note.to_ascii_lowercase();
    ["subjective", "objective", "assessment", "plan"]
        .iter()
        .all(|s| lower.contains(s))
}

impl SoapStats {
    /// `token_lengths`: (dialogue, note) token counts per example, when a tokenizer is given.
    pub fn compute(corpus: &SoapCorpus, token_lengths: Option<(&[usize], &[usize])>) -> SoapStats {
        let mut speaker_tags = BTreeMap::new();
        for e in &corpus.examples {
            *speaker_tags
                .entry(speaker_tag_style(&e.dialogue).to_string())
                .or_default() += 1;
        }
        let dialogue_words: Vec<usize> = corpus
            .examples
            .iter()
            .map(|e| word_count(&e.dialogue))
            .collect();
        let note_words: Vec<usize> = corpus
            .examples
            .iter()
            .filter_map(|e| e.note.as_deref().map(word_count))
            .collect();
        SoapStats {
            task: "soap",
            file: corpus.path.display().to_string(),
            format: corpus.format,
            rows_read: corpus.rows_read,
            examples: corpus.examples.len(),
            dropped: dropped(&corpus.dropped),
            speaker_tags,
            notes_with_all_sections: corpus
                .examples
                .iter()
                .filter(|e| e.note.as_deref().is_some_and(has_all_soap_sections))
                .count(),
            dialogue_words: Quantiles::of(&dialogue_words),
            note_words: Quantiles::of(&note_words),
            dialogue_tokens: token_lengths.and_then(|(d, _)| Quantiles::of(d)),
            note_tokens: token_lengths.and_then(|(_, n)| Quantiles::of(n)),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{} ({:?}, SOAP)", self.file, self.format);
        let _ = writeln!(
            out,
            "rows read {} · examples kept {}",
            self.rows_read, self.examples
        );
        for d in &self.dropped {
            let _ = writeln!(out, "  dropped {}: {}", d.count, d.reason);
        }
        let tags: Vec<String> = self
            .speaker_tags
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "speaker tags: {}", tags.join(" · "));
        let _ = writeln!(
            out,
            "notes with all four SOAP sections: {}",
            self.notes_with_all_sections
        );
        for (what, q) in [
            ("dialogue length (words)", &self.dialogue_words),
            ("note length (words)", &self.note_words),
            ("dialogue length (tokens)", &self.dialogue_tokens),
            ("note length (tokens)", &self.note_tokens),
        ] {
            if let Some(q) = q {
                let _ = writeln!(out, "{}", q.line(what));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4, 10], [25, 50, 75, 90]) = [2, 3, 4, 7.6]
        let q = Quantiles::of(&[10, 1, 3, 2, 4]).unwrap();
        assert_eq!((q.p25, q.median, q.p75), (2.0, 3.0, 4.0));
        assert!((q.p90 - 7.6).abs() < 1e-12);
        assert_eq!((q.min, q.max, q.mean), (1.0, 10.0, 4.0));
        assert!(Quantiles::of(&[]).is_none());
    }

    #[test]
    fn speaker_styles() {
        assert_eq!(
            speaker_tag_style("[doctor]: hi\n\n[patient]: hi"),
            "[doctor]:"
        );
        assert_eq!(speaker_tag_style("[doctor] hi"), "[doctor] (no colon)");
        assert_eq!(speaker_tag_style("**Doctor:** hi"), "**Doctor:**");
        assert_eq!(speaker_tag_style("Doctor: hi"), "Doctor:");
        assert_eq!(speaker_tag_style("hi"), "other");
    }
}
