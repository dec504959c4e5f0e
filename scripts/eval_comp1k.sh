#!/usr/bin/env bash
# Full-resolution Composition-1k evaluation with the official metrics (see docs and python -m matting.evaluate -h).
#   scripts/eval_comp1k.sh [--data TEST_DIR] [--checkpoint FILE] [--out OUT_DIR] [--device cuda] [--workers N]
#   scripts/eval_comp1k.sh --data Combined_Dataset --bg-dir VOCdevkit/VOC2012/JPEGImages ...   # raw release
# Runs from the repo root: relative paths are relative to it. Defaults: the demo test set (data/demo/test), runs/demo/checkpoints/latest.pth, runs/demo/eval.
# The last line printed is the path of summary.json. Exit 1 if any image failed (reported, never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
exec "$PY" -m matting.evaluate "$@"
