//! nltk's `NLTKWordTokenizer` (the improved Treebank tokenizer behind `word_tokenize`,
//! nltk 3.10). Each regex substitution is emulated by one left-to-right pass with
//! Python's non-overlapping `re.sub` semantics, reading the previous pass's output.

use crate::soap::text::{is_py_space, is_re_word, is_regex_digit, is_regex_word, is_uni_space};

type Buf = Vec<char>;

fn has(a: &[char], f: impl Fn(char) -> bool) -> bool {
    a.iter().any(|&c| f(c))
}

/// Replaces every char matching `f` by " c ".
fn pad_chars(a: Buf, f: impl Fn(char) -> bool) -> Buf {
    if !has(&a, &f) {
        return a;
    }
    let mut b = Vec::with_capacity(a.len() + 16);
    for &c in &a {
        if f(c) {
            b.extend([' ', c, ' ']);
        } else {
            b.push(c);
        }
    }
    b
}

fn starts_with(a: &[char], i: usize, s: &str) -> bool {
    s.chars()
        .enumerate()
        .all(|(k, ch)| a.get(i + k) == Some(&ch))
}

/// Replaces non-overlapping occurrences of `pat` by `rep`.
fn replace_lit(a: Buf, pat: &str, rep: &str) -> Buf {
    let first = pat.chars().next().expect("non-empty pattern");
    if !a.contains(&first) {
        return a;
    }
    let plen = pat.chars().count();
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        if a[i] == first && starts_with(&a, i, pat) {
            b.extend(rep.chars());
            i += plen;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    b
}

fn starting_quotes(a: Buf) -> Buf {
    if !has(&a, |c| {
        matches!(c, '«' | '“' | '‘' | '„' | '`' | '"' | '\'')
    }) {
        return a;
    }
    // ([«“‘„]|[`]+) -> " \1 "
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        let c = a[i];
        if matches!(c, '«' | '“' | '‘' | '„') {
            b.extend([' ', c, ' ']);
            i += 1;
        } else if c == '`' {
            b.push(' ');
            while i < a.len() && a[i] == '`' {
                b.push('`');
                i += 1;
            }
            b.push(' ');
        } else {
            b.push(c);
            i += 1;
        }
    }
    // ^\" -> ``
    let a = if b.first() == Some(&'"') {
        let mut v = vec!['`', '`'];
        v.extend_from_slice(&b[1..]);
        v
    } else {
        b
    };
    // (``) -> " \1 "
    let a = replace_lit(a, "``", " `` ");
    // ([ \(\[{<])(\"|\'{2}) -> "\1 `` "
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        let c = a[i];
        if matches!(c, ' ' | '(' | '[' | '{' | '<') {
            if a.get(i + 1) == Some(&'"') {
                b.extend([c, ' ', '`', '`', ' ']);
                i += 2;
                continue;
            }
            if a.get(i + 1) == Some(&'\'') && a.get(i + 2) == Some(&'\'') {
                b.extend([c, ' ', '`', '`', ' ']);
                i += 3;
                continue;
            }
        }
        b.push(c);
        i += 1;
    }
    // (?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w) -> "\1 "
    let a = b;
    let mut b = Vec::with_capacity(a.len() + 16);
    for i in 0..a.len() {
        b.push(a[i]);
        if a[i] == '\''
            && (i == 0 || !is_regex_word(a[i - 1]))
            && a.get(i + 1).is_some_and(|&c| is_regex_word(c))
            && !contraction_suffix_follows(&a, i + 1)
        {
            b.push(' ');
        }
    }
    b
}

/// `(?i)(?:re|ve|ll|m|t|s|d|n)\b` at `j` (the `regex` module folds 's' with 'ſ').
fn contraction_suffix_follows(a: &[char], j: usize) -> bool {
    let eq = |c: char, l: char| c.to_ascii_lowercase() == l || (l == 's' && c == 'ſ');
    let boundary = |k: usize| k >= a.len() || !is_regex_word(a[k]);
    for alt in ["re", "ve", "ll", "m", "t", "s", "d", "n"] {
        let n = alt.len();
        if j + n <= a.len()
            && alt.chars().zip(&a[j..j + n]).all(|(l, &c)| eq(c, l))
            && boundary(j + n)
        {
            return true;
        }
    }
    false
}

/// `([^\.])(\.)(CLASS*)\s*$`: the final period. Returns (index of the char before the
/// period, end of the CLASS run) when it matches.
fn final_period(a: &[char], class: impl Fn(char) -> bool) -> Option<(usize, usize)> {
    let p = a.iter().rposition(|&c| c == '.')?;
    if p == 0 || a[p - 1] == '.' {
        return None;
    }
    let mut j = p + 1;
    while j < a.len() && class(a[j]) {
        j += 1;
    }
    if a[j..].iter().all(|&c| is_uni_space(c)) {
        Some((p - 1, j))
    } else {
        None
    }
}

