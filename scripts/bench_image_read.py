"""Cost of the truncation check every image reader runs (``matting.data.io.read_image_bytes``).

Compares ``read_rgb`` (read the bytes, check the JPEG/PNG end, ``cv2.imdecode``) with what it replaced
(``cv2.imread``), on generated photo-like images in a temporary folder, and times the end check alone. Prints a
markdown table; each figure is the minimum over interleaved rounds, so load from other processes shows less.

    .venv/bin/python scripts/bench_image_read.py [--rounds 15] [--reads 5] [--write-docs [docs/benchmarks.md]]

``--write-docs`` also writes the table into the ``image-read`` section of docs/benchmarks.md.
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

from matting.data import io  # noqa: E402
from matting.utils import bench_docs  # noqa: E402

SIZES = ((480, 640), (1080, 1920))


def photo_like(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8: smooth structure plus sensor-like noise, so JPEG and PNG sizes are realistic."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / 37) + np.cos(y / 23), np.sin((x + y) / 51), np.cos(x / 13) * np.sin(y / 17)], 2)
    return (base * 60 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)


def before(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def per_read_ms(fn, arg, reads: int) -> float:
    tic = time.perf_counter()
    for _ in range(reads):
        fn(arg)
    return (time.perf_counter() - tic) / reads * 1e3


def measure(args: argparse.Namespace) -> str:
    """Prints the table row by row (as each is measured) and returns it."""
    rng = np.random.default_rng(0)
    lines = [f"cv2.setNumThreads(1), generated photo-like images, minimum of {args.rounds} interleaved rounds of "
             f"{args.reads} reads", "",
             "| file | KB | before: cv2.imread ms | after: read_rgb ms | end check alone ms |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for h, w in SIZES:
            image = photo_like(h, w, rng)
            for label, suffix, params in (("JPEG q95", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), ("PNG", ".png", [])):
                path = Path(tmp) / f"{w}x{h}{suffix}"
                cv2.imwrite(str(path), image, params)
                data = path.read_bytes()
                check = io._jpeg_complete if suffix == ".jpg" else io._png_complete
                times = {"before": [], "after": [], "check": []}
                for _ in range(args.rounds):
                    times["before"].append(per_read_ms(before, path, args.reads))
                    times["after"].append(per_read_ms(io.read_rgb, path, args.reads))
                    times["check"].append(per_read_ms(check, data, args.reads))
                lines.append(f"| {w}x{h} {label} | {len(data) // 1024} | {min(times['before']):.2f} | "
                             f"{min(times['after']):.2f} | {min(times['check']):.3f} |")
                print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reads", type=int, default=5)
    bench_docs.add_argument(parser)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    try:
        bench_docs.measure_and_write(args.write_docs, "image-read", "python scripts/bench_image_read.py",
                                     sys.argv[1:], lambda: measure(args))
    except bench_docs.DocsSectionError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
