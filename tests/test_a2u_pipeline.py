"""The ``a2u`` preset: each step of A2U matting's training pipeline on a crafted input with a known output, then
whole samples through CompositionDataset (tiny images, crops of 20-40 px)."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from matting.config import load_config
from matting.data import a2u, io
from matting.data.augment import PRESETS, A2UAugment, A2UConfig, build_augment, make_augment_config
from matting.data.train_dataset import CompositionDataset, worker_init_fn
from matting.errors import MattingError

# Every random step switched off: no merge, no resize, identity affine, no mirror, 1x1 erosion kernels.
STILL = dict(second_fg_p=0.0, resize_fg_p=0.0, rotation_deg=0.0, scale_range=(1.0, 1.0), shear_deg=0.0,
             affine_flip_p=0.0, hflip_p=0.0, trimap_range=(1, 1))


def still(crop: int = 24, **kw) -> A2UAugment:
    return A2UAugment(make_augment_config("a2u", crop_size=crop, **{**STILL, **kw}))


def unique_soft_alpha(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w) uint8 in 1..254: every pixel fractional (unknown), random, so a crop's position can be found."""
    return np.random.default_rng(seed).integers(1, 255, (h, w), dtype=np.uint8)


def find_window(big: np.ndarray, small: np.ndarray) -> list[tuple[int, int]]:
    """All (y, x) where ``small`` equals the same-size window of ``big``."""
    s = small.shape[0]
    return [(y, x) for y in range(big.shape[0] - s + 1) for x in range(big.shape[1] - s + 1)
            if np.array_equal(big[y:y + s, x:x + s], small)]


def rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ merge


def test_merge_colour_alpha_and_the_truncation_on_known_pixels():
    fg1 = np.zeros((2, 4, 3), np.uint8)
    fg1[:] = (200, 100, 50)
    a1 = np.array([[153, 255, 0, 0]] * 2, np.float32) / 255  # 0.6, 1, 0, 0
    fg2 = np.zeros((1, 2, 3), np.uint8)  # half the size: nearest-resized to 2 x 4, each pixel doubled
    fg2[0, 0], fg2[0, 1] = (10, 250, 90), (7, 7, 7)
    a2 = np.array([[102, 0]], np.float32) / 255  # 0.4 under columns 0-1, 0 under columns 2-3
    fg, alpha = a2u.merge_second_foreground(fg1, a1, fg2, a2)
    assert fg.dtype == np.uint8 and alpha.dtype == np.float32 and fg.shape == (2, 4, 3)
    np.testing.assert_allclose(alpha[0], [1 - 0.4 * 0.6, 1, 0, 0], rtol=1e-6)
    # (F1 0.6 + F2 0.4 0.4) / (0.76 + 1e-5): 159.997, 131.577, 58.420, truncated (the exact "over" R is 160).
    assert fg[0, 0].tolist() == [159, 131, 58]
    # Opaque first fg: F1 / (1 + 1e-5), just below each integer, so truncation takes one grey level off.
    assert fg[0, 1].tolist() == [199, 99, 49]
    # No foreground at all: colour 0.
    assert fg[0, 2].tolist() == [0, 0, 0] and fg[1, 3].tolist() == [0, 0, 0]


def test_merge_is_skipped_when_the_merged_alpha_is_opaque_everywhere():
    fg1, a1 = rgb(3, 3, 0), np.full((3, 3), 0.5, np.float32)
    fg, alpha = a2u.merge_second_foreground(fg1, a1, rgb(5, 2, 1), np.ones((5, 2), np.float32))
    assert fg is fg1 and alpha is a1


# ------------------------------------------------------------------------------------------------ resize to 640


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_resize_step_nearest_resizes_fg_and_alpha_to_a_square(p):
    alpha = unique_soft_alpha(30, 45)
    out = still(resize_fg_p=p, resize_fg_size=36)(rgb(30, 45, 1), alpha, rgb(50, 60, 2), np.random.default_rng(0))
    source = a2u.resize_nearest(alpha, (36, 36)) if p else alpha
    assert len(find_window(source.astype(np.float32) / 255, out["alpha"])) == 1


