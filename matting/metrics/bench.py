"""Speed of the metrics on synthetic matte-like images: ``python -m matting.metrics --bench [--write-docs]``.

Runs in this one process (numpy/scipy run these metrics on one core), so the figures are seconds per megapixel
on one core. The project's target is all four metrics together in at most 0.25 s per megapixel; measured
figures (and the MATLAB code's, for comparison) are in docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import time

import cv2
import numpy as np

from matting.metrics.official import compute_metrics, conn, grad, mse, sad

TARGET_S_PER_MPX = 0.25


def synthetic_matte(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A matte-like test case: a large soft-edged object with holes and thin semi-transparent strands, a
    trimap made from it the usual way, and a prediction with smooth and pixel errors clamped to the trimap.

    Returns:
        ``(pred, gt, trimap)``: (height, width) uint8 each; the trimap holds only 0, 128 and 255.
    """
    rng = np.random.default_rng(seed)
    small = rng.standard_normal((max(height // 64, 2), max(width // 64, 2))).astype(np.float32)
    field = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # A central body (so most of the image is solid fg or bg, as in Composition-1k) made ragged by the field.
    body = 1.0 - np.hypot((yy - height * 0.55) / (height * 0.4), (xx - width * 0.5) / (width * 0.3))
    alpha = np.clip((body + 0.15 * field) * 12.0 + 0.5, 0.0, 1.0)
    strands = np.zeros((height, width), np.float32)
    for _ in range(60):
        x0, y0 = rng.uniform(0.2 * width, 0.8 * width), rng.uniform(0.1 * height, 0.4 * height)
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.2) * height
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        cv2.line(strands, (int(x0), int(y0)), (int(x1), int(y1)), float(rng.uniform(0.3, 1.0)), 1, cv2.LINE_AA)
    alpha = np.maximum(alpha, strands)
    gt = np.round(alpha * 255).astype(np.uint8)

    soft = ((gt > 0) & (gt < 255)).astype(np.uint8)
    radius = max(min(height, width) // 60, 2)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    unknown = cv2.dilate(soft, kernel) > 0
    trimap = np.where(gt == 255, 255, 0).astype(np.uint8)
    trimap[unknown] = 128

    noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 3) * 60
    pred_f = alpha * 255 + noise + rng.normal(0, 4, (height, width)).astype(np.float32)
    pred = np.clip(np.round(pred_f), 0, 255).astype(np.uint8)
    pred[trimap == 0] = 0
    pred[trimap == 255] = 255
    return pred, gt, trimap


def _median_seconds(fn, args: tuple, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_metrics(height: int = 1080, width: int = 1920, repeat: int = 5, seed: int = 0) -> tuple[list[dict], str]:
    """Times each metric and all four together on one synthetic matte, then all four on uniform noise where
    every pixel is unknown (thousands of tiny components per Conn threshold: the stress case).

    Returns:
        ``(rows, setting)``: one ``{"metric", "seconds", "s_per_mpx"}`` per case (median over ``repeat`` runs),
        and one line describing the image and the timing.
    """
    pred, gt, trimap = synthetic_matte(height, width, seed)
    mpx = height * width / 1e6
    rows = []
    for label, fn in (("sad", sad), ("mse", mse), ("grad", grad), ("conn", conn), ("all four", compute_metrics)):
        fn(pred, gt, trimap)  # warm-up (first-call allocations)
        seconds = _median_seconds(fn, (pred, gt, trimap), repeat)
        rows.append({"metric": label, "seconds": seconds, "s_per_mpx": seconds / mpx})
    rng = np.random.default_rng(seed)
    noise = [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(2)]
    seconds = _median_seconds(compute_metrics, (*noise, np.full((height, width), 128, np.uint8)), repeat)
    rows.append({"metric": "all four, stress case", "seconds": seconds, "s_per_mpx": seconds / mpx})
    setting = (f"synthetic matte {width}x{height} ({mpx:.2f} Mpx, {float((trimap == 128).mean()):.1%} unknown; "
               f"stress case: uniform noise, every pixel unknown), one process, median of {repeat}")
    return rows, setting


def format_table(rows: list[dict], setting: str) -> str:
    """The rows of ``time_metrics`` as a markdown table under its setting line, and the verdict on the target."""
    lines = [setting, "", "| metric | s / image | s / Mpx |", "|---|---:|---:|"]
    lines += [f"| {r['metric']} | {r['seconds']:.4f} | {r['s_per_mpx']:.4f} |" for r in rows]
    total = next(r["s_per_mpx"] for r in rows if r["metric"] == "all four")
    verdict = "meets" if total <= TARGET_S_PER_MPX else "MISSES"
    lines += ["", f"All four: {total:.3f} s/Mpx, {verdict} the target of {TARGET_S_PER_MPX} s/Mpx."]
    return "\n".join(lines)


def run_bench(height: int = 1080, width: int = 1920, repeat: int = 5, seed: int = 0) -> str:
    """Times the metrics (``time_metrics``), prints the table and returns it."""
    table = format_table(*time_metrics(height, width, repeat, seed))
    print(table)
    return table
