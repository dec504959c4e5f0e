"""Train a matting network: ``python -m matting.train --config C.yaml [--resume [CKPT]] [key.sub=value ...]``.

Several processes: ``torchrun --nproc_per_node N -m matting.train --config ...`` (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from matting.config import load_config
from matting.engine.runtime import cleanup_distributed, flush_denormals
from matting.engine.trainer import Trainer
from matting.errors import MattingError, cli

#: ``args.resume`` of a bare ``--resume``: the latest checkpoint in the config's output_dir.
LATEST = "<output_dir>/checkpoints/latest.pth"

# The start of a config override: a dotted key, then '='. A path has a '/' (or no '=') before any '='.
_OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")


def _take_resume(argv: list[str]) -> tuple[list[str], str | None]:
    """Takes ``--resume [CKPT]`` out of ``argv``: returns (the other arguments, CKPT or LATEST or None).

    argparse alone cannot tell ``--resume train.iterations=4`` (bare --resume, then an override) from
    ``--resume runs/a.pth``: a word that looks like ``key.sub=value`` and is not an existing file is an override.
    """
    rest, resume, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--resume="):
            resume = arg.split("=", 1)[1]
        elif arg == "--resume":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            is_path = nxt is not None and not nxt.startswith("-") and (
                Path(nxt).is_file() or not _OVERRIDE.match(nxt)
            )
            resume = nxt if is_path else LATEST
            i += 1 if is_path else 0
        else:
            rest.append(arg)
        i += 1
    return rest, resume


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """``--config C [--resume [CKPT]] [--no-progress] [key.sub=value ...]``, options and overrides in any order."""
    parser = argparse.ArgumentParser(prog="python -m matting.train", description="Train a matting network.")
    parser.add_argument("--config", required=True, help="YAML config (see `python -m matting.config`)")
    parser.add_argument(
        "--resume", nargs="?", metavar="CHECKPOINT",
        help="continue exactly from a checkpoint (default: <output_dir>/checkpoints/latest.pth); a key=value "
        "after a bare --resume is a config override",
    )
    parser.add_argument(
        "--restart", action="store_true",
        help="start over in an output_dir that holds an earlier run: it is moved to <output_dir>.old-<time>",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=0.001 model.upsampler=bilinear")
    rest, resume = _take_resume(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_intermixed_args(rest)
    args.resume = resume
    return args


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flush_denormals()
    cfg = load_config(args.config, args.overrides)
    resume = args.resume
    if resume is LATEST:
        resume = Path(cfg.output_dir) / "checkpoints" / "latest.pth"
        if not resume.is_file():
            raise MattingError(f"{resume}: nothing to resume (no latest checkpoint in {cfg.output_dir})")
    try:
        Trainer(cfg, resume=resume, progress=not args.no_progress, restart=args.restart).fit()
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