# ------------------------------------------------------------------------------------------------ affine


def test_affine_matrix_identity_and_its_forward_map():
    assert np.array_equal(a2u.affine_inverse_matrix((7, 9), 0, (1, 1), 0, (False, False)), np.eye(2, 3))
    a, s, (sx, sy) = np.radians(20.0), np.radians(-7.0), (0.9, 1.2)
    inv = a2u.affine_inverse_matrix((40, 50), 20.0, (sx, sy), -7.0, (True, False))
    forward = np.array([[np.cos(a + s), -np.sin(a + s)], [np.sin(a), np.cos(a)]]) @ np.diag([-sx, sy])
    np.testing.assert_allclose(inv[:, :2] @ forward, np.eye(2), atol=1e-12)
    centre = np.array([50 * 0.5 + 0.5, 40 * 0.5 + 0.5])  # (W/2 + 0.5, H/2 + 0.5) is the fixed point
    np.testing.assert_allclose(inv[:, :2] @ centre + inv[:, 2], centre, atol=1e-12)


def test_affine_x_mirror_is_shifted_by_two_pixels_with_a_zero_border():
    """Mirroring about W/2 + 0.5 maps output column x to input column W + 1 - x: columns 0 and 1 fall outside."""
    src = np.arange(1, 6 * 10 + 1, dtype=np.float32).reshape(6, 10)
    inv = a2u.affine_inverse_matrix((6, 10), 0, (1, 1), 0, (True, False))
    np.testing.assert_array_equal(inv, [[-1, 0, 11], [0, 1, 0]])
    out = a2u.warp_nearest(src, inv)
    assert np.array_equal(out[:, :2], np.zeros((6, 2))) and np.array_equal(out[:, 2:], src[:, 9:1:-1])


def test_affine_rotation_by_90_degrees_and_scale_by_2():
    src = np.arange(1, 65, dtype=np.float32).reshape(8, 8)
    out = a2u.warp_nearest(src, a2u.affine_inverse_matrix((8, 8), 90.0, (1, 1), 0, (False, False)))
    # Input = (y + cx - cy, -x + cx + cy) with cx = cy = 4.5: out[y, x] = src[9 - x, y], zero where 9 - x > 7.
    assert np.array_equal(out[:, :2], np.zeros((8, 2)))
    assert np.array_equal(out[:, 2:], src[9 - np.arange(2, 8)][:, :].T)
    img = np.arange(1, 11, dtype=np.float32)[None].repeat(4, 0)
    out = a2u.warp_nearest(img, a2u.affine_inverse_matrix((4, 10), 0, (2, 1), 0, (False, False)))
    # Input x = 0.5 x + 2.75 (cx = 5.5): nearest columns 3, 3, 4, 4, ..., 7.
    assert out[0].tolist() == img[0, [3, 3, 4, 4, 5, 5, 6, 6, 7, 7]].tolist()


def test_affine_mirrors_rotation_rule_and_extra_flip_in_the_augment():
    fg, alpha = rgb(6, 10, 0), unique_soft_alpha(6, 10)
    a = alpha.astype(np.float32) / 255
    # Both affine mirrors (input (W + 1 - x, H + 1 - y)), then the extra horizontal mirror: output (y, x) is
    # input (H + 1 - y, x + 2); rows 0-1 and the last two columns fall outside and are zero.
    f2, a2 = still(affine_flip_p=1.0, hflip_p=1.0)._affine_and_flip(fg, a, np.random.default_rng(0))
    assert np.array_equal(a2[2:, :8], a[5:1:-1, 2:]) and not a2[:2].any() and not a2[:, 8:].any()
    assert np.array_equal(f2[2:, :8], fg[5:1:-1, 2:]) and not f2[:2].any() and not f2[:, 8:].any()
    # The extra mirror alone is an exact mirror.
    f1, a1 = still(hflip_p=1.0)._affine_and_flip(fg, a, np.random.default_rng(0))
    assert np.array_equal(f1, fg[:, ::-1]) and np.array_equal(a1, a[:, ::-1])
    # Rotation only from rotation_min_side on: a 6 x 10 image is rotated with min side 10, not with 11.
    rot = dict(rotation_deg=30.0)
    same = still(rotation_min_side=11, **rot)._affine_and_flip(fg, a, np.random.default_rng(3))[1]
    turned = still(rotation_min_side=10, **rot)._affine_and_flip(fg, a, np.random.default_rng(3))[1]
    assert np.array_equal(same, a) and not np.array_equal(turned, a)


