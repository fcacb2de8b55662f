//! nltk's `PorterStemmer()` in its default `NLTK_EXTENSIONS` mode (used by METEOR and by
//! `rouge_score`'s optional stemmer), ported rule for rule.

type W = Vec<char>;

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// Consonant flag of every position ('y' is a consonant iff it starts the word or
/// follows a vowel), identical to nltk's `_is_consonant` per index.
fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut f: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let v = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !f[i - 1]
        } else {
            true
        };
        f.push(v);
    }
    f
}

fn is_consonant(w: &[char], i: usize) -> bool {
    let c = w[i];
    if is_vowel(c) {
        return false;
    }
    if c == 'y' {
        let mut negate = false;
        let mut i = i;
        while i > 0 && w[i] == 'y' {
            negate = !negate;
            i -= 1;
        }
        return is_vowel(w[i]) == negate;
    }
    true
}

fn measure(w: &[char]) -> usize {
    let f = consonant_flags(w);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(w: &[char]) -> bool {
    consonant_flags(w).iter().any(|&c| !c)
}

fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    w.len() >= n && w[w.len() - n..].iter().copied().eq(suffix.chars())
}

fn replace_suffix(w: &[char], suffix: &str, rep: &str) -> W {
    let n = suffix.chars().count();
    let mut v: W = w[..w.len() - n].to_vec();
    v.extend(rep.chars());
    v
}

enum Cond<'a> {
    None,
    PosMeasure,
    MeasureGt1,
    F(&'a dyn Fn(&[char]) -> bool),
}

impl Cond<'_> {
    fn check(&self, stem: &[char]) -> bool {
        match self {
            Cond::None => true,
            Cond::PosMeasure => measure(stem) > 0,
            Cond::MeasureGt1 => measure(stem) > 1,
            Cond::F(f) => f(stem),
        }
    }
}

/// `_apply_rule_list`: the first rule whose suffix matches decides, even if its
/// condition fails. The pseudo-suffix "*d" means "ends in a double consonant".
fn apply_rules(w: &[char], rules: &[(&str, &str, Cond)]) -> W {
    for (suffix, rep, cond) in rules {
        if *suffix == "*d" && ends_double_consonant(w) {
            let stem = &w[..w.len() - 2];
            return if cond.check(stem) {
                let mut v = stem.to_vec();
                v.extend(rep.chars());
                v
            } else {
                w.to_vec()
            };
        }
        if ends_with(w, suffix) {
            let stem = replace_suffix(w, suffix, "");
            return if cond.check(&stem) {
                let mut v = stem;
                v.extend(rep.chars());
                v
            } else {
                w.to_vec()
            };
        }
    }
    w.to_vec()
}

fn step1a(w: &[char]) -> W {
    if ends_with(w, "ies") && w.len() == 4 {
        return replace_suffix(w, "ies", "ie");
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", Cond::None),
            ("ies", "i", Cond::None),
            ("ss", "ss", Cond::None),
            ("s", "", Cond::None),
        ],
    )
}

fn step1b(w: &[char]) -> W {
    if ends_with(w, "ied") {
        return if w.len() == 4 {
            replace_suffix(w, "ied", "ie")
        } else {
            replace_suffix(w, "ied", "i")
        };
    }
    if ends_with(w, "eed") {
        let stem = replace_suffix(w, "eed", "");
        return if measure(&stem) > 0 {
            let mut v = stem;
            v.extend("ee".chars());
            v
        } else {
            w.to_vec()
        };
    }
    let mut inter: Option<W> = None;
    for suffix in ["ed", "ing"] {
        if ends_with(w, suffix) {
            let s = replace_suffix(w, suffix, "");
            if contains_vowel(&s) {
                inter = Some(s);
                break;
            }
        }
    }
    let Some(inter) = inter else {
        return w.to_vec();
    };
    let last = *inter.last().expect("contains a vowel, so non-empty");
    let last_s = last.to_string();
    let not_lsz = move |_: &[char]| !matches!(last, 'l' | 's' | 'z');
    let cvc_e = |stem: &[char]| measure(stem) == 1 && ends_cvc(stem);
    apply_rules(
        &inter,
        &[
            ("at", "ate", Cond::None),
            ("bl", "ble", Cond::None),
            ("iz", "ize", Cond::None),
            ("*d", &last_s, Cond::F(&not_lsz)),
            ("", "e", Cond::F(&cvc_e)),
        ],
    )
}

fn step1c(w: &[char]) -> W {
    let cond = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(w, &[("y", "i", Cond::F(&cond))])
}

