#!/usr/bin/env bash
# One prepared GPU check, at most ~8 minutes on a CUDA machine:
#   1. the CUDA and Triton tests (pytest -m "cuda or triton": Triton vs the reference on the GPU, fp32/fp16/bf16,
#      the network under real autocast, the lean op on CUDA);
#   2. scripts/bench_gpu.py: the reassembly op's implementations and 20 training steps of the paper network,
#      as markdown tables on stdout and in $OUT/benchmarks_gpu.md (runs/benchmarks_gpu.md when OUT is unset).
#
#   bash scripts/gpu_check.sh              # on a GPU machine
#   bash scripts/gpu_check.sh --cpu-smoke  # anywhere: Triton in its interpreter, tiny benchmark sizes on the CPU
#
# Exit status: non-zero if the tests or the benchmark failed (both always run; the tests do not stop at the
# first failure, so one GPU run reports all of them).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
smoke=()
if [ "${1:-}" = "--cpu-smoke" ]; then
  smoke=(--cpu-smoke)
  export TRITON_INTERPRET=1  # Triton kernels on CPU tensors; read when the kernels are defined
elif [ $# -gt 0 ]; then
  echo "usage: bash scripts/gpu_check.sh [--cpu-smoke]" >&2
  exit 2
fi
out_dir=${OUT:-runs}
mkdir -p "$out_dir"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"

echo "== tests (cuda or triton)"
timeout 210 "$PY" -m pytest -q -m "cuda or triton" tests 2>&1 | tee "$out_dir/gpu_check_tests.log" | tail -25
tests=${PIPESTATUS[0]}

echo "== benchmark"
timeout 250 "$PY" scripts/bench_gpu.py "${smoke[@]}" --budget-s 200 --out "$out_dir/benchmarks_gpu.md"
bench=$?

echo "== tests exit status $tests, benchmark exit status $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
