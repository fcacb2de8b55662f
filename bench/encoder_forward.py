#!/usr/bin/env python3
"""ModernBERT forward throughput, clinstruct (candle, Rust) vs transformers (sdpa, PyTorch), on CPU
with the same thread count, side by side in one run.

    /work/oracle/.venv/bin/python bench/encoder_forward.py [--threads 2] [--rounds 3]
        [--shapes 512x4,4096x1] [--work-dir /tmp/clinstruct-bench]

The checkpoint is ModernBERT-base-shaped (hidden 768, 22 layers, 12 heads, intermediate 1152,
local window 128, global every 3rd layer, vocab 50368) with random weights made by transformers;
it is written once to the work dir and never committed. Inputs: random ids, no padding.

Each round times one forward of each implementation per shape, alternating, after one warm-up
forward each; the table reports the best round (least disturbed by other jobs on a shared
machine) and the median. The Rust side is `cargo build --release -p clinstruct-models --example
encoder_bench` (the profile the clinstruct binary ships with; the dev profile keeps debug
assertions and overflow checks in candle and gemm, several times slower), or --rust-bin, with
RAYON_NUM_THREADS set to --threads; PyTorch gets torch.set_num_threads(--threads).
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


def make_checkpoint(path: Path) -> None:
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if (path / "model.safetensors").exists():
        return
    torch.manual_seed(0)
    cfg = ModernBertConfig(
        vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
        num_attention_heads=12, local_attention=128, global_attn_every_n_layers=3,
        max_position_embeddings=8192, architectures=["ModernBertModel"],
    )
    ModernBertModel(cfg).save_pretrained(path)


def time_torch(path: Path, seq_len: int, batch: int, threads: int):
    import torch
    from transformers import ModernBertModel

    torch.set_num_threads(threads)
    model = ModernBertModel.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size - 5, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)

    def once() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().item()
        return time.perf_counter() - t

    return once


def time_rust(exe: Path, path: Path, seq_len: int, batch: int, threads: int) -> float:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(exe), str(path), str(seq_len), str(batch), "2"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    # First forward is the warm-up (page-in of the mmaped weights, allocator growth).
    return lines[-1]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", default="512x4,4096x1")
    ap.add_argument("--work-dir", default="/tmp/clinstruct-bench")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--rust-bin", help="a prebuilt encoder_bench (default: build it, release)")
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    ckpt = Path(args.work_dir) / "modernbert-base-random"
    make_checkpoint(ckpt)
    if args.rust_bin:
        exe = Path(args.rust_bin)
    else:
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "clinstruct-models", "--example", "encoder_bench"],
                       cwd=REPO, check=True)
        exe = REPO / "target/release/examples/encoder_bench"

    import torch
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for seq_len, batch in shapes:
        torch_once = None if args.skip_torch else time_torch(ckpt, seq_len, batch, args.threads)
        if torch_once:
            torch_once()  # warm-up
        tt, rt = [], []
        for r in range(args.rounds):
            if torch_once:
                tt.append(torch_once())
            rt.append(time_rust(exe, ckpt, seq_len, batch, args.threads))
            print(f"  {seq_len}x{batch} round {r}: torch {tt[-1] if tt else float('nan'):.2f} s, "
                  f"rust {rt[-1]:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        n = seq_len * batch
        rows.append((seq_len, batch, n / min(tt) if tt else float("nan"), n / min(rt),
                     n / statistics.median(tt) if tt else float("nan"), n / statistics.median(rt)))
    print("\n| shape | transformers sdpa tok/s (best / median) | clinstruct tok/s (best / median) | ratio best (median) |")
    print("|---|---|---|---|")
    for seq_len, batch, tb, rb, tm, rm in rows:
        print(f"| {seq_len}x{batch} | {tb:.0f} / {tm:.0f} | {rb:.0f} / {rm:.0f} | {rb / tb:.2f}x ({rm / tm:.2f}x) |")


if __name__ == "__main__":
    sys.exit(main())
