"""SAD, MSE, Grad and Conn exactly as Ning Xu's MATLAB evaluation code for Deep Image Matting computes them.

The definition is the A2U/IndexNet copy of ``compute_sad_loss.m``, ``compute_mse_loss.m``,
``compute_gradient_loss.m`` (with ``gaussgradient.m``) and ``compute_connectivity_error.m`` plus the driver that
divides Grad and Conn by 1000. Every public function takes 2-D ``uint8`` arrays of one size (values 0..255):

- ``pred``: the predicted alpha matte, already clamped to the trimap (0 where trimap == 0, 255 where 255);
- ``gt``: the ground-truth alpha (channel 0 of the file);
- ``trimap``: only pixels exactly equal to 128 are "unknown" and counted (127 or 129 are known).

and returns a Python float, as the MATLAB drivers report it: SAD, Grad and Conn divided by 1000, MSE raw
(not x1000) and NaN when the trimap has no 128 pixel.

Where MATLAB works in single precision (SAD/MSE error maps, the Conn thresholds and phi, the Grad error map)
the per-pixel terms here are computed in float32 with the same operations; the sums over pixels are then taken
in float64 (MATLAB accumulates in single with an order of its own, a difference far below 1e-5 relative).
Grad's filtering is in float64, like MATLAB's ``imfilter`` on the double output of ``mat2gray``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

from matting.errors import MattingError

__all__ = [
    "CONN_THRESHOLD_CODES",
    "NoUnknownPixelsWarning",
    "compute_metrics",
    "conn",
    "gaussian_gradient_kernels",
    "grad",
    "gradient_magnitude",
    "mat2gray",
    "matlab_thresholds",
    "mse",
    "sad",
]

GRAD_SIGMA = 1.4
CONN_STEP = 0.1


class NoUnknownPixelsWarning(UserWarning):
    """The trimap has no pixel equal to 128: MSE is NaN (0/0, as in MATLAB); SAD, Grad and Conn are 0."""


def matlab_thresholds(step: float = CONN_STEP) -> np.ndarray:
    """``0:step:1`` as MATLAB's colon operator builds it. Returns (n+1,) float64.

    MATLAB fills the first half as ``0 + k*step`` and the second half as ``1 - (n-k)*step`` so both ends are
    exact; for step 0.1 this gives 0.30000000000000004 at k=3 but exactly 0.6, 0.7 (= 1 - 0.3) etc. above.
    """
    n = int(math.floor(1.0 / step + 0.5))
    out = np.empty(n + 1, dtype=np.float64)
    for k in range(n + 1):
        if 2 * k < n:
            out[k] = k * step
        elif 2 * k > n:
            out[k] = 1.0 - (n - k) * step
        else:
            out[k] = 0.5  # the middle element of an even count is (a + b) / 2
    return out


_THRESHOLDS = matlab_thresholds()
# pred = single(pred)/255 is compared with the double thresholds; MATLAB does mixed single/double work in single,
# so the test is float32(v)/float32(255) >= float32(t) (comparing the single value with the double threshold
# gives the same codes). For 8-bit input this is "v >= code": 153/255 rounds to exactly single(0.6), so 153
# passes 0.6, whereas float64 153/255 (= 0.6) is below np.arange(0, 1.1, 0.1)[6] = 0.6000000000000001.
_U8_TO_SINGLE = np.arange(256, dtype=np.float32) / np.float32(255)
CONN_THRESHOLD_CODES: tuple[int, ...] = tuple(
    int(np.argmax(_U8_TO_SINGLE >= np.float32(t))) if _U8_TO_SINGLE[-1] >= np.float32(t) else 256
    for t in _THRESHOLDS[1:]
)
# l takes the value thresh_steps(ii-1) (double, then single when subtracted from single alpha), or 1.
_L_VALUES_SINGLE = _THRESHOLDS.astype(np.float32)
_UNASSIGNED = len(_THRESHOLDS) - 1  # index of l = 1 (pixels never assigned), equal to thresh_steps(end)

# Per-|difference| terms of SAD and MSE in single precision, as the MATLAB error maps hold them.
_SAD_TERMS = _U8_TO_SINGLE.astype(np.float64)
_MSE_TERMS = (_U8_TO_SINGLE * _U8_TO_SINGLE).astype(np.float64)


def _check(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray, name: str | None) -> None:
    where = f"{name}: " if name else ""
    for label, arr in (("pred", pred), ("gt", gt), ("trimap", trimap)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype != np.uint8:
            desc = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise MattingError(f"{where}{label} must be a 2-D uint8 array (values 0..255), got {desc}")
    if not (pred.shape == gt.shape == trimap.shape):
        raise MattingError(
            f"{where}sizes differ: pred {pred.shape}, gt {gt.shape}, trimap {trimap.shape} (height, width)"
        )


def _abs_diff_hist(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> np.ndarray:
    """Counts of |pred - gt| over the unknown pixels. Returns (256,) int64."""
    d = np.abs(pred[unknown].astype(np.int16) - gt[unknown].astype(np.int16))
    return np.bincount(d.ravel(), minlength=256)


def _sad_from_hist(hist: np.ndarray) -> float:
    return float(hist @ _SAD_TERMS) / 1000.0


def _mse_from_hist(hist: np.ndarray) -> float:
    n = int(hist.sum())
    return float(hist @ _MSE_TERMS) / n if n else math.nan


def _warn_no_unknown(name: str | None) -> None:
    warnings.warn(
        f"{name or 'trimap'}: no unknown (128) pixel; MSE is NaN (0/0, as MATLAB gives), SAD/Grad/Conn are 0",
        NoUnknownPixelsWarning,
        stacklevel=3,
    )


def sad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Sum over trimap == 128 of |pred - gt| / 255, divided by 1000 (``compute_sad_loss.m``).

    Args:
        pred, gt, trimap: (H, W) uint8 in [0, 255].
    Returns:
        SAD / 1000 as a float >= 0 (0 when there is no unknown pixel).
    """
    _check(pred, gt, trimap, None)
    return _sad_from_hist(_abs_diff_hist(pred, gt, trimap == 128))


