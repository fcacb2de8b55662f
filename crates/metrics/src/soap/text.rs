//! Character classes and string helpers with Python's exact semantics.
//!
//! The reference scorers mix three notions of "whitespace" and "word character"
//! (`str.isspace`, the `regex` module's Unicode classes, stdlib `re`'s classes); a
//! token boundary differs if we pick the wrong one, so each is named here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::soap::pyunicode::{self, Class};

/// Multiply-rotate hasher (as in rustc's FxHash) for the scorers' internal maps: keys are
/// small integers and short strings from the documents being scored, never adversarial
/// across a trust boundary, and iteration order never affects a result.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// `HashMap` with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Python `str.isspace()` for one character (what `str.split()`/`strip()` use).
/// Unicode `White_Space` plus the ASCII information separators U+001C..U+001F.
#[inline]
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `\s` of the `regex` module (used by nltk's tokenizers): Unicode `White_Space`.
#[inline]
pub fn is_uni_space(c: char) -> bool {
    c.is_whitespace()
}

/// `\w` of the `regex` module (UTS #18 word characters), as nltk's tokenizers see it.
#[inline]
pub fn is_regex_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    pyunicode::is(Class::RegexWord, c)
}

/// `\d` of the `regex` module: Unicode decimal digits (`Nd`).
#[inline]
pub fn is_regex_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    pyunicode::is(Class::RegexDigit, c)
}

/// `\w` of Python's stdlib `re` on `str` patterns: `str.isalnum()` or `_`.
#[inline]
pub fn is_re_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    pyunicode::is(Class::ReWord, c)
}

/// Python `str.isupper()` of one character.
#[inline]
pub fn is_py_upper(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_uppercase();
    }
    pyunicode::is(Class::Upper, c)
}

/// Python `str.islower()` of one character.
#[inline]
pub fn is_py_lower(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_lowercase();
    }
    pyunicode::is(Class::Lower, c)
}

/// Python `str.split()` with no argument.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python `str.rstrip()` with no argument.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Python `str.lower()` (full Unicode mapping, final sigma included).
pub fn py_lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(s.len() + 8);
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if c == '\u{3a3}' {
            out.push(if final_sigma(&chars, i) { 'ς' } else { 'σ' });
        } else {
            pyunicode::push_lower(c, &mut out);
        }
    }
    out
}

/// CPython's `handle_capital_sigma`: word-final when a cased character precedes (skipping
/// case-ignorable ones) and none follows.
fn final_sigma(chars: &[char], i: usize) -> bool {
    let ignorable = |c: char| pyunicode::is(Class::SigmaIgnorable, c);
    let cased = |c: char| pyunicode::is(Class::SigmaCased, c);
    let before = chars[..i].iter().rev().find(|&&c| !ignorable(c));
    if !before.is_some_and(|&c| cased(c)) {
        return false;
    }
    match chars[i + 1..].iter().find(|&&c| !ignorable(c)) {
        None => true,
        Some(&c) => !cased(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_sets() {
        assert!(is_py_space('\u{1c}') && !is_uni_space('\u{1c}'));
        assert!(is_py_space('\u{a0}') && is_uni_space('\u{a0}'));
        assert!(!is_py_space('\u{200b}'));
        assert_eq!(
            py_split(" a\u{a0}b\u{1f}c  ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn word_classes() {
        assert!(is_regex_word('é') && is_regex_word('_') && is_regex_word('\u{301}'));
        assert!(!is_regex_word('-') && !is_regex_word('😀'));
        assert!(is_regex_digit('٣') && !is_regex_digit('²'));
        assert!(is_re_word('²') && is_re_word('é') && !is_re_word('\u{345}'));
        assert!(is_py_upper('Ⓐ') && !is_py_upper('ǅ') && is_py_lower('ß'));
    }

    #[test]
    fn python_lower() {
        assert_eq!(py_lower("İSTANBUL"), "i\u{307}stanbul");
        assert_eq!(py_lower("ΟΔΟΣ ΣΑ Σ"), "οδος σα σ");
        assert_eq!(py_lower("\u{212a}elvin"), "kelvin");
    }
}
