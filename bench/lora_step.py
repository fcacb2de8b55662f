#!/usr/bin/env python3
"""One LoRA training step on a Llama-3.2-1B-shaped decoder with PyTorch + PEFT on CPU: the peer of
`crates/train/examples/lora_step.rs` (same flags, same JSON, same weights and token ids).

transformers' LlamaForCausalLM with Llama-3.2-1B's config and `--layers` layers, weights from
the counter-based hash the Rust example uses (bit-identical f32 values), LoRA r=16 alpha=32 on
q,k,v,o,gate,up,down (PEFT), the frozen tied embedding / LM head in f32, labels -100 on all but
the last `--completion` tokens, one step = forward with `labels=` (transformers' causal-LM loss)
+ backward + clip_grad_norm_(1.0) + AdamW(lr 2e-4, weight decay 0).

Bases: `dense` (f32) and `nf4` (bitsandbytes Linear4bit, NF4, double quant, f32 compute).
`q4k` has no PyTorch counterpart; bench/lora_step.sh compares it with `dense`.
`--logits-to-keep` passes transformers' `logits_to_keep=completion + 1` with labels sliced to
match, so PyTorch also skips LM-head logits for prompt positions (what the Rust side does).

    /work/oracle/.venv/bin/python bench/lora_step.py --base dense --layers 2 --seq 256 \
        --steps 4 --threads 2 [--completion 128] [--dropout 0] [--logits-to-keep]

Prints one JSON line. Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 2048, 8192, 32, 8, 64, 128256
M64 = (1 << 64) - 1


def config(layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "head_dim": HEAD_DIM, "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "max_position_embeddings": 131072,
        "model_type": "llama", "num_attention_heads": HEADS, "num_hidden_layers": layers,
        "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": VOCAB,
    }


def key(name: str) -> int:
    """FNV-1a of the tensor name, as `key` in lora_step.rs."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def mix(k: int, idx):
    """splitmix64 of elements `idx` (uint64 array) of stream `k`, wrapping as in Rust."""
    import numpy as np

    with np.errstate(over="ignore"):
        z = np.uint64(k) + (idx + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def fill_uniform(t, name: str, bound: float = 0.02 * 3 ** 0.5, chunk: int = 1 << 22) -> None:
    """Writes the bench values of `name` (uniform on [-bound, bound)) into the f32 tensor `t` in
    place, chunk by chunk."""
    import numpy as np
    import torch

    k = key(name)
    a = np.float32(bound)
    flat = t.view(-1)
    n = flat.numel()
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        u = (mix(k, np.arange(s, e, dtype=np.uint64)) >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
        flat[s:e] = torch.from_numpy((u * np.float32(2) - np.float32(1)) * a)


def token_ids(seq: int):
    import numpy as np

    return (mix(key("input_ids"), np.arange(seq, dtype=np.uint64)) % np.uint64(VOCAB)).astype(np.int64)


def status_mb(key: str = "VmRSS:") -> float:
    """VmRSS (current) or VmHWM (peak since start or since reset_peak) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> None:
    """VmHWM back to the current RSS (Linux clear_refs); ru_maxrss keeps the process peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def to_nf4(model) -> None:
    """Replaces the decoder layers' linears by bitsandbytes NF4 (double quant, f32 compute)."""
    import bitsandbytes as bnb
    import torch

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                      compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)
                q.weight = q.weight._quantize("cpu")
                setattr(parent, name, q)


def run(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_import = status_mb()
    t0 = time.perf_counter()
    cfg = LlamaConfig(**config(args.layers))
    model = LlamaForCausalLM(cfg).float()
    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=True):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                fill_uniform(p.data, name)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "untied head"
    if args.base == "nf4":
        to_nf4(model)
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=args.dropout, target_modules=TARGETS)
    model = get_peft_model(model, lcfg)
    with torch.no_grad():
        # The adapters the Rust side starts from: A from the hash within PEFT's bound, B = 0.
        for name, p in model.named_parameters():
            if "lora_A" in name:
                fill_uniform(p.data, name.replace(".default", ""), 1.0 / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.zero_()
    model.train()
    load_s = time.perf_counter() - t0
    rss_after_load = status_mb()
    reset_peak()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)

    seq, comp = args.seq, args.completion
    ids = torch.from_numpy(token_ids(seq)).reshape(1, seq)
    labels = ids.clone()
    labels[:, : seq - comp] = -100
    kwargs = {"input_ids": ids, "labels": labels}
    if args.logits_to_keep:
        # Logits of the last comp + 1 positions; labels sliced so the shift lines up.
        kwargs["labels"] = labels[:, -(comp + 1):]
        kwargs["logits_to_keep"] = comp + 1

    step_s, fwd_s, bwd_s, opt_s, cpu_s, losses, norms = [], [], [], [], [], [], []

    def cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime

    for step in range(args.steps):
        t = time.perf_counter()
        c = cpu()
        out = model(**kwargs)
        loss = out.loss
        lv = loss.item()
        tf = time.perf_counter()
        loss.backward()
        del out, loss
        tb = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        te = time.perf_counter()
        losses.append(lv)
        norms.append(float(norm))
        if step > 0:
            step_s.append(te - t)
            cpu_s.append(cpu() - c)
            fwd_s.append(tf - t)
            bwd_s.append(tb - tf)
            opt_s.append(te - tb)
    return {
        "impl": "pytorch+peft" + ("/logits_to_keep" if args.logits_to_keep else ""),
        "base": args.base,
        "layers": args.layers,
        "seq": seq,
        "completion": comp,
        "threads": torch.get_num_threads(),
        "dropout": args.dropout,
        "trainable_params": trainable,
        "step_s": statistics.median(step_s),
        "fwd_s": statistics.median(fwd_s),
        "bwd_s": statistics.median(bwd_s),
        "opt_s": statistics.median(opt_s),
        "cpu_s": statistics.median(cpu_s),
        "steps_s": step_s,
        "losses": losses,
        "grad_norms": norms,
        "load_s": load_s,
        "rss_after_import_mb": rss_import,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_rss_steps_mb": status_mb("VmHWM:"),
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", choices=["dense", "nf4"], default="dense")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--completion", type=int, default=None, help="trained tokens at the end (default seq/2)")
    ap.add_argument("--steps", type=int, default=4, help="steps, the first a warm-up (at least 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--logits-to-keep", action="store_true")
    args = ap.parse_args()
    args.completion = args.seq // 2 if args.completion is None else args.completion
    args.steps = max(2, args.steps)
    if not 0 < args.completion < args.seq:
        sys.exit("--completion must be in (0, seq)")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
