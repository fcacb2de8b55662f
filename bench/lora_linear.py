#!/usr/bin/env python3
"""LoRA linear-stack benchmark: candle (dense f32, NF4, Q4_K bases) vs PyTorch + PEFT (dense f32,
bitsandbytes NF4) on CPU, forward + backward, 2 threads, one process per variant (so peak RSS is
the variant's own). Not a test: numbers depend on the machine and its load.

The stack is Llama-3.2-1B-shaped: hidden 2048, intermediate 8192, k/v 512, per layer
q,k,v,o,gate,up,down with LoRA r=16 (alpha 32) on all seven, 2 layers, 256 tokens:
    kv = k(h) + v(h);  h += o(q(h) + tile4(kv));  h += down(silu(gate(h)) * up(h));
    loss = sum(h * r)
The input is frozen (not a leaf that needs grad); only the adapters train. candle rows run
with `clinstruct_train::alloc::keep_freed_memory()` (what training processes call);
"candle/malloc" rows with glibc's defaults.

    cargo build --release -p clinstruct-train --example lora_linear
    /work/oracle/.venv/bin/python bench/lora_linear.py [--rust-bin PATH] [--iters 3] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, INTER, KV = 2048, 8192, 512


def torch_variant(base: str, tokens: int, layers: int, iters: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(2)
    torch.manual_seed(0)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
            self.q_proj, self.k_proj, self.v_proj = lin(HIDDEN, HIDDEN), lin(HIDDEN, KV), lin(HIDDEN, KV)
            self.o_proj = lin(HIDDEN, HIDDEN)
            self.gate_proj, self.up_proj, self.down_proj = lin(HIDDEN, INTER), lin(HIDDEN, INTER), lin(INTER, HIDDEN)

        def forward(self, h):
            kv = self.k_proj(h) + self.v_proj(h)
            h = h + self.o_proj(self.q_proj(h) + kv.repeat(1, 4))
            return h + self.down_proj(torch.nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer() for _ in range(layers)])

        def forward(self, h):
            for layer in self.layers:
                h = layer(h)
            return h

    t0 = time.perf_counter()
    model = Stack()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if base == "nf4":
        import bitsandbytes as bnb

        def to4bit(mod):
            for name, child in list(mod.named_children()):
                if isinstance(child, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(
                        child.in_features,
                        child.out_features,
                        bias=False,
                        compute_dtype=torch.float32,
                        compress_statistics=True,
                        quant_type="nf4",
                    )
                    q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True)
                    q.weight = q.weight._quantize("cpu") if hasattr(q.weight, "_quantize") else q.weight
                    setattr(mod, name, q)
                else:
                    to4bit(child)

        to4bit(model)
    cfg = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    setup = time.perf_counter() - t0
    x = torch.randn(tokens, HIDDEN)
    r = torch.randn(tokens, HIDDEN)
    fwd, bwd = [], []
    for it in range(iters + 1):
        t = time.perf_counter()
        loss = (model(x) * r).sum()
        tf = time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        tb = time.perf_counter() - t
        model.zero_grad(set_to_none=True)
        if it > 0:
            fwd.append(tf)
            bwd.append(tb)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "impl": "pytorch+peft",
        "base": base,
        "tokens": tokens,
        "layers": layers,
        "fwd_s": statistics.median(fwd),
        "bwd_s": statistics.median(bwd),
        "peak_rss_mb": peak,
        "setup_s": setup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust-bin", default=None)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="rounds over all variants; the best round counts")
    ap.add_argument("--torch-variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_variant:
        print(json.dumps(torch_variant(args.torch_variant, args.tokens, args.layers, args.iters)))
        return
    rust = args.rust_bin
    if rust is None:
        for prof in ("release", "debug"):
            cand = ROOT / "target" / prof / "examples" / "lora_linear"
            if cand.exists():
                rust = str(cand)
                break
    if rust is None:
        sys.exit("build first: cargo build --release -p clinstruct-train --example lora_linear")
    env = dict(os.environ, RAYON_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    common = ["--tokens", str(args.tokens), "--layers", str(args.layers), "--iters", str(args.iters)]
    # Variants alternate within a round, so load from other processes spreads over all of them;
    # each variant keeps its fastest round.
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.repeat):
        rnd = []
        for base in ("dense", "nf4"):
            rnd.append(run([sys.executable, __file__, "--torch-variant", base, *common], env))
        for base in ("dense", "nf4", "q4k"):
            rnd.append(run([rust, "--base", base, *common], env))
        for base in ("dense", "nf4"):
            r = run([rust, "--base", base, "--no-alloc-tune", *common], env)
            r["impl"] = "candle/malloc"  # glibc's default allocator settings
            rnd.append(r)
        for r in rnd:
            key = (r["impl"], r["base"])
            if key not in best or r["fwd_s"] + r["bwd_s"] < best[key]["fwd_s"] + best[key]["bwd_s"]:
                best[key] = r
    results = list(best.values())
    ref = {r["base"]: r for r in results if r["impl"] == "pytorch+peft"}
    print(f"rust binary: {rust}")
    print(f"{'impl':14} {'base':6} {'fwd s':>7} {'bwd s':>7} {'fwd+bwd':>8} {'peak MB':>8}  vs torch dense (time, mem) / same base")
    for r in results:
        tot = r["fwd_s"] + r["bwd_s"]
        d = ref["dense"]
        dt = tot / (d["fwd_s"] + d["bwd_s"])
        dm = r["peak_rss_mb"] / d["peak_rss_mb"]
        same = ref.get(r["base"])
        extra = ""
        if same is not None and r["impl"] != "pytorch+peft":
            extra = f"  | {tot / (same['fwd_s'] + same['bwd_s']):.2f}x, {r['peak_rss_mb'] / same['peak_rss_mb']:.2f}x"
        print(f"{r['impl']:14} {r['base']:6} {r['fwd_s']:7.3f} {r['bwd_s']:7.3f} {tot:8.3f} {r['peak_rss_mb']:8.0f}  {dt:.2f}x, {dm:.2f}x{extra}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
