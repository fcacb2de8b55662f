#!/usr/bin/env python3
"""Build the data files that crates/metrics embeds for METEOR (no setup step at run time).

1. crates/metrics/data/wordnet-syn.bin: a compact, zlib-compressed table derived from the
   Princeton WordNet 3.0 dict files (Debian `wordnet-base`, /usr/share/wordnet). It holds
   only what nltk's `wordnet.synsets(word)` + `lemma.name()` need for METEOR synonym
   matching:
     * per POS (n, v, a, r): index lemma -> synsets (only lemmas whose synsets have a usable name)
     * per synset: lemma names without '_' that equal their lowercase form (METEOR compares
       them with lowercased tokens, so other names can never match)
     * per POS: the morphy exception lists (`*.exc`), complete (a listed form suppresses the
       suffix rules, even when its base forms have no usable synonyms)
   Names are read like nltk does: the adjective marker "(a)", "(p)", "(ip)" is stripped.
2. crates/metrics/data/punkt_english/*: NLTK's English punkt_tab parameters, copied verbatim
   from an nltk_data tree (tools/install_nltk_data.py makes one).
3. crates/metrics/data/pyunicode.bin (with --pyunicode, run under the oracle's Python 3.11 +
   `regex`): the character classes the reference tokenizers depend on, taken from that very
   interpreter so that Unicode-version differences with Rust's tables cannot change a token:
   `regex`-module \w and \d (nltk's tokenizers), stdlib `re` \w (nltk's contraction
   patterns), str.isupper / str.islower (Punkt), str.lower() of every non-ASCII character,
   and, for the final-sigma rule of str.lower(), which characters are skipped
   (case-ignorable) and which end the scan as cased.

Binary layout (all integers unsigned LEB128 varints), before zlib:
    b"WNSYN1\\n"
    n_strings, then each: byte length, UTF-8 bytes             (string ids = order here)
    n_synsets, then each: n_names, name string ids
    for pos in n v a r: n_lemmas, then each: lemma string id, n_synsets, synset ids
    for pos in n v a r: n_exceptions, then each: form string id, n_bases, base string ids

pyunicode.bin layout (zlib; LEB128 varints): b"PYUNI1\n", a UTF-8 line naming the Python
and regex versions, then 7 range tables (count, then delta-coded start / length-1 pairs) in
the order regex_w, regex_d, re_w, isupper, islower, sigma_cased, sigma_ignorable, then the
lowercase map (count, then code point delta, number of chars, the chars).

Usage: make_soap_data.py [--wordnet /usr/share/wordnet] [--punkt DIR] [--pyunicode] [--out crates/metrics/data]
"""
import argparse
import os
import re
import shutil
import zlib

POS = [("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")]
MARKER = re.compile(r"(.*?)(\([^()]*\))?$")


