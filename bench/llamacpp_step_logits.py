#!/usr/bin/env python3
"""llama.cpp's full logits at every step of the greedy decode in the Gemma-3-270M fixture
(crates/models/tests/fixtures/gemma3_270m_llamacpp.json): the prompt in one batch, then one
token at a time, as the fixture was made. Written as raw little-endian f32, (steps, vocab), for
crates/models/examples/gguf_logit_diff.rs (a diagnostic; nothing is committed from it).

    ~/.cache/clinstruct/venv/bin/python bench/llamacpp_step_logits.py /tmp/llama_steps.f32
"""

import json
import os
import sys
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("CLINSTRUCT_MODELS", Path.home() / ".cache" / "clinstruct"))
MODEL = Path(os.environ.get("CLINSTRUCT_GEMMA3_270M_GGUF", MODELS / "gemma-3-270m-q4_k_m.gguf"))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/llama_steps.f32"
    r = json.loads((ROOT / "crates/models/tests/fixtures/gemma3_270m_llamacpp.json").read_text())
    # The fixture's settings (scripts/fixtures/make_llamacpp_reference.py).
    llm = llama_cpp.Llama(model_path=str(MODEL), n_ctx=1024, n_threads=2, n_batch=512,
                          logits_all=True, verbose=False, seed=0)
    llm.reset()
    llm.eval(r["prompt_ids"])
    steps = []
    for tok in r["greedy_ids"]:
        steps.append(np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32).copy())
        llm.eval([tok])
    a = np.stack(steps)
    a.astype("<f4").tofile(out)
    same = int((a.argmax(1) == np.asarray(r["greedy_ids"])).sum())
    print(f"{out}: {a.shape[0]} steps x {a.shape[1]} logits; argmax = fixture token at {same}")


if __name__ == "__main__":
    main()
