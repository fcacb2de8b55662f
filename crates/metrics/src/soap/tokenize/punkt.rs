//! nltk's Punkt sentence tokenizer (`PunktTokenizer("english")`, nltk 3.10) with NLTK's
//! English `punkt_tab` parameters embedded. Ported from `nltk/tokenize/punkt.py`; all
//! positions are in characters (code points), as in Python.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::soap::text::{
    is_py_lower, is_py_space, is_py_upper, is_regex_digit, is_regex_word, is_uni_space, py_lower,
};

const ORTHO_BEG_UC: u32 = 1 << 1;
const ORTHO_MID_UC: u32 = 1 << 2;
const ORTHO_UNK_UC: u32 = 1 << 3;
const ORTHO_BEG_LC: u32 = 1 << 4;
const ORTHO_MID_LC: u32 = 1 << 5;
const ORTHO_UNK_LC: u32 = 1 << 6;
const ORTHO_UC: u32 = ORTHO_BEG_UC + ORTHO_MID_UC + ORTHO_UNK_UC;
const ORTHO_LC: u32 = ORTHO_BEG_LC + ORTHO_MID_LC + ORTHO_UNK_LC;

/// The English model's parameters.
struct Params {
    abbrev_types: HashSet<String>,
    collocations: HashSet<(String, String)>,
    sent_starters: HashSet<String>,
    ortho_context: HashMap<String, u32>,
}

/// Lines as nltk's `TabDecoder` reads them (each line minus its final "\n").
fn lines(s: &'static str) -> impl Iterator<Item = &'static str> {
    s.strip_suffix('\n').unwrap_or(s).split('\n')
}

fn params() -> &'static Params {
    static P: OnceLock<Params> = OnceLock::new();
    P.get_or_init(|| {
        let abbrev_types = lines(include_str!("../../../data/punkt_english/abbrev_types.txt"))
            .map(str::to_owned)
            .collect();
        let sent_starters = lines(include_str!(
            "../../../data/punkt_english/sent_starters.txt"
        ))
        .map(str::to_owned)
        .collect();
        let collocations = lines(include_str!("../../../data/punkt_english/collocations.tab"))
            .filter_map(|l| {
                let mut it = l.split('\t');
                Some((it.next()?.to_owned(), it.next()?.to_owned()))
            })
            .collect();
        let ortho_context = lines(include_str!(
            "../../../data/punkt_english/ortho_context.tab"
        ))
        .filter_map(|l| {
            let (a, b) = l.split_once('\t')?;
            Some((a.to_owned(), b.trim().parse().ok()?))
        })
        .collect();
        Params {
            abbrev_types,
            collocations,
            sent_starters,
            ortho_context,
        }
    })
}

#[inline]
fn is_sent_end(c: char) -> bool {
    matches!(c, '.' | '?' | '!')
}

/// `_re_non_word_chars`: characters that cannot appear within words.
#[inline]
fn is_non_word(c: char) -> bool {
    matches!(
        c,
        ')' | '"'
            | ';'
            | '}'
            | ']'
            | '*'
            | ':'
            | '@'
            | '\''
            | '('
            | '{'
            | '['
            | '\u{2018}'
            | '\u{2019}'
            | '\u{201c}'
            | '\u{201d}'
            | '\u{ab}'
            | '\u{bb}'
            | '?'
            | '!'
    )
}

/// `_re_word_start` (negated class).
#[inline]
fn is_word_start(c: char) -> bool {
    !matches!(
        c,
        '(' | '"'
            | '`'
            | '{'
            | '['
            | ':'
            | ';'
            | '&'
            | '#'
            | '*'
            | '@'
            | ')'
            | '}'
            | ']'
            | '-'
            | ','
    )
}

/// `_re_multi_char_punct` matched at `p`: `-{2,}`, `\.{2,}` or `(?:\.\s){2,}\.`; returns its end.
fn multi_char_at(c: &[char], p: usize) -> Option<usize> {
    let n = c.len();
    if p >= n {
        return None;
    }
    let run = |ch: char| c[p..].iter().take_while(|&&x| x == ch).count();
    if c[p] == '-' {
        let k = run('-');
        if k >= 2 {
            return Some(p + k);
        }
    }
    if c[p] == '.' {
        let k = run('.');
        if k >= 2 {
            return Some(p + k);
        }
        let mut reps = 0;
        while p + 2 * reps + 1 < n && c[p + 2 * reps] == '.' && is_uni_space(c[p + 2 * reps + 1]) {
            reps += 1;
        }
        if reps >= 2 {
            if p + 2 * reps < n && c[p + 2 * reps] == '.' {
                return Some(p + 2 * reps + 1);
            }
            if reps >= 3 {
                return Some(p + 2 * reps - 1);
            }
        }
    }
    None
}

