//! Offline WordNet 3.0 synonym lookup for METEOR, equivalent to nltk's
//! `{lemma.name() for s in wordnet.synsets(word) for lemma in s.lemmas()}` restricted to
//! names without `_` (and lowercase, the only ones a lowercased token can equal).
//!
//! The table is derived from Princeton WordNet 3.0 by `scripts/data/make_soap_data.py`
//! and embedded in the binary (see `data/WORDNET-LICENSE`); it is parsed once, lazily.

use crate::soap::text::FxMap;
use std::ops::Range;
use std::sync::OnceLock;

static BLOB: &[u8] = include_bytes!("../../data/wordnet-syn.bin");

/// The four parts of speech `synsets()` visits, in nltk's `POS_LIST` order.
const N_POS: usize = 4;
const NOUN: usize = 0;
const VERB: usize = 1;
const ADJ: usize = 2;

/// nltk `WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS` (adverbs have none).
const SUBSTITUTIONS: [&[(&str, &str)]; N_POS] = [
    &[
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    &[
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    &[],
];

/// The parsed synonym table.
pub struct WordNet {
    strings: Vec<Box<str>>,
    ids: FxMap<Box<str>, u32>,
    names: Vec<u32>,
    synsets: Vec<Range<u32>>,
    syn_ids: Vec<u32>,
    lemmas: [FxMap<u32, Range<u32>>; N_POS],
    exc_ids: Vec<u32>,
    exceptions: [FxMap<u32, Range<u32>>; N_POS],
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl Reader<'_> {
    fn u(&mut self) -> Result<u32, String> {
        let mut v: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self.b.get(self.p).ok_or("truncated")?;
            self.p += 1;
            v |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return u32::try_from(v).map_err(|e| e.to_string());
            }
            shift += 7;
            if shift > 35 {
                return Err("bad varint".into());
            }
        }
    }
}

