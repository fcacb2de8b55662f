//! Tokenizers of the reference scorers: sacreBLEU's 13a, and nltk's `word_tokenize`
//! (Punkt sentence splitting + the improved Treebank word tokenizer).

pub mod punkt;
pub mod tok13a;
pub mod treebank;

/// nltk `word_tokenize(text)` (English): Punkt sentences, then `NLTKWordTokenizer` on each.
pub fn word_tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sent in punkt::sent_tokenize(text) {
        out.extend(treebank::tokenize(sent));
    }
    out
}
