"""Generates a small, deterministic stand-in for Composition-1k in the layout of Adobe's release.

    python -m matting.data.make_demo --out data/demo [--seed N]

writes, under ``OUT/``::

    Combined_Dataset/Training_set/Adobe-licensed images/{fg,alpha}/*.jpg   (half of the training fgs)
    Combined_Dataset/Training_set/Other/{fg,alpha}/*.jpg                   (the other half)
    Combined_Dataset/Training_set/training_{fg,bg}_names.txt
    Combined_Dataset/Test_set/Adobe-licensed images/{fg,alpha}/*.png, trimaps/<stem>_<k>.png
    Combined_Dataset/Test_set/test_{fg,bg}_names.txt
    train_bg/*.jpg  (stands in for COCO train2014)      test_bg/*.jpg  (stands in for VOC)
    demo.json       (the parameters; marks the folder as regenerable)

so the demo goes through the same reader, composer and loaders as the real data. As in the release, training
fgs and alphas are JPEG (alphas are noisy near 0 and 255) and test files are PNG.

The foregrounds pose the problems the real set poses: hair-like strands (1-3 px, anti-aliased, partly
transparent, thinning towards the tips), feathered and fuzzy edges, motion blur, glass-like regions of constant
partial alpha, holes (donuts, lattices, punched holes), and procedural textures whose colours come from one
shared pool for fg and bg, so colour alone does not separate them. Every image is drawn from its own child of
``numpy.random.SeedSequence(seed)``, so the files are byte-identical for a seed whatever the worker count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from matting.data.io import write_jpeg, write_png, write_text_atomic
from matting.data.release import (
    RELEASE_SUBSETS,
    TEST_BG_LIST,
    TEST_DIR,
    TEST_FG_LIST,
    TRAIN_BG_LIST,
    TRAIN_DIR,
    TRAIN_FG_LIST,
)
from matting.errors import MattingError, cli

MARKER = "demo.json"
JPEG_QUALITY = 95
# Every fg gets one leading kind (cycled, so each appears); other effects are added at random.
KINDS = ("hair", "fuzzy", "motion", "glass", "donut", "lattice")
_POOL_SIZE = 24  # colours shared by every fg and bg texture

Layer = tuple[np.ndarray, np.ndarray]  # colour (H,W,3) float32 in [0,1], alpha (H,W) float32 in [0,1]


# ------------------------------------------------------------------------------------------ field helpers

def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, broadcastable: y (H,1), x (1,W), float32."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Band-limited noise with features of about ``cell`` px. Returns (H,W) float32, zero mean, unit std."""
    gh, gw = max(2, math.ceil(h / cell)) + 1, max(2, math.ceil(w / cell)) + 1
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    up = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return (up - up.mean()) / (up.std() + 1e-6)


def _to_distance(f: np.ndarray) -> np.ndarray:
    """First-order signed distance in px (f / |grad f|) of an implicit shape f < 0 inside. (H,W) float32."""
    gy, gx = np.gradient(f)
    return f / np.maximum(np.sqrt(gx * gx + gy * gy), 1e-3)