def varint(n, out):
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def read_data(wn, suffix):
    """offset -> usable lemma names, for one data.<suffix> file."""
    syn = {}
    with open(os.path.join(wn, "data." + suffix), encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(" "):
                continue
            f = line.split()
            offset, w_cnt = int(f[0]), int(f[3], 16)
            names = []
            for k in range(w_cnt):
                name = MARKER.match(f[4 + 2 * k]).group(1)
                if "_" not in name and name == name.lower() and name not in names:
                    names.append(name)
            syn[offset] = names
    return syn


def read_index(wn, suffix):
    """lemma -> synset offsets, like nltk's _load_lemma_pos_offset_map."""
    idx = {}
    with open(os.path.join(wn, "index." + suffix), encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(" "):
                continue
            f = line.split()
            n_synsets, n_pointers = int(f[2]), int(f[3])
            start = 4 + n_pointers + 2
            idx[f[0]] = [int(x) for x in f[start : start + n_synsets]]
    return idx


def read_exc(wn, suffix):
    exc = {}
    with open(os.path.join(wn, suffix + ".exc"), encoding="utf-8") as fh:
        for line in fh:
            terms = line.split()
            if terms:
                exc[terms[0]] = terms[1:]
    return exc


def build_wordnet(wn):
    strings, sid = [], {}

    def s(x):
        if x not in sid:
            sid[x] = len(strings)
            strings.append(x)
        return sid[x]

    synsets, syn_id = [], {}
    lemmas = {}
    excs = {}
    for pos, suffix in POS:
        data = read_data(wn, suffix)
        rows = []
        for lemma, offsets in sorted(read_index(wn, suffix).items()):
            ids = []
            for off in offsets:
                names = data[off]
                if not names:
                    continue
                key = (suffix, off)
                if key not in syn_id:
                    syn_id[key] = len(synsets)
                    synsets.append(names)
                ids.append(syn_id[key])
            if ids:
                rows.append((lemma, ids))
        lemmas[pos] = rows
        excs[pos] = sorted(read_exc(wn, suffix).items())
    # Intern in a fixed order so the blob is reproducible.
    for names in synsets:
        for n in names:
            s(n)
    for pos, _ in POS:
        for lemma, _ in lemmas[pos]:
            s(lemma)
        for form, bases in excs[pos]:
            s(form)
            for b in bases:
                s(b)

    out = bytearray(b"WNSYN1\n")
    varint(len(strings), out)
    for x in strings:
        b = x.encode("utf-8")
        varint(len(b), out)
        out += b
    varint(len(synsets), out)
    for names in synsets:
        varint(len(names), out)
        for n in names:
            varint(sid[n], out)
    for pos, _ in POS:
        varint(len(lemmas[pos]), out)
        for lemma, ids in lemmas[pos]:
            varint(sid[lemma], out)
            varint(len(ids), out)
            for i in ids:
                varint(i, out)
    for pos, _ in POS:
        varint(len(excs[pos]), out)
        for form, bases in excs[pos]:
            varint(sid[form], out)
            varint(len(bases), out)
            for b in bases:
                varint(sid[b], out)
    stats = {
        "strings": len(strings),
        "synsets": len(synsets),
        "lemmas": {p: len(lemmas[p]) for p, _ in POS},
        "raw_bytes": len(out),
    }
    return zlib.compress(bytes(out), 9), stats


def build_pyunicode():
    import re as stdre
    import sys as _sys

    import regex

    chars = [chr(c) for c in range(0x110000)]

    def ranges(pred):
        out, start = [], None
        for c in range(0x110000):
            v = pred(chars[c])
            if v and start is None:
                start = c
            elif not v and start is not None:
                out.append((start, c - 1))
                start = None
        if start is not None:
            out.append((start, 0x10FFFF))
        return out

    rw, rd, sw = regex.compile(r"\w"), regex.compile(r"\d"), stdre.compile(r"\w")

    # str.lower()'s final sigma: scanning back from a capital sigma, case-ignorable
    # characters are skipped and the first other one must be cased (CPython
    # handle_capital_sigma). Both properties are read off lower() itself.
    def t1(c):  # cased and not case-ignorable
        return (c + "\u03a3").lower()[-1] == "\u03c2"

    def t2(c):  # case-ignorable, or cased
        return ("A" + c + "\u03a3").lower()[-1] == "\u03c2"

    tables = [
        ranges(lambda c: rw.match(c) is not None),
        ranges(lambda c: rd.match(c) is not None),
        ranges(lambda c: sw.match(c) is not None),
        ranges(str.isupper),
        ranges(str.islower),
        ranges(t1),
        ranges(lambda c: t2(c) and not t1(c)),
    ]
    lower = [(c, chars[c].lower()) for c in range(128, 0x110000) if chars[c].lower() != chars[c]]
    out = bytearray(b"PYUNI1\n")
    out += f"python {_sys.version.split()[0]} unicodedata {__import__('unicodedata').unidata_version} regex {regex.__version__}\n".encode()
    for t in tables:
        varint(len(t), out)
        prev = 0
        for a, b in t:
            varint(a - prev, out)
            varint(b - a, out)
            prev = b
    varint(len(lower), out)
    prev = 0
    for c, low in lower:
        varint(c - prev, out)
        prev = c
        varint(len(low), out)
        for ch in low:
            varint(ord(ch), out)
    return zlib.compress(bytes(out), 9), [len(t) for t in tables] + [len(lower)]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--punkt", help="an nltk_data tokenizers/punkt_tab/english directory")
    ap.add_argument("--pyunicode", action="store_true", help="also write pyunicode.bin (oracle Python)")
    ap.add_argument("--out", default=os.path.join(root, "crates", "metrics", "data"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.pyunicode:
        blob, sizes = build_pyunicode()
        with open(os.path.join(a.out, "pyunicode.bin"), "wb") as fh:
            fh.write(blob)
        print("pyunicode.bin:", len(blob), "bytes", sizes)
    blob, stats = build_wordnet(a.wordnet)
    with open(os.path.join(a.out, "wordnet-syn.bin"), "wb") as fh:
        fh.write(blob)
    print("wordnet-syn.bin:", len(blob), "bytes", stats)
    if a.punkt:
        dst = os.path.join(a.out, "punkt_english")
        os.makedirs(dst, exist_ok=True)
        for f in ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"):
            shutil.copyfile(os.path.join(a.punkt, f), os.path.join(dst, f))
        print("punkt_english copied from", a.punkt)


if __name__ == "__main__":
    main()
