"""Online training composition (augment.py) and the training/validation datasets (train_dataset.py), on tiny
generated images."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from matting.data import io
from matting.data.augment import (
    PRESETS,
    AugmentConfig,
    CompositionAugment,
    blend_foregrounds,
    make_augment_config,
)
from matting.data.train_dataset import (
    CompositionDataset,
    ValidationDataset,
    composite_truncated,
    pack_batch,
    unpack_batch,
    worker_init_fn,
)
from matting.data.trimap import trimap_from_alpha_dt
from matting.errors import MattingError

CROP = 48


def soft_disc(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) uint8 alpha: an off-centre disc with a 4 px soft edge."""
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = 0.3 * min(h, w)
    d = np.hypot(*np.mgrid[:h, :w] - np.array([cy, cx])[:, None, None])
    return np.round(np.clip((r - d) / 4 + 0.5, 0, 1) * 255).astype(np.uint8)


def one_soft_pixel(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) uint8 alpha: opaque left half, transparent right half, and ONE fractional pixel somewhere."""
    a = np.zeros((h, w), np.uint8)
    a[:, : w // 2] = 255
    a[rng.integers(h), rng.integers(w)] = rng.integers(1, 255)
    return a


def random_rgb(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("comp")
    rng = np.random.default_rng(0)
    fgs, alphas, bgs = [], [], []
    for i, (h, w) in enumerate([(90, 120), (150, 70), (40, 56)]):
        fgs.append(root / "fg" / f"fg{i}.png")
        alphas.append(root / "alpha" / f"fg{i}.png")
        io.write_png(fgs[-1], random_rgb(h, w, rng))
        io.write_png(alphas[-1], soft_disc(h, w, rng))
    for i, (h, w) in enumerate([(50, 80), (200, 160), (64, 64), (30, 40)]):
        bgs.append(root / "bg" / f"bg{i}.png")
        io.write_png(bgs[-1], random_rgb(h, w, rng))
    return SimpleNamespace(root=root, fg=fgs, alpha=alphas, bg=bgs)


# Every optional branch forced on (or off), at a small crop.
BRANCHES = {
    "indexnet": make_augment_config("indexnet", crop_size=CROP),
    "indexnet_flip": make_augment_config("indexnet", crop_size=CROP, hflip_p=1.0),
    "gca": make_augment_config("gca", crop_size=CROP),
    "gca_all_on": make_augment_config(
        "gca", crop_size=CROP, second_fg_p=1.0, resize_fg_p=1.0, resize_fg_size=100, hsv_p=1.0,
        rotation_min_side=1, hflip_p=1.0, vflip_p=1.0,
    ),
    "gca_all_off": make_augment_config(
        "gca", crop_size=CROP, second_fg_p=0.0, resize_fg_p=0.0, hsv_p=0.0, rotation_deg=0.0,
        scale_range=(1.0, 1.0), shear_deg=0.0, hflip_p=0.0, vflip_p=0.0,
    ),
    "gca_second_only": make_augment_config(
        "gca", crop_size=CROP, second_fg_p=1.0, resize_fg_p=0.0, hsv_p=0.0, bg_downscale=False
    ),
    "gca_resize_rotate": make_augment_config(
        "gca", crop_size=CROP, second_fg_p=0.0, resize_fg_p=1.0, resize_fg_size=70, hsv_p=0.0, rotation_min_side=1
    ),
}


def check_sample(s: dict[str, np.ndarray], crop: int) -> None:
    for key in ("image", "fg", "bg"):
        assert s[key].shape == (crop, crop, 3) and s[key].dtype == np.float32, key
        assert s[key].min() >= 0.0 and s[key].max() <= 1.0, key
    assert s["alpha"].shape == (crop, crop) and s["alpha"].dtype == np.float32
    assert s["alpha"].min() >= 0.0 and s["alpha"].max() <= 1.0
    assert s["trimap"].shape == (crop, crop) and s["trimap"].dtype == np.uint8
    assert set(np.unique(s["trimap"])) <= {0, 128, 255}
    a = s["alpha"][..., None]
    np.testing.assert_allclose(s["image"], a * s["fg"] + (1 - a) * s["bg"], atol=1e-5)
    # The trimap is derived from the final alpha: its known regions agree with it exactly.
    assert (s["alpha"][s["trimap"] == 255] == 1.0).all()
    assert (s["alpha"][s["trimap"] == 0] == 0.0).all()


@pytest.mark.parametrize("branch", BRANCHES)
def test_every_branch_keeps_image_fg_alpha_bg_consistent(branch):
    aug = CompositionAugment(BRANCHES[branch])
    rng = np.random.default_rng(1)
    for seed in range(12):
        h, w = rng.integers(30, 160, size=2)
        fg, alpha, bg = random_rgb(h, w, rng), soft_disc(h, w, rng), random_rgb(*rng.integers(20, 200, size=2), rng)
        fg2, alpha2 = random_rgb(w, h, rng), soft_disc(w, h, rng)
        s = aug(fg, alpha, bg, np.random.default_rng(seed), second=lambda: (fg2, alpha2))
        check_sample(s, CROP)


@pytest.mark.parametrize("branch", ["indexnet", "indexnet_flip", "gca_all_off", "gca_resize_rotate"])
def test_fg_and_alpha_get_the_same_geometry(branch):
    """A fg whose red channel IS the alpha stays so through every geometric path (no second fg, no jitter)."""
    aug = CompositionAugment(BRANCHES[branch])
    rng = np.random.default_rng(2)
    for seed in range(8):
        h, w = rng.integers(30, 160, size=2)
        alpha = soft_disc(h, w, rng)
        fg = random_rgb(h, w, rng)
        fg[..., 0] = alpha
        s = aug(fg, alpha, random_rgb(50, 50, rng), np.random.default_rng(seed))
        assert np.array_equal(s["fg"][..., 0], s["alpha"])


def test_bg_is_not_flipped_with_the_foreground():
    aug = CompositionAugment(replace(BRANCHES["indexnet_flip"], crop_scales=(1.0,)))
    ramp = np.broadcast_to(np.linspace(0, 255, 100).astype(np.uint8)[None, :, None], (100, 100, 3)).copy()
    alpha = soft_disc(100, 100, np.random.default_rng(0))
    s = aug(ramp, alpha, ramp, np.random.default_rng(0))
    assert s["fg"][:, 0, 0].mean() > s["fg"][:, -1, 0].mean()  # flipped: bright on the left
    assert s["bg"][:, 0, 0].mean() < s["bg"][:, -1, 0].mean()  # not flipped


@pytest.mark.parametrize("branch", ["indexnet", "gca", "gca_all_on"])
def test_crop_always_contains_unknown_pixels_when_the_alpha_has_fractional_ones(branch):
    aug = CompositionAugment(BRANCHES[branch])
    rng = np.random.default_rng(3)
    for seed in range(60):
        h, w = rng.integers(30, 200, size=2)
        alpha = one_soft_pixel(h, w, rng) if seed % 2 else soft_disc(h, w, rng)
        fg, bg = random_rgb(h, w, rng), random_rgb(40, 40, rng)
        # A second fg that is transparent except for one soft pixel keeps the first one's soft pixels soft (an
        # opaque second fg could cover them all, leaving no fractional pixel to centre on).
        speck = np.zeros((h, w), np.uint8)
        speck[rng.integers(h), rng.integers(w)] = 77
        second = lambda: (fg, speck)  # noqa: E731
        s = aug(fg, alpha, bg, np.random.default_rng(seed), second=second)
        assert (s["trimap"] == 128).any(), f"seed {seed}: no unknown pixel in the crop"
        assert ((s["alpha"] > 0) & (s["alpha"] < 1)).any()


def test_binary_alpha_gives_a_crop_without_unknown_for_the_dt_trimap():
    aug = CompositionAugment(BRANCHES["indexnet"])
    alpha = np.zeros((80, 80), np.uint8)
    alpha[:, :40] = 255
    s = aug(random_rgb(80, 80, np.random.default_rng(0)), alpha, random_rgb(80, 80, np.random.default_rng(1)),
            np.random.default_rng(0))
    assert set(np.unique(s["alpha"])) <= {0.0, 1.0} and not (s["trimap"] == 128).any()


def test_blend_foregrounds_premultiplied_values():
    fg1, fg2 = np.array([0.8, 0.2, 0.4], np.float32), np.array([0.2, 0.6, 1.0], np.float32)
    c = lambda v: np.broadcast_to(v, (2, 2) + np.shape(v)).astype(np.float32)  # noqa: E731
    fg, alpha = blend_foregrounds(c(fg1), c(0.5), c(fg2), c(0.4))
    assert np.allclose(alpha, 0.7)  # 1 - 0.5 * 0.6
    assert np.allclose(fg, [0.44 / 0.7, 0.22 / 0.7, 0.40 / 0.7])  # (fg1 0.5 + fg2 0.5 * 0.4) / 0.7
    fg, alpha = blend_foregrounds(c(fg1), c(0.0), c(fg2), c(0.0))
    assert np.all(alpha == 0) and np.allclose(fg, fg1)  # undefined colour: keep fg1, no NaN
    fg, alpha = blend_foregrounds(c(fg1), c(1.0), c(fg2), c(0.3))
    assert np.all(alpha == 1) and np.allclose(fg, fg1)


def test_second_foreground_through_the_augmentation_on_constant_images():
    cfg = make_augment_config("gca", crop_size=CROP, second_fg_p=1.0, hsv_p=0.0)
    fg1, a1 = np.full((70, 90, 3), (204, 51, 102), np.uint8), np.full((70, 90), 153, np.uint8)  # 0.8,0.2,0.4 / 0.6
    fg2, a2 = np.full((50, 40, 3), (51, 153, 255), np.uint8), np.full((50, 40), 102, np.uint8)  # 0.2,0.6,1.0 / 0.4
    bg = np.full((60, 60, 3), 0, np.uint8)
    s = CompositionAugment(cfg)(fg1, a1, bg, np.random.default_rng(0), second=lambda: (fg2, a2))
    alpha = 1 - 0.4 * 0.6  # 0.76
    assert np.allclose(s["alpha"], alpha, atol=1e-6)
    expected = (np.array([0.8, 0.2, 0.4]) * 0.6 + np.array([0.2, 0.6, 1.0]) * 0.4 * 0.4) / alpha
    assert np.allclose(s["fg"], expected, atol=1e-6)
    assert np.allclose(s["image"], alpha * expected, atol=1e-6)  # black bg


def test_second_foreground_gets_the_same_geometry():
    """Behind a fully transparent first fg the merge is the second fg itself: its red channel (= its alpha) must
    still equal the output alpha through resize, affine, flips and crop."""
    cfg = replace(BRANCHES["gca_all_on"], hsv_p=0.0)
    rng = np.random.default_rng(5)
    for seed in range(8):
        h, w = rng.integers(30, 160, size=2)
        alpha2 = soft_disc(h, w, rng)
        fg2 = random_rgb(h, w, rng)
        fg2[..., 0] = alpha2
        s = CompositionAugment(cfg)(random_rgb(h, w, rng), np.zeros((h, w), np.uint8), random_rgb(40, 40, rng),
                                    np.random.default_rng(seed), second=lambda: (fg2, alpha2))
        seen = s["alpha"] > 0  # where nothing is seen the merged fg is the first one's colour
        assert seen.any()
        np.testing.assert_allclose(s["fg"][..., 0][seen], s["alpha"][seen], atol=1e-6)
    # A second fg of another size: alpha2 is resized first, fg2 sampled from its own frame, so only close.
    for seed in range(8):
        h, w = rng.integers(30, 160, size=2)
        h2, w2 = rng.integers(30, 200, size=2)
        alpha2 = soft_disc(h2, w2, rng)
        fg2 = random_rgb(h2, w2, rng)
        fg2[..., 0] = alpha2
        s = CompositionAugment(cfg)(random_rgb(h, w, rng), np.zeros((h, w), np.uint8), random_rgb(40, 40, rng),
                                    np.random.default_rng(seed), second=lambda: (fg2, alpha2))
        seen = s["alpha"] > 0
        assert np.abs(s["fg"][..., 0][seen] - s["alpha"][seen]).mean() < 0.03


def test_second_foreground_is_fetched_only_when_drawn():
    calls = []
    cfg = make_augment_config("gca", crop_size=CROP, second_fg_p=0.5)
    aug = CompositionAugment(cfg)
    a = soft_disc(60, 60, np.random.default_rng(0))
    fg = random_rgb(60, 60, np.random.default_rng(0))
    for seed in range(40):
        aug(fg, a, fg, np.random.default_rng(seed), second=lambda: calls.append(1) or (fg, a))
    assert 5 < len(calls) < 35
    calls.clear()
    aug = CompositionAugment(replace(cfg, second_fg_p=0.0))
    for seed in range(10):
        aug(fg, a, fg, np.random.default_rng(seed), second=lambda: calls.append(1) or (fg, a))
    assert not calls


def test_augmentation_is_a_function_of_the_generator_seed():
    aug = CompositionAugment(BRANCHES["gca_all_on"])
    rng = np.random.default_rng(4)
    fg, alpha, bg = random_rgb(80, 100, rng), soft_disc(80, 100, rng), random_rgb(60, 70, rng)
    second = lambda: (fg[::-1].copy(), alpha[::-1].copy())  # noqa: E731
    a = aug(fg, alpha, bg, np.random.default_rng(7), second=second)
    b = aug(fg, alpha, bg, np.random.default_rng(7), second=second)
    c = aug(fg, alpha, bg, np.random.default_rng(8), second=second)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["image"], c["image"])


# ------------------------------------------------------------------------------------------------ config


def test_presets_and_crop_override():
    ix, gca = PRESETS["indexnet"], PRESETS["gca"]
    assert ix.windows == (320, 480, 640) and ix.trimap == "dt" and ix.trimap_range == (1, 19)
    assert gca.windows == (512,) and gca.trimap == "erode" and gca.trimap_range == (1, 29)
    assert (gca.second_fg_p, gca.resize_fg_p, gca.rotation_deg, gca.shear_deg) == (0.5, 0.25, 30.0, 10.0)
    small = make_augment_config("indexnet", crop_size=160)
    assert small.windows == (160, 240, 320) and small.min_source_size == 320
    assert make_augment_config("gca", crop_scales=[1, 2]).crop_scales == (1, 2)  # YAML lists become tuples


def test_docs_list_every_preset_field_with_its_value():
    """docs/data.md's field table carries each preset's value of each field, and '-' where it has none."""
    order = ("indexnet", "gca", "a2u")
    rows = {}
    for line in (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:4]

    def shown(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return f"[{', '.join(map(shown, value))}]" if isinstance(value, tuple) else str(value)

    names = {f.name for preset in order for f in fields(PRESETS[preset])}
    assert set(rows) >= names, sorted(names - set(rows))
    for name in names:
        config = [PRESETS[p] for p in order]
        want = [f"`{shown(getattr(c, name))}`" if hasattr(c, name) else "-" for c in config]
        assert rows[name] == want, name


def test_config_errors_name_the_key():
    with pytest.raises(MattingError, match="augment.crop_sise: unknown option"):
        make_augment_config("indexnet", crop_sise=160)
    with pytest.raises(MattingError, match="preset 'gcaa' is unknown"):
        make_augment_config("gcaa")
    with pytest.raises(MattingError, match="augment.crop_size"):
        make_augment_config("indexnet", crop_size=0)
    with pytest.raises(MattingError, match="augment.hsv_p"):
        make_augment_config("gca", hsv_p=1.5)
    with pytest.raises(MattingError, match="augment.trimap_range"):
        make_augment_config("gca", trimap_range=(5, 2))
    with pytest.raises(MattingError, match="augment.trimap:"):
        AugmentConfig(crop_size=64, trimap="blur")


# ------------------------------------------------------------------------------------------------ datasets


def dataset(files: SimpleNamespace, preset: str = "gca", **kw) -> CompositionDataset:
    cfg = make_augment_config(preset, crop_size=CROP, **kw.pop("augment", {}))
    return CompositionDataset(files.fg, files.alpha, files.bg, cfg, seed=kw.pop("seed", 5), **kw)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("preset", ["indexnet", "gca"])
def test_dataset_sample_format(files, preset):
    ds = dataset(files, preset)
    assert len(ds) == 3 * 100
    for i in range(6):
        s = ds[i]
        assert s["name"] == files.fg[i % 3].stem
        for key in ("image", "fg", "bg"):
            assert s[key].shape == (3, CROP, CROP) and s[key].dtype == torch.float32
            assert 0 <= s[key].min() and s[key].max() <= 1
        assert s["alpha"].shape == (1, CROP, CROP) and s["alpha"].dtype == torch.float32
        assert s["trimap"].shape == (1, CROP, CROP) and s["trimap"].dtype == torch.uint8
        assert set(s["trimap"].unique().tolist()) <= {0, 128, 255}
        torch.testing.assert_close(s["image"], s["alpha"] * s["fg"] + (1 - s["alpha"]) * s["bg"], atol=1e-5, rtol=0)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataset_is_deterministic_per_seed_epoch_and_index(files):
    a, b = dataset(files, length=8), dataset(files, length=8)
    for i in range(4):
        assert_same(a[i], b[i])
    assert not torch.equal(a[0]["image"], dataset(files, seed=6, length=8)[0]["image"])
    first = a[1]["image"]
    a.set_epoch(1)
    assert not torch.equal(a[1]["image"], first)
    a.set_epoch(0)
    assert torch.equal(a[1]["image"], first)


def test_an_epoch_can_travel_with_the_index(files):
    """Persistent loader workers keep the dataset they copied: they get (epoch, index), not set_epoch."""
    ds = dataset(files, length=8)
    ds.set_epoch(2)
    expected = ds[5]
    ds.set_epoch(0)
    assert_same(ds[(2, 5)], expected)


@pytest.mark.parametrize("preset", ["indexnet", "gca", "a2u"])
def test_batches_travel_as_bytes_where_exact_and_arrive_unchanged(files, preset):
    """pack_batch (in the loader's workers) then unpack_batch (on the device) gives back exactly the float
    batch; the indexnet recipe's fg, bg and alpha are 8-bit values and its composite is recomputed."""
    ds = dataset(files, preset, length=8)
    samples = [ds[i] for i in range(4)]
    packed = pack_batch(samples)
    assert_same(unpack_batch(packed), default_collate(samples))
    if preset == "indexnet":
        assert "image" not in packed and {packed[k].dtype for k in ("fg", "bg", "alpha")} == {torch.uint8}
    if preset == "a2u":  # its composite is (fg * a + bg * (1 - a)) / 255: travels as float32
        assert packed["image"].dtype == torch.float32


def test_cache_gives_the_same_samples(files):
    for i in range(4):
        assert_same(dataset(files)[i], dataset(files, cache=True)[i])


def test_worker_count_does_not_change_the_batches(files):
    ds = dataset(files, length=8)
    ds.set_epoch(3)
    serial = list(DataLoader(ds, batch_size=4, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=worker_init_fn))
    assert len(serial) == len(parallel) == 2
    for x, y in zip(serial, parallel):
        assert_same(x, y)


def test_from_release_reads_the_three_lists(files):
    release = SimpleNamespace(fg_paths=files.fg, alpha_paths=files.alpha, bg_paths=files.bg, names=["x"])
    cfg = make_augment_config("indexnet", crop_size=CROP)
    ds = CompositionDataset.from_release(release, cfg, seed=5, length=4)
    assert_same(ds[2], CompositionDataset(files.fg, files.alpha, files.bg, cfg, seed=5, length=4)[2])
    val = ValidationDataset.from_release(release, seed=1, bgs_per_fg=1)
    assert len(val) == 3


def test_missing_files_are_all_listed_up_front(files, tmp_path):
    fgs = [*files.fg[:2], tmp_path / "gone_fg.png"]
    bgs = [*files.bg, tmp_path / "gone_bg.jpg"]
    with pytest.raises(MattingError) as err:
        CompositionDataset(fgs, files.alpha, bgs, PRESETS["gca"], seed=0)
    msg = str(err.value)
    assert "2 input files not found" in msg and "gone_fg.png" in msg and "gone_bg.jpg" in msg and "\n" not in msg
    with pytest.raises(MattingError, match="gone_bg.jpg"):
        ValidationDataset(files.fg, files.alpha, bgs, seed=0)


def test_many_missing_files_are_counted_and_the_first_50_named(files, tmp_path):
    bgs = [tmp_path / f"coco_{i:03d}.jpg" for i in range(60)]
    with pytest.raises(MattingError) as err:
        CompositionDataset(files.fg, files.alpha, bgs, PRESETS["gca"], seed=0)
    msg = str(err.value)
    assert msg.startswith("60 input files not found") and "coco_049.jpg" in msg and "coco_050.jpg" not in msg
    assert msg.endswith("... and 10 more")


def test_empty_and_unpaired_lists(files):
    with pytest.raises(MattingError, match="foreground list is empty"):
        CompositionDataset([], [], files.bg, PRESETS["gca"], seed=0)
    with pytest.raises(MattingError, match="background list is empty"):
        CompositionDataset(files.fg, files.alpha, [], PRESETS["gca"], seed=0)
    with pytest.raises(MattingError, match="3 foregrounds but 2 alphas"):
        CompositionDataset(files.fg, files.alpha[:2], files.bg, PRESETS["gca"], seed=0)
    with pytest.raises(MattingError, match="seed"):
        CompositionDataset(files.fg, files.alpha, files.bg, PRESETS["gca"], seed=-1)


def test_size_mismatch_names_both_files(files):
    swapped = [files.alpha[1], files.alpha[0], files.alpha[2]]
    ds = CompositionDataset(files.fg, swapped, files.bg, make_augment_config("gca", crop_size=CROP), seed=0)
    with pytest.raises(MattingError) as err:
        ds[0]
    assert str(files.fg[0]) in str(err.value) and str(files.alpha[1]) in str(err.value)
    with pytest.raises(MattingError, match="does not match"):  # cache=True checks every pair up front
        CompositionDataset(files.fg, swapped, files.bg, PRESETS["gca"], seed=0, cache=True)
    with pytest.raises(MattingError, match="does not match"):
        ValidationDataset(files.fg, swapped, files.bg, seed=0)[0]


def test_16bit_alpha_is_rejected_naming_the_file(files, tmp_path):
    import cv2

    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.zeros((90, 120), np.uint16))
    ds = CompositionDataset(files.fg[:1], [path], files.bg, PRESETS["gca"], seed=0)
    with pytest.raises(MattingError, match="deep.png: 16-bit"):
        ds[0]