/// The lookahead that ends a word token in `_word_tokenize_fmt`.
fn word_ends_at(c: &[char], q: usize) -> bool {
    let n = c.len();
    if q >= n || is_uni_space(c[q]) || is_non_word(c[q]) || multi_char_at(c, q).is_some() {
        return true;
    }
    c[q] == ','
        && (q + 1 >= n
            || is_uni_space(c[q + 1])
            || is_non_word(c[q + 1])
            || multi_char_at(c, q + 1).is_some())
}

/// `PunktLanguageVars.word_tokenize` (the regex `findall`) on one line.
fn word_tokenize_line(c: &[char], out: &mut Vec<String>) {
    let n = c.len();
    let mut p = 0;
    while p < n {
        if let Some(e) = multi_char_at(c, p) {
            out.push(c[p..e].iter().collect());
            p = e;
        } else if is_word_start(c[p]) && !is_uni_space(c[p]) {
            let mut q = p + 1;
            while !word_ends_at(c, q) {
                q += 1;
            }
            out.push(c[p..q].iter().collect());
            p = q;
        } else if !is_uni_space(c[p]) {
            out.push(c[p].to_string());
            p += 1;
        } else {
            p += 1;
        }
    }
}

struct Token {
    tok: String,
    typ: String,
    period_final: bool,
    sentbreak: bool,
    abbr: bool,
    ellipsis: bool,
}

/// `_RE_NUMERIC = ^-?[\.,]?\d[\d,\.-]*\.?$` on the whole (lowercased) token.
fn is_numeric(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    if c.get(i) == Some(&'-') {
        i += 1;
    }
    if matches!(c.get(i), Some('.' | ',')) {
        i += 1;
    }
    match c.get(i) {
        Some(&d) if is_regex_digit(d) => {}
        _ => return false,
    }
    c[i + 1..]
        .iter()
        .all(|&x| is_regex_digit(x) || matches!(x, ',' | '.' | '-'))
}

impl Token {
    fn new(tok: String) -> Token {
        let lower = py_lower(&tok);
        let typ = if is_numeric(&lower) {
            "##number##".to_owned()
        } else {
            lower
        };
        Token {
            period_final: tok.ends_with('.'),
            tok,
            typ,
            sentbreak: false,
            abbr: false,
            ellipsis: false,
        }
    }

    fn type_no_period(&self) -> &str {
        if self.typ.chars().count() > 1 && self.typ.ends_with('.') {
            &self.typ[..self.typ.len() - 1]
        } else {
            &self.typ
        }
    }

    fn type_no_sentperiod(&self) -> &str {
        if self.sentbreak {
            self.type_no_period()
        } else {
            &self.typ
        }
    }

    fn first_char(&self) -> char {
        self.tok.chars().next().unwrap_or(' ')
    }

    fn first_upper(&self) -> bool {
        is_py_upper(self.first_char())
    }

    fn first_lower(&self) -> bool {
        is_py_lower(self.first_char())
    }

    fn is_ellipsis(&self) -> bool {
        self.tok.len() >= 2 && self.tok.bytes().all(|b| b == b'.')
    }

    /// `_RE_INITIAL = [^\W\d]\.$`
    fn is_initial(&self) -> bool {
        let mut it = self.tok.chars();
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some('.'), None) => is_regex_word(a) && !is_regex_digit(a),
            _ => false,
        }
    }
}

fn first_pass(t: &mut Token, p: &Params) {
    let tok = t.tok.as_str();
    if matches!(tok, "." | "?" | "!") {
        t.sentbreak = true;
    } else if t.is_ellipsis() {
        t.ellipsis = true;
    } else if t.period_final && !tok.ends_with("..") {
        let head = py_lower(&tok[..tok.len() - 1]);
        let last = head.rsplit('-').next().unwrap_or("");
        if p.abbrev_types.contains(&head) || p.abbrev_types.contains(last) {
            t.abbr = true;
        } else {
            t.sentbreak = true;
        }
    }
}

