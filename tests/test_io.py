"""Image I/O: RGB order, channel-0 alphas, trimap mapping, 16-bit/palette rejection, atomic writes, pairing."""

import cv2
import numpy as np
import pytest
from PIL import Image

from matting.data.io import (
    find_alpha,
    list_images,
    normalize_trimap,
    read_gray,
    read_rgb,
    read_trimap,
    split_composite_stem,
    write_png,
)
from matting.errors import MattingError


def test_rgb_round_trip_and_gray_expansion(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", rgb)
    assert np.array_equal(read_rgb(tmp_path / "a.png"), rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgb)  # really RGB on disk
    gray = rgb[:, :, 0].copy()
    write_png(tmp_path / "g.png", gray)
    assert np.array_equal(read_rgb(tmp_path / "g.png"), np.repeat(gray[:, :, None], 3, 2))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_gray_reads_channel_zero_of_colour_alphas(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    write_png(tmp_path / "alpha.png", rgb)
    assert (read_gray(tmp_path / "alpha.png") == 10).all()


def test_sixteen_bit_and_palette_are_rejected_unless_allowed(tmp_path):
    deep = np.full((4, 4), 65535, np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    with pytest.raises(MattingError, match="deep.png: 16-bit image"):
        read_gray(tmp_path / "deep.png")
    assert (read_gray(tmp_path / "deep.png", allow_16bit=True) == 255).all()
    Image.fromarray(np.zeros((4, 4), np.uint8)).convert("P").save(tmp_path / "pal.png")
    with pytest.raises(MattingError, match="pal.png: palette"):
        read_gray(tmp_path / "pal.png")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(MattingError, match="nope.png: file not found"):
        read_rgb(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(MattingError, match="bad.png: not a readable image"):
        read_rgb(tmp_path / "bad.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MattingError, match="empty: no images"):
        list_images(tmp_path / "empty")


def test_trimap_mapping_by_thresholds(tmp_path):
    raw = np.array([[0, 84, 85, 127], [128, 170, 171, 255]], np.uint8)
    with pytest.warns(UserWarning, match="5 trimap pixels are not 0/128/255"):
        out = normalize_trimap(raw, "t.png")
    assert out.tolist() == [[0, 0, 128, 128], [128, 128, 255, 255]]
    write_png(tmp_path / "t.png", np.array([[0, 128, 255]], np.uint8))
    assert read_trimap(tmp_path / "t.png").tolist() == [[0, 128, 255]]


def test_composite_names_pair_with_foreground_alphas(tmp_path):
    assert split_composite_stem("cat_7") == "cat"
    assert split_composite_stem("a_b_12") == "a_b"
    assert split_composite_stem("cat") == "cat"
    assert split_composite_stem("cat_") == "cat_"
    write_png(tmp_path / "cat.png", np.zeros((2, 2), np.uint8))
    write_png(tmp_path / "dog_3.png", np.zeros((2, 2), np.uint8))
    assert find_alpha(tmp_path, "cat_7").name == "cat.png"
    assert find_alpha(tmp_path, "dog_3").name == "dog_3.png"  # a per-composite copy wins
    assert find_alpha(tmp_path, "eel_1") is None
