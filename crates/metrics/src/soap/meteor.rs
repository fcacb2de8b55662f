//! METEOR as nltk 3.10's `single_meteor_score(reference, hypothesis)` (what HF
//! `evaluate`'s "meteor" computes per document): lowercasing, then exact, Porter-stem
//! and WordNet-synonym alignment stages, F-mean and chunk penalty.

use crate::soap::text::FxMap;

use crate::soap::porter;
use crate::soap::text::py_lower;
use crate::soap::tokenize::word_tokenize;
use crate::soap::wordnet::WordNet;

/// METEOR parameters; `evaluate`'s defaults are alpha 0.9, beta 3, gamma 0.5.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MeteorParams {
    /// Relative weight of precision vs recall in the F-mean.
    pub alpha: f64,
    /// Shape of the fragmentation penalty.
    pub beta: f64,
    /// Weight of the fragmentation penalty.
    pub gamma: f64,
}

impl Default for MeteorParams {
    fn default() -> Self {
        MeteorParams {
            alpha: 0.9,
            beta: 3.0,
            gamma: 0.5,
        }
    }
}

type Enum = Vec<(usize, String)>;

/// `_match_enums`: hypothesis words from last to first take the last remaining
/// reference position of an equal word.
fn match_enums(hyp: Enum, reference: Enum, matches: &mut Vec<(usize, usize)>) -> (Enum, Enum) {
    let mut positions: FxMap<&str, Vec<usize>> = FxMap::default();
    for (j, (_, w)) in reference.iter().enumerate() {
        positions.entry(w.as_str()).or_default().push(j);
    }
    let mut hyp_used = vec![false; hyp.len()];
    let mut ref_used = vec![false; reference.len()];
    for i in (0..hyp.len()).rev() {
        if let Some(j) = positions.get_mut(hyp[i].1.as_str()).and_then(Vec::pop) {
            hyp_used[i] = true;
            ref_used[j] = true;
            matches.push((hyp[i].0, reference[j].0));
        }
    }
    drop(positions);
    (
        keep_unused(hyp, &hyp_used),
        keep_unused(reference, &ref_used),
    )
}

fn keep_unused(v: Enum, used: &[bool]) -> Enum {
    v.into_iter()
        .zip(used)
        .filter(|(_, u)| !**u)
        .map(|(x, _)| x)
        .collect()
}

/// `_enum_wordnetsyn_match`: a hypothesis word (or any WordNet synonym of it) matches the
/// remaining reference word with the highest position.
fn wordnet_match(hyp: &Enum, reference: &Enum, matches: &mut Vec<(usize, usize)>) {
    let mut positions: FxMap<&str, Vec<usize>> = FxMap::default();
    for (j, (_, w)) in reference.iter().enumerate() {
        positions.entry(w.as_str()).or_default().push(j);
    }
    let mut left = reference.len();
    let wn = WordNet::get();
    for i in (0..hyp.len()).rev() {
        if left == 0 {
            break;
        }
        let word = hyp[i].1.as_str();
        // Distinct words own distinct positions, so the max is order independent.
        let mut best: Option<(usize, &str)> = None;
        let mut consider = |syn: &str| {
            if let Some((key, v)) = positions.get_key_value(syn)
                && let Some(&last) = v.last()
                && best.is_none_or(|(b, _)| last > b)
            {
                best = Some((last, key));
            }
        };
        consider(word);
        wn.for_each_synonym(word, &mut consider);
        if let Some((j, key)) = best {
            if let Some(v) = positions.get_mut(key) {
                v.pop();
            }
            left -= 1;
            matches.push((hyp[i].0, reference[j].0));
        }
    }
}

fn count_chunks(matches: &[(usize, usize)]) -> usize {
    let mut chunks = 1;
    for w in matches.windows(2) {
        if !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1) {
            chunks += 1;
        }
    }
    chunks
}

/// nltk `single_meteor_score(reference, hypothesis, ...)` on pre-tokenized input.
pub fn single_meteor_score<S: AsRef<str>>(
    reference: &[S],
    hypothesis: &[S],
    params: MeteorParams,
) -> f64 {
    let hyp: Enum = hypothesis
        .iter()
        .enumerate()
        .map(|(i, w)| (i, py_lower(w.as_ref())))
        .collect();
    let refs: Enum = reference
        .iter()
        .enumerate()
        .map(|(i, w)| (i, py_lower(w.as_ref())))
        .collect();
    let (translation_length, reference_length) = (hyp.len(), refs.len());
    let mut matches = Vec::new();
    let (hyp, refs) = match_enums(hyp, refs, &mut matches);
    let mut cache: FxMap<String, String> = FxMap::default();
    let mut stem_all = |v: Enum| -> Enum {
        v.into_iter()
            .map(|(i, w)| {
                let s = cache.entry(w).or_insert_with_key(|w| porter::stem(w));
                (i, s.clone())
            })
            .collect()
    };
    let hyp = stem_all(hyp);
    let refs = stem_all(refs);
    let (hyp, refs) = match_enums(hyp, refs, &mut matches);
    if !hyp.is_empty() && !refs.is_empty() {
        wordnet_match(&hyp, &refs, &mut matches);
    }
    matches.sort_by_key(|m| m.0);

    let m = matches.len();
    if m == 0 || translation_length == 0 || reference_length == 0 {
        return 0.0;
    }
    let precision = m as f64 / translation_length as f64;
    let recall = m as f64 / reference_length as f64;
    let fmean = (precision * recall) / (params.alpha * precision + (1.0 - params.alpha) * recall);
    let frag_frac = count_chunks(&matches) as f64 / m as f64;
    let penalty = params.gamma * frag_frac.powf(params.beta);
    (1.0 - penalty) * fmean
}

/// `evaluate`'s per-document METEOR: `single_meteor_score(word_tokenize(reference),
/// word_tokenize(prediction))`.
pub fn meteor(reference: &str, prediction: &str, params: MeteorParams) -> f64 {
    single_meteor_score(
        &word_tokenize(reference),
        &word_tokenize(prediction),
        params,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<&str> {
        s.split(' ').collect()
    }

    #[test]
    fn nltk_doctest() {
        let h = toks(
            "It is a guide to action which ensures that the military always obeys the commands of the party",
        );
        let r = toks(
            "It is a guide to action that ensures that the military will forever heed Party commands",
        );
        let s = single_meteor_score(&r, &h, MeteorParams::default());
        assert!((s - 0.6944).abs() < 5e-5, "{s}");
        let z = single_meteor_score(
            &toks("this is a cat"),
            &toks("non matching hypothesis"),
            MeteorParams::default(),
        );
        assert_eq!(z, 0.0);
    }

    #[test]
    fn identical_is_not_one() {
        // One chunk of n matches: 1 - 0.5 * (1/n)^3; 5 tokens here.
        let s = meteor(
            "The patient reports pain.",
            "The patient reports pain.",
            MeteorParams::default(),
        );
        assert!((s - (1.0 - 0.5 * 0.2f64.powi(3))).abs() < 1e-12, "{s}");
        assert_eq!(meteor("", "", MeteorParams::default()), 0.0);
    }
}
