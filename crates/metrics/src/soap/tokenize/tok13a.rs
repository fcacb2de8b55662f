//! sacreBLEU's `13a` tokenizer (mteval-v13a), which HF `evaluate`'s BLEU also uses.

use crate::soap::text::py_split;

#[inline]
fn is_rule1(c: char) -> bool {
    // [\{-\~\[-\` -\&\(-\+\:-\@\/]: ASCII punctuation except ' , - .
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

#[inline]
fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
}

/// Tokenizes one segment exactly like `Tokenizer13a()(line).split()`.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut s = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if s.contains('&') {
        s = s
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut a: Vec<char> = Vec::with_capacity(s.len() + 2);
    a.push(' ');
    a.extend(s.chars());
    a.push(' ');

    // Each pass below emulates one non-overlapping, left-to-right `re.sub`.
    let mut b: Vec<char> = Vec::with_capacity(a.len() * 2);
    for &c in &a {
        if is_rule1(c) {
            b.extend([' ', c, ' ']);
        } else {
            b.push(c);
        }
    }
    // ([^0-9])([\.,]) -> "\1 \2 "
    a.clear();
    let mut i = 0;
    while i < b.len() {
        if i + 1 < b.len() && !is_digit(b[i]) && matches!(b[i + 1], '.' | ',') {
            a.extend([b[i], ' ', b[i + 1], ' ']);
            i += 2;
        } else {
            a.push(b[i]);
            i += 1;
        }
    }
    // ([\.,])([^0-9]) -> " \1 \2"
    b.clear();
    i = 0;
    while i < a.len() {
        if i + 1 < a.len() && matches!(a[i], '.' | ',') && !is_digit(a[i + 1]) {
            b.extend([' ', a[i], ' ', a[i + 1]]);
            i += 2;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    // ([0-9])(-) -> "\1 \2 "
    a.clear();
    i = 0;
    while i < b.len() {
        if i + 1 < b.len() && is_digit(b[i]) && b[i + 1] == '-' {
            a.extend([b[i], ' ', '-', ' ']);
            i += 2;
        } else {
            a.push(b[i]);
            i += 1;
        }
    }
    let out: String = a.into_iter().collect();
    py_split(&out).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic() {
        assert_eq!(
            tokenize_13a("BP 120/80 mmHg, T 37.5°C; 1,000 mg."),
            [
                "BP", "120", "/", "80", "mmHg", ",", "T", "37.5°C", ";", "1,000", "mg", "."
            ]
        );
        assert_eq!(
            tokenize_13a("follow-\nup &amp; 3-4"),
            ["followup", "&", "3", "-", "4"]
        );
        assert!(tokenize_13a("").is_empty());
    }
}
