"""Training-loader throughput: samples per second of CompositionDataset through a DataLoader.

Generates foregrounds of realistic size (1000-2000 px sides, JPEG like Adobe's training set) and 640x480 JPEG
backgrounds (like COCO) in a temporary folder, then times each (preset, crop size, worker count) and prints a
markdown table. The first max(1, workers) batches of every run are excluded (worker start-up, first reads).

    .venv/bin/python scripts/bench_loader.py                      # every preset at its crop and at 160
    .venv/bin/python scripts/bench_loader.py --workers 0 2 4 --batches 20
    .venv/bin/python scripts/bench_loader.py --write-docs              # also into docs/benchmarks.md

``--write-docs`` writes the table into the ``loader`` section of docs/benchmarks.md (``loader-cache`` with
``--cache``).

The loader keeps up with training when samples/s >= batch size / (seconds per training iteration). On a shared
machine wall-clock rates are noisy; the main-process CPU time per sample (workers = 0) is the loader's own cost:
one free core delivers about 1000 / (CPU ms) samples per second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from matting.data.augment import make_augment_config  # noqa: E402
from matting.data.io import write_jpeg  # noqa: E402
from matting.data.train_dataset import CompositionDataset, worker_init_fn  # noqa: E402
from matting.errors import MattingError, cli  # noqa: E402
from matting.utils import bench_docs  # noqa: E402


def smooth_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8: low-frequency colour plus mild texture, which JPEG-compresses like a photo."""
    base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    texture = rng.normal(0, 6, (h, w, 1))
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def blob_alpha(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) uint8: a wobbly object silhouette with a soft, hair-like boundary band."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    theta = np.arctan2(yy - h / 2, xx - w / 2)
    radius = 0.35 * min(h, w) * (1 + 0.15 * np.sin(5 * theta + rng.uniform(0, 6)) + 0.05 * np.sin(23 * theta))
    d = np.hypot(yy - h / 2, xx - w / 2) - radius
    return (np.clip(0.5 - d / 25, 0, 1) * 255).astype(np.uint8)


def make_data(root: Path, n_fg: int, n_bg: int, seed: int) -> tuple[list[Path], list[Path], list[Path]]:
    rng = np.random.default_rng(seed)
    fgs, alphas, bgs = [], [], []
    for i in range(n_fg):
        h, w = (int(v) for v in rng.integers(1000, 2001, size=2))
        fgs.append(root / "fg" / f"fg{i}.jpg")
        alphas.append(root / "alpha" / f"fg{i}.jpg")
        write_jpeg(fgs[-1], smooth_rgb(rng, h, w))
        write_jpeg(alphas[-1], blob_alpha(rng, h, w))
    for i in range(n_bg):
        bgs.append(root / "bg" / f"bg{i}.jpg")
        write_jpeg(bgs[-1], smooth_rgb(rng, 480, 640))
    return fgs, alphas, bgs


def samples_per_second(dataset: CompositionDataset, workers: int, batch_size: int, batches: int) -> tuple[float, float]:
    """Returns (samples per second of wall time, CPU seconds per sample of this process). With workers = 0 the
    second is the loader's own cost, which other programs on a shared machine do not inflate."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        worker_init_fn=worker_init_fn if workers > 0 else None, generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    for _ in range(max(1, workers)):  # warm-up: start-up; the workers' first batches all arrive at about once
        next(it)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    del it
    return batches * batch_size / elapsed, cpu / (batches * batch_size)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fgs", type=int, default=6, help="generated foregrounds (1000-2000 px)")
    parser.add_argument("--bgs", type=int, default=12, help="generated 640x480 backgrounds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per run (after the warm-up ones)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--small-crop", type=int, default=160, help="also run every preset at this crop (0: skip)")
    parser.add_argument("--cache", action="store_true", help="decode images once up front (CompositionDataset cache)")
    bench_docs.add_argument(parser)
    args = parser.parse_args(argv)
    if args.fgs < 1 or args.bgs < 1 or args.batch_size < 1 or args.batches < 1 or min(args.workers) < 0:
        raise MattingError("--fgs, --bgs, --batch-size and --batches must be >= 1 and --workers >= 0")

    runs = [("indexnet", 320), ("gca", 512), ("a2u", 512)]
    if args.small_crop:
        runs += [(preset, args.small_crop) for preset in ("indexnet", "gca", "a2u")]
    section = "loader-cache" if args.cache else "loader"
    try:
        bench_docs.measure_and_write(args.write_docs, section, "python scripts/bench_loader.py",
                                     sys.argv[1:] if argv is None else argv, lambda: measure(args, runs))
    except bench_docs.DocsSectionError as exc:
        raise MattingError(str(exc)) from None
    return 0


def measure(args: argparse.Namespace, runs: list[tuple[str, int]]) -> str:
    """Times every (preset, crop) of ``runs`` with every worker count; prints the table row by row, returns it."""
    lines = [f"OpenCV {cv2.__version__}, cache={args.cache}, batch size {args.batch_size}, {args.batches} timed "
             f"batches per run, {args.fgs} generated JPEG foregrounds of 1000-2000 px, {args.bgs} 640x480 backgrounds",
             "",
             "| preset | crop | windows | workers | samples/s | wall ms/sample | main-process CPU ms/sample |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        fgs, alphas, bgs = make_data(Path(tmp), args.fgs, args.bgs, seed=0)
        for preset, crop in runs:
            cfg = make_augment_config(preset, crop_size=crop)
            dataset = CompositionDataset(fgs, alphas, bgs, cfg, seed=0, cache=args.cache)
            for workers in args.workers:
                sps, cpu = samples_per_second(dataset, workers, args.batch_size, args.batches)
                windows = "/".join(str(w) for w in cfg.windows)
                cpu_ms = f"{1000 * cpu:.0f}" if workers == 0 else "-"
                lines.append(f"| {preset} | {crop} | {windows} | {workers} | {sps:.1f} | {1000 / sps:.0f} | {cpu_ms} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
