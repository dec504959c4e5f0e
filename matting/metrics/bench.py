"""Speed of the metrics on synthetic matte-like images: ``python -m matting.metrics --bench``.

Runs in this one process (numpy/scipy run these metrics on one core), so the figures are seconds per megapixel
on one core. The target from the issue is all four metrics together in at most 0.25 s per megapixel (the
MATLAB/Octave code takes about 0.9 s).
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


def run_bench(height: int = 1080, width: int = 1920, repeat: int = 5, seed: int = 0) -> list[dict]:
    """Times each metric and all four together on one synthetic image; prints a table.

    Returns:
        One dict per metric, then one for all four on a uniform-noise, all-unknown image of the same size:
        ``{"metric", "seconds", "s_per_mpx"}`` (median over ``repeat`` runs).
    """
    pred, gt, trimap = synthetic_matte(height, width, seed)
    mpx = height * width / 1e6
    unknown_share = float((trimap == 128).mean())
    cases = [("sad", sad), ("mse", mse), ("grad", grad), ("conn", conn), ("all four", compute_metrics)]
    rows = []
    for label, fn in cases:
        fn(pred, gt, trimap)  # warm-up (first-call allocations)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(pred, gt, trimap)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        rows.append({"metric": label, "seconds": seconds, "s_per_mpx": seconds / mpx})
    print(
        f"synthetic matte {width}x{height} ({mpx:.2f} Mpx, {unknown_share:.1%} unknown), one process, "
        f"median of {repeat}"
    )
    print(f"{'metric':<10} {'s/image':>9} {'s/Mpx':>9}")
    for r in rows:
        print(f"{r['metric']:<10} {r['seconds']:9.4f} {r['s_per_mpx']:9.4f}")
    total = rows[-1]["s_per_mpx"]
    verdict = "meets" if total <= TARGET_S_PER_MPX else "MISSES"
    print(f"all four: {total:.3f} s/Mpx, {verdict} the target of {TARGET_S_PER_MPX} s/Mpx (MATLAB: ~0.9 s/Mpx)")

    # Not matte-like at all: every pixel unknown and thousands of tiny components per Conn threshold.
    rng = np.random.default_rng(seed)
    noise = [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(2)]
    everything = np.full((height, width), 128, np.uint8)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        compute_metrics(noise[0], noise[1], everything)
        times.append(time.perf_counter() - t0)
    stress = statistics.median(times)
    print(f"stress case (uniform noise, every pixel unknown): all four {stress / mpx:.3f} s/Mpx")
    rows.append({"metric": "all four, stress case", "seconds": stress, "s_per_mpx": stress / mpx})
    return rows
