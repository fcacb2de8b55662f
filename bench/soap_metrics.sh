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

echo "Rust scaling (end to end; CPU seconds are steadier than wall time on a shared machine):"
python3 - "$BIN" "$WORK" "$N" <<'PY'
import resource, subprocess, sys, time
binary, work, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(f"{work}/all.jsonl").readlines()
for m in (n // 4, n // 2, n, 2 * n):
    open(f"{work}/m.jsonl", "w").writelines(lines[:m])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([binary, "eval", "soap", "--pred", f"{work}/m.jsonl", "--gold", f"{work}/m.jsonl", "--json"],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"  {m:6d} docs  wall {wall:6.2f} s  cpu {cpu:6.2f} s  {1000 * cpu / m:6.2f} cpu-ms/doc")
PY
