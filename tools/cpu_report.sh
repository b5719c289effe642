#!/usr/bin/env bash
# Measure fastgru on this machine's CPU, named beside every figure: the CPU and its vector
# features, the accuracy suites, then S1-S6 and the whole-network cases against onnxruntime,
# and the gate loops alone (tools/gate_loops.py).
#
#   bash tools/cpu_report.sh [OUT_DIR] [THREADS]      (default: bench/out, "1,2")
#
# Runs from a source checkout with whatever Python has numba, numpy, onnx and onnxruntime
# (PYTHON=... to pick one; torch adds PyTorch as a peer and the drift suite's truth).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/out}
threads=${2:-1,2}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  echo "## CPU"
  lscpu | grep -E "Model name|^CPU\(s\)|L1d|L2|L3|Flags" | sed 's/Flags:.*/Flags (vector): /' | head -8
  grep -o -w -E "avx2|avx512f|avx512_bf16|amx_tile|amx_bf16|avx512_fp16" /proc/cpuinfo | sort -u | tr '\n' ' '
  echo
  "$python" -c "import numba, numpy, onnxruntime; print('numba', numba.__version__, 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
} | tee "$out/cpu.txt"
"$python" -m pytest -q -p no:cacheprovider tests/test_activations.py tests/test_drift.py \
  tests/test_invariants.py 2>&1 | tail -3 | tee "$out/accuracy.txt"
peers=onnxruntime
"$python" -c "import torch" 2>/dev/null && peers=onnxruntime,torch
"$python" -m fastgru.cli bench --threads "$threads" --seconds 0.5 --vs "$peers" \
  | tee "$out/bench.md"
"$python" bench/whole_models.py --threads "$threads" --seconds 0.5 --rounds 2 \
  | tee "$out/whole_models.md"
"$python" tools/gate_loops.py | tee "$out/gate_loops.md"
