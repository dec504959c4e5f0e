"""Training trimap generators: exact band widths on synthetic alphas, fg/bg sides, input types, random ranges."""

from __future__ import annotations

import numpy as np
import pytest

from matting.data.trimap import (
    random_trimap_dt,
    random_trimap_erode,
    trimap_from_alpha_dt,
    trimap_from_alpha_erode,
)

H, W, EDGE = 24, 60, 30  # alpha = 1 left of column EDGE, 0 from it on


def step_alpha(fractional_value: int | None = None) -> np.ndarray:
    """(H, W) uint8: 255 for x < EDGE, 0 for x >= EDGE; column EDGE set to ``fractional_value`` if given."""
    a = np.zeros((H, W), np.uint8)
    a[:, :EDGE] = 255
    if fractional_value is not None:
        a[:, EDGE] = fractional_value
    return a


def unknown_columns(trimap: np.ndarray) -> list[int]:
    cols = np.nonzero((trimap == 128).all(axis=0))[0].tolist()
    assert set(np.nonzero((trimap == 128).any(axis=0))[0].tolist()) == set(cols), "band is not straight"
    return cols


@pytest.mark.parametrize("width", [0, 1, 3, 7])
def test_dt_band_is_width_px_on_each_side_of_a_fractional_column(width):
    trimap = trimap_from_alpha_dt(step_alpha(100), width)
    assert unknown_columns(trimap) == list(range(EDGE - width, EDGE + width + 1))
    assert (trimap[:, : EDGE - width] == 255).all()  # fg stays on the opaque side
    assert (trimap[:, EDGE + width + 1 :] == 0).all()
    assert trimap.dtype == np.uint8


def test_dt_band_is_euclidean():
    a = np.zeros((21, 21), np.uint8)
    a[10, 10] = 50
    trimap = trimap_from_alpha_dt(a, 3)
    yy, xx = np.mgrid[:21, :21]
    assert np.array_equal(trimap == 128, (yy - 10) ** 2 + (xx - 10) ** 2 <= 9)
    assert set(np.unique(trimap)) == {0, 128}


def test_dt_without_fractional_pixels_is_the_binary_alpha():
    a = step_alpha()
    assert np.array_equal(trimap_from_alpha_dt(a, 5), a)
    assert not trimap_from_alpha_dt(np.zeros((8, 8), np.uint8), 5).any()
    assert (trimap_from_alpha_dt(np.full((8, 8), 255, np.uint8), 5) == 255).all()


def test_float_alpha_gives_the_same_trimap_and_tolerates_round_off():
    a = step_alpha(100)
    f = a.astype(np.float32) / 255
    assert np.array_equal(trimap_from_alpha_dt(f, 4), trimap_from_alpha_dt(a, 4))
    assert np.array_equal(trimap_from_alpha_erode(f, 5, 7), trimap_from_alpha_erode(a, 5, 7))
    noisy = step_alpha().astype(np.float32) / 255
    noisy[noisy == 1] = np.float32(0.99999994)  # what interpolation leaves in an opaque region
    noisy[noisy == 0] = np.float32(3e-6)
    assert np.array_equal(trimap_from_alpha_dt(noisy, 4), step_alpha())


@pytest.mark.parametrize("k_fg,k_bg", [(1, 1), (3, 3), (5, 9), (11, 1)])
def test_erode_band_widths_on_a_step_edge(k_fg, k_bg):
    trimap = trimap_from_alpha_erode(step_alpha(), k_fg, k_bg)
    # An odd elliptical kernel of size k erodes (k - 1) / 2 px from each mask's edge.
    fg_loss, bg_loss = (k_fg - 1) // 2, (k_bg - 1) // 2
    assert unknown_columns(trimap) == list(range(EDGE - fg_loss, EDGE + bg_loss))
    assert (trimap[:, : EDGE - fg_loss] == 255).all()
    assert (trimap[:, EDGE + bg_loss :] == 0).all()


def test_erode_even_kernel_removes_k_minus_1_columns_in_total():
    for k in (2, 4, 8):
        assert len(unknown_columns(trimap_from_alpha_erode(step_alpha(), k))) == k - 1


def test_erode_keeps_fractional_pixels_unknown_and_does_not_eat_the_image_border():
    a = step_alpha(100)
    trimap = trimap_from_alpha_erode(a, 1)
    assert unknown_columns(trimap) == [EDGE]
    # Rows 0 and H-1 touch the border: with k = 7 they are not eroded from above/below.
    trimap = trimap_from_alpha_erode(a, 7)
    assert (trimap[0, : EDGE - 3] == 255).all() and (trimap[-1, EDGE + 4 :] == 0).all()


def test_erode_thresholds_follow_gca():
    # alpha 254 is not "1" and alpha 1 is not "0": both are unknown even with no erosion.
    a = np.array([[0, 1, 254, 255]], np.uint8)
    assert trimap_from_alpha_erode(a, 1).tolist() == [[0, 128, 128, 255]]
    assert trimap_from_alpha_dt(a, 0).tolist() == [[0, 128, 128, 255]]


def test_random_dt_widths_cover_1_to_19_and_are_reproducible():
    a = step_alpha(100)
    widths = set()
    for seed in range(400):
        trimap = random_trimap_dt(a, np.random.default_rng(seed))
        cols = unknown_columns(trimap)
        widths.add((len(cols) - 1) // 2)
        assert np.array_equal(trimap, random_trimap_dt(a, np.random.default_rng(seed)))
    assert widths == set(range(1, 20))


def test_random_erode_draws_fg_and_bg_kernels_independently_in_1_to_29():
    a = np.zeros((20, 100), np.uint8)
    a[:, :50] = 255
    losses = set()  # (columns eroded from the fg side, from the bg side)
    for seed in range(300):
        cols = unknown_columns(random_trimap_erode(a, np.random.default_rng(seed)))
        if cols:
            losses.add((50 - cols[0], cols[-1] - 49))
    fg_loss, bg_loss = {p[0] for p in losses}, {p[1] for p in losses}
    # Kernels 1..29 erode 0..14 px on either side; both ends occur on each side.
    assert min(fg_loss) == 0 and max(fg_loss) == 14 and min(bg_loss) == 0 and max(bg_loss) == 14
    assert len({f - b for f, b in losses}) > 10  # independent sizes, not one size for both


def test_random_wrappers_honour_a_fixed_range():
    a = step_alpha(100)
    rng = np.random.default_rng(0)
    assert np.array_equal(random_trimap_dt(a, rng, (4, 4)), trimap_from_alpha_dt(a, 4))
    assert np.array_equal(random_trimap_erode(a, rng, (5, 5)), trimap_from_alpha_erode(a, 5))


def test_bad_arguments():
    with pytest.raises(ValueError):
        trimap_from_alpha_dt(np.zeros((4, 4, 3), np.uint8), 2)
    with pytest.raises(TypeError):
        trimap_from_alpha_dt(np.zeros((4, 4), np.int32), 2)
    with pytest.raises(ValueError):
        trimap_from_alpha_dt(np.zeros((4, 4), np.uint8), -1)
    with pytest.raises(ValueError):
        trimap_from_alpha_erode(np.zeros((4, 4), np.uint8), 0)
