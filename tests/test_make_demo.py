"""The demo generator: Adobe's layout, determinism, the matting problems it poses, and the full pipeline on it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from matting.data import compose_test, make_demo as md
from matting.data.io import read_gray, read_rgb, read_trimap
from matting.data.release import load_fg_alpha, load_test_item, read_test_folder, read_training_release
from matting.errors import MattingError

TINY = dict(train_fgs=4, test_fgs=2, min_size=64, max_size=96, train_bgs_per_fg=2, test_bgs_per_fg=2)
POOL = md._palette_pool(np.random.default_rng(0))  # the colours every render below draws from
SEEDS = range(4)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return md.make_demo(out, seed=0, workers=1, **TINY)


def test_layout_is_adobes_release(demo):
    root = demo.dataset_dir
    train, test = root / "Training_set", root / "Test_set"
    names = (train / "training_fg_names.txt").read_text().split("\n")[:-1]
    assert len(names) == 4
    adobe = sorted(p.name for p in (train / "Adobe-licensed images" / "fg").iterdir())
    other = sorted(p.name for p in (train / "Other" / "fg").iterdir())
    assert len(adobe) == 2 and len(other) == 2 and sorted(adobe + other) == sorted(names)
    for sub in ("Adobe-licensed images", "Other"):
        assert sorted(p.name for p in (train / sub / "alpha").iterdir()) == sorted(
            p.name for p in (train / sub / "fg").iterdir())
        for p in (train / sub).rglob("*.jpg"):
            assert p.read_bytes()[:2] == b"\xff\xd8"  # real JPEGs, like the release
    bg_names = (train / "training_bg_names.txt").read_text().split()
    assert len(bg_names) == 8 == len(set(bg_names)) and set(bg_names) == {p.name for p in demo.train_bg_dir.iterdir()}

    test_fgs = (test / "test_fg_names.txt").read_text().split()
    test_bgs = (test / "test_bg_names.txt").read_text().split()
    assert len(test_fgs) == 2 and len(test_bgs) == 4 and set(test_bgs) == {p.name for p in demo.test_bg_dir.iterdir()}
    d = test / "Adobe-licensed images"
    for name in test_fgs:
        stem = Path(name).stem
        assert (d / "fg" / name).is_file() and (d / "alpha" / name).is_file()
        assert sorted(p.name for p in (d / "trimaps").glob(f"{stem}_*.png")) == [f"{stem}_0.png", f"{stem}_1.png"]
        assert (d / "fg" / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((demo.dataset_dir.parent / "demo.json").read_text())["seed"] == 0


def test_some_training_backgrounds_are_grey_like_coco(demo):
    channels = {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ndim for p in demo.train_bg_dir.iterdir()}
    assert channels == {2, 3}
    rel = read_training_release(demo.dataset_dir, demo.train_bg_dir)
    assert all(read_rgb(p).shape[2] == 3 for p in rel.bg_paths)


def test_training_alphas_are_noisy_jpegs_like_the_release(demo):
    rel = read_training_release(demo.dataset_dir, demo.train_bg_dir)
    values = np.concatenate([load_fg_alpha(f, a)[1].ravel() for f, a in zip(rel.fg_paths, rel.alpha_paths)])
    assert ((values > 0) & (values < 8)).any()  # compression noise near 0


def test_same_seed_same_bytes_whatever_the_workers_other_seed_differs(demo, tmp_path):
    again = md.make_demo(tmp_path / "again", seed=0, workers=2, **TINY)
    assert tree_digest(again.dataset_dir.parent) == tree_digest(demo.dataset_dir.parent)
    other = md.make_demo(tmp_path / "other", seed=1, workers=1, **TINY)
    a, b = tree_digest(demo.dataset_dir.parent), tree_digest(other.dataset_dir.parent)
    changed = [k for k in a if k.endswith((".png", ".jpg")) and a[k] != b.get(k)]
    assert len(changed) > 0.9 * sum(k.endswith((".png", ".jpg")) for k in a)


def test_demo_goes_through_the_reader_composer_and_test_loader(demo, tmp_path, capsys):
    rel = read_training_release(demo.dataset_dir, demo.train_bg_dir)
    assert len(rel) == 4 and len(rel.bg_paths) == 8
    for f, a in zip(rel.fg_paths, rel.alpha_paths):
        fg, alpha = load_fg_alpha(f, a)
        assert fg.shape[:2] == alpha.shape and 64 <= min(alpha.shape) and max(alpha.shape) <= 96
    out = tmp_path / "test"
    code = compose_test.main(["--dataset", str(demo.dataset_dir), "--bg-dir", str(demo.test_bg_dir),
                                   "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 0 and "4 composites of 2 foregrounds" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert demo.test_bgs_smaller >= 1 and sum(e["bg_upscaled"] for e in manifest["composites"]) == demo.test_bgs_smaller
    records = read_test_folder(out)
    assert len(records) == 4
    for r in records:
        item = load_test_item(r)
        a, t = item["alpha"], item["trimap"]
        assert item["image"].shape == (*a.shape, 3)
        # A benchmark trimap: fg/bg only where the alpha is exactly 1/0, every fractional pixel unknown.
        assert (a[t == 255] == 255).all() and (a[t == 0] == 0).all()
        assert (t[(a > 0) & (a < 255)] == 128).all()
        assert (t == 255).any() and (t == 0).any()


def test_test_set_mixes_exact_and_fractional_alpha(demo):
    for p in (demo.dataset_dir / "Test_set" / "Adobe-licensed images" / "alpha").iterdir():
        a = read_gray(p)
        assert (a == 0).any() and (a == 255).any() and ((a > 0) & (a < 255)).sum() > 0.01 * a.size


def test_benchmark_trimap_band_width():
    alpha = np.zeros((41, 41), np.uint8)
    alpha[:, 21:] = 255
    alpha[:, 20] = 128  # one fractional column
    trimap = md.benchmark_trimap(alpha, radius=7)
    unknown_cols = np.flatnonzero((trimap == 128).all(axis=0))
    assert unknown_cols.tolist() == list(range(13, 28))  # 20 -/+ 7
    assert (trimap[:, :13] == 0).all() and (trimap[:, 28:] == 255).all()
    dot = np.zeros((31, 31), np.uint8)
    dot[15, 15] = 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (21, 21))
    assert ((md.benchmark_trimap(dot, 10) == 128) == (np.pad(disc, 5) > 0)).all()


def test_fg_and_bg_colours_overlap():
    """fg and bg colours come from one pool, so colour alone cannot separate them: the colour histogram of
    opaque fg pixels overlaps the backgrounds' nearly as much as two sets of backgrounds overlap each other."""
    def hist(pixels: list[np.ndarray]) -> np.ndarray:
        q = (np.concatenate(pixels) // 64).astype(np.int64)  # 4 levels per channel, 64 bins
        h = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float64)
        return h / h.sum()

    fgs = [md.render_foreground(np.random.default_rng(s), 96, 96, md.KINDS[s % 6], POOL) for s in range(8)]
    fg_hist = hist([fg[alpha == 255] for fg, alpha in fgs])
    bgs_a = hist([md.render_background(np.random.default_rng(100 + s), 96, 96, POOL).reshape(-1, 3) for s in range(8)])
    bgs_b = hist([md.render_background(np.random.default_rng(200 + s), 96, 96, POOL).reshape(-1, 3) for s in range(8)])
    fg_bg = np.minimum(fg_hist, bgs_a).sum()
    assert fg_bg > 0.4 and fg_bg > 0.6 * np.minimum(bgs_a, bgs_b).sum()