def mse(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Mean over trimap == 128 of ((pred - gt) / 255)^2 (``compute_mse_loss.m``; not divided by 1000).

    Args:
        pred, gt, trimap: (H, W) uint8 in [0, 255].
    Returns:
        MSE in [0, 1]; NaN (with a ``NoUnknownPixelsWarning``) when no trimap pixel equals 128.
    """
    _check(pred, gt, trimap, None)
    unknown = trimap == 128
    value = _mse_from_hist(_abs_diff_hist(pred, gt, unknown))
    if math.isnan(value):
        _warn_no_unknown(None)
    return value


def mat2gray(image: np.ndarray) -> np.ndarray:
    """MATLAB's ``mat2gray(A)``: min-max rescaling to [0, 1] over the whole image.

    Args:
        image: (H, W) uint8.
    Returns:
        (H, W) float64 in [0, 1]. ``A*delta - lo*delta`` with ``delta = 1/(hi - lo)`` (imlincomb's form); a
        constant image is ``double(A)`` clipped to [0, 1] (so 0 stays 0 and anything else becomes 1).
    """
    return _mat2gray_lut(image)[image]


def _mat2gray_lut(image: np.ndarray) -> np.ndarray:
    lo, hi = int(image.min()), int(image.max())
    values = np.arange(256, dtype=np.float64)
    if hi != lo:
        delta = 1.0 / (hi - lo)
        values = values * delta + (-lo * delta)
    return np.clip(values, 0.0, 1.0)


def gaussian_gradient_kernels(sigma: float = GRAD_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """The two 1-D factors of ``gaussgradient.m``'s kernel ``hx(i, j) = G(y_i) * G'(x_j) / ||.||_F``.

    The half size is ceil(sigma*sqrt(-2*ln(sqrt(2*pi)*sigma*0.01))) (4 for sigma 1.4, a 9x9 kernel). Each
    factor is divided by its own norm, so ``outer(g, dg)`` has unit Frobenius norm like MATLAB's ``hx``.

    Returns:
        ``(g, dg)``: (2*half+1,) float64 each, indexed by offset -half..half. ``hx = outer(g, dg)`` (rows by g,
        columns by dg) and ``hy = hx.T``.
    """
    half = math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * 0.01)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dg = -x * g / sigma**2
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


_G, _DG = gaussian_gradient_kernels()
_HALF = len(_G) // 2


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """``sqrt(gx.^2 + gy.^2)`` of ``gaussgradient(image, 1.4)``: true convolution with replicated borders.

    The 9x9 kernel is rank one, so each of gx and gy is two 1-D convolutions (scipy's ``convolve1d`` flips
    the weights like MATLAB's 'conv'; mode 'nearest' is 'replicate').

    Args:
        image: (H, W) float64 (normally ``mat2gray`` output, in [0, 1]).
    Returns:
        (H, W) float64 >= 0.
    """
    gx = ndimage.convolve1d(ndimage.convolve1d(image, _G, axis=0, mode="nearest"), _DG, axis=1, mode="nearest")
    gy = ndimage.convolve1d(ndimage.convolve1d(image, _DG, axis=0, mode="nearest"), _G, axis=1, mode="nearest")
    return np.sqrt(gx * gx + gy * gy)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1), half-open, of the True pixels of a 2-D bool array; None if there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _grad_sum(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    box = _bbox(unknown)
    if box is None:
        return 0.0
    r0, r1, c0, c1 = box
    h, w = unknown.shape
    # The 9x9 support of an unknown pixel lies inside the box grown by 4. Where the grown box is cut by the
    # image border, the 'nearest' padding of the crop is exactly MATLAB's replicate padding of the image; where
    # it is not, the crop's own padding only reaches pixels outside the unknown box.
    R0, R1, C0, C1 = max(r0 - _HALF, 0), min(r1 + _HALF, h), max(c0 - _HALF, 0), min(c1 + _HALF, w)
    inner = (slice(r0 - R0, r1 - R0), slice(c0 - C0, c1 - C0))
    sel = unknown[r0:r1, c0:c1]
    amps = []
    for img in (pred, gt):
        lut = _mat2gray_lut(img)  # min/max over the whole image, not the crop
        amp = gradient_magnitude(lut[img[R0:R1, C0:C1]])
        amps.append(amp[inner][sel].astype(np.float32))
    diff = amps[0] - amps[1]
    return float(np.sum(diff * diff, dtype=np.float64))


def grad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Gradient error (``compute_gradient_loss.m``), divided by 1000 as the driver does.

    Sum over trimap == 128 of (single(|grad P|) - single(|grad G|))^2 with P = mat2gray(pred),
    G = mat2gray(gt) and the sigma 1.4 Gaussian-derivative gradient (see ``gradient_magnitude``).

    Args:
        pred, gt, trimap: (H, W) uint8 in [0, 255].
    Returns:
        Grad / 1000, a float >= 0 (0 when there is no unknown pixel).
    """
    _check(pred, gt, trimap, None)
    return _grad_sum(pred, gt, trimap == 128) / 1000.0


def _largest_component(labels: np.ndarray, count: int) -> int:
    """The label of the largest component, ties going to the one whose first pixel comes first in COLUMN-major
    order (MATLAB's bwconncomp numbering with max's first index); the background (0) never counts."""
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    biggest = sizes.max()
    candidates = np.flatnonzero(sizes == biggest)
    if candidates.size == 1:
        return int(candidates[0])
    is_candidate = np.zeros(count + 1, dtype=bool)
    is_candidate[candidates] = True
    # The first candidate pixel in column-major order belongs to the component that MATLAB numbers first.
    labels_cm = labels.T
    first = int(np.argmax(is_candidate[labels_cm].ravel()))
    return int(labels_cm.ravel()[first])


def _conn_levels(pred: np.ndarray, gt: np.ndarray, unknown_flat: np.ndarray) -> np.ndarray:
    """l for each unknown pixel, as an index into the thresholds (``_UNASSIGNED`` = never assigned, l = 1).

    M_k = (pred >= t_k) & (gt >= t_k) = (min(pred, gt) >= code_k) are nested, so: M_k empty ends the loop
    (every later one is empty too: MATLAB's ``continue`` leaves the pixels unassigned); M_k equal to M_{k-1}
    assigns nothing new; and everything happens inside the bounding box of M_1, outside which no pixel is ever
    in a component (those get l = t_0 = 0 at the first level). Only the unknown pixels' l is tracked.

    Args:
        pred, gt: (H, W) uint8.
        unknown_flat: (N,) int64 flat indices of the unknown pixels.
    Returns:
        (N,) uint8 in 0..10.
    """
    levels = np.full(unknown_flat.size, _UNASSIGNED, dtype=np.uint8)
    low = np.minimum(pred, gt)
    at_least = np.bincount(low.ravel(), minlength=257)[::-1].cumsum()[::-1]  # at_least[v] = #(low >= v)
    codes = CONN_THRESHOLD_CODES
    box = _bbox(low >= codes[0]) if at_least[codes[0]] else None
    if box is None:
        return levels
    r0, r1, c0, c1 = box
    w = pred.shape[1]
    rows, cols = np.divmod(unknown_flat, w)
    inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    levels[~inside] = 0
    pending = np.flatnonzero(inside)  # unknown pixels (indices into levels) that are still unassigned
    pos = (rows[pending] - r0) * (c1 - c0) + (cols[pending] - c0)  # their flat index in the crop
    crop = low[r0:r1, c0:c1]
    for k, code in enumerate(codes, start=1):
        if pending.size == 0 or at_least[code] == 0:
            break
        if k > 1 and at_least[code] == at_least[codes[k - 2]]:
            continue
        labels, count = ndimage.label(crop >= code)  # default structure: 4-connectivity
        best = _largest_component(labels, count)
        leaving = labels.ravel()[pos] != best
        levels[pending[leaving]] = k - 1
        pending, pos = pending[~leaving], pos[~leaving]
    return levels


def _phi(alpha: np.ndarray, l_map: np.ndarray) -> np.ndarray:
    d = alpha - l_map
    return np.float32(1) - d * (d >= np.float32(0.15)).astype(np.float32)


def _conn_sum(pred: np.ndarray, gt: np.ndarray, unknown: np.ndarray) -> float:
    unknown_flat = np.flatnonzero(unknown)
    if unknown_flat.size == 0:
        return 0.0
    l_map = _L_VALUES_SINGLE[_conn_levels(pred, gt, unknown_flat)]
    p = _U8_TO_SINGLE[pred.ravel()[unknown_flat]]
    g = _U8_TO_SINGLE[gt.ravel()[unknown_flat]]
    return float(np.sum(np.abs(_phi(p, l_map) - _phi(g, l_map)), dtype=np.float64))


def conn(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Connectivity error (``compute_connectivity_error.m`` with step 0.1), divided by 1000 as the driver does.

    For thresholds t_k = 0.1..1 (in single precision: codes ``CONN_THRESHOLD_CODES``), Omega_k is the largest
    4-connected component of (pred >= t_k) & (gt >= t_k), ties to the first in column-major order; pixels not
    yet assigned and outside Omega_k get l = t_{k-1}; empty intersections are skipped; unassigned pixels end
    with l = 1. With d = alpha - l, phi = 1 - d*[d >= 0.15]; the error is the sum over trimap == 128 of
    |phi_pred - phi_gt|. No distance weighting (the MATLAB code computes distance maps but never uses them).

    Args:
        pred, gt, trimap: (H, W) uint8 in [0, 255].
    Returns:
        Conn / 1000, a float >= 0 (0 when there is no unknown pixel).
    """
    _check(pred, gt, trimap, None)
    return _conn_sum(pred, gt, trimap == 128) / 1000.0


def compute_metrics(
    pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray, *, name: str | None = None
) -> dict[str, float]:
    """All four metrics of one image, as the MATLAB drivers report them.

    Args:
        pred, gt, trimap: (H, W) uint8 in [0, 255], one size.
        name: the file (or image) name used in error and warning messages.
    Returns:
        ``{"sad", "mse", "grad", "conn"}``: SAD/1000, MSE (raw; NaN when no pixel is 128, with a
        ``NoUnknownPixelsWarning``), Grad/1000, Conn/1000.
    Raises:
        MattingError: an input is not a 2-D uint8 array, or the sizes differ.
    """
    _check(pred, gt, trimap, name)
    unknown = trimap == 128
    hist = _abs_diff_hist(pred, gt, unknown)
    out = {
        "sad": _sad_from_hist(hist),
        "mse": _mse_from_hist(hist),
        "grad": _grad_sum(pred, gt, unknown) / 1000.0,
        "conn": _conn_sum(pred, gt, unknown) / 1000.0,
    }
    if math.isnan(out["mse"]):
        _warn_no_unknown(name)
    return out