#[derive(PartialEq)]
enum Ortho {
    Yes,
    No,
    Unknown,
}

fn ortho_heuristic(t: &Token, p: &Params) -> Ortho {
    if matches!(t.tok.as_str(), ";" | ":" | "," | "." | "!" | "?") {
        return Ortho::No;
    }
    let oc = p
        .ortho_context
        .get(t.type_no_sentperiod())
        .copied()
        .unwrap_or(0);
    if t.first_upper() && (oc & ORTHO_LC) != 0 && (oc & ORTHO_MID_UC) == 0 {
        return Ortho::Yes;
    }
    if t.first_lower() && ((oc & ORTHO_UC) != 0 || (oc & ORTHO_BEG_LC) == 0) {
        return Ortho::No;
    }
    Ortho::Unknown
}

fn second_pass(t1: &mut Token, t2: &Token, p: &Params) {
    if !t1.period_final {
        return;
    }
    let typ = t1.type_no_period().to_owned();
    let next_typ = t2.type_no_sentperiod();
    let is_initial = t1.is_initial();
    if p.collocations.contains(&(typ.clone(), next_typ.to_owned())) {
        t1.sentbreak = false;
        t1.abbr = true;
        return;
    }
    if (t1.abbr || t1.ellipsis) && !is_initial {
        if ortho_heuristic(t2, p) == Ortho::Yes {
            t1.sentbreak = true;
            return;
        }
        if t2.first_upper() && p.sent_starters.contains(next_typ) {
            t1.sentbreak = true;
            return;
        }
    }
    if is_initial || typ == "##number##" {
        let h = ortho_heuristic(t2, p);
        if h == Ortho::No {
            t1.sentbreak = false;
            t1.abbr = true;
            return;
        }
        if h == Ortho::Unknown
            && is_initial
            && t2.first_upper()
            && p.ortho_context.get(next_typ).copied().unwrap_or(0) & ORTHO_LC == 0
        {
            t1.sentbreak = false;
            t1.abbr = true;
        }
    }
}

/// `text_contains_sentbreak`: a token annotated as a sentence break is followed by another.
fn text_contains_sentbreak(ctx: &[char], p: &Params) -> bool {
    let mut words = Vec::new();
    for line in ctx.split(|&c| c == '\n') {
        if line.iter().any(|&c| !is_py_space(c)) {
            word_tokenize_line(line, &mut words);
        }
    }
    let mut toks: Vec<Token> = words.into_iter().map(Token::new).collect();
    for t in &mut toks {
        first_pass(t, p);
    }
    for i in 0..toks.len() {
        if i + 1 < toks.len() {
            let (a, b) = toks.split_at_mut(i + 1);
            second_pass(&mut a[i], &b[0], p);
            if a[i].sentbreak {
                return true;
            }
        }
    }
    false
}

struct EndMatch {
    /// Index of the sentence-ending character.
    start: usize,
    /// End of the `after_tok` lookahead group.
    after_end: usize,
    /// Start of `next_tok`, if the lookahead took the whitespace branch.
    next_tok: Option<usize>,
}

/// `period_context_re().finditer(text)`.
fn period_contexts(c: &[char]) -> Vec<EndMatch> {
    let n = c.len();
    let mut out = Vec::new();
    for p in 0..n {
        if !is_sent_end(c[p]) || p + 1 >= n {
            continue;
        }
        if is_non_word(c[p + 1]) {
            out.push(EndMatch {
                start: p,
                after_end: p + 2,
                next_tok: None,
            });
        } else if is_uni_space(c[p + 1]) {
            let mut q = p + 1;
            while q < n && is_uni_space(c[q]) {
                q += 1;
            }
            if q < n {
                let mut r = q;
                while r < n && !is_uni_space(c[r]) {
                    r += 1;
                }
                out.push(EndMatch {
                    start: p,
                    after_end: r,
                    next_tok: Some(q),
                });
            }
        }
    }
    out
}

