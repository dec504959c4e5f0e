"""Train a matting network: ``python -m matting.train --config configs/demo.yaml [key.sub=value ...]``.

Several processes: ``torchrun --nproc_per_node N -m matting.train --config ...`` (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matting.config import load_config
from matting.errors import MattingError, cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m matting.train", description="Train a matting network.")
    parser.add_argument("--config", required=True, help="YAML config (see `python -m matting.config`)")
    parser.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
        help="continue exactly from a checkpoint (default: <output_dir>/checkpoints/latest.pth)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=0.001 model.upsampler=bilinear")
    return parser.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    resume = args.resume
    if resume == "latest":
        resume = Path(cfg.output_dir) / "checkpoints" / "latest.pth"
        if not resume.is_file():
            raise MattingError(f"{resume}: nothing to resume (no latest checkpoint in {cfg.output_dir})")
    from matting.engine.runtime import cleanup_distributed
    from matting.engine.trainer import Trainer

    try:
        Trainer(cfg, resume=resume, progress=not args.no_progress).fit()
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
