#!/usr/bin/env bash
# Alpha mattes for your own images (see python -m matting.infer -h). Runs from the repo root, like the other
# scripts: give absolute paths, or paths relative to the repo root.
#   scripts/infer.sh --image photo.jpg --trimap photo_trimap.png --out out/ [--foreground] [--cutout]
#   scripts/infer.sh --image images/ --trimap trimaps/ --out out/ --checkpoint runs/x/checkpoints/best.pth
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
exec "$PY" -m matting.infer "$@"
