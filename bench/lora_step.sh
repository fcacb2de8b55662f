#!/usr/bin/env bash
# One LoRA training step on a Llama-3.2-1B-shaped decoder: clinstruct (crates/train/examples/
# lora_step.rs) against PyTorch + PEFT (bench/lora_step.py), same shapes, weights, token ids and
# thread count, the two sides alternating, one process per run (so peak RSS is the run's own).
# Prints a table of step-time and peak-memory ratios (ours / PyTorch). Q4_K has no PyTorch
# counterpart: it is compared with PyTorch's dense f32 step. Not a test: numbers depend on the
# machine and its load (bench/lora_step.md records them with the load average).
#
#   bench/lora_step.sh [--layers 2] [--seq 256] [--steps 4] [--threads 2] [--rounds 2]
#                      [--bases "dense nf4 q4k"] [--logits-to-keep] [--out results.jsonl]
#
# --logits-to-keep adds a PyTorch dense run that, like ours, computes LM-head logits only for
# the positions that have a target (transformers' logits_to_keep).
set -euo pipefail
cd "$(dirname "$0")/.."

layers=2 seq=256 steps=4 threads=2 rounds=2 bases="dense nf4 q4k" ltk=0 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --bases) bases=$2; shift 2 ;;
    --logits-to-keep) ltk=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-/work/oracle/.venv/bin/python}
cargo build --release -p clinstruct-train --example lora_step
bin=target/release/examples/lora_step
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
out=${out:-$(mktemp /tmp/lora_step.XXXXXX.jsonl)}
: > "$out"
common=(--layers "$layers" --seq "$seq" --steps "$steps" --threads "$threads")
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); results: $out" >&2

bench_py=bench/lora_step.py
ours() { "$bin" --base "$1" "${common[@]}" | tail -n 1 >> "$out"; }
torch() { "$py" "$bench_py" --base "$1" "${common[@]}" "${@:2}" 2>/dev/null | tail -n 1 >> "$out"; }
for r in $(seq 1 "$rounds"); do
  done_peers=" "
  for b in $bases; do
    peer=dense
    if [ "$b" = nf4 ]; then peer=nf4; fi
    # Alternate which side goes first, so a change of load hits both.
    if [ $((r % 2)) -eq 1 ]; then ours "$b"; fi
    case "$done_peers" in
      *" $peer "*) ;;
      *) torch "$peer"; done_peers="$done_peers$peer " ;;
    esac
    if [ $((r % 2)) -eq 0 ]; then ours "$b"; fi
  done
  if [ "$ltk" = 1 ]; then torch dense --logits-to-keep; fi
  echo "round $r done, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

"$py" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def agg(impl, base):
    rs = [r for r in rows if r["impl"] == impl and r["base"] == base]
    if not rs:
        return None
    return {
        "step": statistics.median(r["step_s"] for r in rs),
        "fwd": statistics.median(r["fwd_s"] for r in rs),
        "bwd": statistics.median(r["bwd_s"] for r in rs),
        "opt": statistics.median(r["opt_s"] for r in rs),
        "peak": statistics.median(r["peak_rss_mb"] for r in rs),
        "steps_peak": statistics.median(r.get("peak_rss_steps_mb", float("nan")) for r in rs),
        "load": statistics.median(r["rss_after_load_mb"] for r in rs),
        "loss0": rs[0]["losses"][0],
        "n": len(rs),
    }
r0 = rows[0]
print(f"layers {r0['layers']}, seq {r0['seq']} (loss on last {r0['completion']}), threads {r0['threads']}, "
      f"median over runs of each run's median step (warm-up excluded)")
hdr = (f"{'ours':6} {'vs':18} {'ours s':>7} {'torch s':>8} {'time':>6} {'ours MB':>8} {'torch MB':>9} "
       f"{'mem':>6} {'steps MB':>13} {'after load MB':>14} {'loss0 ours/torch':>18}")
print(hdr)
for base in ["dense", "nf4", "q4k"]:
    o = agg("clinstruct", base)
    if o is None:
        continue
    peers = [("pytorch+peft", "nf4" if base == "nf4" else "dense")]
    if base == "dense":
        peers.append(("pytorch+peft/logits_to_keep", "dense"))
    for impl, pb in peers:
        t = agg(impl, pb)
        if t is None:
            continue
        name = ("torch " if impl == "pytorch+peft" else "torch ltk ") + pb
        print(f"{base:6} {name:18} {o['step']:7.2f} {t['step']:8.2f} {o['step'] / t['step']:5.2f}x "
              f"{o['peak']:8.0f} {t['peak']:9.0f} {o['peak'] / t['peak']:5.2f}x "
              f"{o['steps_peak']:6.0f}/{t['steps_peak']:6.0f} {o['load']:6.0f}/{t['load']:6.0f} "
              f"{o['loss0']:8.4f}/{t['loss0']:8.4f}")
print("phases (s, fwd/bwd/clip+adamw):")
for impl in sorted({r["impl"] for r in rows}):
    for base in ["dense", "nf4", "q4k"]:
        a = agg(impl, base)
        if a:
            print(f"  {impl:28} {base:6} {a['fwd']:.2f} / {a['bwd']:.2f} / {a['opt']:.3f}  (runs {a['n']})")
EOF
