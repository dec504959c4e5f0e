"""Tests for matting.metrics: hand-worked values, a slow literal transcription of the MATLAB code, port bugs.

The reference below (``ref_*``) is written from the MATLAB sources line by line, on purpose slow and
independent of ``matting.metrics.official``: explicit pixel loops, float32 where MATLAB uses single, a
column-major flood fill for ``bwconncomp``, a direct 9x9 convolution with replicate padding for ``imfilter``.
Its flags switch on the classic port bugs, so the tests can show those give different numbers.
"""

from __future__ import annotations

import csv
import math
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from matting.data.io import write_png
from matting.errors import MattingError
from matting.metrics import (
    CONN_THRESHOLD_CODES,
    NoUnknownPixelsWarning,
    compute_metrics,
    conn,
    evaluate_folders,
    format_table,
    grad,
    mse,
    sad,
    summarize,
    write_csv,
)
from matting.metrics.__main__ import main
from matting.metrics.official import gaussian_gradient_kernels, gradient_magnitude, mat2gray

F32 = np.float32

# ----------------------------------------------------------------------------------------------------------------
# Literal reference
# ----------------------------------------------------------------------------------------------------------------


def ref_sad(pred, gt, trimap):
    # error_map = abs(single(pred)-single(target))/255; loss = sum(sum(error_map.*single(trimap==128))) / 1000
    h, w = pred.shape
    total = 0.0
    for c in range(w):
        for r in range(h):
            e = abs(F32(pred[r, c]) - F32(gt[r, c])) / F32(255)
            total += float(e * F32(trimap[r, c] == 128))
    return total / 1000


def ref_mse(pred, gt, trimap):
    # error_map = (single(pred)-single(target))/255; sum(error_map.^2 .* mask) / sum(mask)
    h, w = pred.shape
    num, den = 0.0, 0.0
    for c in range(w):
        for r in range(h):
            e = (F32(pred[r, c]) - F32(gt[r, c])) / F32(255)
            m = F32(trimap[r, c] == 128)
            num += float(e * e * m)
            den += float(m)
    return num / den if den else math.nan


def ref_mat2gray(a):
    lo, hi = float(a.min()), float(a.max())
    out = a.astype(np.float64)
    if hi != lo:
        delta = 1 / (hi - lo)
        out = out * delta + (-lo * delta)  # imlincomb(delta, A, -lo*delta, 'double')
    return np.clip(out, 0, 1)


def ref_gaussgradient(image, sigma=1.4):
    epsilon = 1e-2
    halfsize = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    size = 2 * halfsize + 1

    def gauss(x):
        return math.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))

    def dgauss(x):
        return -x * gauss(x) / sigma**2

    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = gauss(i - halfsize) * dgauss(j - halfsize)
    hx = hx / math.sqrt(np.sum(np.abs(hx) * np.abs(hx)))
    hy = hx.T
    return ref_imfilter_conv_replicate(image, hx), ref_imfilter_conv_replicate(image, hy)


def ref_imfilter_conv_replicate(image, kernel):
    # out(r, c) = sum_{a, b} K(a, b) * I(r - a, c - b), offsets a, b in -h..h, I replicated beyond the border.
    h = kernel.shape[0] // 2
    rows, cols = image.shape
    padded = np.pad(image, h, mode="edge")
    out = np.zeros_like(image)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            a, b = i - h, j - h
            out += kernel[i, j] * padded[h - a : h - a + rows, h - b : h - b + cols]
    return out


def ref_grad(pred, gt, trimap, *, normalise="mat2gray"):
    if normalise == "mat2gray":
        p, g = ref_mat2gray(pred), ref_mat2gray(gt)
    else:  # port bug: pred/255
        p, g = pred / 255.0, gt / 255.0
    px, py = ref_gaussgradient(p)
    gx, gy = ref_gaussgradient(g)
    pa, ga = np.sqrt(px**2 + py**2), np.sqrt(gx**2 + gy**2)
    total = 0.0
    h, w = pred.shape
    for c in range(w):
        for r in range(h):
            e = (F32(pa[r, c]) - F32(ga[r, c])) ** 2
            total += float(e * F32(trimap[r, c] == 128))
    return total / 1000