# ------------------------------------------------------------------------------------ matting problems



def render(kind: str, seed: int, size: int = 128) -> np.ndarray:
    fg, alpha = md.render_foreground(np.random.default_rng(seed), size, size + 7, kind, POOL)
    assert fg.shape == (size, size + 7, 3) and fg.dtype == np.uint8 and alpha.dtype == np.uint8
    return alpha


def fractional_share(a: np.ndarray) -> float:
    return ((a > 0) & (a < 255)).sum() / max((a > 0).sum(), 1)


def enclosed_holes(a: np.ndarray) -> int:
    count, labels = cv2.connectedComponents((a == 0).astype(np.uint8), connectivity=4)
    border = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
    return sum(1 for i in range(1, count) if i not in border and (labels == i).sum() >= 4)


@pytest.mark.parametrize("kind", md.KINDS)
def test_every_kind_has_bg_and_partial_alpha(kind):
    for seed in SEEDS:
        a = render(kind, seed)
        assert (a == 0).any() and ((a > 0) & (a < 255)).any()


def test_hair_kind_has_thin_strands():
    def thin_share(a):  # share of the visible object that a 5x5 opening removes: structures <= 4 px wide
        mask = (a > 0).astype(np.uint8)
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        return ((mask > 0) & (opened == 0)).sum() / mask.sum()

    assert np.mean([thin_share(render("hair", s)) for s in SEEDS]) > 0.03


@pytest.mark.parametrize("kind", ["fuzzy", "motion"])
def test_soft_kinds_have_wide_fractional_bands(kind):
    assert np.mean([fractional_share(render(kind, s)) for s in SEEDS]) > 0.3


def test_glass_kind_has_a_region_of_constant_partial_alpha():
    def constant_partial_share(a):
        vals = a[(a >= 77) & (a <= 179)]  # alpha 0.3 .. 0.7
        return np.bincount(vals).max() / a.size if len(vals) else 0.0

    assert sum(constant_partial_share(render("glass", s)) > 0.01 for s in SEEDS) >= 3


@pytest.mark.parametrize("kind", ["donut", "lattice"])
def test_hole_kinds_have_enclosed_holes(kind):
    assert sum(enclosed_holes(render(kind, s)) >= 1 for s in SEEDS) >= 3


# -------------------------------------------------------------------------------------- CLI and safety

def test_refuses_a_folder_it_did_not_write_and_regenerates_its_own(tmp_path):
    (tmp_path / "Combined_Dataset").mkdir()
    with pytest.raises(MattingError, match="not a demo folder"):
        md.make_demo(tmp_path, workers=1, **TINY)
    demo = md.make_demo(tmp_path / "d", workers=1, **TINY)
    stale = demo.train_bg_dir / "stale.jpg"
    stale.write_bytes(b"x")
    md.make_demo(tmp_path / "d", workers=1, **TINY)
    assert not stale.exists()


def test_bad_parameters_are_user_errors(tmp_path):
    with pytest.raises(MattingError, match="min_size <= max_size"):
        md.make_demo(tmp_path, min_size=100, max_size=50)
    with pytest.raises(MattingError, match=">= 1"):
        md.make_demo(tmp_path, train_fgs=0)


def test_cli_prints_one_summary_line(tmp_path, capsys):
    code = md.main(["--out", str(tmp_path / "d"), "--seed", "2", "--train-fgs", "2", "--test-fgs", "1",
                         "--min-size", "48", "--max-size", "64", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("\n") == 1
    assert "2 training fgs, 6 training bgs, 1 test fgs x 2 bgs = 2 test composites" in out
    trimaps = sorted((tmp_path / "d" / "Combined_Dataset" / "Test_set" / "Adobe-licensed images" / "trimaps").iterdir())
    assert len(trimaps) == 2 and set(np.unique(read_trimap(trimaps[0]))) <= {0, 128, 255}
