#!/usr/bin/env python3
"""Time the Python reference scorers on the Task 4 metrics, for comparison with
`cargo run --release -p clinstruct-metrics --example bench_soap -- FILE.jsonl`.

Input: JSONL, one {"id","prediction","reference"} object per line (the same file the Rust
bench reads; `bench_soap --synthetic 1506 --write FILE.jsonl` makes a synthetic one).
It runs exactly what the oracle (shared/tools/oracle/textmetrics.py) computes for a corpus:
sacreBLEU corpus BLEU, evaluate-style BLEU (13a + tensorflow-nmt compute_bleu), rouge_score
ROUGE-1/2/L/Lsum per document, nltk METEOR per document (word_tokenize + single_meteor_score).
Setup (imports, WordNet/punkt loading, one warm-up document) is timed separately. Prints
timings and corpus scores only, never note text.

Usage: ORACLE_NLTK_DATA=/work/oracle/light/nltk_data /work/oracle/light/bin/python \
           scripts/bench/soap_metrics_python.py FILE.jsonl [--oracle PATH/textmetrics.py] [--limit N] [--split]
"""
import argparse
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl")
    default_oracle = os.path.abspath(os.path.join(HERE, "..", "..", "..", "shared", "tools", "oracle", "textmetrics.py"))
    if not os.path.exists(default_oracle):
        default_oracle = "/work/shared/tools/oracle/textmetrics.py"
    ap.add_argument("--oracle", default=default_oracle)
    ap.add_argument("--limit", type=int, default=0, help="score only the first N pairs")
    ap.add_argument("--split", action="store_true", help="also time each metric on its own (a second pass)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    spec = importlib.util.spec_from_file_location("textmetrics", a.oracle)
    tm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tm)
    ids, preds, refs = tm.load_jsonl(a.jsonl)
    if a.limit:
        ids, preds, refs = ids[: a.limit], preds[: a.limit], refs[: a.limit]
    # Warm-up: import sacrebleu/rouge_score/nltk, load WordNet and punkt (lazy in nltk).
    tm.compute(["warm up the patient note."], ["warm up a patient note."])
    setup = time.perf_counter() - t0

    t = time.perf_counter()
    res = tm.compute(preds, refs, ids)
    total = time.perf_counter() - t
    # Per-metric split on the same data (second pass; lru caches of 13a may help BLEU).
    split = {}
    for name, fn in [] if not a.split else [
        ("bleu_sacrebleu", lambda: tm.sacrebleu_bleu(preds, refs)),
        ("bleu_evaluate", lambda: tm.evaluate_bleu(preds, refs)),
        ("rouge", lambda: tm.rouge_per_example(preds, refs)),
        ("meteor", lambda: tm.meteor_per_example(preds, refs)),
    ]:
        t = time.perf_counter()
        fn()
        split[name] = round(time.perf_counter() - t, 3)
    n = len(preds)
    print(f"docs {n} | setup {setup:.3f} s | all metrics {total:.3f} s | {n / total:.1f} docs/s" + (f" | split {split}" if split else ""))
    keys = ["bleu_evaluate", "bleu_sacrebleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "meteor", "average"]
    print(json.dumps({k: res.get(k) for k in keys}))


if __name__ == "__main__":
    sys.exit(main())
