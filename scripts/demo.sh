#!/usr/bin/env bash
# The main job on a fresh machine (after scripts/setup.sh): generate the demo set, compose its test set with the
# same composer as the real data, train from scratch on CPU, evaluate with the official metrics, infer one image.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
[ -f data/demo/Combined_Dataset/Training_set/training_fg_names.txt ] || "$PY" -m matting.data.make_demo --out data/demo
"$PY" -m matting.data.compose_test --dataset data/demo/Combined_Dataset --bg-dir data/demo/test_bg --out data/demo/test
bash scripts/train.sh --config configs/demo.yaml "$@"
bash scripts/eval_comp1k.sh --data data/demo/test --checkpoint runs/demo/checkpoints/latest.pth --out runs/demo/eval
first=$(ls data/demo/test/merged | head -n 1)
"$PY" -m matting.infer --checkpoint runs/demo/checkpoints/latest.pth --image "data/demo/test/merged/$first" \
  --trimap "data/demo/test/trimaps/$first" --out runs/demo/infer --cutout
echo "demo done: metrics in runs/demo/eval/summary.json, inference in runs/demo/infer/"
