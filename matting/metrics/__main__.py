"""Command line: score a folder of predictions with the official Composition-1k metrics, or time them.

    python -m matting.metrics --pred DIR --gt DIR --trimap DIR [--out metrics.csv] [--workers N] [--allow-missing]
    python -m matting.metrics --bench [--bench-size 1920x1080] [--repeat 5] [--write-docs [docs/benchmarks.md]]
"""

from __future__ import annotations

import argparse
import re
import sys

from matting.data.io import check_output_file
from matting.errors import MattingError, cli
from matting.metrics.batch import evaluate_folders, format_table, summarize, unpredicted, write_csv
from matting.metrics.bench import run_bench
from matting.utils import bench_docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m matting.metrics",
        description="Official Composition-1k SAD, MSE, Grad and Conn (the MATLAB code's values) for a folder "
        "of predicted alpha mattes. Predictions <stem>_<k>.png pair with alphas <stem>.png (or <stem>_<k>.png) "
        "and trimaps <stem>_<k>.png. Only trimap pixels equal to 128 are counted.",
    )
    parser.add_argument("--pred", help="folder of predicted alphas (8-bit, clamped to the trimap)")
    parser.add_argument("--gt", help="folder of ground-truth alphas")
    parser.add_argument("--trimap", help="folder of trimaps, named like the predictions")
    parser.add_argument("--out", help="write a CSV: one row per image and a final 'mean' row")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the images that have a prediction when some have none (they are counted)")
    parser.add_argument("--workers", type=int, default=0, help="processes (default 0: one per core; 1: no pool)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="print only the means, not one line per image")
    parser.add_argument("--bench", action="store_true", help="time each metric on a synthetic matte (one core)")
    parser.add_argument("--bench-size", default="1920x1080", help="WIDTHxHEIGHT of the --bench image")
    parser.add_argument("--repeat", type=int, default=5, help="--bench runs per metric (the median is shown)")
    bench_docs.add_argument(parser, "the --bench table")
    return parser


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    """``--bench``: times the metrics, prints the table and, with ``--write-docs``, writes it into the docs."""
    m = re.fullmatch(r"(\d+)x(\d+)", args.bench_size)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise MattingError(f"--bench-size: expected WIDTHxHEIGHT such as 1920x1080, got {args.bench_size!r}")
    if args.repeat < 1:
        raise MattingError(f"--repeat: must be >= 1, got {args.repeat}")
    try:
        bench_docs.measure_and_write(args.write_docs, "metrics", "python -m matting.metrics", argv,
                                     lambda: run_bench(height=int(m[2]), width=int(m[1]), repeat=args.repeat))
    except bench_docs.DocsSectionError as exc:
        raise MattingError(str(exc)) from None
    return 0


@cli
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bench:
        return _bench(args, sys.argv[1:] if argv is None else argv)
    if args.write_docs:
        parser.error("--write-docs goes with --bench")
    missing = [f"--{k}" for k in ("pred", "gt", "trimap") if not getattr(args, k)]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --bench)")

    if args.out:
        check_output_file(args.out, "the CSV")  # before scoring anything
    rows = evaluate_folders(args.pred, args.gt, args.trimap, workers=args.workers, progress=not args.no_progress,
                            allow_missing=args.allow_missing)
    summary = summarize(rows)
    print(format_table(rows, summary, per_image=not args.quiet))
    left_out = unpredicted(args.pred, args.trimap) if args.allow_missing else []
    if left_out:
        shown = ", ".join(left_out[:10]) + (f" and {len(left_out) - 10} more" if len(left_out) > 10 else "")
        print(f"{len(rows)} of {len(rows) + len(left_out)} images scored: {len(left_out)} without a prediction "
              f"left out (--allow-missing): {shown}")
    if args.out:
        write_csv(rows, args.out, summary)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