fn punctuation(a: Buf) -> Buf {
    if !has(&a, |c| {
        matches!(
            c,
            '.' | ':'
                | ','
                | ';'
                | '@'
                | '#'
                | '$'
                | '%'
                | '&'
                | '?'
                | '!'
                | '\''
                | '*'
                | '\u{2012}'..='\u{2015}'
        )
    }) {
        return a;
    }
    // ([^\.])(\.)([\]\)}>"\'»”’ ]*+)\s*$ -> "\1 \2 \3 "
    let a = match final_period(&a, |c| {
        matches!(
            c,
            ']' | ')' | '}' | '>' | '"' | '\'' | '»' | '”' | '’' | ' '
        )
    }) {
        Some((i, j)) => {
            let mut b = a[..=i].to_vec();
            b.extend([' ', '.', ' ']);
            b.extend_from_slice(&a[i + 2..j]);
            b.push(' ');
            b
        }
        None => a,
    };
    // ([:,])([^\d]) -> " \1 \2"
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        if matches!(a[i], ':' | ',') && i + 1 < a.len() && !is_regex_digit(a[i + 1]) {
            b.extend([' ', a[i], ' ', a[i + 1]]);
            i += 2;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    // ([:,])$ -> " \1 "   ($ also matches before a final "\n")
    let n = b.len();
    let a = if n >= 2 && b[n - 1] == '\n' && matches!(b[n - 2], ':' | ',') {
        let mut v = b[..n - 2].to_vec();
        v.extend([' ', b[n - 2], ' ', '\n']);
        v
    } else if n >= 1 && matches!(b[n - 1], ':' | ',') {
        let mut v = b[..n - 1].to_vec();
        v.extend([' ', b[n - 1], ' ']);
        v
    } else {
        b
    };
    // \.{2,} -> " \g<0> "
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        let run = a[i..].iter().take_while(|&&c| c == '.').count();
        if run >= 2 {
            b.push(' ');
            b.extend_from_slice(&a[i..i + run]);
            b.push(' ');
            i += run;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    // [;@#$%&] and [\u2012-\u2015] -> " \g<0> "
    let a = pad_chars(b, |c| {
        matches!(
            c,
            ';' | '@' | '#' | '$' | '%' | '&' | '\u{2012}'..='\u{2015}'
        )
    });
    // ([^\.])(\.)([\]\)}>"\']*)\s*$ -> "\1 \2\3 "
    let a = match final_period(&a, |c| matches!(c, ']' | ')' | '}' | '>' | '"' | '\'')) {
        Some((i, j)) => {
            let mut b = a[..=i].to_vec();
            b.extend([' ', '.']);
            b.extend_from_slice(&a[i + 2..j]);
            b.push(' ');
            b
        }
        None => a,
    };
    // [?!] -> " \g<0> "
    let a = pad_chars(a, |c| matches!(c, '?' | '!'));
    // ([^'])' -> "\1 ' "
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        if a[i] != '\'' && a.get(i + 1) == Some(&'\'') && a.get(i + 2) == Some(&' ') {
            b.extend([a[i], ' ', '\'', ' ']);
            i += 3;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    // [*] -> " \g<0> "
    pad_chars(b, |c| c == '*')
}

fn ending_quotes(a: Buf) -> Buf {
    let a = pad_chars(a, |c| matches!(c, '»' | '”' | '’'));
    let a = replace_lit(a, "''", " '' ");
    let a = replace_lit(a, "\"", " '' ");
    // \s+ -> " "
    let a = collapse_ws(&a);
    if !a.contains(&'\'') {
        return a;
    }
    // ([^' ])('[sS]|'[mM]|'[dD]|') -> "\1 \2 "
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        if !matches!(a[i], '\'' | ' ') && a.get(i + 1) == Some(&'\'') {
            if a.get(i + 2).is_some_and(|c| "sSmMdD".contains(*c)) && a.get(i + 3) == Some(&' ') {
                b.extend([a[i], ' ', '\'', a[i + 2], ' ']);
                i += 4;
                continue;
            }
            if a.get(i + 2) == Some(&' ') {
                b.extend([a[i], ' ', '\'', ' ']);
                i += 3;
                continue;
            }
        }
        b.push(a[i]);
        i += 1;
    }
    // ([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) -> "\1 \2 "
    let a = b;
    let mut b = Vec::with_capacity(a.len() + 16);
    let mut i = 0;
    while i < a.len() {
        if !matches!(a[i], '\'' | ' ')
            && a.get(i + 4) == Some(&' ')
            && ["'ll", "'LL", "'re", "'RE", "'ve", "'VE", "n't", "N'T"]
                .iter()
                .any(|s| starts_with(&a, i + 1, s))
        {
            b.extend([a[i], ' ', a[i + 1], a[i + 2], a[i + 3], ' ']);
            i += 5;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    b
}

/// `\s+` -> " " with the `regex` module's `\s`.
fn collapse_ws(a: &[char]) -> Buf {
    let mut b = Vec::with_capacity(a.len());
    let mut in_ws = false;
    for &c in a {
        if is_uni_space(c) {
            if !in_ws {
                b.push(' ');
            }
            in_ws = true;
        } else {
            b.push(c);
            in_ws = false;
        }
    }
    b
}

/// stdlib `re` `(?i)` literal comparison for the contraction words ('i' also matches
/// U+0130 and U+0131 there).
fn ci_eq(c: char, l: char) -> bool {
    c.to_ascii_lowercase() == l || (l == 'i' && matches!(c, '\u{130}' | '\u{131}'))
}

fn ci_match(a: &[char], i: usize, s: &str) -> bool {
    let n = s.chars().count();
    i + n <= a.len() && s.chars().zip(&a[i..i + n]).all(|(l, &c)| ci_eq(c, l))
}

/// `\b` of stdlib `re` at position `k`.
fn re_boundary(a: &[char], k: usize) -> bool {
    let left = k > 0 && is_re_word(a[k - 1]);
    let right = k < a.len() && is_re_word(a[k]);
    left != right
}

fn contractions(mut a: Buf) -> Buf {
    // Cheap pre-filter: a pattern can only match where its letters occur (case-folded;
    // 'i' also matches U+0130/U+0131, so never skip when those are present).
    let lower: String = a.iter().map(|c| c.to_ascii_lowercase()).collect();
    let dotted_i = lower.contains(['\u{130}', '\u{131}']);
    let may_match = |x: &str, y: &str| dotted_i || lower.contains(&format!("{x}{y}"));
    // CONTRACTIONS2: (?i)\b(X)(Y)\b -> " \1 \2 "; "wanna" ends with (?=\s) instead.
    const C2: [(&str, &str, bool); 8] = [
        ("can", "not", false),
        ("d", "'ye", false),
        ("gim", "me", false),
        ("gon", "na", false),
        ("got", "ta", false),
        ("lem", "me", false),
        ("more", "'n", false),
        ("wan", "na", true),
    ];
    for (x, y, space_after) in C2 {
        if !may_match(x, y) {
            continue;
        }
        let (nx, ny) = (x.chars().count(), y.chars().count());
        let mut b = Vec::with_capacity(a.len() + 16);
        let mut i = 0;
        while i < a.len() {
            let e = i + nx + ny;
            if re_boundary(&a, i)
                && ci_match(&a, i, x)
                && ci_match(&a, i + nx, y)
                && if space_after {
                    e < a.len() && is_py_space(a[e])
                } else {
                    re_boundary(&a, e)
                }
            {
                b.push(' ');
                b.extend_from_slice(&a[i..i + nx]);
                b.push(' ');
                b.extend_from_slice(&a[i + nx..e]);
                b.push(' ');
                i = e;
            } else {
                b.push(a[i]);
                i += 1;
            }
        }
        a = b;
    }
    // CONTRACTIONS3: (?i) ('t)(is|was)\b -> " \1 \2 "
    for y in ["is", "was"] {
        if !may_match("'t", y) {
            continue;
        }
        let ny = y.len();
        let mut b = Vec::with_capacity(a.len() + 16);
        let mut i = 0;
        while i < a.len() {
            let e = i + 3 + ny;
            if a[i] == ' '
                && a.get(i + 1) == Some(&'\'')
                && a.get(i + 2).is_some_and(|&c| ci_eq(c, 't'))
                && ci_match(&a, i + 3, y)
                && re_boundary(&a, e)
            {
                b.extend([' ', a[i + 1], a[i + 2], ' ']);
                b.extend_from_slice(&a[i + 3..e]);
                b.push(' ');
                i = e;
            } else {
                b.push(a[i]);
                i += 1;
            }
        }
        a = b;
    }
    a
}

/// `NLTKWordTokenizer().tokenize(text)`.
pub fn tokenize(text: &str) -> Vec<String> {
    let a: Buf = text.chars().collect();
    let a = starting_quotes(a);
    let a = punctuation(a);
    // PARENS_BRACKETS, then DOUBLE_DASHES
    let a = pad_chars(a, |c| {
        matches!(c, ']' | '[' | '(' | ')' | '{' | '}' | '<' | '>')
    });
    let a = replace_lit(a, "--", " -- ");
    let mut p = Vec::with_capacity(a.len() + 2);
    p.push(' ');
    p.extend(a);
    p.push(' ');
    let a = ending_quotes(p);
    let a = contractions(a);
    let s: String = a.into_iter().collect();
    s.split(is_py_space)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn nltk_doc_example() {
        let s = "Good muffins cost $3.88 (roughly 3,36 euros)\nin New York.  Please buy me\ntwo of them.\nThanks.";
        assert_eq!(
            tokenize(s),
            [
                "Good", "muffins", "cost", "$", "3.88", "(", "roughly", "3,36", "euros", ")", "in",
                "New", "York.", "Please", "buy", "me", "two", "of", "them.", "Thanks", "."
            ]
        );
    }

    #[test]
    fn contractions_and_quotes() {
        assert_eq!(
            tokenize("\"I can't,\" the patient's wife said; she doesn't cannot."),
            [
                "``", "I", "ca", "n't", ",", "''", "the", "patient", "'s", "wife", "said", ";",
                "she", "does", "n't", "can", "not", "."
            ]
        );
    }
}
