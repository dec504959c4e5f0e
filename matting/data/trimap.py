"""Training trimaps generated from an alpha matte: the two recipes of the Composition-1k literature.

- ``trimap_from_alpha_dt`` (IndexNet): unknown = every pixel within Euclidean distance ``width`` of a fractional
  pixel (0 < alpha < 1); the rest is foreground where alpha == 1 and background where alpha == 0.
- ``trimap_from_alpha_erode`` (GCA / A2U / MatteFormer): the foreground mask (alpha ~ 1) and the background mask
  (alpha ~ 0) are each eroded by an elliptical kernel; what neither keeps is unknown.

Both take an alpha as (H, W) uint8 in [0, 255] or (H, W) float in [0, 1] and return (H, W) uint8 with values
exactly {0, 128, 255}. "alpha ~ 1" and "alpha ~ 0" follow GCA-Matting's ``GenTrimap``, which builds its masks as
``int(alpha + 1e-5)`` and ``int(1 - alpha + 1e-5)`` on alpha / 255: a float alpha counts as 1 when it is
>= 1 - 1e-5 and as 0 when it is <= 1e-5, so interpolation round-off (0.99999994) is not mistaken for a soft
pixel. For uint8 input this means exactly 255 and exactly 0.

The ``random_*`` wrappers draw the band parameters from a numpy Generator, with the recipes' ranges as defaults.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

UNKNOWN = 128
FOREGROUND = 255
BACKGROUND = 0

# GCA-Matting's tolerance for "alpha is 0" / "alpha is 1" on float alphas in [0, 1].
ALPHA_EPS = 1e-5

# Inclusive ranges of the recipes: IndexNet draws randint(1, 20), GCA randint(1, 30), i.e. 1..19 and 1..29.
DT_WIDTHS = (1, 19)
ERODE_KERNEL_SIZES = (1, 29)


def alpha_masks(alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits an alpha into its opaque and transparent pixels.

    Args:
        alpha: (H, W) uint8 in [0, 255] or (H, W) float in [0, 1].
    Returns:
        (fg, bg): two (H, W) bool masks, alpha ~ 1 and alpha ~ 0 (see the module docstring). Pixels in neither
        are the fractional (soft) ones.
    """
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be (H, W), got shape {alpha.shape}")
    if alpha.dtype == np.uint8:
        return alpha == 255, alpha == 0
    if not np.issubdtype(alpha.dtype, np.floating):
        raise TypeError(f"alpha must be uint8 or float, got {alpha.dtype}")
    return alpha >= 1.0 - ALPHA_EPS, alpha <= ALPHA_EPS


def trimap_from_alpha_dt(alpha: np.ndarray, width: float) -> np.ndarray:
    """IndexNet's trimap: the fractional pixels dilated by a Euclidean distance of ``width`` pixels.

    A pixel is unknown when its distance to the nearest fractional pixel is <= ``width`` (exact Euclidean
    distance, ``cv2.DIST_MASK_PRECISE``), so a single fractional column gets a band of exactly ``width`` columns
    on each side. Outside the band, alpha ~ 1 is foreground and everything else background (outside the band no
    pixel is fractional, so "everything else" is alpha ~ 0). An alpha without fractional pixels has no unknown
    region: its trimap is just the binarised alpha.

    Args:
        alpha: (H, W) uint8 in [0, 255] or (H, W) float in [0, 1].
        width: band half-width in pixels, >= 0 (0: only the fractional pixels themselves are unknown).
    Returns:
        (H, W) uint8 with values in {0, 128, 255}.
    """
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    fg, bg = alpha_masks(alpha)
    trimap = np.where(fg, np.uint8(FOREGROUND), np.uint8(BACKGROUND))
    fractional = ~(fg | bg)
    if not fractional.any():
        return trimap
    # distanceTransform measures the distance of each non-zero pixel to the nearest zero pixel, so the fractional
    # pixels are the zeros of its input.
    dist = cv2.distanceTransform((~fractional).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    trimap[dist <= width] = UNKNOWN
    return trimap


@functools.lru_cache(maxsize=64)
def _ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def trimap_from_alpha_erode(alpha: np.ndarray, kernel_size: int, bg_kernel_size: int | None = None) -> np.ndarray:
    """GCA's trimap: the alpha ~ 1 and alpha ~ 0 masks, each eroded by an elliptical kernel; the rest is unknown.

    The kernel is ``cv2.getStructuringElement(MORPH_ELLIPSE, (k, k))`` anchored at its centre, so for odd k each
    mask shrinks by (k - 1) / 2 pixels away from its edge (a straight step edge gets a band of (k_fg - 1) / 2
    columns on the foreground side and (k_bg - 1) / 2 on the background side); k = 1 erodes nothing. Even k shrink
    by k / 2 on one side of the kernel and k / 2 - 1 on the other. Erosion does not eat in from the image border
    (OpenCV's default border for erosion). Fractional pixels are always unknown.

    Args:
        alpha: (H, W) uint8 in [0, 255] or (H, W) float in [0, 1].
        kernel_size: k >= 1, the kernel size for the foreground mask (and the background mask unless
            ``bg_kernel_size`` is given).
        bg_kernel_size: k >= 1 for the background mask; GCA draws the two sizes independently.
    Returns:
        (H, W) uint8 with values in {0, 128, 255}.
    """
    bg_kernel_size = kernel_size if bg_kernel_size is None else bg_kernel_size
    for k in (kernel_size, bg_kernel_size):
        if int(k) != k or k < 1:
            raise ValueError(f"kernel sizes must be integers >= 1, got {k}")
    fg, bg = alpha_masks(alpha)
    fg = cv2.erode(fg.view(np.uint8), _ellipse(int(kernel_size)))
    bg = cv2.erode(bg.view(np.uint8), _ellipse(int(bg_kernel_size)))
    trimap = np.full(alpha.shape, UNKNOWN, np.uint8)
    trimap[fg == 1] = FOREGROUND
    trimap[bg == 1] = BACKGROUND
    return trimap


def random_trimap_dt(alpha: np.ndarray, rng: np.random.Generator, widths: tuple[int, int] = DT_WIDTHS) -> np.ndarray:
    """``trimap_from_alpha_dt`` with an integer width drawn uniformly from ``widths`` (inclusive; IndexNet: 1..19)."""
    return trimap_from_alpha_dt(alpha, int(rng.integers(widths[0], widths[1] + 1)))


def random_trimap_erode(
    alpha: np.ndarray, rng: np.random.Generator, kernel_sizes: tuple[int, int] = ERODE_KERNEL_SIZES
) -> np.ndarray:
    """``trimap_from_alpha_erode`` with independent foreground and background kernel sizes drawn uniformly from
    ``kernel_sizes`` (inclusive; GCA: 1..29)."""
    k_fg, k_bg = rng.integers(kernel_sizes[0], kernel_sizes[1] + 1, size=2)
    return trimap_from_alpha_erode(alpha, int(k_fg), int(k_bg))


TRIMAP_KINDS = {"dt": random_trimap_dt, "erode": random_trimap_erode}
"""Trimap recipes by name, as ``AugmentConfig.trimap`` refers to them: ``fn(alpha, rng, (lo, hi)) -> trimap``."""
