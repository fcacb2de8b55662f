//! Text helpers shared by both tasks.

/// Collapses every run of whitespace (OCR line breaks, tabs, non-breaking spaces) to one space
/// and trims the ends: the report preprocessing of the seed system.
pub fn normalize_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Whitespace-separated words, the unit of the length statistics in data.md.
pub fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

/// A short, stable fingerprint of a text (FNV-1a 64), for logs that must not contain the text.
pub fn fingerprint(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace() {
        assert_eq!(normalize_whitespace("  a\n\tb \u{a0} c  "), "a b c");
        assert_eq!(normalize_whitespace(""), "");
        assert_eq!(word_count(" a  b\nc "), 3);
    }

    #[test]
    fn fingerprint_is_stable() {
        assert_eq!(fingerprint(""), "cbf29ce484222325");
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }
}
