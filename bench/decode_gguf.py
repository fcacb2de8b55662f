#!/usr/bin/env python3
"""Decode speed of `clinstruct generate` vs llama.cpp (llama-cpp-python) on one GGUF: same
machine, same thread count, same prompt ids, greedy, same number of new tokens.

Run through bench/decode_gguf.sh (builds the release binary, picks the venv). Prints one JSON
object with both rates and their ratio (target: clinstruct decode >= 0.8x llama.cpp).
Runs alternate and the best of each is kept: on a shared machine the load drifts.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import llama_cpp
import numpy as np


def best_of(a, b):
    return b if a is None or b["decode_tokens_per_second"] > a["decode_tokens_per_second"] else a


def last_logits(llm):
    # llama-cpp-python keeps `scores` rows only with logits_all=True (which would also make
    # llama.cpp compute the LM head for every prompt position); read the context's last row.
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def run_llama(llm, prompt, tokens):
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    logits = last_logits(llm)
    t1 = time.perf_counter()
    out = []
    for i in range(tokens):
        tok = int(np.argmax(logits))
        out.append(tok)
        if i == tokens - 1:
            break
        llm.eval([tok])
        logits = last_logits(llm)
    t2 = time.perf_counter()
    return {
        "prompt_tokens": len(ids),
        "generated_tokens": len(out),
        "prefill_tokens_per_second": len(ids) / (t1 - t0),
        # The first token comes from the prefill logits, as in clinstruct's count.
        "decode_tokens_per_second": (len(out) - 1) / (t2 - t1),
        "token_ids": out,
    }


def run_ours(binary, model, prompt, tokens, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    p = subprocess.run([binary, "generate", "--model", model, "--prompt", prompt,
                        "--max-new-tokens", str(tokens), "--ignore-eos", "--json"],
                       env=env, capture_output=True, text=True, check=True)
    j = json.loads(p.stdout)
    return {
        "prompt_tokens": j["prompt_tokens"],
        "generated_tokens": j["generated_tokens"],
        "prefill_tokens_per_second": j["timing"]["prefill_tokens_per_second"],
        "decode_tokens_per_second": j["timing"]["decode_tokens_per_second"],
        "token_ids": j["token_ids"],
    }


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
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=2048, n_threads=a.threads,
                          n_threads_batch=a.threads, n_batch=512, verbose=False, seed=0)
    llama = ours = None
    runs = []
    for _ in range(a.repeats):
        lr = run_llama(llm, a.prompt, a.tokens)
        orr = run_ours(a.binary, a.model, a.prompt, a.tokens, a.threads)
        runs.append({"llama_cpp": round(lr["decode_tokens_per_second"], 2),
                     "clinstruct": round(orr["decode_tokens_per_second"], 2)})
        llama, ours = best_of(llama, lr), best_of(ours, orr)
    same = 0
    for x, y in zip(ours.pop("token_ids"), llama.pop("token_ids")):
        if x != y:
            break
        same += 1
    print(json.dumps({
        "model": os.path.basename(a.model),
        "threads": a.threads,
        "new_tokens": a.tokens,
        "best_of": a.repeats,
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": llama,
        "clinstruct": ours,
        "identical_leading_tokens": same,
        "decode_tokens_per_second_per_run": runs,
        "decode_ratio": ours["decode_tokens_per_second"] / llama["decode_tokens_per_second"],
        "prefill_ratio": ours["prefill_tokens_per_second"] / llama["prefill_tokens_per_second"],
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
