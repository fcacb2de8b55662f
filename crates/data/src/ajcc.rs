//! The one place where TNM labels are mapped, from AJCC strings and from the official integer
//! codes, to the primary category clinstruct trains on.
//!
//! Mapping (documented in README.md, "Label conventions"):
//! - prefixes `c`, `p`, `yp`, `yc`, `r`, `a` are dropped; `y` (post-neoadjuvant) is flagged;
//! - substage suffixes are dropped: T2a→T2, T2a1→T2, N1mi→N1, N0(i+)→N0, M1c→M1;
//! - "not determinable" values are missing: TX, NX, MX, T0, Tis, and blank / "unknown" /
//!   "not reported" / "--" placeholders as GDC writes them;
//! - a category outside the stage's range (T5, N4, M2) is an error, never silently missing.
//!
//! Missing is `None` here and in files (a blank cell); tensors use the sentinel −1
//! ([`Stage::sentinel`]).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    T,
    N,
    M,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::T, Stage::N, Stage::M];

    pub fn letter(self) -> char {
        match self {
            Stage::T => 'T',
            Stage::N => 'N',
            Stage::M => 'M',
        }
    }

    /// Smallest valid category (T starts at 1; N and M at 0).
    pub fn min_category(self) -> u8 {
        match self {
            Stage::T => 1,
            Stage::N | Stage::M => 0,
        }
    }

    pub fn max_category(self) -> u8 {
        match self {
            Stage::T => 4,
            Stage::N => 3,
            Stage::M => 1,
        }
    }

    pub fn num_classes(self) -> usize {
        (self.max_category() - self.min_category() + 1) as usize
    }

    /// Category (T1..T4, N0..N3, M0..M1) → 0-based class index used by models and metrics.
    pub fn class_index(self, category: u8) -> usize {
        (category - self.min_category()) as usize
    }

    pub fn category(self, class_index: usize) -> u8 {
        class_index as u8 + self.min_category()
    }

    /// Class index with −1 for missing: the label encoding of the masked partial-label loss.
    pub fn sentinel(self, category: Option<u8>) -> i64 {
        category.map_or(-1, |c| self.class_index(c) as i64)
    }

    pub fn class_name(self, class_index: usize) -> String {
        format!("{}{}", self.letter(), self.category(class_index))
    }

    pub fn range_text(self) -> String {
        format!(
            "{} must be {}–{}, blank = missing",
            self.letter(),
            self.min_category(),
            self.max_category()
        )
    }

    pub fn in_range(self, category: u8) -> bool {
        (self.min_category()..=self.max_category()).contains(&category)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// A parsed AJCC value: the primary category (None = not determinable) and whether the
/// string marked a post-neoadjuvant (y-prefixed) classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AjccValue {
    pub category: Option<u8>,
    pub post_therapy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AjccError {
    #[error("not an AJCC {stage} value")]
    Unparsable { stage: Stage },
    #[error("category {category} is out of range ({})", .stage.range_text())]
    OutOfRange { stage: Stage, category: u8 },
}

const MISSING_WORDS: &[&str] = &[
    "",
    "unknown",
    "not reported",
    "not available",
    "not applicable",
    "na",
    "n/a",
    "nan",
    "none",
    "null",
    "--",
    "'--",
];

/// Parses one AJCC string (e.g. `ypT2a`, `pN0(i+)`, `cM1c`, `TX`) for `stage`.
pub fn normalize(stage: Stage, raw: &str) -> Result<AjccValue, AjccError> {
    let compact: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    let lower = compact.to_ascii_lowercase();
    if MISSING_WORDS.contains(&lower.as_str()) {
        return Ok(AjccValue {
            category: None,
            post_therapy: false,
        });
    }
    let letter = stage.letter().to_ascii_lowercase();
    let Some(pos) = lower.find(letter) else {
        return Err(AjccError::Unparsable { stage });
    };
    let (prefix, rest) = (&lower[..pos], &lower[pos + 1..]);
    if !prefix
        .chars()
        .all(|c| matches!(c, 'c' | 'p' | 'y' | 'r' | 'a' | 'u'))
        || prefix.len() > 3
    {
        return Err(AjccError::Unparsable { stage });
    }
    let post_therapy = prefix.contains('y');
    let missing = AjccValue {
        category: None,
        post_therapy,
    };
    if rest.starts_with('x') || rest.starts_with("is") {
        return Ok(missing);
    }
    let Some(digit) = rest.chars().next().and_then(|c| c.to_digit(10)) else {
        return Err(AjccError::Unparsable { stage });
    };
    let category = digit as u8;
    // T0 means "no evidence of primary tumour": not a T1–T4 class.
    if stage == Stage::T && category == 0 {
        return Ok(missing);
    }
    // Two-digit categories ("T12") are not AJCC; anything after the digit must be a suffix.
    if rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
        return Err(AjccError::Unparsable { stage });
    }
    if !stage.in_range(category) {
        return Err(AjccError::OutOfRange { stage, category });
    }
    Ok(AjccValue {
        category: Some(category),
        post_therapy,
    })
}