# ------------------------------------------------------------------------------------------------ validation


def test_validation_items_are_fixed_test_format_composites(files):
    val = ValidationDataset(files.fg, files.alpha, files.bg, seed=3, bgs_per_fg=2)
    assert len(val) == 6 and val.split == "validation"
    again = ValidationDataset(files.fg, files.alpha, files.bg, seed=3, bgs_per_fg=2)
    for i in range(len(val)):
        item = val[i]
        fg, alpha = io.read_rgb(files.fg[i // 2]), io.read_gray(files.alpha[i // 2])
        assert item["name"] == f"{files.fg[i // 2].stem}_{i % 2}"
        assert item["image"].shape == fg.shape and item["image"].dtype == np.uint8
        assert np.array_equal(item["alpha"], alpha)
        assert np.array_equal(item["trimap"], trimap_from_alpha_dt(alpha, 10))
        assert np.array_equal(item["image"][alpha == 255], fg[alpha == 255])
        assert np.array_equal(item["image"], again[i]["image"])
    assert len(set(val.bg_index[0])) == 2  # two different backgrounds for one foreground


def test_validation_composite_truncates_like_the_test_script(tmp_path):
    alpha = np.array([[0, 128, 255, 64]], np.uint8).repeat(4, 0)
    io.write_png(tmp_path / "f.png", np.full((4, 4, 3), 200, np.uint8))
    io.write_png(tmp_path / "a.png", alpha)
    io.write_png(tmp_path / "b.png", np.full((2, 3, 3), 100, np.uint8))  # smaller: enlarged, stays constant
    item = ValidationDataset([tmp_path / "f.png"], [tmp_path / "a.png"], [tmp_path / "b.png"], seed=0,
                             bgs_per_fg=1)[0]
    # int(128/255*200 + 127/255*100) = int(150.196) = 150; int(64/255*200 + 191/255*100) = int(125.098) = 125
    assert item["image"][0, :, 0].tolist() == [100, 150, 200, 125]
    assert composite_truncated(np.full((1, 1, 3), 1, np.uint8), np.full((1, 1), 254, np.uint8),
                               np.full((1, 1, 3), 2, np.uint8)).item(0) == 1  # 1.0039 truncated, not rounded


def test_validation_max_side_downscales(files):
    val = ValidationDataset(files.fg, files.alpha, files.bg, seed=0, bgs_per_fg=1, max_side=64)
    for i in range(len(val)):
        item = val[i]
        assert max(item["image"].shape[:2]) <= 64 and item["alpha"].shape == item["image"].shape[:2]
        assert item["trimap"].shape == item["alpha"].shape
    assert val[2]["alpha"].shape == (40, 56)  # already small: untouched