impl WordNet {
    fn parse(raw: &[u8]) -> Result<WordNet, String> {
        let magic = b"WNSYN1\n";
        if !raw.starts_with(magic) {
            return Err("bad magic".into());
        }
        let mut r = Reader {
            b: raw,
            p: magic.len(),
        };
        let n = r.u()? as usize;
        let mut strings = Vec::with_capacity(n);
        let mut ids = FxMap::with_capacity_and_hasher(n, Default::default());
        for i in 0..n {
            let len = r.u()? as usize;
            let bytes = raw.get(r.p..r.p + len).ok_or("truncated string")?;
            r.p += len;
            let s: Box<str> = std::str::from_utf8(bytes)
                .map_err(|e| e.to_string())?
                .into();
            ids.insert(s.clone(), i as u32);
            strings.push(s);
        }
        let n = r.u()? as usize;
        let mut names = Vec::new();
        let mut synsets = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.u()?;
            let start = names.len() as u32;
            for _ in 0..k {
                names.push(r.u()?);
            }
            synsets.push(start..names.len() as u32);
        }
        let mut syn_ids = Vec::new();
        let mut lemmas: [FxMap<u32, Range<u32>>; N_POS] = Default::default();
        for map in &mut lemmas {
            let n = r.u()? as usize;
            map.reserve(n);
            for _ in 0..n {
                let lemma = r.u()?;
                let k = r.u()?;
                let start = syn_ids.len() as u32;
                for _ in 0..k {
                    syn_ids.push(r.u()?);
                }
                map.insert(lemma, start..syn_ids.len() as u32);
            }
        }
        let mut exc_ids = Vec::new();
        let mut exceptions: [FxMap<u32, Range<u32>>; N_POS] = Default::default();
        for map in &mut exceptions {
            let n = r.u()? as usize;
            map.reserve(n);
            for _ in 0..n {
                let form = r.u()?;
                let k = r.u()?;
                let start = exc_ids.len() as u32;
                for _ in 0..k {
                    exc_ids.push(r.u()?);
                }
                map.insert(form, start..exc_ids.len() as u32);
            }
        }
        if r.p != raw.len() {
            return Err("trailing bytes".into());
        }
        Ok(WordNet {
            strings,
            ids,
            names,
            synsets,
            syn_ids,
            lemmas,
            exc_ids,
            exceptions,
        })
    }

    /// The embedded table, decompressed and parsed on first use.
    pub fn get() -> &'static WordNet {
        static WN: OnceLock<WordNet> = OnceLock::new();
        WN.get_or_init(|| {
            let raw = miniz_oxide::inflate::decompress_to_vec_zlib(BLOB)
                .expect("embedded WordNet table is valid zlib");
            WordNet::parse(&raw).expect("embedded WordNet table is well formed")
        })
    }

    fn id(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// nltk `_morphy(form, pos)`: the form itself and its exception bases or suffix-rule
    /// candidates, kept when they are lemmas of `pos` (here: lemmas with usable names).
    fn morphy_into(&self, form: &str, pos: usize, out: &mut Vec<u32>) {
        let mut push = |s: &str| {
            if let Some(id) = self.id(s)
                && self.lemmas[pos].contains_key(&id)
                && !out.contains(&id)
            {
                out.push(id);
            }
        };
        push(form);
        let exc = self.id(form).and_then(|id| self.exceptions[pos].get(&id));
        if let Some(range) = exc {
            for &b in &self.exc_ids[range.start as usize..range.end as usize] {
                push(&self.strings[b as usize]);
            }
        } else {
            for (old, new) in SUBSTITUTIONS[pos] {
                if let Some(stem) = form.strip_suffix(old) {
                    push(&format!("{stem}{new}"));
                }
            }
        }
    }

    /// Lemma forms `synsets(word, pos)` would look up, per part of speech (n, v, a, r).
    pub fn morphy(&self, word: &str) -> [Vec<String>; N_POS] {
        let lower = crate::soap::text::py_lower(word);
        let mut out: [Vec<String>; N_POS] = Default::default();
        for (pos, o) in out.iter_mut().enumerate() {
            let mut ids = Vec::new();
            self.morphy_into(&lower, pos, &mut ids);
            *o = ids
                .iter()
                .map(|&i| self.strings[i as usize].to_string())
                .collect();
        }
        out
    }

    /// Calls `f` for every usable synonym name of `word` over all synsets of all POS
    /// (names may repeat). The word itself is not included unless WordNet lists it.
    pub fn for_each_synonym(&self, word: &str, mut f: impl FnMut(&str)) {
        let lower;
        let word = if !word.is_ascii() || word.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = crate::soap::text::py_lower(word);
            lower.as_str()
        } else {
            word
        };
        let mut forms = Vec::new();
        for pos in 0..N_POS {
            forms.clear();
            self.morphy_into(word, pos, &mut forms);
            for lemma in &forms {
                let r = &self.lemmas[pos][lemma];
                for &s in &self.syn_ids[r.start as usize..r.end as usize] {
                    let nr = &self.synsets[s as usize];
                    for &n in &self.names[nr.start as usize..nr.end as usize] {
                        f(&self.strings[n as usize]);
                    }
                }
            }
        }
    }

    /// Sorted, deduplicated synonym names of `word` (see [`WordNet::for_each_synonym`]).
    pub fn synonyms(&self, word: &str) -> Vec<String> {
        let mut v = Vec::new();
        self.for_each_synonym(word, |s| v.push(s.to_owned()));
        v.sort();
        v.dedup();
        v
    }
}

// POS constants document the table order; keep them used in one place.
const _: () = assert!(NOUN == 0 && VERB == 1 && ADJ == 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn morphy_tricky_words() {
        let wn = WordNet::get();
        let m = wn.morphy("dogs");
        assert_eq!(m[NOUN], ["dog"]);
        assert_eq!(m[VERB], ["dog"]);
        // Exception list: "women" -> "woman"; "better" -> "good"/"well" for adjectives.
        assert_eq!(wn.morphy("women")[NOUN], ["woman"]);
        assert!(wn.morphy("better")[ADJ].contains(&"good".to_string()));
        assert!(wn.morphy("ran")[VERB].contains(&"run".to_string()));
        assert!(wn.morphy("xyzzyq").iter().all(Vec::is_empty));
    }

    #[test]
    fn synonyms() {
        let wn = WordNet::get();
        let s = wn.synonyms("doctor");
        assert!(s.contains(&"physician".to_string()) && s.contains(&"doc".to_string()));
        assert!(wn.synonyms("pain").contains(&"hurting".to_string()));
        assert!(wn.synonyms("").is_empty());
    }
}