# ------------------------------------------------------------------------------------------------ trimap


@pytest.mark.parametrize("k", [5, 9])
def test_trimap_is_eroded_on_the_full_image_before_the_crop(k):
    """A vertical step edge with one fractional column, image larger than the crop: the crop shows the full-
    resolution bands, (k - 1) / 2 columns on each side of the fractional one."""
    alpha = np.zeros((40, 60), np.uint8)
    alpha[:, :30], alpha[:, 30] = 255, 128
    out = still(trimap_range=(k, k))(rgb(40, 60, 0), alpha, rgb(40, 60, 1), np.random.default_rng(0))
    unknown_cols = np.flatnonzero((out["trimap"] == 128).all(0))
    assert len(unknown_cols) == k and (out["trimap"] == 128).any(0).sum() == k
    # The window is centred on an unknown pixel: column 12 (= 24 // 2) of the crop is in the band.
    assert 12 in unknown_cols


# ------------------------------------------------------------------------------------------------ background


def test_background_is_only_enlarged_keeping_its_aspect_ratio():
    big = rgb(50, 70, 0)
    assert a2u.enlarge_to_cover(big, (40, 60)) is big  # native size, not shrunk or warped to the fg's shape
    small = np.full((10, 30, 3), 77, np.uint8)
    out = a2u.enlarge_to_cover(small, (25, 20))  # r = max(25/10, 20/30) = 2.5 -> (25, 75)
    assert out.shape == (25, 75, 3) and (out == 77).all()


def test_the_fg_window_cuts_the_background_at_the_same_pixels():
    """A background larger than the fg is not resized: its crop is the fg's window at the same coordinates."""
    yy, xx = np.mgrid[:70, :90]
    bg = np.stack([yy, xx, (yy + xx) % 256], -1).astype(np.uint8)
    alpha = unique_soft_alpha(40, 50)
    out = still()(rgb(40, 50, 0), alpha, bg, np.random.default_rng(1))
    (y, x), = find_window(alpha.astype(np.float32) / 255, out["alpha"])
    assert np.array_equal(out["bg"], bg[y:y + 24, x:x + 24].astype(np.float32) / 255)


# ------------------------------------------------------------------------------------------------ small sources


def test_small_sources_are_upscaled_by_1_1_crop_over_the_short_side():
    fg, alpha, tri = rgb(20, 30, 0), np.ones((20, 30), np.float32), np.full((20, 30), 128, np.uint8)
    bg = rgb(25, 40, 1)
    f, a, t, b = a2u.upscale_small(fg, alpha, tri, bg, 24)  # ratio 1.1 * 24 / 20 = 1.32
    assert f.shape == (26, 39, 3) and a.shape == t.shape == (26, 39)  # int(26.4), int(39.6)
    assert b.shape == (33, 52, 3)  # int(33.0), int(52.8): the bg by the same ratio, from its own size
    assert set(np.unique(f)) <= set(np.unique(fg))  # nearest: no new values
    large = a2u.upscale_small(fg, alpha, tri, bg, 19)
    assert all(x is y for x, y in zip(large, (fg, alpha, tri, bg)))
    # Sides equal to the crop count as small (A2U enlarges unless both sides exceed it).
    assert a2u.upscale_small(fg, alpha, tri, bg, 20)[0].shape == (22, 33, 3)


