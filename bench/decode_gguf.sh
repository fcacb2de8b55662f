#!/usr/bin/env bash
# Decode tokens/s of `clinstruct generate` and llama.cpp on the same GGUF, machine, thread
# count, prompt and token count (a harness, not a test).
#
#   scripts/models/fetch_gemma3_270m.sh --with-llama-cpp   # once
#   bench/decode_gguf.sh [MODEL.gguf]                      # THREADS, TOKENS, REPEATS override
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS="${CLINSTRUCT_MODELS:-$HOME/.cache/clinstruct}"
MODEL="${1:-${CLINSTRUCT_GEMMA3_270M_GGUF:-$MODELS/gemma-3-270m-q4_k_m.gguf}}"
THREADS="${THREADS:-$(nproc)}"
TOKENS="${TOKENS:-128}"
REPEATS="${REPEATS:-3}"
PY="${PYTHON:-$MODELS/venv/bin/python}"
[ -f "$MODEL" ] || { echo "$MODEL: not found (scripts/models/fetch_gemma3_270m.sh)" >&2; exit 1; }
"$PY" -c "import llama_cpp" 2>/dev/null || {
  echo "llama-cpp-python missing in $PY (scripts/models/fetch_gemma3_270m.sh --with-llama-cpp)" >&2; exit 1; }
cargo build --release -q -p clinstruct
exec "$PY" bench/decode_gguf.py --binary target/release/clinstruct --model "$MODEL" \
  --tokens "$TOKENS" --threads "$THREADS" --repeats "$REPEATS"
