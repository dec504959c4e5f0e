"""The steps of A2U matting's training-data pipeline (Dai et al., CVPR 2021), as its code runs them.

Each function is one step with its random choices passed in, so a step can be checked on its own; the preset
``a2u`` (``matting.data.augment.A2UAugment``) draws those choices and chains the steps. Images are RGB where A2U
works in BGR: every step is per channel or converts through HSV, which does not depend on the channel order.
The chain, on the full-resolution foreground until the crop (docs/data.md describes it in prose):

1. ``merge_second_foreground``: p = 0.5, a second foreground, nearest-resized to the first one's size, goes
   behind it ("over": alpha = 1 - (1 - a1)(1 - a2), colour alpha-normalised, truncated to uint8);
2. p = 0.25: fg and alpha are nearest-resized to 640 x 640 (``resize_nearest``);
3. ``affine_inverse_matrix`` + ``warp_nearest``: random affine of fg and alpha about (W/2 + 0.5, H/2 + 0.5),
   nearest neighbour, zero outside the source;
4. p = 0.5: a horizontal mirror of fg and alpha;
5. the trimap, from this full-size alpha, by erosion only (``matting.data.trimap.trimap_from_alpha_erode``);
6. ``enlarge_to_cover``: the background keeps its own size unless it is smaller than the foreground;
7. ``upscale_small``: sources with a side <= crop are enlarged by 1.1 * crop / (short side);
8. ``pick_crop_corner`` + ``cut_window`` (or ``resize_all`` when the trimap has no unknown pixel): one window,
   centred on an unknown pixel at least crop // 2 from the border, cuts fg, alpha, trimap and background;
9. ``hsv_jitter``: adaptive HSV jitter of the fg crop (skipped when its alpha is all zero);
10. ``composite``: image = fg * alpha + bg * (1 - alpha) in float32, nothing rounded.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from matting.data.trimap import UNKNOWN

MERGE_EPS = 1e-5
"""Added to the merged alpha before the colour is divided by it (so a pixel no foreground covers gets colour 0)."""

SMALL_UPSCALE = 1.1
"""Sources with a side <= crop are enlarged so that their short side becomes this x crop."""

MIN_CANDIDATES = 10
"""Fewer unknown pixels than this in the allowed centre region: the crop corner is drawn uniformly instead."""


def resize_nearest(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` to (H, W) = ``size_hw`` with INTER_NEAREST, aspect ratio not kept. Same dtype."""
    return cv2.resize(image, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


def merge_second_foreground(
    fg1: np.ndarray, alpha1: np.ndarray, fg2: np.ndarray, alpha2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Puts foreground 2 behind foreground 1 at full resolution.

    fg2 and alpha2 are nearest-resized to fg1's size (aspect ratio not kept). alpha = 1 - (1 - a1)(1 - a2) and
    fg = (fg1 a1 + fg2 (1 - a1) a2) / (alpha + 1e-5), computed in float32 and truncated to uint8, so a pixel
    neither foreground covers becomes black. When the merged alpha is 1 everywhere the inputs come back unchanged.

    Args:
        fg1: (H, W, 3) uint8; alpha1: (H, W) float32 in [0, 1].
        fg2: (h, w, 3) uint8; alpha2: (h, w) float32 in [0, 1]; any size.
    Returns:
        (fg (H, W, 3) uint8, alpha (H, W) float32 in [0, 1]).
    """
    size = alpha1.shape
    fg2, alpha2 = resize_nearest(fg2, size), resize_nearest(alpha2, size)
    alpha = 1 - (1 - alpha1) * (1 - alpha2)
    if not (alpha < 1).any():
        return fg1, alpha1
    a1, a2 = alpha1[..., None], alpha2[..., None]
    over = fg1.astype(np.float32) * a1 + fg2.astype(np.float32) * (1 - a1) * a2
    return (over / (alpha[..., None] + MERGE_EPS)).astype(np.uint8), alpha


def affine_inverse_matrix(
    size_hw: tuple[int, int],
    angle_deg: float,
    scale: tuple[float, float],
    shear_deg: float,
    mirror: tuple[bool, bool],
) -> np.ndarray:
    """A2U's affine as the (2, 3) OUTPUT -> INPUT map that ``cv2.warpAffine`` takes with WARP_INVERSE_MAP.

    The forward map, about c = (W/2 + 0.5, H/2 + 0.5) (one pixel right of and below the image centre
    ((W - 1)/2, (H - 1)/2) in OpenCV's pixel-centre coordinates, so a mirrored axis also moves by two pixels),
    mirrors x and/or y, scales x by sx and y by sy, then applies L = [[cos(a+s), -sin(a+s)], [sin a, cos a]]
    (a = angle, s = shear). Its inverse is diag(fx/sx, fy/sy) L^-1 with fx, fy = -1 for a
    mirrored axis, and the offset keeps c fixed. No translation.

    Args:
        size_hw: (H, W) of the image.
        angle_deg, shear_deg: in degrees.
        scale: (sx, sy), > 0.
        mirror: (x, y) mirror flags.
    Returns:
        (2, 3) float64 [A | t] with input = A @ output + t.
    """
    a, s = math.radians(angle_deg), math.radians(shear_deg)
    gx = (-1.0 if mirror[0] else 1.0) / scale[0]
    gy = (-1.0 if mirror[1] else 1.0) / scale[1]
    det = math.cos(a + s) * math.cos(a) + math.sin(a + s) * math.sin(a)  # det L, = cos(shear)
    m00, m01 = math.cos(a) * gx / det, math.sin(a + s) * gx / det
    m10, m11 = -math.sin(a) * gy / det, math.cos(a + s) * gy / det
    cx, cy = size_hw[1] * 0.5 + 0.5, size_hw[0] * 0.5 + 0.5
    return np.array([
        [m00, m01, cx - (m00 * cx + m01 * cy)],
        [m10, m11, cy - (m10 * cx + m11 * cy)],
    ])


def warp_nearest(image: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Warps ``image`` (H, W[, C]) with the (2, 3) output -> input map into an image of the same size: nearest
    neighbour, 0 where the map points outside the source. Same dtype."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, inverse, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def enlarge_to_cover(bg: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The background at its own size, or, when it is smaller than ``size_hw`` in a side, enlarged by
    r = max(H / h, W / w) to (ceil(w r), ceil(h r)) (bicubic, aspect ratio kept). Never shrunk.

    Args:
        bg: (h, w, 3) uint8.
        size_hw: (H, W) it must cover.
    Returns:
        (h', w', 3) uint8 with h' >= H and w' >= W.
    """
    ratio = max(size_hw[0] / bg.shape[0], size_hw[1] / bg.shape[1])
    if ratio <= 1:
        return bg
    size = (math.ceil(bg.shape[1] * ratio), math.ceil(bg.shape[0] * ratio))
    return cv2.resize(bg, size, interpolation=cv2.INTER_CUBIC)


def upscale_small(
    fg: np.ndarray, alpha: np.ndarray, trimap: np.ndarray, bg: np.ndarray, crop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Enlarges a source with a side <= ``crop`` by ratio = 1.1 * crop / (its short side): fg, alpha and trimap
    nearest to (int(W ratio), int(H ratio)), the background bicubic to (int(w ratio), int(h ratio)) of its own
    size. The trimap's bands grow with it. Larger sources come back unchanged.

    One pass suffices for crop >= 20: the short side becomes at least int(1.1 * crop) - 1 >= crop + 1.

    Args:
        fg: (H, W, 3) uint8; alpha: (H, W) float32; trimap: (H, W) uint8; bg: (h, w, 3) uint8 with h >= H, w >= W.
        crop: the crop side.
    Returns:
        (fg, alpha, trimap, bg), the first three of one size with both sides > crop.
    """
    h, w = alpha.shape
    if h > crop and w > crop:
        return fg, alpha, trimap, bg
    ratio = SMALL_UPSCALE * crop / h if h < w else SMALL_UPSCALE * crop / w
    size = (int(h * ratio), int(w * ratio))
    bg_size = (int(bg.shape[0] * ratio), int(bg.shape[1] * ratio))
    bg = cv2.resize(bg, bg_size[::-1], interpolation=cv2.INTER_CUBIC)
    return resize_nearest(fg, size), resize_nearest(alpha, size), resize_nearest(trimap, size), bg


def pick_crop_corner(trimap: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner (y, x) of the crop window.

    Candidates are the unknown pixels (trimap == 128) at least m = crop // 2 pixels from the top and left borders
    and more than m from the bottom and right ones (rows m .. H-m-1, columns m .. W-m-1). With at least 10 of
    them, one is drawn uniformly (``rng.integers``) and the corner is that pixel - (m, m), so the pixel lands at
    (m, m) in the crop; otherwise the corner is uniform over [0, H - crop] x [0, W - crop] (rows drawn first).
    Either way the window lies inside the image. Needs H, W >= crop.

    Args:
        trimap: (H, W) uint8 in {0, 128, 255}.
        crop: window side.
        rng: draws the choice.
    """
    h, w = trimap.shape
    m = crop // 2
    inner = trimap[m:h - m, m:w - m]
    candidates = np.flatnonzero(inner == UNKNOWN)
    if candidates.size >= MIN_CANDIDATES:
        y, x = divmod(int(candidates[rng.integers(candidates.size)]), inner.shape[1])
        return y, x
    return int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))


def cut_window(arrays: tuple[np.ndarray, ...], corner: tuple[int, int], crop: int) -> tuple[np.ndarray, ...]:
    """The window [y, y + crop) x [x, x + crop) of each array, at the same pixel coordinates in all of them (the
    background too, anchored at its own top-left corner)."""
    y, x = corner
    return tuple(a[y:y + crop, x:x + crop] for a in arrays)


def resize_all(
    fg: np.ndarray, alpha: np.ndarray, trimap: np.ndarray, bg: np.ndarray, crop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fallback for a trimap without unknown pixels: the whole fg, alpha and trimap (nearest) and the whole
    background (bicubic) resized to crop x crop, aspect ratio not kept."""
    size = (crop, crop)
    bg = cv2.resize(bg, size, interpolation=cv2.INTER_CUBIC)
    return resize_nearest(fg, size), resize_nearest(alpha, size), resize_nearest(trimap, size), bg


def _reflected_shift(channel: np.ndarray, alpha: np.ndarray, u: float) -> np.ndarray:
    """Adds j = u (1.1 - m) / 5 - (1.1 - m) / 10, m = the channel's mean over alpha > 0, then maps x -> |x| and
    x -> 2 - x above 1. j lies in [-(1.1 - m) / 10, (1.1 - m) / 10)."""
    mean = float(channel[alpha > 0].mean())
    shift = np.float32(u * (1.1 - mean) / 5 - (1.1 - mean) / 10)
    out = np.abs(channel + shift)
    return np.where(out > 1, 2 - out, out)


def hsv_jitter(fg: np.ndarray, alpha: np.ndarray, hue_shift: int, u_sat: float, u_val: float) -> np.ndarray:
    """A2U's adaptive colour jitter of a foreground crop, in OpenCV's float HSV (H in degrees, S and V in [0, 1]).

    Hue: (H + hue_shift) mod 360. Saturation and value: each shifted by an amount that depends on its mean over
    the pixels with alpha > 0 and on its own uniform draw (``_reflected_shift``); values that leave [0, 1] are
    reflected back (|x|, and 2 - x above 1). Needs some alpha > 0 (A2U skips the jitter otherwise).

    Args:
        fg: (S, S, 3) RGB, uint8 or float32, in [0, 255].
        alpha: (S, S) float32 in [0, 1], not all zero.
        hue_shift: integer degrees (A2U draws it from -40..39).
        u_sat, u_val: uniform draws in [0, 1).
    Returns:
        (S, S, 3) float32 RGB in [0, 255], not rounded.
    """
    hsv = cv2.cvtColor(fg.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.remainder(hsv[..., 0] + hue_shift, 360)
    hsv[..., 1] = _reflected_shift(hsv[..., 1], alpha, u_sat)
    hsv[..., 2] = _reflected_shift(hsv[..., 2], alpha, u_val)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255


def composite(
    fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clips alpha to [0, 1] and fg, bg to [0, 255], then image = fg * alpha + bg * (1 - alpha) in float32.

    Args:
        fg: (S, S, 3) float32 or uint8 in [0, 255]; alpha: (S, S) float32; bg: (S, S, 3) uint8.
    Returns:
        (image, fg, bg) as (S, S, 3) float32 in [0, 1] (the 0..255 values / 255, not rounded; image is not
        clipped, so float32 rounding can put it a few 1e-8 above 1), and alpha (S, S) float32 in [0, 1].
    """
    alpha = np.clip(alpha, 0, 1).astype(np.float32)
    fg = np.clip(fg.astype(np.float32), 0, 255)
    bg = np.clip(bg.astype(np.float32), 0, 255)
    a = alpha[..., None]
    image = fg * a + bg * (1 - a)
    return image / 255, fg / 255, bg / 255, alpha