# ------------------------------------------------------------------------------------------------ crop centre


def test_crop_centre_is_an_unknown_pixel_at_least_half_a_crop_from_the_border():
    crop, m = 40, 20
    trimap = np.zeros((100, 90), np.uint8)
    trimap[:m, :] = 128  # a band the margin excludes
    trimap[:, 90 - m:] = 128  # columns W - m .. W - 1: excluded too
    inner = [(m, m), (79, 69), (50, 50), (m, 69), (79, m), (30, 40), (60, 22), (44, 61), (70, 33), (25, 25)]
    for p in inner:  # rows m .. H - m - 1 = 79, columns m .. W - m - 1 = 69
        trimap[p] = 128
    seen = {tuple(int(v) + m for v in a2u.pick_crop_corner(trimap, crop, np.random.default_rng(s)))
            for s in range(200)}
    assert seen == set(inner)  # exactly the allowed candidates, each of them reachable


def test_fewer_than_ten_candidates_give_a_uniform_corner():
    trimap = np.zeros((60, 50), np.uint8)
    for i in range(9):
        trimap[20 + i, 20 + i] = 128
    corners = np.array([a2u.pick_crop_corner(trimap, 30, np.random.default_rng(s)) for s in range(300)])
    assert corners[:, 0].min() == 0 and corners[:, 0].max() == 30 and corners[:, 1].max() == 20
    assert len({tuple(c) for c in corners}) > 100


def test_without_unknown_pixels_the_whole_source_is_resized_to_the_crop():
    alpha = np.zeros((40, 50), np.uint8)
    alpha[10:30, 15:35] = 255  # binary, and 1 x 1 kernels: no unknown pixel anywhere
    fg, bg = rgb(40, 50, 0), rgb(45, 70, 1)
    out = still()(fg, alpha, bg, np.random.default_rng(0))
    assert not (out["trimap"] == 128).any()
    assert np.array_equal(out["alpha"], a2u.resize_nearest(alpha, (24, 24)).astype(np.float32) / 255)
    bg_whole = cv2.resize(bg, (24, 24), interpolation=cv2.INTER_CUBIC)  # the whole (native-size) bg
    assert np.array_equal(out["bg"], bg_whole.astype(np.float32) / 255)


# ------------------------------------------------------------------------------------------------ jitter


def test_jitter_shifts_hue_and_reflects_saturation_and_value_above_one():
    fg = np.zeros((2, 2, 3), np.uint8)
    fg[:] = (255, 0, 0)  # H 0, S 1, V 1
    fg[1, 1] = (20, 20, 20)  # grey, but alpha 0 there: left out of the means
    alpha = np.array([[1, 0.5], [0.2, 0]], np.float32)
    out = a2u.hsv_jitter(fg, alpha, 30, 0.9, 0.9)
    # Means 1 -> shift 0.9 * 0.1 / 5 - 0.1 / 10 = 0.008: 1.008 reflected to 0.992; hue 30 degrees.
    s = v = 0.992
    np.testing.assert_allclose(out[0, 0], np.array([v, v * (1 - s * 0.5), v * (1 - s)]) * 255, atol=2e-3)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)


def test_jitter_reflects_below_zero_and_uses_the_alpha_weighted_means():
    grey = np.full((1, 2, 3), 100, np.uint8)  # S 0 everywhere
    out = a2u.hsv_jitter(grey, np.ones((1, 2), np.float32), 0, 0.0, 0.5)
    # S: shift = -(1.1 - 0) / 10 = -0.11, |0 - 0.11| = 0.11; V: mean 100/255, shift 0 at u = 0.5.
    hsv = cv2.cvtColor(out / 255, cv2.COLOR_RGB2HSV)
    np.testing.assert_allclose(hsv[..., 1], 0.11, atol=1e-6)
    np.testing.assert_allclose(hsv[..., 2], 100 / 255, atol=1e-6)