/// Parses an official integer code (`t` 1–4, `n` 0–3, `m` 0–1). Blank and pandas' NaN are missing;
/// `2.0` (pandas writes float columns when a column has blanks) is accepted as 2.
pub fn parse_code(stage: Stage, raw: &str) -> Result<Option<u8>, CodeError> {
    let s = raw.trim();
    if MISSING_WORDS.contains(&s.to_ascii_lowercase().as_str()) || s == "-1" {
        return Ok(None);
    }
    let value: f64 = s.parse().map_err(|_| CodeError::NotANumber)?;
    if value.fract() != 0.0 || !value.is_finite() {
        return Err(CodeError::NotAnInteger);
    }
    if value < stage.min_category() as f64 || value > stage.max_category() as f64 {
        return Err(CodeError::OutOfRange);
    }
    Ok(Some(value as u8))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeError {
    NotANumber,
    NotAnInteger,
    OutOfRange,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(stage: Stage, s: &str) -> Option<u8> {
        normalize(stage, s).unwrap().category
    }

    #[test]
    fn substages_map_to_primary_category() {
        assert_eq!(cat(Stage::T, "T2a"), Some(2));
        assert_eq!(cat(Stage::T, "pT3b"), Some(3));
        assert_eq!(cat(Stage::T, "T2a1"), Some(2));
        assert_eq!(cat(Stage::T, "T1b2"), Some(1));
        assert_eq!(cat(Stage::T, "T1mi"), Some(1));
        assert_eq!(cat(Stage::T, "T4e"), Some(4));
        assert_eq!(cat(Stage::T, "pT1b(m)"), Some(1));
        assert_eq!(cat(Stage::N, "N1mi"), Some(1));
        assert_eq!(cat(Stage::N, "pN0(i+)"), Some(0));
        assert_eq!(cat(Stage::N, "N0 (i-)"), Some(0));
        assert_eq!(cat(Stage::N, "N3c"), Some(3));
        assert_eq!(cat(Stage::M, "M1c"), Some(1));
        assert_eq!(cat(Stage::M, "cM0 (i+)"), Some(0));
        assert_eq!(cat(Stage::M, "pM1a"), Some(1));
    }

    #[test]
    fn post_therapy_is_flagged() {
        let v = normalize(Stage::T, "ypT2").unwrap();
        assert_eq!(v.category, Some(2));
        assert!(v.post_therapy);
        assert!(normalize(Stage::N, "ypN1b").unwrap().post_therapy);
        assert!(!normalize(Stage::T, "pT2").unwrap().post_therapy);
    }

    #[test]
    fn not_determinable_is_missing() {
        for s in [
            "TX",
            "pTX",
            "T0",
            "Tis",
            "pTis(DCIS)",
            "",
            "  ",
            "Unknown",
            "'--",
        ] {
            assert_eq!(cat(Stage::T, s), None, "{s}");
        }
        assert_eq!(cat(Stage::N, "NX"), None);
        assert_eq!(cat(Stage::M, "MX"), None);
        assert_eq!(cat(Stage::M, "pMX"), None);
    }

    #[test]
    fn t_categories_are_case_and_space_insensitive() {
        assert_eq!(cat(Stage::T, " t3 "), Some(3));
        assert_eq!(cat(Stage::N, "PN2"), Some(2));
    }

    #[test]
    fn bad_values_are_errors() {
        assert_eq!(
            normalize(Stage::T, "T5"),
            Err(AjccError::OutOfRange {
                stage: Stage::T,
                category: 5
            })
        );
        assert_eq!(
            normalize(Stage::N, "N4"),
            Err(AjccError::OutOfRange {
                stage: Stage::N,
                category: 4
            })
        );
        assert_eq!(
            normalize(Stage::M, "M2"),
            Err(AjccError::OutOfRange {
                stage: Stage::M,
                category: 2
            })
        );
        assert!(matches!(
            normalize(Stage::T, "N1"),
            Err(AjccError::Unparsable { .. })
        ));
        assert!(matches!(
            normalize(Stage::T, "stage II"),
            Err(AjccError::Unparsable { .. })
        ));
    }

    #[test]
    fn codes() {
        assert_eq!(parse_code(Stage::T, "3"), Ok(Some(3)));
        assert_eq!(parse_code(Stage::T, "3.0"), Ok(Some(3)));
        assert_eq!(parse_code(Stage::T, ""), Ok(None));
        assert_eq!(parse_code(Stage::T, "nan"), Ok(None));
        assert_eq!(parse_code(Stage::T, "0"), Err(CodeError::OutOfRange));
        assert_eq!(parse_code(Stage::M, "2"), Err(CodeError::OutOfRange));
        assert_eq!(parse_code(Stage::N, "x"), Err(CodeError::NotANumber));
        assert_eq!(parse_code(Stage::N, "1.5"), Err(CodeError::NotAnInteger));
    }

    #[test]
    fn class_indices_and_sentinel() {
        assert_eq!(Stage::T.class_index(1), 0);
        assert_eq!(Stage::T.sentinel(Some(4)), 3);
        assert_eq!(Stage::N.sentinel(Some(0)), 0);
        assert_eq!(Stage::M.sentinel(None), -1);
        assert_eq!(Stage::T.class_name(3), "T4");
        assert_eq!(Stage::N.num_classes(), 4);
        assert_eq!(Stage::M.num_classes(), 2);
    }
}