/// `_match_potential_end_contexts`: (match, context text) pairs, overlaps removed.
fn potential_end_contexts(c: &[char]) -> Vec<(EndMatch, Vec<char>)> {
    let is_ascii_ws = |x: char| matches!(x, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c');
    let mut out = Vec::new();
    let mut prev_slice = (0usize, 0usize);
    let mut prev_match: Option<EndMatch> = None;
    let context = |s: (usize, usize), m: &EndMatch| -> Vec<char> {
        let mut v: Vec<char> = c[s.0..s.1].to_vec();
        v.extend_from_slice(&c[m.start..m.after_end]);
        v
    };
    for m in period_contexts(c) {
        let before = &c[prev_slice.1..m.start];
        let mut idx = before.iter().rposition(|&x| is_ascii_ws(x)).unwrap_or(0);
        if idx != 0 {
            idx += prev_slice.1 + 1;
        } else {
            idx = prev_slice.0;
        }
        let word_slice = (idx, m.start);
        if let Some(pm) = prev_match.take()
            && prev_slice.1 <= word_slice.0
        {
            let ctx = context(prev_slice, &pm);
            out.push((pm, ctx));
        }
        prev_match = Some(m);
        prev_slice = word_slice;
    }
    if let Some(pm) = prev_match {
        let ctx = context(prev_slice, &pm);
        out.push((pm, ctx));
    }
    out
}

/// `_realign_boundaries`' regex `["')\]}‘’“”«»]+?(?:\s+|(?=--)|$)` (MULTILINE), matched
/// at the start of `s`: returns (length of the punctuation, end of the match).
fn realign_match(s: &[char]) -> Option<(usize, usize)> {
    let is_close = |x: char| {
        matches!(
            x,
            '"' | '\''
                | ')'
                | ']'
                | '}'
                | '\u{2018}'
                | '\u{2019}'
                | '\u{201c}'
                | '\u{201d}'
                | '\u{ab}'
                | '\u{bb}'
        )
    };
    let n = s.len();
    let mut k = 0;
    while k < n && is_close(s[k]) {
        k += 1;
        if k < n && is_uni_space(s[k]) {
            let mut e = k;
            while e < n && is_uni_space(s[e]) {
                e += 1;
            }
            return Some((k, e));
        }
        if (k + 1 < n && s[k] == '-' && s[k + 1] == '-') || k == n || s[k] == '\n' {
            return Some((k, k));
        }
    }
    None
}

/// Sentence spans (character offsets) of `PunktTokenizer("english").span_tokenize(text)`.
pub fn sentence_spans(c: &[char]) -> Vec<(usize, usize)> {
    let p = params();
    let mut slices = Vec::new();
    let mut last_break = 0;
    for (m, ctx) in potential_end_contexts(c) {
        if text_contains_sentbreak(&ctx, p) {
            slices.push((last_break, m.start + 1));
            last_break = m.next_tok.unwrap_or(m.start + 1);
        }
    }
    let rstripped = c.len() - c.iter().rev().take_while(|&&x| is_py_space(x)).count();
    slices.push((last_break, rstripped));

    let nonempty = |s: (usize, usize)| s.0 < s.1.min(c.len());
    let mut out = Vec::new();
    let mut realign = 0;
    for i in 0..slices.len() {
        let s1 = (slices[i].0 + realign, slices[i].1);
        let Some(&s2) = slices.get(i + 1) else {
            if nonempty(s1) {
                out.push(s1);
            }
            continue;
        };
        let s2_text = &c[s2.0.min(c.len())..s2.1.min(c.len()).max(s2.0.min(c.len()))];
        if let Some((k, e)) = realign_match(s2_text) {
            out.push((s1.0, s2.0 + k));
            realign = e;
        } else {
            realign = 0;
            if nonempty(s1) {
                out.push(s1);
            }
        }
    }
    out
}

/// nltk `sent_tokenize(text)` (English Punkt), as slices of `text`.
pub fn sent_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<char> = text.chars().collect();
    let mut byte_at: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    byte_at.push(text.len());
    sentence_spans(&chars)
        .into_iter()
        .map(|(s, e)| {
            let e = e.min(chars.len());
            let s = s.min(e);
            &text[byte_at[s]..byte_at[e]]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abbreviations_and_initials() {
        assert_eq!(
            sent_tokenize("Seen by Dr. Smith today. Take 1 tab b.i.d. for pain."),
            ["Seen by Dr. Smith today.", "Take 1 tab b.i.d.", "for pain."]
        );
        assert_eq!(
            sent_tokenize(
                "(How does it deal with this parenthesis?)  \"It should be part of the previous sentence.\" Next one."
            ),
            [
                "(How does it deal with this parenthesis?)",
                "\"It should be part of the previous sentence.\"",
                "Next one."
            ]
        );
        assert!(sent_tokenize("").is_empty());
        assert!(sent_tokenize("  \n ").is_empty());
    }
}
