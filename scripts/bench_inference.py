#!/usr/bin/env python
"""Full-resolution inference time and peak memory per image size, each size in a fresh process.

    .venv/bin/python scripts/bench_inference.py                       # resnet34 + FADE, 1 2 4 8 Mpx, CPU
    .venv/bin/python scripts/bench_inference.py --sizes 1 2 --tile 1024 --device cuda
    .venv/bin/python scripts/bench_inference.py --write-docs          # also into docs/benchmarks.md

Each size runs ``Predictor.predict`` (the evaluation/inference path: padding, make_input, network, crop, clamp)
once on a random 4:3 image with a realistic trimap, in its own subprocess so that ``ru_maxrss`` is the peak of
that size alone. Prints a markdown table: seconds of the prediction, peak resident memory of the process
(``ru_maxrss``, which includes the ~model and library footprint shown in the "before" column) and, on CUDA,
the peak allocated GPU memory. Weights are random (no checkpoint needed): time and memory do not depend on
their values. A child whose resident memory passes ``--limit-gb`` is killed and reported, so a size that does
not fit cannot take the machine down.

``--write-docs`` writes the table into the ``inference`` section of docs/benchmarks.md (``inference-tile`` with
``--tile``; ``-cuda`` is appended to the name on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matting.utils import bench_docs  # noqa: E402


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from matting.engine.predictor import Predictor
    from matting.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    w = int(round(math.sqrt(args.mpx * 1e6 * 4 / 3)))
    h = int(round(args.mpx * 1e6 / w))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.zeros((h, w), np.uint8)
    trimap[:, w // 3 :] = 255
    trimap[:, w // 3 - w // 20 : w // 3 + w // 20] = 128  # a 10%-wide unknown band, like a real trimap

    model = build_model(args.encoder, args.upsampler).eval()
    predictor = Predictor(model, args.device, args.amp, tile=args.tile, tile_margin=args.tile_margin,
                          flush_denormals=True)  # as the inference command line sets it
    if predictor.device.type == "cuda":
        predictor.predict(image[:64, :64], trimap[:64, :64])  # CUDA context and kernels outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    alpha = predictor.predict(image, trimap)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if predictor.device.type == "cuda" else None
    assert alpha.shape == (h, w)
    print(json.dumps({"mpx": args.mpx, "h": h, "w": w, "seconds": seconds, "before_mb": before, "peak_mb": peak,
                      "gpu_mb": gpu, "threads": torch.get_num_threads(), "device": str(predictor.device)}))


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_size(args: argparse.Namespace, mpx: float) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mpx", str(mpx), "--encoder", args.encoder,
           "--upsampler", args.upsampler, "--device", args.device, "--amp", args.amp,
           "--threads", str(args.threads), "--tile-margin", str(args.tile_margin)]
    if args.tile:
        cmd += ["--tile", str(args.tile)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    watched_peak, killed = 0.0, False
    while proc.poll() is None:
        rss = _rss_mb(proc.pid)
        watched_peak = max(watched_peak, rss)
        if rss > args.limit_gb * 1024:
            proc.kill()
            killed = True
        time.sleep(0.05)
    out, err = proc.communicate()
    if killed:
        return {"mpx": mpx, "error": f"killed above {args.limit_gb} GB resident"}
    if proc.returncode != 0:
        return {"mpx": mpx, "error": (err.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1, 2, 4, 8], help="megapixels (default 1 2 4 8)")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--upsampler", default="fade")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none")
    p.add_argument("--tile", type=int, default=None, help="Predictor tile size in pixels (default: whole image)")
    p.add_argument("--tile-margin", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--limit-gb", type=float, default=20.0, help="kill a size whose resident memory passes this")
    bench_docs.add_argument(p)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mpx", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    section = ("inference-tile" if args.tile else "inference") + ("-cuda" if args.device.startswith("cuda") else "")
    try:
        bench_docs.measure_and_write(args.write_docs, section, "python scripts/bench_inference.py", sys.argv[1:],
                                     lambda: measure(args))
    except bench_docs.DocsSectionError as exc:
        sys.exit(f"error: {exc}")


def measure(args: argparse.Namespace) -> str:
    """Runs every size in its own process; prints the table row by row and returns it."""
    tiling = f"tiles {args.tile} px + {args.tile_margin} px margin" if args.tile else "whole image"
    lines = [f"{args.encoder} + {args.upsampler}, {args.device}, amp {args.amp}, {tiling}, batch 1, "
             f"{os.cpu_count()} CPUs visible", "",
             "| Mpx | H x W | seconds | peak RSS MB | RSS before predict MB | peak GPU MB |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for mpx in args.sizes:
        r = run_size(args, mpx)
        if "error" in r:
            lines.append(f"| {mpx:g} | - | - | - | - | {r['error']} |")
        else:
            gpu = "-" if r["gpu_mb"] is None else f"{r['gpu_mb']:.0f}"
            lines.append(f"| {mpx:g} | {r['h']} x {r['w']} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | "
                         f"{r['before_mb']:.0f} | {gpu} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