fn step2(w: &[char]) -> W {
    if ends_with(w, "alli") && measure(&replace_suffix(w, "alli", "")) > 0 {
        return step2(&replace_suffix(w, "alli", "al"));
    }
    let word = w.to_vec();
    let logi = move |_: &[char]| measure(&word[..word.len() - 3]) > 0;
    use Cond::PosMeasure as P;
    apply_rules(
        w,
        &[
            ("ational", "ate", P),
            ("tional", "tion", P),
            ("enci", "ence", P),
            ("anci", "ance", P),
            ("izer", "ize", P),
            ("bli", "ble", P),
            ("alli", "al", P),
            ("entli", "ent", P),
            ("eli", "e", P),
            ("ousli", "ous", P),
            ("ization", "ize", P),
            ("ation", "ate", P),
            ("ator", "ate", P),
            ("alism", "al", P),
            ("iveness", "ive", P),
            ("fulness", "ful", P),
            ("ousness", "ous", P),
            ("aliti", "al", P),
            ("iviti", "ive", P),
            ("biliti", "ble", P),
            ("fulli", "ful", P),
            ("logi", "log", Cond::F(&logi)),
        ],
    )
}

fn step3(w: &[char]) -> W {
    use Cond::PosMeasure as P;
    apply_rules(
        w,
        &[
            ("icate", "ic", P),
            ("ative", "", P),
            ("alize", "al", P),
            ("iciti", "ic", P),
            ("ical", "ic", P),
            ("ful", "", P),
            ("ness", "", P),
        ],
    )
}

fn step4(w: &[char]) -> W {
    use Cond::MeasureGt1 as G;
    let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", G),
            ("ance", "", G),
            ("ence", "", G),
            ("er", "", G),
            ("ic", "", G),
            ("able", "", G),
            ("ible", "", G),
            ("ant", "", G),
            ("ement", "", G),
            ("ment", "", G),
            ("ent", "", G),
            ("ion", "", Cond::F(&ion)),
            ("ou", "", G),
            ("ism", "", G),
            ("ate", "", G),
            ("iti", "", G),
            ("ous", "", G),
            ("ive", "", G),
            ("ize", "", G),
        ],
    )
}

fn step5a(w: &[char]) -> W {
    if ends_with(w, "e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[char]) -> W {
    let word = w.to_vec();
    let cond = move |_: &[char]| measure(&word[..word.len() - 1]) > 1;
    apply_rules(w, &[("ll", "l", Cond::F(&cond))])
}

fn irregular(w: &str) -> Option<&'static str> {
    Some(match w {
        "sky" | "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "news" => "news",
        "innings" | "inning" => "inning",
        "outings" | "outing" => "outing",
        "cannings" | "canning" => "canning",
        "howe" => "howe",
        "proceed" => "proceed",
        "exceed" => "exceed",
        "succeed" => "succeed",
        _ => return None,
    })
}

/// `PorterStemmer().stem(word)` (lowercases first, like nltk).
pub fn stem(word: &str) -> String {
    let lower = crate::soap::text::py_lower(word);
    if let Some(s) = irregular(&lower) {
        return s.to_owned();
    }
    // nltk tests the length of the word as given, not of its lowercase form.
    if word.chars().count() <= 2 {
        return lower;
    }
    let w: W = lower.chars().collect();
    let w = step1a(&w);
    let w = step1b(&w);
    let w = step1c(&w);
    let w = step2(&w);
    let w = step3(&w);
    let w = step4(&w);
    let w = step5a(&w);
    let w = step5b(&w);
    w.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn paper_and_nltk_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generously", "gener"),
            ("dying", "die"),
            ("skies", "sky"),
            ("Running", "run"),
            ("physician", "physician"),
            ("hypertension", "hypertens"),
            ("is", "is"),
            ("IS", "is"),
            ("controlling", "control"),
            ("analogously", "analog"),
            ("syzygy", "syzygi"),
            ("yyyy", "yyyi"),
            ("ies", "i"),
            ("ied", "i"),
            ("İİİ", "i\u{307}i\u{307}i\u{307}"),
            ("allied", "alli"),
            ("radically", "radic"),
            ("archaeology", "archaeolog"),
            ("dependently", "depend"),
            ("hopefulli", "hope"),
            ("medications", "medic"),
            ("symptomatic", "symptomat"),
            ("b.i.d.", "b.i.d."),
            ("😀ing", "😀ing"),
            ("a*ding", "ad"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }

    #[test]
    fn never_panics() {
        for w in [
            "", "y", "ý", "İİİ", "ies", "ied", "eed", "ing", "logi", "😀ing", "ll",
        ] {
            let _ = stem(w);
        }
    }
}