def test_jitter_is_skipped_when_the_crop_alpha_is_all_zero():
    fg = rgb(30, 40, 0)
    out = still()(fg, np.zeros((30, 40), np.uint8), rgb(30, 40, 1), np.random.default_rng(0))
    np.testing.assert_array_equal(out["fg"], a2u.resize_nearest(fg, (24, 24)).astype(np.float32) / 255)


# ------------------------------------------------------------------------------------------------ composite


def test_composite_is_float_and_not_quantised():
    fg = np.array([[[200, 10, 300]]], np.float32)  # 300: clipped to 255
    bg = np.array([[[100, 20, 0]]], np.uint8)
    alpha = np.array([[128 / 255]], np.float32)
    image, f, b, a = a2u.composite(fg, alpha, bg)
    expected = (np.float32([200, 10, 255]) * alpha[0, 0] + np.float32([100, 20, 0]) * (1 - alpha[0, 0])) / 255
    np.testing.assert_array_equal(image[0, 0], expected)  # 150.196 / 255, not 150 / 255
    assert f[0, 0, 2] == 1.0 and b.dtype == f.dtype == image.dtype == np.float32


# ------------------------------------------------------------------------------------------------ config


def test_a2u_preset_and_its_overrides():
    cfg = PRESETS["a2u"]
    assert isinstance(cfg, A2UConfig) and cfg.crop_size == 512 and cfg.trimap_range == (1, 29)
    assert (cfg.second_fg_p, cfg.resize_fg_p, cfg.resize_fg_size) == (0.5, 0.25, 640)
    assert (cfg.rotation_deg, cfg.rotation_min_side, cfg.scale_range, cfg.shear_deg) == (30, 1024, (0.8, 1.25), 10)
    assert (cfg.affine_flip_p, cfg.hflip_p, cfg.hue_shift_deg) == (0.5, 0.5, 40)
    assert make_augment_config("a2u", scale_range=[1, 2]).scale_range == (1, 2)
    assert isinstance(build_augment(cfg), A2UAugment)
    with pytest.raises(MattingError, match="augment.crop_scales: unknown option"):
        make_augment_config("a2u", crop_scales=[1])
    with pytest.raises(MattingError, match="augment.crop_size: must be an integer >= 20"):
        make_augment_config("a2u", crop_size=16)
    with pytest.raises(MattingError, match="augment.hflip_p"):
        make_augment_config("a2u", hflip_p=2)
    assert load_config(overrides=["data.preset=a2u"]).data.preset == "a2u"


# ------------------------------------------------------------------------------------------------ dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("a2u")
    fgs, alphas, bgs = [], [], []
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (30, 30)]):
        fgs.append(root / f"fg{i}.png")
        alphas.append(root / f"a{i}.png")
        io.write_png(fgs[-1], rgb(h, w, i))
        yy, xx = np.mgrid[:h, :w]
        d = np.hypot(yy - h / 2, xx - w / 2) - 0.3 * min(h, w)
        io.write_png(alphas[-1], (np.clip(0.5 - d / 4, 0, 1) * 255).astype(np.uint8))
    for i, (h, w) in enumerate([(50, 40), (20, 70), (64, 64)]):
        bgs.append(root / f"bg{i}.png")
        io.write_png(bgs[-1], rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return fgs, alphas, bgs


def a2u_dataset(files, **kw) -> CompositionDataset:
    fgs, alphas, bgs = files
    cfg = make_augment_config("a2u", crop_size=32, **kw.pop("augment", {}))
    return CompositionDataset(fgs, alphas, bgs, cfg, seed=kw.pop("seed", 3), length=kw.pop("length", 40), **kw)


def test_end_to_end_samples_format_and_determinism(files):
    ds, again = a2u_dataset(files), a2u_dataset(files, cache=True)
    unknown = 0
    for i in range(len(ds)):
        s = ds[i]
        for key in ("image", "fg", "bg"):
            assert s[key].shape == (3, 32, 32) and s[key].dtype == torch.float32
            assert s[key].min() >= 0 and s[key].max() <= 1 + 1e-6
        assert s["alpha"].shape == (1, 32, 32) and s["alpha"].dtype == torch.float32
        assert 0 <= s["alpha"].min() and s["alpha"].max() <= 1
        assert s["trimap"].shape == (1, 32, 32) and s["trimap"].dtype == torch.uint8
        assert set(s["trimap"].unique().tolist()) <= {0, 128, 255}
        torch.testing.assert_close(s["image"], s["alpha"] * s["fg"] + (1 - s["alpha"]) * s["bg"], atol=1e-6, rtol=0)
        # The trimap comes from the alpha before the crop, by erosion only: its known pixels agree with it.
        assert (s["alpha"][s["trimap"] == 255] == 1).all() and (s["alpha"][s["trimap"] == 0] == 0).all()
        unknown += bool((s["trimap"] == 128).any())
        t = again[i]
        assert all(torch.equal(s[k], t[k]) for k in ("image", "fg", "bg", "alpha", "trimap"))
    assert unknown == len(ds)  # soft alphas: every crop is centred on unknown pixels
    first = ds[5]["image"]
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["image"], first)
    ds.set_epoch(0)
    assert torch.equal(ds[5]["image"], first)