def ref_components(mask, order="F"):
    """bwconncomp(mask, 4): pixel lists numbered by the first pixel met in the scan (column-major for MATLAB)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    if order == "F":
        scan = [(r, c) for c in range(w) for r in range(h)]
    else:
        scan = [(r, c) for r in range(h) for c in range(w)]
    for r0, c0 in scan:
        if not mask[r0, c0] or seen[r0, c0]:
            continue
        seen[r0, c0] = True
        stack, pixels = [(r0, c0)], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        comps.append(pixels)
    return comps


# thresh_steps = 0:0.1:1 as MATLAB's colon builds it: a + k*d for the first half, b - (n-k)*d for the second.
MATLAB_STEPS = [0.0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5, 1 - 4 * 0.1, 1 - 3 * 0.1, 1 - 2 * 0.1, 1 - 0.1, 1.0]


def ref_conn(pred, gt, trimap, *, float64_thresholds=False, background_counts=False, order="F", skip_empty=True):
    """compute_connectivity_error.m / 1000. Flags reproduce port bugs:
    float64_thresholds: np.arange(0, 1.1, 0.1) compared with float64 pred/255 (and float64 phi);
    background_counts: argmax(bincount(labels)) with the background label 0 included (GCA);
    order="C": ties broken by row-major first pixel; skip_empty=False: an empty intersection is an empty Omega."""
    h, w = pred.shape
    if float64_thresholds:
        p, g = pred / 255.0, gt / 255.0
        steps = list(np.arange(0, 1.1, 0.1))
    else:
        p, g = pred.astype(F32) / F32(255), gt.astype(F32) / F32(255)
        steps = MATLAB_STEPS
    l_map = np.full((h, w), -1.0)
    for ii in range(1, len(steps)):
        t = steps[ii] if float64_thresholds else F32(steps[ii])
        both = (p >= t) & (g >= t)
        comps = ref_components(both, order)
        omega = np.zeros((h, w), dtype=bool)
        if background_counts:
            labels = np.zeros((h, w), dtype=int)
            for n, pixels in enumerate(comps, start=1):
                for r, c in pixels:
                    labels[r, c] = n
            omega = labels == int(np.argmax(np.bincount(labels.ravel())))
        elif comps:
            sizes = [len(x) for x in comps]
            for r, c in comps[sizes.index(max(sizes))]:  # index() gives the first maximum, like MATLAB's max
                omega[r, c] = True
        elif skip_empty:
            continue
        for c in range(w):
            for r in range(h):
                if l_map[r, c] == -1 and not omega[r, c]:
                    l_map[r, c] = steps[ii - 1]
    l_map[l_map == -1] = 1
    total = 0.0
    for c in range(w):
        for r in range(h):
            if float64_thresholds:
                lv, pv, gv, lim, one = l_map[r, c], p[r, c], g[r, c], 0.15, 1.0
            else:  # single - double is done in single
                lv, pv, gv, lim, one = F32(l_map[r, c]), p[r, c], g[r, c], F32(0.15), F32(1)
            pd, gd = pv - lv, gv - lv
            pphi = one - pd * (pd >= lim)
            gphi = one - gd * (gd >= lim)
            total += float(abs(pphi - gphi)) * (trimap[r, c] == 128)
    return total / 1000


def ref_all(pred, gt, trimap):
    return {
        "sad": ref_sad(pred, gt, trimap),
        "mse": ref_mse(pred, gt, trimap),
        "grad": ref_grad(pred, gt, trimap),
        "conn": ref_conn(pred, gt, trimap),
    }


# ----------------------------------------------------------------------------------------------------------------
# Generated cases
# ----------------------------------------------------------------------------------------------------------------


def _disk(h, w, cy, cx, radius):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(yy - cy, xx - cx)


def _soft_blob(rng, h, w):
    """A soft-edged blob with a hole: the usual matte shape."""
    d = _disk(h, w, h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65), 0)
    outer = np.clip((min(h, w) * 0.4 - d) / 2.5, 0, 1)
    hole = np.clip((d - min(h, w) * 0.12) / 1.5, 0, 1)
    return outer * hole


def _trimap_from(alpha_u8, rng, band=2):
    trimap = np.where(alpha_u8 == 255, 255, 0).astype(np.uint8)
    soft = (alpha_u8 > 0) & (alpha_u8 < 255)
    grown = soft.copy()
    for _ in range(band):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    trimap[grown] = 128
    return trimap


def _clamp(pred, trimap):
    pred = pred.copy()
    pred[trimap == 0] = 0
    pred[trimap == 255] = 255
    return pred


def generated_cases():
    """(id, pred, gt, trimap) for a varied set of small images; non-square so transposition bugs show."""
    rng = np.random.default_rng(1234)
    cases = []
    h, w = 23, 31

    def add(name, pred, gt, trimap):
        cases.append((name, np.ascontiguousarray(pred, np.uint8), np.ascontiguousarray(gt, np.uint8),
                      np.ascontiguousarray(trimap, np.uint8)))

    rand = lambda shape=(h, w): rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    tri_rand = lambda shape=(h, w): rng.choice(np.array([0, 127, 128, 128, 129, 255], np.uint8), shape)  # noqa: E731
    add("uniform random", rand(), rand(), tri_rand())
    add("random, all unknown", rand((17, 40)), rand((17, 40)), np.full((17, 40), 128))

    yy, xx = np.mgrid[0:h, 0:w]
    smooth_g = np.round(255 * (0.5 + 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0)))
    smooth_p = np.clip(smooth_g + np.round(20 * np.sin(yy / 3.0 + xx / 4.0)), 0, 255)
    add("smooth", smooth_p, smooth_g, np.full((h, w), 128))

    for i in range(3):
        g = np.round(_soft_blob(rng, h, w) * 255).astype(np.uint8)
        t = _trimap_from(g, rng, band=2 + i)
        p = _clamp(np.clip(g.astype(int) + rng.integers(-60, 61, (h, w)), 0, 255), t)
        add(f"blob with hole {i}", p, g, t)

    g = np.zeros((h, w))
    for r, alpha in ((3, 200), (9, 153), (15, 77)):
        g[r, 2:-2] = alpha  # thin horizontal strands
    g[:, 20] = 230  # a vertical strand crossing them
    t = _trimap_from(g.astype(np.uint8), rng, band=1)
    p = g.copy()
    p[9, 10] = 0  # break one strand in the prediction
    p[3, 5:12] = 255
    add("thin strands", p, g, t)

    g = np.round(_soft_blob(rng, h, w) * 255)
    t = _trimap_from(g.astype(np.uint8), rng)
    add("all-zero prediction", np.zeros((h, w)), g, t)
    add("all-255 prediction", np.full((h, w), 255), g, t)
    add("constant images (mat2gray)", np.full((h, w), 77), np.full((h, w), 200), np.full((h, w), 128))
    add("constant pred, step gt", np.full((h, w), 0), np.where(xx > 14, 90, 10), np.full((h, w), 128))
    add("gt max below 255", np.where(xx > 12, 255, 0), np.where(xx > 15, 180, 20), tri_rand())

    # Equal-size components everywhere: 2x2 squares on a grid, so every threshold has ties.
    tie = np.zeros((h, w))
    tie[(yy % 4 < 2) & (xx % 5 < 2)] = 255
    tie_p = tie.copy()
    tie_p[(yy % 8 < 2) & (xx % 10 < 2)] = 140
    add("grid of equal squares (ties)", tie_p, tie, np.full((h, w), 128))
    # Two equal components that come first in opposite orders row-major vs column-major, with varied values.
    two = np.zeros((h, w))
    two[1:3, 20:26] = 255
    two[10:16, 2:4] = 200
    add("two tied components", np.where(two > 0, 255, 0), two, np.full((h, w), 128))

    # Values on both sides of every threshold code (and 153, which float64 thresholds drop at 0.6).
    near = np.array([c + d for c in CONN_THRESHOLD_CODES for d in (-1, 0) if 0 <= c + d <= 255], np.uint8)
    vals_p = near[rng.integers(0, len(near), (h, w))]
    vals_g = near[rng.integers(0, len(near), (h, w))]
    add("values at the threshold codes", vals_p, vals_g, tri_rand())
    p153 = np.full((h, w), 255)
    p153[5:15, 5:20] = 153  # leaves Omega at 0.6 with single thresholds, at 0.5 with float64 ones
    g153 = np.full((h, w), 255)
    g153[:, 25:] = 179
    add("plateau of 153", p153, g153, np.full((h, w), 128))

    # Unknown region away from the borders (cropped paths) and touching them; a single unknown pixel.
    g = np.round(_soft_blob(rng, 40, 36) * 255).astype(np.uint8)
    t = np.zeros((40, 36), np.uint8)
    t[g == 255] = 255
    t[12:25, 9:20] = 128
    p = _clamp(np.clip(g.astype(int) + rng.integers(-90, 91, g.shape), 0, 255), t)
    add("unknown box inside", p, g, t)
    t2 = t.copy()
    t2[:, :3] = 128
    t2[-2:, :] = 128
    add("unknown at the borders", _clamp(p, t2), g, t2)
    t3 = np.zeros((40, 36), np.uint8)
    t3[30, 2] = 128
    add("single unknown pixel outside the object", p, g, t3)
    # mat2gray's min and max come from the whole image, here from far outside the unknown box.
    ramp_g = np.zeros((40, 36))
    ramp_g[10:30, 8:28] = 40 + 6 * (xx[:20, :20] + yy[:20, :20])
    ramp_g[-1, -1] = 255
    ramp_p = np.clip(ramp_g + 25 * np.sin(np.arange(36) / 2.0), 0, 250)
    ramp_p[0, 0] = 255
    t_box = np.zeros((40, 36), np.uint8)
    t_box[14:26, 12:24] = 128
    add("mat2gray range outside the unknown box", ramp_p, ramp_g, t_box)
    t4 = np.full((40, 36), 128, np.uint8)
    small = np.zeros((40, 36), np.uint8)
    small[18:22, 15:19] = 220
    add("object small, unknown everywhere", small, np.roll(small, 1, axis=1), t4)
    add("empty intersection at high thresholds", np.minimum(p, 100), g, t4)
    add("one row", rand((1, 12)), rand((1, 12)), np.full((1, 12), 128))
    add("one column", rand((12, 1)), rand((12, 1)), np.full((12, 1), 128))
    add("medium random", rand((48, 64)), rand((48, 64)), tri_rand((48, 64)))
    return cases


CASES = generated_cases()


@pytest.fixture(scope="module")
def references():
    return {name: ref_all(p, g, t) for name, p, g, t in CASES}


# ----------------------------------------------------------------------------------------------------------------
# Agreement with the literal reference
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_literal_reference(case, references):
    name, pred, gt, trimap = case
    expected = references[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoUnknownPixelsWarning)
        got = compute_metrics(pred, gt, trimap)
        single = {"sad": sad(pred, gt, trimap), "mse": mse(pred, gt, trimap), "grad": grad(pred, gt, trimap),
                  "conn": conn(pred, gt, trimap)}
    for key in ("sad", "mse", "grad", "conn"):
        if math.isnan(expected[key]):
            assert math.isnan(got[key]) and math.isnan(single[key]), key
            continue
        # The issue asks for 1e-5 against MATLAB. The literal reference shares MATLAB's float32 terms, so the
        # two agree far more closely (observed <= 1e-9); the tighter bound catches precision slips.
        assert got[key] == pytest.approx(expected[key], rel=1e-7, abs=1e-15), key
        assert single[key] == got[key], key


@pytest.mark.slow
def test_reference_set_is_varied(references):
    # Guards the generator: the set must exercise non-trivial values, not a pile of zeros.
    nonzero = {k: sum(r[k] > 0 for r in references.values()) for k in ("sad", "grad", "conn")}
    assert min(nonzero.values()) >= len(CASES) // 2, nonzero


def test_gradient_filter_matches_direct_convolution():
    rng = np.random.default_rng(5)
    image = rng.random((13, 21))
    px, py = ref_gaussgradient(image)
    np.testing.assert_allclose(gradient_magnitude(image), np.sqrt(px**2 + py**2), rtol=1e-12, atol=1e-15)


def test_gradient_kernel_shape_and_norm():
    g, dg = gaussian_gradient_kernels(1.4)
    assert g.shape == dg.shape == (9,)  # half size ceil(1.4*sqrt(-2 ln(sqrt(2 pi)*1.4*0.01))) = ceil(3.62) = 4
    assert np.linalg.norm(np.outer(g, dg)) == pytest.approx(1.0, rel=1e-15)
    assert dg[0] > 0 > dg[-1]  # -x*G(x): positive at x = -4, so a rising edge gives a positive gx under 'conv'


def test_mat2gray():
    a = np.array([[50, 100], [150, 50]], np.uint8)
    np.testing.assert_allclose(mat2gray(a), [[0, 0.5], [1, 0]], rtol=0, atol=1e-15)
    assert np.all(mat2gray(np.full((2, 3), 77, np.uint8)) == 1.0)  # constant: double(A)=77 clipped to 1
    assert np.all(mat2gray(np.zeros((2, 3), np.uint8)) == 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Hand-worked 4x4 cases
# ----------------------------------------------------------------------------------------------------------------

ALL_UNKNOWN = np.full((4, 4), 128, np.uint8)


def test_thresholds_in_single_precision():
    # ceil(255 * t) for t = 0.1..1, and the exact multiples (51, 102, 153, 204, 255) are included because
    # single(v)/255 rounds to exactly single(t): float32(153)/255 == float32(0.6).
    assert CONN_THRESHOLD_CODES == (26, 51, 77, 102, 128, 153, 179, 204, 230, 255)
    assert F32(153) / F32(255) == F32(0.6)
    assert not (153 / 255 >= np.arange(0, 1.1, 0.1)[6])  # the float64 port bug


def test_sad_mse_hand_worked():
    trimap = np.array([[0, 0, 255, 255],
                       [128, 128, 128, 128],
                       [128, 128, 127, 128],   # 127 is known: not counted
                       [255, 255, 0, 0]], np.uint8)
    pred = np.array([[255, 0, 0, 255],
                     [10, 20, 255, 0],
                     [100, 0, 77, 200],
                     [0, 0, 255, 255]], np.uint8)
    gt = np.array([[0, 255, 255, 0],
                   [0, 20, 245, 51],
                   [90, 255, 0, 180],
                   [255, 255, 0, 0]], np.uint8)
    # |d| over the 7 unknown pixels: 10, 0, 10, 51, 10, 255, 20 -> sum 356
    # SAD = 356 / 255 / 1000 = 0.00139607843...
    assert sad(pred, gt, trimap) == pytest.approx(0.0013960784313725490, rel=1e-7)
    # MSE = (100 + 0 + 100 + 2601 + 100 + 65025 + 400) / 255^2 / 7 = 68326 / 65025 / 7 = 0.1501092986
    assert mse(pred, gt, trimap) == pytest.approx(0.1501092986, rel=1e-8)


def test_grad_hand_worked_step():
    # pred: rows 0 0 255 255, so P = mat2gray(pred) = 0 0 1 1; gt = 0 -> G = 0, |grad G| = 0.
    # Columns are constant, so gy = 0 and gx = (S_g / |g|) * (D(c) / |dg|) with e(m) = exp(-m^2 / 3.92)
    # (the 1/(sigma sqrt(2 pi)) and 1/sigma^2 factors cancel in the normalisation):
    #   S_g = sum_{m=-4..4} e(m) = 3.505668, |g| = sqrt(sum e(m)^2) = 1.575255,
    #   |dg| = sqrt(2 sum_{m=1..4} m^2 e(m)^2) = 1.559378,
    #   replicate padding: x(c - j) = 1 iff c - j >= 2, and 'conv' sums dg(j) = -j e(j) over those j:
    #   D(1) = D(2) = sum_{m=1..4} m e(m) = 1.865259,  D(0) = D(3) = sum_{m=2..4} m e(m) = 1.090422
    #   so |grad P| = 2.661997 at columns 1, 2 and 1.556191 at columns 0, 3.
    # Grad = 4 rows * 2 * (2.661997^2 + 1.556191^2) / 1000 = 0.0760636476
    pred = np.tile(np.array([0, 0, 255, 255], np.uint8), (4, 1))
    assert grad(pred, np.zeros((4, 4), np.uint8), ALL_UNKNOWN) == pytest.approx(0.0760636476, rel=1e-6)
    # Only the unknown pixels count: column 0 alone gives 4 * 1.556191^2 / 1000.
    trimap = np.zeros((4, 4), np.uint8)
    trimap[:, 0] = 128
    assert grad(pred, np.zeros((4, 4), np.uint8), trimap) == pytest.approx(4 * 1.5561907748**2 / 1000, rel=1e-6)


def test_grad_uses_mat2gray_gt_max_below_255():
    # gt steps 0 -> 100: mat2gray maps it to 0 -> 1, the same as pred's 0 -> 255, so Grad is exactly 0.
    pred = np.tile(np.array([0, 0, 255, 255], np.uint8), (4, 1))
    gt = np.tile(np.array([0, 0, 100, 100], np.uint8), (4, 1))
    assert grad(pred, gt, ALL_UNKNOWN) == 0.0
    # The pred/255 port bug sees two different steps: (1 - 100/255)^2 * 0.0760636476 = 0.02815
    assert ref_grad(pred, gt, ALL_UNKNOWN, normalise="div255") == pytest.approx(
        (155 / 255) ** 2 * 0.0760636476, rel=1e-5
    )


def test_conn_hand_worked_153_at_threshold_06():
    # gt = 255 everywhere, pred = 255 but 153 at (1, 1). M_k is everything for codes <= 153 (k <= 6: 153 passes
    # 0.6 in single precision); at k = 7 (code 179) M = 15 pixels, one component, so (1, 1) gets l = t_6 = 0.6;
    # the rest stay in Omega to the end: l = 1, d = 0, phi_p = phi_g = 1, no error.
    # At (1, 1): d_p = 0.6 - 0.6 = 0 -> phi_p = 1;  d_g = 1 - 0.6 = 0.4 >= 0.15 -> phi_g = 0.6;  |1 - 0.6| = 0.4.
    # Conn = 0.4 / 1000 (0.39999998 in single: 1 - single(0.6)).
    pred = np.full((4, 4), 255, np.uint8)
    pred[1, 1] = 153
    gt = np.full((4, 4), 255, np.uint8)
    assert conn(pred, gt, ALL_UNKNOWN) == pytest.approx(0.4e-3, rel=1e-6)
    # Float64 thresholds drop 153 at 0.6, so l = t_5 = 0.5: d_p = 0.1 (phi_p = 1), d_g = 0.5 (phi_g = 0.5): 0.5e-3.
    assert ref_conn(pred, gt, ALL_UNKNOWN, float64_thresholds=True) == pytest.approx(0.5e-3, rel=1e-9)


def test_conn_hand_worked_tie_goes_to_column_major_first():
    # gt = 255 everywhere except A = {(0,2), (0,3)} which is 200; pred = 255 on A and B = {(2,0), (3,0)}, 0 else.
    # For codes <= 179 (k <= 7) M = A u B: two components of size 2. Row-major, A comes first (pixel 2 vs 8);
    # column-major (MATLAB), B comes first (pixel 2 = column 0, row 2, vs A's 8). From code 204 (k = 8, and
    # 200 < 204) only B is left.
    # MATLAB: Omega = B at every level. A and the 12 zeros get l = 0 at k = 1; B keeps l = 1.
    #   zeros: p = 0, g = 1: phi_p = 1, phi_g = 1 - 1 = 0 -> 1 each, 12 in all
    #   A: p = 1 -> phi_p = 0; g = 200/255 -> phi_g = 55/255; 2 * 55/255 = 0.431373
    #   B: l = 1, d = 0 -> 0.    Conn = (12 + 110/255) / 1000 = 0.012431373
    pred = np.array([[0, 0, 255, 255],
                     [0, 0, 0, 0],
                     [255, 0, 0, 0],
                     [255, 0, 0, 0]], np.uint8)
    gt = np.full((4, 4), 255, np.uint8)
    gt[0, 2:] = 200
    assert conn(pred, gt, ALL_UNKNOWN) == pytest.approx((12 + 110 / 255) / 1000, rel=1e-6)
    # Row-major ties: Omega = A for k <= 7, so B gets l = 0 (p = g = 1: no error) and A gets l = t_7 = 0.7 at k = 8:
    #   d_p = 0.3 -> phi_p = 0.7, d_g = 0.784 - 0.7 < 0.15 -> phi_g = 1: 0.3 each. Conn = (12 + 0.6) / 1000.
    assert ref_conn(pred, gt, ALL_UNKNOWN, order="C") == pytest.approx(12.6 / 1000, rel=1e-6)


def test_conn_hand_worked_empty_intersection():
    # pred = 100 on the top-left 2x2 block, 0 elsewhere; gt = 255. Codes 26, 51, 77: M = the block, Omega = the
    # block, the other 12 pixels get l = 0. Code 102 and above: M is empty -> MATLAB's `continue`, so the block
    # is never assigned and ends with l = 1.
    #   block: d_p = 100/255 - 1 < 0.15 -> phi_p = 1; d_g = 0 -> phi_g = 1: no error.
    #   others: p = 0 -> phi_p = 1; d_g = 1 -> phi_g = 0: 1 each.   Conn = 12 / 1000.
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :2] = 100
    gt = np.full((4, 4), 255, np.uint8)
    assert conn(pred, gt, ALL_UNKNOWN) == pytest.approx(0.012, rel=1e-7)
    # Without the `continue` (empty Omega at code 102) the block gets l = t_3 = 0.3:
    #   d_p = 0.392 - 0.3 < 0.15 -> phi_p = 1; d_g = 0.7 -> phi_g = 0.3: 0.7 each -> (12 + 2.8) / 1000.
    assert ref_conn(pred, gt, ALL_UNKNOWN, skip_empty=False) == pytest.approx(0.0148, rel=1e-6)
    # GCA's argmax(bincount) picks the background (12 pixels > 4) at code 26: the block gets l = 0,
    #   d_p = 0.392 -> phi_p = 0.608, phi_g = 0: 4 * 0.608 = 2.431; the others are "in Omega" and stay unassigned
    #   through the empty levels (the background is then the whole image): l = 1, p = 0 -> phi_p = 1, phi_g = 1.
    gca = ref_conn(pred, gt, ALL_UNKNOWN, background_counts=True)
    assert gca == pytest.approx(4 * (1 - 100 / 255) / 1000, rel=1e-6)


def test_prediction_equal_to_gt_gives_exactly_zero():
    rng = np.random.default_rng(7)
    for shape in ((4, 4), (19, 27)):
        gt = rng.integers(0, 256, shape, dtype=np.uint8)
        trimap = rng.choice(np.array([0, 128, 255], np.uint8), shape)
        trimap[0, 0] = 128
        assert compute_metrics(gt.copy(), gt, trimap) == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}


def test_no_unknown_pixel_gives_nan_mse_and_a_warning():
    pred = np.full((4, 4), 255, np.uint8)
    gt = np.zeros((4, 4), np.uint8)
    trimap = np.full((4, 4), 127, np.uint8)  # 127 is not 128: nothing is unknown
    with pytest.warns(NoUnknownPixelsWarning, match="img_3.png: no unknown"):
        out = compute_metrics(pred, gt, trimap, name="img_3.png")
    assert math.isnan(out["mse"]) and out["sad"] == out["grad"] == out["conn"] == 0.0
    with pytest.warns(NoUnknownPixelsWarning):
        assert math.isnan(mse(pred, gt, trimap))


# ----------------------------------------------------------------------------------------------------------------
# Port bugs give different numbers
# ----------------------------------------------------------------------------------------------------------------


def _case(name):
    return next(c for c in CASES if c[0] == name)


@pytest.mark.slow
def test_port_bugs_change_conn_on_ordinary_images(references):
    # Each bug, on a case built to expose it, moves Conn by more than 1% while ours matches the MATLAB reading.
    for case_name, flag in (("blob with hole 0", {"background_counts": True}),
                            ("plateau of 153", {"float64_thresholds": True}),
                            ("two tied components", {"order": "C"})):
        _, p, g, t = _case(case_name)
        ours = conn(p, g, t)
        assert ours == pytest.approx(references[case_name]["conn"], rel=1e-5)
        buggy = ref_conn(p, g, t, **flag)
        assert abs(buggy - ours) > 0.01 * ours, (case_name, flag, ours, buggy)


def test_port_bug_grad_div255_differs():
    _, p, g, t = _case("gt max below 255")
    assert abs(ref_grad(p, g, t, normalise="div255") - grad(p, g, t)) > 0.01 * grad(p, g, t)


def test_sad_is_not_min_max_normalised():
    # Some Python monitors min-max normalise pred and gt before SAD: for gt in 0..100 that scales errors.
    gt = np.tile(np.array([0, 0, 100, 100], np.uint8), (4, 1))
    pred = np.tile(np.array([0, 0, 255, 255], np.uint8), (4, 1))
    assert sad(pred, gt, ALL_UNKNOWN) == pytest.approx(8 * 155 / 255 / 1000, rel=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


def test_bad_arrays_raise_one_line_errors():
    a = np.zeros((4, 4), np.uint8)
    with pytest.raises(MattingError, match=r"^x\.png: sizes differ"):
        compute_metrics(a, np.zeros((4, 5), np.uint8), a, name="x.png")
    with pytest.raises(MattingError, match="pred must be a 2-D uint8 array"):
        sad(a.astype(np.float32), a, a)
    with pytest.raises(MattingError, match="gt must be a 2-D uint8 array"):
        conn(a, np.zeros((4, 4, 3), np.uint8), a)


# ----------------------------------------------------------------------------------------------------------------
# Folders, the pool, the CSV and the command line
# ----------------------------------------------------------------------------------------------------------------


def _dataset(root, n_fg=2, n_k=2, size=(30, 41), seed=0):
    """Adobe layout: alphas <fg>.png, trimaps and predictions <fg>_<k>.png. Returns {name: (pred, gt, trimap)}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n_fg):
        gt = np.round(_soft_blob(rng, *size) * 255).astype(np.uint8)
        write_png(root / "alpha" / f"fg{i}.png", gt)
        for k in range(n_k):
            trimap = _trimap_from(gt, rng, band=1 + k)
            pred = _clamp(np.clip(gt.astype(int) + rng.integers(-50, 51, size), 0, 255).astype(np.uint8), trimap)
            write_png(root / "trimaps" / f"fg{i}_{k}.png", trimap)
            write_png(root / "pred" / f"fg{i}_{k}.png", pred)
            truth[f"fg{i}_{k}"] = (pred, gt, trimap)
    return truth