def _coverage(sd: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Alpha of a shape from its signed distance: a ``soft``-px ramp centred on the edge (1 px = anti-aliased)."""
    return np.clip(0.5 - sd / soft, 0.0, 1.0).astype(np.float32)


def _ellipse_sd(rng, h, w, cy, cx, ay, ax, wobble: float) -> np.ndarray:
    """Signed distance (px) of a rotated ellipse whose outline wobbles by ``wobble`` (relative radius)."""
    y, x = _grid(h, w)
    t = rng.uniform(0, np.pi)
    u = ((x - cx) * math.cos(t) + (y - cy) * math.sin(t)) / ax
    v = (-(x - cx) * math.sin(t) + (y - cy) * math.cos(t)) / ay
    f = np.sqrt(u * u + v * v) - 1.0 + wobble * _smooth_noise(rng, h, w, max(8.0, min(ax, ay) / 2))
    return _to_distance(f.astype(np.float32))


def _blob_sd(rng, h, w, low: bool = False) -> np.ndarray:
    """A body made of 1-3 wobbly ellipses; ``low`` lets it run off the bottom edge like a cut-off portrait."""
    s = min(h, w)
    sds = []
    for j in range(rng.integers(1, 4)):
        cy = rng.uniform(0.35, 0.65) * h if not (low and j == 0) else rng.uniform(0.75, 1.0) * h
        cx = rng.uniform(0.35, 0.65) * w
        sds.append(_ellipse_sd(rng, h, w, cy, cx, rng.uniform(0.16, 0.36) * s, rng.uniform(0.16, 0.36) * s,
                               rng.uniform(0.03, 0.15)))
    return np.minimum.reduce(sds)


def _punch_holes(rng, sd: np.ndarray, count: int) -> np.ndarray:
    """Removes ``count`` small wobbly discs centred inside the shape (holes you can see the bg through)."""
    h, w = sd.shape
    inside = np.argwhere(sd < -3)
    if len(inside) == 0:
        return sd
    s = min(h, w)
    for cy, cx in inside[rng.integers(0, len(inside), count)]:
        r = rng.uniform(0.02, 0.07) * s
        sd = np.maximum(sd, -_ellipse_sd(rng, h, w, float(cy), float(cx), r, r * rng.uniform(0.6, 1.4), 0.05))
    return sd


def _stripes_sd(h: int, w: int, period: float, bar: float, angle: float) -> np.ndarray:
    """Exact signed distance (px) of parallel bars ``bar`` px wide every ``period`` px."""
    y, x = _grid(h, w)
    u = np.mod(x * math.cos(angle) + y * math.sin(angle), period)
    return (np.minimum(u, period - u) - bar / 2).astype(np.float32)


# -------------------------------------------------------------------------------------------- textures

def _palette_pool(rng: np.random.Generator) -> np.ndarray:
    """``_POOL_SIZE`` colours, (K,3) float32 in [0,1], spread over hue with varied saturation and value."""
    hsv = np.stack([rng.uniform(0, 180, _POOL_SIZE), rng.uniform(40, 255, _POOL_SIZE),
                    rng.uniform(50, 255, _POOL_SIZE)], axis=1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float32) / 255


def _ramp(t: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour ramp: t (H,W) in [0,1] -> (H,W,3) float32 through ``colours`` (K,3)."""
    knots = np.linspace(0, 1, len(colours))
    return np.stack([np.interp(t, knots, colours[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, pool: np.ndarray) -> np.ndarray:
    """A procedural colour texture from 2-4 pool colours. Returns (H,W,3) float32 in [0,1].

    Kinds: smooth gradient, warped stripes, colour blobs, plaid; then low-frequency shading and grain.
    """
    colours = pool[rng.choice(len(pool), rng.integers(2, 5), replace=False)]
    y, x = _grid(h, w)
    s = min(h, w)
    angle = rng.uniform(0, np.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    kind = rng.integers(4)
    if kind == 0:
        t = (u - u.min()) / (u.max() - u.min() + 1e-6) + 0.15 * _smooth_noise(rng, h, w, s / 3)
        img = _ramp(t, colours)
    elif kind == 1:
        period = rng.uniform(6, 40)
        warp = rng.uniform(0, 1.5) * period * _smooth_noise(rng, h, w, s / 4)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (u + warp) / period)
        t = np.clip((t - 0.5) * rng.uniform(1, 4) + 0.5, 0, 1)
        img = _ramp(t, colours[:2])
    elif kind == 2:
        fields = np.stack([_smooth_noise(rng, h, w, rng.uniform(0.08, 0.3) * s) for _ in colours])
        img = colours[np.argmax(fields, axis=0)]
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 3))
    else:
        period = rng.uniform(10, 50)
        v = -x * math.sin(angle) + y * math.cos(angle)
        a = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
        b = 0.5 + 0.5 * np.sin(2 * np.pi * v / period * rng.uniform(0.5, 2))
        img = _ramp(a * 0.5 + b * 0.5, colours)
    shade = 1 + rng.uniform(0.05, 0.25) * _smooth_noise(rng, h, w, s / 2)[..., None]
    grain = rng.normal(0, rng.uniform(0.005, 0.04), (h, w, 1)).astype(np.float32)
    return np.clip(img * shade + grain, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------ foregrounds

def _strands(rng, body_sd: np.ndarray, colour: np.ndarray, count: int, reach: float) -> Layer:
    """Hair-like strands rooted on the body outline and growing outwards.

    Curves are random walks with smoothly varying heading, drawn anti-aliased at 4x and area-downsampled, so
    a 1 px strand covers pixels partially. Roots are opaque-ish, tips fainter (separate draws per part).
    """
    h, w = body_sd.shape
    edge = np.argwhere(np.abs(body_sd) < 1.0)
    if len(edge) == 0 or count == 0:
        return colour, np.zeros((h, w), np.float32)
    roots = edge[rng.integers(0, len(edge), count)].astype(np.float32)  # (S, 2) as (y, x)
    gy, gx = np.gradient(body_sd)
    ny, nx = gy[roots[:, 0].astype(int), roots[:, 1].astype(int)], gx[roots[:, 0].astype(int), roots[:, 1].astype(int)]
    steps = max(4, int(reach / 2))
    heading = np.arctan2(ny, nx)[:, None] + rng.normal(0, 0.5, (count, 1))
    turn = rng.normal(0, 0.04, (count, 1)) + rng.normal(0, 0.1, (count, steps))
    heading = heading + np.cumsum(turn, axis=1)
    step = rng.uniform(1.2, 2.2, (count, 1))
    start = roots - 3 * np.stack([np.sin(heading[:, 0]), np.cos(heading[:, 0])], axis=1)  # root inside body
    ys = start[:, :1] + np.cumsum(step * np.sin(heading), axis=1)
    xs = start[:, 1:] + np.cumsum(step * np.cos(heading), axis=1)
    lengths = rng.integers(max(3, steps // 4), steps + 1, count)
    thickness = rng.choice([1, 1, 2, 2, 3], count)  # px at output resolution
    scale = 4
    alpha = np.zeros((h, w), np.float32)
    for part, opacity in (("root", rng.uniform(0.75, 1.0)), ("tip", rng.uniform(0.25, 0.6))):
        for t in (1, 2, 3):
            polys = []
            for i in np.flatnonzero(thickness == t):
                cut = int(lengths[i] * 0.6)
                sl = slice(0, cut + 1) if part == "root" else slice(cut, lengths[i])
                pts = np.stack([xs[i, sl], ys[i, sl]], axis=1) * scale
                if len(pts) >= 2:
                    polys.append(np.round(pts * 16).astype(np.int32))  # 4 fractional bits (shift=4)
            if not polys:
                continue
            canvas = np.zeros((h * scale, w * scale), np.uint8)
            # Thickness is drawn a bit thinner than t*4 so a "1 px" strand covers ~0.6-0.9 of a pixel.
            cv2.polylines(canvas, polys, False, 255, thickness=max(1, t * scale - 1), lineType=cv2.LINE_AA, shift=4)
            cov = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            alpha = 1 - (1 - alpha) * (1 - cov * opacity)
    return colour, alpha


def _glass(rng, body_sd: np.ndarray, pool: np.ndarray) -> Layer:
    """A glass-like object: constant alpha 0.3-0.7 inside, a denser rim, a pale tinted colour and a highlight.

    It is centred beside the body when there is room (glass in front of an opaque body would read as opaque).
    """
    h, w = body_sd.shape
    s = min(h, w)
    r = rng.uniform(0.12, 0.25) * s
    y, x = _grid(h, w)
    room = (body_sd > 0.6 * r) & (np.abs(y - h / 2) < 0.35 * h) & (np.abs(x - w / 2) < 0.35 * w)
    spots = np.argwhere(room)
    if len(spots):
        cy, cx = (float(c) for c in spots[rng.integers(len(spots))])
    else:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    sd = _ellipse_sd(rng, h, w, cy, cx, r, r * rng.uniform(0.6, 1.4), rng.uniform(0.0, 0.05))
    inside = _coverage(sd)
    rim = inside * _coverage(-(sd + rng.uniform(2, 5)))
    alpha = np.maximum(inside * rng.uniform(0.3, 0.7), rim * rng.uniform(0.8, 0.95))
    spot = np.exp(-((y - cy + 0.1 * s) ** 2 + (x - cx + 0.1 * s) ** 2) / (2 * (0.05 * s) ** 2))
    tint = 0.5 + 0.5 * _texture(rng, h, w, pool)
    return np.clip(tint + 0.5 * spot[..., None], 0, 1).astype(np.float32), alpha


def _motion_blur(rng, premult: np.ndarray, alpha: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Directional blur of the premultiplied colour and alpha together (what a moving object records)."""
    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1.0)
    k = cv2.warpAffine(k, rot, (length, length))
    k /= k.sum()
    return cv2.filter2D(premult, -1, k), cv2.filter2D(alpha, -1, k)


def _over(layers: list[Layer]) -> tuple[np.ndarray, np.ndarray]:
    """Stacks layers bottom to top with the over operator. Returns premultiplied colour (H,W,3), alpha (H,W)."""
    premult = np.zeros_like(layers[0][0])
    acc = np.zeros_like(layers[0][1])
    for colour, a in layers:
        premult = colour * a[..., None] + premult * (1 - a[..., None])
        acc = a + acc * (1 - a)
    return premult, acc


def render_foreground(rng: np.random.Generator, h: int, w: int, kind: str, pool: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Draws one foreground.

    Returns:
        fg: (H,W,3) uint8 RGB, meaningful wherever alpha > 0 (the body texture elsewhere);
        alpha: (H,W) uint8 in [0,255].
    """
    s = min(h, w)
    body_colour = _texture(rng, h, w, pool)
    sd = _blob_sd(rng, h, w, low=rng.random() < 0.3)
    if kind == "donut" or rng.random() < 0.3:
        sd = _punch_holes(rng, sd, int(rng.integers(1, 5)))
    if kind == "donut":
        for _ in range(rng.integers(1, 3)):
            cy, cx, r = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w, rng.uniform(0.1, 0.22) * s
            outer = _ellipse_sd(rng, h, w, cy, cx, r, r * rng.uniform(0.7, 1.3), 0.03)
            ring = np.maximum(outer, -(outer + rng.uniform(0.3, 0.6) * r))
            sd = np.minimum(sd, ring)
    if kind == "lattice":
        bars = np.minimum(_stripes_sd(h, w, rng.uniform(10, 28), rng.uniform(2, 6), rng.uniform(0, np.pi)),
                          _stripes_sd(h, w, rng.uniform(10, 28), rng.uniform(2, 6), rng.uniform(0, np.pi)))
        net = np.maximum(_blob_sd(rng, h, w), bars)
        sd = np.minimum(_blob_sd(rng, h, w) + 0.15 * s, net) if rng.random() < 0.5 else net
    soft = rng.uniform(6, 25) if kind == "fuzzy" else rng.uniform(0.8, 1.6)
    body = _coverage(sd, soft)
    if kind == "fuzzy":
        # Fur: fine noise modulates the feathered band only, leaving the solid core and clear bg intact.
        band = body * (1 - body) * 4
        body = np.clip(body + band * 0.6 * _smooth_noise(rng, h, w, 2.0), 0, 1)
    layers: list[Layer] = [(body_colour, body)]
    if kind == "hair" or rng.random() < 0.35:
        count = int(rng.integers(150, 400) if kind == "hair" else rng.integers(20, 120))
        reach = rng.uniform(0.08, 0.25) * s
        hair_colour = _texture(rng, h, w, pool)
        layers.append(_strands(rng, sd, hair_colour, count * max(1, s // 300), reach))
    if kind == "glass" or rng.random() < 0.2:
        layers.append(_glass(rng, sd, pool))
    premult, alpha = _over(layers)
    if kind == "motion" or rng.random() < 0.15:
        premult, alpha = _motion_blur(rng, premult, alpha, int(rng.integers(7, 32)) | 1)
    # Un-premultiply where alpha is visible; the body texture elsewhere (like the real fgs' arbitrary colour).
    visible = alpha > 1e-3
    fg = np.where(visible[..., None], premult / np.maximum(alpha, 1e-3)[..., None], body_colour)
    fg8 = np.clip(fg * 255 + 0.5, 0, 255).astype(np.uint8)
    alpha8 = np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)
    return fg8, alpha8


def render_background(rng: np.random.Generator, h: int, w: int, pool: np.ndarray) -> np.ndarray:
    """A cluttered procedural background from the same colour pool. Returns (H,W,3) uint8 RGB."""
    img = _texture(rng, h, w, pool)
    s = min(h, w)
    # A few out-of-focus "objects", painted from two shared textures: a texture per object would cost one
    # full-size texture synthesis per object.
    looks = [_texture(rng, h, w, pool) for _ in range(2)]
    for j in range(rng.integers(2, 7)):
        sd = _ellipse_sd(rng, h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * s,
                         rng.uniform(0.05, 0.3) * s, rng.uniform(0.0, 0.2))
        a = _coverage(sd, rng.uniform(1, 12))[..., None]
        img = img * (1 - a) + looks[j % 2] * a
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def benchmark_trimap(alpha: np.ndarray, radius: int) -> np.ndarray:
    """A benchmark-style trimap: the 0 < alpha < 255 region dilated by a disc of ``radius`` px is unknown.

    Args:
        alpha: (H,W) uint8. Returns (H,W) uint8 in {0,128,255}: 255 only where alpha == 255, 0 only where
        alpha == 0.
    """
    partial = ((alpha > 0) & (alpha < 255)).astype(np.uint8)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    unknown = cv2.dilate(partial, disc) > 0
    trimap = np.where(alpha == 255, 255, 0).astype(np.uint8)
    trimap[unknown] = 128
    return trimap



# ------------------------------------------------------------------------------------------------ tasks

@dataclass(frozen=True)
class _Task:
    kind: str  # "train_fg", "test_fg", "train_bg", "test_bg"
    path: Path  # fg or bg image
    size: tuple[int, int]  # (h, w)
    fg_kind: str = ""
    alpha_path: Path | None = None
    trimap_paths: tuple[Path, ...] = ()
    grey: bool = False  # save a background as a 1-channel JPEG (COCO has some)


def _run_task(task: _Task, seed: np.random.SeedSequence, pool: np.ndarray) -> None:
    cv2.setNumThreads(1)  # the process pool already uses every core
    rng = np.random.default_rng(seed)
    h, w = task.size
    if task.kind.endswith("_bg"):
        bg = render_background(rng, h, w, pool)
        write_jpeg(task.path, cv2.cvtColor(bg, cv2.COLOR_RGB2GRAY) if task.grey else bg, JPEG_QUALITY)
        return
    fg, alpha = render_foreground(rng, h, w, task.fg_kind, pool)
    if task.kind == "train_fg":
        write_jpeg(task.path, fg, JPEG_QUALITY)
        write_jpeg(task.alpha_path, alpha, JPEG_QUALITY)
        return
    write_png(task.path, fg)
    write_png(task.alpha_path, alpha)
    band = max(2, round(min(h, w) / 55))  # radii 7-14 px at ~400 px, scaled down for tiny test sets
    for trimap_path in task.trimap_paths:
        write_png(trimap_path, benchmark_trimap(alpha, int(rng.integers(band, 2 * band + 1))))


@dataclass(frozen=True)
class DemoSet:
    """Where ``make_demo`` put things, and how many."""

    dataset_dir: Path  # OUT/Combined_Dataset
    train_bg_dir: Path  # OUT/train_bg
    test_bg_dir: Path  # OUT/test_bg
    train_fgs: int
    test_fgs: int
    train_bgs: int
    test_bgs: int
    test_bgs_smaller: int  # test backgrounds smaller than their fg in some side (the composer upscales them)


def _prepare_out(out: Path) -> None:
    """Clears a previous demo in ``out``; refuses to touch a folder the demo did not write."""
    ours = ("Combined_Dataset", "train_bg", "test_bg")
    present = [out / d for d in ours if (out / d).exists()]
    if present and not (out / MARKER).is_file():
        raise MattingError(f"{out}: holds {present[0].name}/ but no {MARKER}; not a demo folder, choose another --out")
    for d in present:
        shutil.rmtree(d)


def make_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    *,
    train_fgs: int = 24,
    test_fgs: int = 6,
    min_size: int = 320,
    max_size: int = 480,
    train_bgs_per_fg: int = 3,
    test_bgs_per_fg: int = 2,
    workers: int = 2,
) -> DemoSet:
    """Writes the demo set into ``out_dir`` (see the module docstring for the layout).

    Args:
        seed: everything is a function of it (byte-identical files for a seed).
        train_fgs, test_fgs: numbers of foregrounds; training fgs are split between both release subsets.
        min_size, max_size: fg sides are drawn in this range (px, independently per side).
        train_bgs_per_fg, test_bgs_per_fg: list entries per fg (``training_bg_names.txt`` has
            ``train_fgs * train_bgs_per_fg`` distinct backgrounds; the test list likewise).
        workers: processes; the output does not depend on it.
    """
    if train_fgs < 1 or test_fgs < 1 or train_bgs_per_fg < 1 or test_bgs_per_fg < 1:
        raise MattingError("demo: fg counts and backgrounds per fg must be >= 1")
    if not 32 <= min_size <= max_size:
        raise MattingError(f"demo: need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    out = Path(out_dir)
    _prepare_out(out)
    # The marker goes first: a run interrupted half-way leaves a folder that the next run may clear.
    params = dict(seed=seed, train_fgs=train_fgs, test_fgs=test_fgs, min_size=min_size, max_size=max_size,
                  train_bgs_per_fg=train_bgs_per_fg, test_bgs_per_fg=test_bgs_per_fg)
    write_text_atomic(out / MARKER, json.dumps({"tool": "matting.data.make_demo", **params}, indent=1) + "\n")
    root = out / "Combined_Dataset"
    train_part, test_part = root / TRAIN_DIR, root / TEST_DIR
    train_bg_dir, test_bg_dir = out / "train_bg", out / "test_bg"
    master = np.random.SeedSequence(seed)
    plan_seed, pool_seed, task_seed = master.spawn(3)
    plan = np.random.default_rng(plan_seed)
    pool = _palette_pool(np.random.default_rng(pool_seed))

    def side() -> int:
        return int(plan.integers(min_size, max_size + 1))

    tasks: list[_Task] = []
    train_names = []
    half = math.ceil(train_fgs / 2)
    for i in range(train_fgs):
        kind = KINDS[i % len(KINDS)]
        name = f"{kind}-{i:03d}.jpg"
        subset = train_part / RELEASE_SUBSETS[0 if i < half else 1]
        tasks.append(_Task("train_fg", subset / "fg" / name, (side(), side()), kind, subset / "alpha" / name))
        train_names.append(name)
    n_train_bg = train_fgs * train_bgs_per_fg
    train_bg_names = [f"COCO_train2014_{j:012d}.jpg" for j in range(n_train_bg)]
    lo, hi = max(32, int(0.6 * min_size)), int(1.5 * max_size)
    for j, name in enumerate(train_bg_names):
        size = (int(plan.integers(lo, hi)), int(plan.integers(lo, hi)))
        tasks.append(_Task("train_bg", train_bg_dir / name, size, grey=j % 12 == 5))
    listed_train_bgs = [train_bg_names[j] for j in plan.permutation(n_train_bg)]

    test_names, test_bg_names, smaller = [], [], 0
    test_dir = test_part / RELEASE_SUBSETS[0]
    for i in range(test_fgs):
        kind = KINDS[(i + 1) % len(KINDS)]
        stem = f"{kind}-{i:03d}_1920"  # ends in _<digits> like the real names: exercises <stem>_<k> pairing
        h, w = side(), side()
        trimaps = tuple(test_dir / "trimaps" / f"{stem}_{k}.png" for k in range(test_bgs_per_fg))
        tasks.append(_Task("test_fg", test_dir / "fg" / f"{stem}.png", (h, w), kind, test_dir / "alpha" / f"{stem}.png",
                           trimaps))
        test_names.append(f"{stem}.png")
        for k in range(test_bgs_per_fg):
            j = i * test_bgs_per_fg + k
            bh, bw = int(h * plan.uniform(1.0, 1.6)), int(w * plan.uniform(1.0, 1.6))
            if k % 2 == 0:  # smaller than the fg in height, width or both: the composer must upscale it
                shrink = plan.integers(3)
                bh = int(h * plan.uniform(0.5, 0.95)) if shrink != 2 else bh
                bw = int(w * plan.uniform(0.5, 0.95)) if shrink != 1 else bw
            smaller += bh < h or bw < w
            name = f"2008_{j:06d}.jpg"
            tasks.append(_Task("test_bg", test_bg_dir / name, (max(bh, 16), max(bw, 16))))
            test_bg_names.append(name)

    seeds = task_seed.spawn(len(tasks))
    if workers <= 1:
        for task, s in zip(tasks, seeds):
            _run_task(task, s, pool)
    else:
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_run_task, tasks, seeds, [pool] * len(tasks), chunksize=4))

    write_text_atomic(train_part / TRAIN_FG_LIST, "\n".join(train_names) + "\n")
    write_text_atomic(train_part / TRAIN_BG_LIST, "\n".join(listed_train_bgs) + "\n")
    write_text_atomic(test_part / TEST_FG_LIST, "\n".join(test_names) + "\n")
    write_text_atomic(test_part / TEST_BG_LIST, "\n".join(test_bg_names) + "\n")
    return DemoSet(root, train_bg_dir, test_bg_dir, train_fgs, test_fgs, n_train_bg, len(test_bg_names), smaller)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matting.data.make_demo",
        description="Generate a small Composition-1k-like demo set in the layout of Adobe's release.",
    )
    parser.add_argument("--out", required=True, help="output folder, e.g. data/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fgs", type=int, default=24)
    parser.add_argument("--test-fgs", type=int, default=6)
    parser.add_argument("--min-size", type=int, default=320, help="smallest fg side (px)")
    parser.add_argument("--max-size", type=int, default=480, help="largest fg side (px)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    demo = make_demo(args.out, args.seed, train_fgs=args.train_fgs, test_fgs=args.test_fgs,
                     min_size=args.min_size, max_size=args.max_size, workers=args.workers)
    print(f"demo set (seed {args.seed}) in {args.out}: {demo.train_fgs} training fgs, {demo.train_bgs} training "
          f"bgs, {demo.test_fgs} test fgs x {demo.test_bgs // demo.test_fgs} bgs = {demo.test_bgs} test composites "
          f"({demo.test_bgs_smaller} bgs smaller than their fg); {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
