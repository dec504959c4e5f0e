"""Composition-1k evaluation at full resolution: ``python -m matting.evaluate [--data D] [--checkpoint C] [--out O]``.

Follows ``docs/protocol.md``: batch 1, reflect padding to the network's output stride, crop back, clamp to the
trimap, round to 8 bits, official metrics (``matting.metrics``). Writes ``OUT/alpha/<name>.png``,
``OUT/metrics.csv`` and ``OUT/summary.json``, prints a table of the means next to the constant-0.5 baseline and,
as its last line, the path of ``summary.json``. With no arguments it evaluates the demo test set with the latest
demo checkpoint, so it works right after ``scripts/train.sh``.

``--data`` is a prepared test folder (``merged/``, ``alpha/`` or ``alpha_copy/``, ``trimaps/``; alphas named per
composite ``<fg>_<k>`` or per foreground ``<fg>``), or Adobe's raw ``Combined_Dataset/`` together with
``--bg-dir`` (the VOC images), whose test set is then composed once with Adobe's recipe.

Exit status: 0 when every image was scored, 1 when some failed (each is reported and counted, never skipped),
2 for a usage error (missing folder, checkpoint...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matting.data.compose_test import resolve_test_source
from matting.data.io import check_writable_dir
from matting.data.release import TestDataset, read_test_folder
from matting.engine.checkpoint import DEMO_CHECKPOINT, existing_checkpoint
from matting.engine.evaluator import check_eval_outputs, evaluate, format_table
from matting.engine.predictor import AMP_MODES, Predictor
from matting.engine.runtime import flush_denormals
from matting.errors import MattingError, cli

DEFAULT_DATA = "data/demo/test"
DEFAULT_OUT = "runs/demo/eval"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m matting.evaluate",
        description="Full-resolution Composition-1k evaluation with the official SAD/MSE/Grad/Conn.",
    )
    p.add_argument("--data", default=DEFAULT_DATA, help=f"test folder or Combined_Dataset/ (default {DEFAULT_DATA})")
    p.add_argument("--checkpoint", default=DEMO_CHECKPOINT, help=f"default {DEMO_CHECKPOINT}")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--bg-dir", default=None, help="VOC background folder, to compose the test set of a raw release")
    p.add_argument(
        "--compose-dir", default=None, help="where to compose a raw release's test set (default: next to the release)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--amp", default="none", choices=list(AMP_MODES), help="autocast for the network (default none)")
    p.add_argument("--workers", type=int, default=2, help="processes computing metrics (0: none; default 2)")
    p.add_argument(
        "--tile", type=int, default=None, help="run the network in tiles of this many pixels (bounds memory)"
    )
    p.add_argument("--tile-margin", type=int, default=128, help="context pixels around each tile (default 128)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flush_denormals()
    if args.workers < 0:
        raise MattingError(f"--workers must be >= 0, got {args.workers}")
    checkpoint = existing_checkpoint(args.checkpoint)
    out = Path(args.out)
    check_writable_dir(out, "evaluation outputs")  # before composing a test set or predicting anything
    test_dir = resolve_test_source(
        args.data, args.bg_dir, args.compose_dir, workers=max(args.workers, 1), progress=not args.no_progress
    )
    dataset = TestDataset(read_test_folder(test_dir))
    check_eval_outputs(out, dataset)
    predictor = Predictor.from_checkpoint(
        checkpoint, args.device, args.amp, tile=args.tile, tile_margin=args.tile_margin
    )
    summary = evaluate(
        predictor,
        dataset,
        out,
        progress=not args.no_progress,
        workers=args.workers,
        meta={"data": str(test_dir), "split": "test"},
    )
    print(f"{checkpoint} (step {summary['step']}) on {test_dir}:\n")
    print(format_table(summary))
    if summary["failed"]:
        names = ", ".join(f["name"] for f in summary["failures"][:10])
        more = f" and {summary['failed'] - 10} more" if summary["failed"] > 10 else ""
        print(f"FAILED ({summary['failed']}): {names}{more}; see {out / 'summary.json'}")
    print(out / "summary.json")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