def _dirs(root):
    return root / "pred", root / "alpha", root / "trimaps"


def test_evaluate_folders_pairs_k_predictions_with_fg_alpha(tmp_path):
    truth = _dataset(tmp_path)
    rows = evaluate_folders(*_dirs(tmp_path), workers=1, progress=False)
    assert [r["name"] for r in rows] == ["fg0_0", "fg0_1", "fg1_0", "fg1_1"]
    for r in rows:
        assert {k: r[k] for k in ("sad", "mse", "grad", "conn")} == compute_metrics(*truth[r["name"]])
        assert r["sad"] > 0 and r["conn"] > 0


@pytest.mark.slow
def test_pool_gives_the_same_rows_as_one_process(tmp_path):
    _dataset(tmp_path, n_fg=3)
    one = evaluate_folders(*_dirs(tmp_path), workers=1, progress=False)
    two = evaluate_folders(*_dirs(tmp_path), workers=2, progress=False)
    assert two == one


def test_missing_files_are_all_listed(tmp_path):
    _dataset(tmp_path, n_fg=1, n_k=2)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    for i in range(7):
        write_png(pred_dir / f"orphan{i}_0.png", np.zeros((30, 41), np.uint8))
    (trimap_dir / "fg0_1.png").unlink()
    with pytest.raises(MattingError) as err:
        evaluate_folders(pred_dir, alpha_dir, trimap_dir, workers=1, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "8 of 9 predictions unmatched" in msg
    assert f"no alpha in {alpha_dir} for 7: orphan0_0, orphan1_0, orphan2_0, orphan3_0, orphan4_0 (+2 more)" in msg
    assert f"no trimap in {trimap_dir} for 8: fg0_1, orphan0_0" in msg


@pytest.mark.parametrize("problem", ["16-bit", "palette", "size", "size (bmp)", "corrupt"])
def test_bad_files_stop_with_one_line_naming_the_file(tmp_path, problem):
    _dataset(tmp_path, n_fg=2, n_k=1)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    bad = pred_dir / "fg1_0.png"
    if problem == "16-bit":
        cv2.imwrite(str(bad), np.zeros((30, 41), np.uint16))
    elif problem == "palette":
        Image.fromarray(np.zeros((30, 41), np.uint8), mode="L").convert("P").save(bad)
    elif problem == "size":
        write_png(bad, np.zeros((30, 40), np.uint8))
    elif problem == "size (bmp)":  # not a PNG: caught when read
        bad.unlink()
        bad = pred_dir / "fg1_0.bmp"
        assert cv2.imwrite(str(bad), np.zeros((29, 41), np.uint8))
    else:
        bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(MattingError) as err:
        evaluate_folders(pred_dir, alpha_dir, trimap_dir, workers=1, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg, msg
    expected = {"16-bit": "16-bit", "palette": "palette", "size": "does not match",
                "size (bmp)": "does not match", "corrupt": ""}[problem]
    assert expected in msg


def test_several_header_problems_reported_together(tmp_path):
    _dataset(tmp_path, n_fg=2, n_k=2)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    cv2.imwrite(str(pred_dir / "fg0_1.png"), np.zeros((30, 41), np.uint16))
    write_png(trimap_dir / "fg1_1.png", np.zeros((31, 41), np.uint8))
    with pytest.raises(MattingError, match=r"^2 input problem\(s\): .*fg0_1\.png: 16-bit.*fg1_1\.png: size 41x31"):
        evaluate_folders(pred_dir, alpha_dir, trimap_dir, workers=1, progress=False)


def test_trimap_without_unknown_warns_and_gives_nan_mse(tmp_path):
    _dataset(tmp_path, n_fg=1, n_k=2)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    write_png(trimap_dir / "fg0_1.png", np.full((30, 41), 127, np.uint8))
    with pytest.warns(NoUnknownPixelsWarning, match=r"fg0_1\.png: no unknown \(128\) pixel"):
        rows = evaluate_folders(pred_dir, alpha_dir, trimap_dir, workers=1, progress=False)
    assert math.isnan(rows[1]["mse"]) and rows[1]["sad"] == rows[1]["grad"] == rows[1]["conn"] == 0.0
    summary = summarize(rows)
    assert summary["images"] == 2 and summary["mse_nan"] == 1
    assert summary["mse"] == rows[0]["mse"]  # the NaN image is left out of the MSE mean only
    assert summary["sad"] == pytest.approx(rows[0]["sad"] / 2, rel=1e-15)
    assert "1 trimap(s) have no unknown (128) pixel" in format_table(rows, summary)


def test_summarize_known_values():
    rows = [{"name": "a", "sad": 1.0, "mse": 0.25, "grad": 3.0, "conn": 0.5},
            {"name": "b", "sad": 2.0, "mse": math.nan, "grad": 0.0, "conn": 0.0},
            {"name": "c", "sad": 6.0, "mse": 0.75, "grad": 6.0, "conn": 1.0}]
    assert summarize(rows) == {"sad": 3.0, "mse": 0.5, "grad": 3.0, "conn": 0.5, "images": 3, "mse_nan": 1}
    all_nan = summarize([rows[1]])
    assert math.isnan(all_nan["mse"]) and all_nan["mse_nan"] == 1


def test_csv_rows_mean_row_and_exact_values(tmp_path):
    rows = [{"name": "a_0", "sad": 0.1 + 0.2, "mse": 1 / 3, "grad": 2.5, "conn": 1e-7},
            {"name": "b_0", "sad": 1.0, "mse": math.nan, "grad": 0.5, "conn": 3.0}]
    out = tmp_path / "sub" / "metrics.csv"
    out.parent.mkdir()
    out.write_text("old content")
    write_csv(rows, out)
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["name", "sad", "mse", "grad", "conn"]
    assert [r[0] for r in table[1:]] == ["a_0", "b_0", "mean"]
    assert float(table[1][1]) == 0.1 + 0.2 and float(table[1][2]) == 1 / 3  # full precision survives
    assert table[2][2] == "nan"
    assert [float(x) for x in table[3][1:]] == [(0.1 + 0.2 + 1.0) / 2, 1 / 3, 1.5, (1e-7 + 3.0) / 2]
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.csv"]  # no temporary file left
    with pytest.raises(MattingError, match="is a folder"):
        write_csv(rows, tmp_path)


def test_cli_scores_prints_and_writes_csv(tmp_path, capsys):
    _dataset(tmp_path, n_fg=1, n_k=2)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    out = tmp_path / "m.csv"
    code = main(["--pred", str(pred_dir), "--gt", str(alpha_dir), "--trimap", str(trimap_dir), "--out", str(out),
                 "--workers", "1", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    rows = evaluate_folders(pred_dir, alpha_dir, trimap_dir, workers=1, progress=False)
    assert format_table(rows) in printed
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert [r[0] for r in table] == ["name", "fg0_0", "fg0_1", "mean"]
    assert float(table[1][4]) == rows[0]["conn"]


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    _dataset(tmp_path, n_fg=1, n_k=1)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    write_png(pred_dir / "fg0_0.png", np.zeros((3, 3), np.uint8))
    code = main(["--pred", str(pred_dir), "--gt", str(alpha_dir), "--trimap", str(trimap_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "fg0_0.png: size 3x3" in err
    assert main(["--bench", "--bench-size", "big"]) == 2
    assert "--bench-size" in capsys.readouterr().err


def test_non_contiguous_views_give_the_same_values():
    _, p, g, t = _case("blob with hole 1")
    expected = compute_metrics(p, g, t)
    stacked = np.stack([p, g, t], axis=-1)  # channel slices are strided views
    assert compute_metrics(stacked[..., 0], stacked[..., 1], stacked[..., 2]) == expected
    fortran = [np.asfortranarray(a) for a in (p, g, t)]
    assert compute_metrics(*fortran) == expected


def test_cli_truncated_prediction_is_a_one_line_error(tmp_path, capsys):
    _dataset(tmp_path, n_fg=1, n_k=2)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    data = (pred_dir / "fg0_1.png").read_bytes()
    (pred_dir / "fg0_1.png").write_bytes(data[:-20])  # cut inside the last chunk
    code = main(["--pred", str(pred_dir), "--gt", str(alpha_dir), "--trimap", str(trimap_dir), "--no-progress",
                 "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{pred_dir / 'fg0_1.png'}: not a readable image, truncated PNG" in err


def test_cli_missing_prediction_is_an_error_unless_allowed(tmp_path, capsys):
    _dataset(tmp_path, n_fg=2, n_k=2)
    pred_dir, alpha_dir, trimap_dir = _dirs(tmp_path)
    (pred_dir / "fg1_0.png").unlink()
    args = ["--pred", str(pred_dir), "--gt", str(alpha_dir), "--trimap", str(trimap_dir), "--no-progress",
            "--workers", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{pred_dir}: 1 of 4 images have no prediction: fg1_0" in err
    assert "--allow-missing" in err
    out = tmp_path / "m.csv"
    assert main([*args, "--allow-missing", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 of 4 images scored: 1 without a prediction left out (--allow-missing): fg1_0" in printed
    with open(out, newline="") as f:
        assert [r[0] for r in csv.reader(f)] == ["name", "fg0_0", "fg0_1", "fg1_1", "mean"]