def test_workers_do_not_change_the_samples_and_differ_from_each_other(files):
    ds = a2u_dataset(files, length=8)
    serial = list(DataLoader(ds, batch_size=2, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=worker_init_fn))
    for x, y in zip(serial, parallel):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["trimap"], y["trimap"])
    # Batches 0 and 1 come from different workers and hold the same two foregrounds: no repeated stream.
    assert not torch.equal(parallel[0]["image"], parallel[1]["image"])


class _GlobalDraws(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[int, float]:
        return int(np.random.randint(2**31)), random.random()


def test_loader_workers_get_distinct_seeds():
    """A2U's own run (an old PyTorch) started every worker from the same numpy state; here they differ."""
    items = list(DataLoader(_GlobalDraws(), batch_size=2, num_workers=2, worker_init_fn=worker_init_fn))
    (np_a, py_a), (np_b, py_b) = items  # worker 0 made batch 0, worker 1 batch 1
    assert not torch.equal(np_a, np_b) and not torch.equal(py_a, py_b)


def test_every_background_is_reachable_the_last_one_too(tmp_path):
    """A2U drew randint(0, n - 1), which never picks the last background; here all are drawn."""
    io.write_png(tmp_path / "fg.png", rgb(30, 30, 0))
    io.write_png(tmp_path / "a.png", np.zeros((30, 30), np.uint8))  # no unknown: the crop is the whole bg
    bgs = []
    for i, value in enumerate([40, 160]):
        bgs.append(tmp_path / f"bg{i}.png")
        io.write_png(bgs[-1], np.full((30, 30, 3), value, np.uint8))
    ds = CompositionDataset([tmp_path / "fg.png"], [tmp_path / "a.png"], bgs, make_augment_config("a2u", crop_size=24),
                            seed=0, length=30)
    seen = {round(float(ds[i]["image"].mean()) * 255) for i in range(len(ds))}
    assert seen == {40, 160}


def test_the_second_foreground_may_be_the_first_one(files, tmp_path):
    """A2U draws the partner among all foregrounds: with a transparent fg 0 and a soft fg 1, merging fg 0 with
    itself leaves no unknown pixel (the fallback resize), merging it with fg 1 does."""
    fgs, alphas, bgs = files
    io.write_png(tmp_path / "clear.png", np.zeros((40, 56), np.uint8))
    ds = CompositionDataset(fgs, [tmp_path / "clear.png", alphas[1]], bgs,
                            make_augment_config("a2u", crop_size=24, second_fg_p=1.0), seed=0, length=40)
    outcomes = {bool((ds[i]["trimap"] == 128).any()) for i in range(0, len(ds), 2)}  # fg 0 only
    assert outcomes == {True, False}
    assert A2UConfig.second_fg_may_be_itself and not PRESETS["gca"].second_fg_may_be_itself

