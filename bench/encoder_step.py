#!/usr/bin/env python3
"""One ModernBERT fine-tuning step, clinstruct (candle, Rust) vs PyTorch eager (transformers
ModernBertModel with attn_implementation "eager" and "sdpa"), on CPU with the same thread count,
side by side in one run.

    /work/oracle/.venv/bin/python bench/encoder_step.py [--threads 2] [--steps 5]
        [--lens 1024,4096] [--layers 2] [--rust-bin PATH]

The model is ModernBERT-large-shaped (hidden 1024, 16 heads, intermediate 2624, local window 128,
global every 3rd layer) with --layers layers, vocab 1000, random weights (each side its own
init: only shapes matter for time and memory), and the seed system's three heads ([CLS] →
dropout 0.1 → Linear to 4/4/2) with the masked multi-head loss. Full fine-tuning: every weight
trainable, AdamW (lr 2e-5, wd 0.01). One step = forward + backward + optimiser step, batch 1,
no padding, dropout in the backbone 0 (ModernBERT's defaults).

Each (side, length) runs in its own process: --steps steps, the median step time reported.
Memory: the process's peak resident set (Linux VmHWM, ≈ getrusage maxrss) and the resident set
after building model, heads and optimiser (VmRSS, the baseline); "step MiB" = peak - baseline,
the memory the step itself adds (activations, gradients, optimiser moments, temporaries).
The Rust side is `cargo build --release -p clinstruct-train --example encoder_step` run with
RAYON_NUM_THREADS=--threads; PyTorch gets torch.set_num_threads(--threads).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def torch_side(attn: str, seq_len: int, layers: int, steps: int, threads: int) -> dict:
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModernBertConfig(
        vocab_size=1000, hidden_size=1024, intermediate_size=2624, num_hidden_layers=layers,
        num_attention_heads=16, local_attention=128, global_attn_every_n_layers=3,
        max_position_embeddings=8192, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2,
    )
    cfg._attn_implementation = attn
    model = ModernBertModel(cfg).train()
    heads = torch.nn.ModuleList([torch.nn.Linear(1024, c) for c in (4, 4, 2)])
    drop = torch.nn.Dropout(0.1)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01)
    ids = (torch.arange(seq_len) * 7919 % 1000).unsqueeze(0)
    mask = torch.ones_like(ids)
    labels = [torch.tensor([2]), torch.tensor([1]), torch.tensor([0])]
    baseline = status_mb("VmRSS:")
    times, phases = [], []
    for _ in range(steps):
        t = time.perf_counter()
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        cls = drop(h[:, 0])
        loss = sum(torch.nn.functional.cross_entropy(hd(cls), y) for hd, y in zip(heads, labels))
        tf = time.perf_counter() - t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        tb = time.perf_counter() - t
        opt.step()
        times.append(time.perf_counter() - t)
        phases.append((tf, tb - tf, times[-1] - tb))
    return {
        "side": f"torch-{attn}", "len": seq_len, "layers": layers, "threads": threads,
        "median_s": statistics.median(times), "times_s": times,
        "fwd_s": statistics.median(p[0] for p in phases),
        "bwd_s": statistics.median(p[1] for p in phases),
        "opt_s": statistics.median(p[2] for p in phases),
        "baseline_mb": baseline, "peak_mb": status_mb("VmHWM:"),
        "attn_implementation": model.config._attn_implementation,
    }


def run_rust(binary: str, seq_len: int, layers: int, steps: int, threads: int, ckpt: bool) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [binary, "--len", str(seq_len), "--steps", str(steps), "--layers", str(layers)]
    if ckpt:
        cmd.append("--checkpointing")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_torch(attn: str, seq_len: int, layers: int, steps: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--torch-child", attn, "--lens", str(seq_len),
           "--layers", str(layers), "--steps", str(steps), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lens", default="1024,4096")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every side this many times (alternating order); medians over rounds")
    ap.add_argument("--rust-bin", default=str(REPO / "target/release/examples/encoder_step"))
    ap.add_argument("--torch-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--table-from", default=None,
                    help="print the table from the JSON rows a run wrote to stderr")
    a = ap.parse_args()
    lens = [int(x) for x in a.lens.split(",")]
    if a.table_from:
        rows = [json.loads(l) for l in Path(a.table_from).read_text().splitlines()
                if l.startswith("{")]
        table(rows, lens, a)
        return
    if a.torch_child:
        print(json.dumps(torch_side(a.torch_child, lens[0], a.layers, a.steps, a.threads)))
        return
    if not Path(a.rust_bin).exists():
        subprocess.run(["cargo", "build", "--release", "-p", "clinstruct-train", "--example",
                        "encoder_step"], cwd=REPO, check=True)
    rows = []
    for r_i, n in [(r_i, n) for r_i in range(a.rounds) for n in lens]:
        sides = ["clinstruct", "clinstruct+ckpt", "eager", "sdpa"]
        # Alternate the order between rounds, so a change of load hits both sides.
        for side in sides if r_i % 2 == 0 else sides[::-1]:
            if side.startswith("clinstruct"):
                r = run_rust(a.rust_bin, n, a.layers, a.steps, a.threads, side.endswith("ckpt"))
                r["side"] = side
            else:
                r = run_torch(side, n, a.layers, a.steps, a.threads)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    table(rows, lens, a)


def merge_rounds(rows: list) -> list:
    """One row per (len, side): the median of each number over the rounds."""
    out = {}
    for r in rows:
        out.setdefault((r["len"], r["side"]), []).append(r)
    merged = []
    for (n, side), rs in out.items():
        m = dict(rs[0])
        for key in ["median_s", "peak_mb", "baseline_mb", "fwd_s", "bwd_s", "opt_s"]:
            vals = [r[key] for r in rs if key in r]
            if vals:
                m[key] = statistics.median(vals)
        m["rounds"] = len(rs)
        merged.append(m)
    return merged


def table(rows: list, lens: list, a) -> None:
    rows = merge_rounds(rows)
    rounds = max(r["rounds"] for r in rows)
    print(f"\n{a.layers} layers, batch 1, {a.threads} threads, median of {a.steps} steps"
          f"{f', median over {rounds} rounds' if rounds > 1 else ''}\n")
    print("| tokens | side | step s | peak MiB | baseline MiB | step MiB | time vs eager | time vs sdpa | peak vs eager | step MiB vs eager |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in lens:
        by = {r["side"]: r for r in rows if r["len"] == n}
        eager, sdpa = by["torch-eager"], by["torch-sdpa"]
        for side, r in by.items():
            step_mb = r["peak_mb"] - r["baseline_mb"]
            e_step = eager["peak_mb"] - eager["baseline_mb"]
            print(f"| {n} | {side} | {r['median_s']:.3f} | {r['peak_mb']:.0f} | {r['baseline_mb']:.0f} "
                  f"| {step_mb:.0f} | {r['median_s'] / eager['median_s']:.2f}x "
                  f"| {r['median_s'] / sdpa['median_s']:.2f}x | {r['peak_mb'] / eager['peak_mb']:.2f}x "
                  f"| {step_mb / e_step:.2f}x |")
    print("\nphases (s, forward / backward / optimiser):")
    for n in lens:
        for r in rows:
            if r["len"] == n and "fwd_s" in r:
                print(f"  {n:>5} {r['side']:<16} {r['fwd_s']:.3f} / {r['bwd_s']:.3f} / {r['opt_s']:.3f}")


if __name__ == "__main__":
    main()
