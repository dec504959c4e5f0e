#!/usr/bin/env bash
# Train a matting network. Default: the embedded demo (configs/demo.yaml).
#   scripts/train.sh [--config FILE] [--resume [CKPT]] [key.sub=value ...]
#   NPROC=2 scripts/train.sh --config configs/comp1k_fade.yaml     # several processes via torchrun
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
case " $* " in *" --config "*) args=("$@") ;; *) args=(--config configs/demo.yaml "$@") ;; esac
if [ "${NPROC:-1}" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m matting.train "${args[@]}"
fi
exec "$PY" -m matting.train "${args[@]}"
