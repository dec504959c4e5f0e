"""Official A2U/FADE matting checkpoint -> this project's checkpoint.

    python -m matting.convert_official --checkpoint OFFICIAL.pth --upsampler fade \\
        --out runs/official/checkpoints/official.pth
    scripts/eval_comp1k.sh --data TEST_DIR --checkpoint runs/official/checkpoints/official.pth --out runs/official/eval

``OFFICIAL.pth`` is a file written by the official trainer (A2U matting's ``scripts/trainval.py`` with the FADE
repo's ``a2u_matting/`` network; ``{"state_dict": {"module.<name>": tensor}, ...}``) or cleaned to its
``state_dict``. The output is a checkpoint as the trainer writes it, with the entries that evaluation,
inference and export read (``format``, ``model``, ``config``, ``step``, ``epoch``, ``best``; plain data only):
``config.model`` rebuilds the official network (``head: official``), ``step`` and ``epoch`` are 0 (the
official file's own counters do not translate to this project's). ``--out`` is never overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from matting.config import Config, ModelConfig
from matting.engine.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, model_from_checkpoint
from matting.errors import MattingError, cli
from matting.models.official import OFFICIAL_UPSAMPLERS, load_official_a2u, official_model_config

DEFAULT_OUT = "runs/official/checkpoints/official.pth"


def convert(checkpoint: str | Path, upsampler: str, out: str | Path) -> Path:
    """Writes the project checkpoint of an official one to ``out`` (refusing an existing path); returns ``out``."""
    out = Path(out)
    if out.exists():
        raise MattingError(f"{out}: already exists; choose another --out (nothing was overwritten)")
    model = load_official_a2u(checkpoint, upsampler)
    runs = out.parent.parent if out.parent.name == "checkpoints" else out.parent
    cfg = dataclasses.replace(
        Config(), name=f"official_a2u_{upsampler}", output_dir=str(runs),
        model=ModelConfig(**official_model_config(upsampler)),
    )
    payload = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": cfg.to_dict(),
               "step": 0, "epoch": 0, "best": None}
    atomic_torch_save(payload, out)  # a failed write is an OutputError (a MattingError) naming the file
    model_from_checkpoint(out)  # what evaluate, infer and export will do with it
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matting.convert_official",
        description="Convert an official A2U/FADE matting checkpoint into a checkpoint of this project.",
    )
    parser.add_argument("--checkpoint", required=True, help="the official .pth (trainer output or state_dict only)")
    parser.add_argument("--upsampler", default="fade", choices=OFFICIAL_UPSAMPLERS,
                        help="the network it was trained with (default fade)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"checkpoint to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    out = convert(args.checkpoint, args.upsampler, args.out)
    print(f"{args.checkpoint} -> {out} (resnet34+{args.upsampler}, official head); evaluate it with "
          f"scripts/eval_comp1k.sh --data TEST_DIR --checkpoint {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
