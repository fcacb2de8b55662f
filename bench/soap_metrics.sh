#!/usr/bin/env bash
# Task 4 scoring, side by side on one machine in one run: `clinstruct eval soap` against the
# Python reference scorers (sacrebleu, rouge-score, nltk METEOR via shared/tools/oracle), on the
# same JSONL of ~3,000-character notes. Prints wall seconds, the ratio, and Rust's scaling.
#
#   ORACLE_PY=/path/to/oracle/venv/bin/python ORACLE_NLTK_DATA=/path/nltk_data bench/soap_metrics.sh [N]
#
# N defaults to 1506 (the size of the official eval split). Needs the oracle venv
# (shared/tools/oracle/setup.sh); CI never runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1506}
PY=${ORACLE_PY:-/work/oracle/light/bin/python}
export ORACLE_NLTK_DATA=${ORACLE_NLTK_DATA:-/work/oracle/light/nltk_data}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cargo build --release -q -p clinstruct --bin clinstruct
cargo build --release -q -p clinstruct-metrics --example bench_soap
BIN=target/release/clinstruct
target/release/examples/bench_soap --synthetic "$((2 * N))" --write "$WORK/all.jsonl" >/dev/null
head -n "$N" "$WORK/all.jsonl" > "$WORK/n.jsonl"
echo "corpus: $N pairs, mean reference length $(python3 -c "import json,sys; r=[len(json.loads(l)['reference']) for l in open('$WORK/n.jsonl')]; print(round(sum(r)/len(r)))") chars; threads: $(nproc)"

now() { date +%s.%N; }
t0=$(now)
"$BIN" eval soap --pred "$WORK/n.jsonl" --gold "$WORK/n.jsonl" --json > "$WORK/rust.json"
t1=$(now)
"$PY" scripts/bench/soap_metrics_python.py "$WORK/n.jsonl" > "$WORK/python.txt"
t2=$(now)

python3 - "$WORK" "$t0" "$t1" "$t2" <<'PY'
import json, sys, re
work, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:])
rust, py = t1 - t0, t2 - t1
r = json.load(open(f"{work}/rust.json"))
print(f"clinstruct eval soap : {rust:8.2f} s  (BLEU {r['bleu']:.4f}  R-L {r['rougeL']:.4f}  METEOR {r['meteor']:.4f}  avg {r['average']:.4f})")
print(f"python scorers       : {py:8.2f} s")
print(f"speed-up (end to end): {py / rust:8.1f}x")
print(open(f"{work}/python.txt").read().strip())
PY

echo "Rust scaling (end to end):"
for k in 4 2 1 0; do
  m=$(( k == 0 ? 2 * N : N / k ))
  head -n "$m" "$WORK/all.jsonl" > "$WORK/m.jsonl"
  s=$(now); "$BIN" eval soap --pred "$WORK/m.jsonl" --gold "$WORK/m.jsonl" --json > /dev/null; e=$(now)
  python3 -c "print(f'  {$m:6d} docs  {$e - $s:7.2f} s  {$m / ($e - $s):8.0f} docs/s')"
done
