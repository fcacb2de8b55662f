#!/usr/bin/env python3
"""Decode speed of `clinstruct generate` vs llama.cpp (llama-cpp-python) on one GGUF, same
machine, same thread count, same prompt ids, greedy, same number of new tokens.

Run through bench/decode_gguf.sh (builds the release binary, picks the venv). Prints one JSON
object with both decode rates and their ratio (target: clinstruct >= 0.8x llama.cpp).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import llama_cpp
import numpy as np


def run_llama(model, prompt, tokens, threads, repeats):
    llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, verbose=False, seed=0)
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    best = None
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        t1 = time.perf_counter()
        out = []
        for i in range(tokens):
            tok = int(np.argmax(logits))
            out.append(tok)
            if i == tokens - 1:
                break
            llm.eval([tok])
            logits = np.asarray(llm.scores[llm.n_tokens - 1])
        t2 = time.perf_counter()
        r = {
            "prompt_tokens": len(ids),
            "generated_tokens": len(out),
            "prefill_tokens_per_second": len(ids) / (t1 - t0),
            # The first token comes from the prefill logits, as in clinstruct's count.
            "decode_tokens_per_second": (len(out) - 1) / (t2 - t1),
            "token_ids": out,
        }
        if best is None or r["decode_tokens_per_second"] > best["decode_tokens_per_second"]:
            best = r
    return best


def run_ours(binary, model, prompt, tokens, threads, repeats):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    best = None
    for _ in range(repeats):
        p = subprocess.run([binary, "generate", "--model", model, "--prompt", prompt,
                            "--max-new-tokens", str(tokens), "--ignore-eos", "--json"],
                           env=env, capture_output=True, text=True, check=True)
        j = json.loads(p.stdout)
        r = {
            "prompt_tokens": j["prompt_tokens"],
            "generated_tokens": j["generated_tokens"],
            "prefill_tokens_per_second": j["timing"]["prefill_tokens_per_second"],
            "decode_tokens_per_second": j["timing"]["decode_tokens_per_second"],
            "token_ids": j["token_ids"],
        }
        if best is None or r["decode_tokens_per_second"] > best["decode_tokens_per_second"]:
            best = r
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="Subjective: The patient is a 54-year-old man who presents with a "
                    "two-week history of dry cough. Objective:")
    a = ap.parse_args()
    llama = run_llama(a.model, a.prompt, a.tokens, a.threads, a.repeats)
    ours = run_ours(a.binary, a.model, a.prompt, a.tokens, a.threads, a.repeats)
    same = 0
    for x, y in zip(ours.pop("token_ids"), llama.pop("token_ids")):
        if x != y:
            break
        same += 1
    print(json.dumps({
        "model": os.path.basename(a.model),
        "threads": a.threads,
        "new_tokens": a.tokens,
        "repeats_best_of": a.repeats,
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": llama,
        "clinstruct": ours,
        "identical_leading_tokens": same,
        "decode_ratio": ours["decode_tokens_per_second"] / llama["decode_tokens_per_second"],
        "prefill_ratio": ours["prefill_tokens_per_second"] / llama["prefill_tokens_per_second"],
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
