"""matting.infer: files and folders, grey/RGBA/16-bit inputs, clear errors, foreground and cut-out outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from matting.data.io import read_gray, read_rgb, write_png
from matting.engine.predictor import Predictor
from matting.infer import estimate_foreground, main

from helpers import save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", step=3)


@pytest.fixture(scope="module")
def matter(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, "cpu")


def make_pair(h: int = 40, w: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[:, : w // 4] = 0
    trimap[:, -w // 4 :] = 255
    return image, trimap


def write_pair(folder: Path, stem: str, image: np.ndarray, trimap: np.ndarray) -> tuple[Path, Path]:
    write_png(folder / "images" / f"{stem}.png", image)
    write_png(folder / "trimaps" / f"{stem}.png", trimap)
    return folder / "images" / f"{stem}.png", folder / "trimaps" / f"{stem}.png"


def run(checkpoint: Path, *args: str) -> int:
    return main(["--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress", *args])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_single_pair_to_folder(tmp_path, checkpoint, matter, capsys):
    image, trimap = make_pair()
    img_path, tri_path = write_pair(tmp_path, "photo", image, trimap)
    assert run(checkpoint, "--image", str(img_path), "--trimap", str(tri_path), "--out", str(tmp_path / "out")) == 0
    alpha = read_gray(tmp_path / "out" / "alpha" / "photo.png")
    np.testing.assert_array_equal(alpha, matter.predict_uint8(image, trimap))
    assert (alpha[:, :12] == 0).all() and (alpha[:, -12:] == 255).all()
    assert capsys.readouterr().out.strip().splitlines() == [str(tmp_path / "out" / "alpha" / "photo.png")]
    assert not (tmp_path / "out" / "cutout").exists() and not (tmp_path / "out" / "foreground").exists()


@pytest.mark.slow
def test_png_out_with_foreground_and_cutout(tmp_path, checkpoint):
    image, trimap = make_pair(seed=1)
    img_path, tri_path = write_pair(tmp_path, "photo", image, trimap)
    out = tmp_path / "res" / "matte.png"
    args = ["--image", str(img_path), "--trimap", str(tri_path), "--out", str(out), "--foreground", "--cutout"]
    assert run(checkpoint, *args) == 0
    alpha = read_gray(out)
    fg = read_rgb(tmp_path / "res" / "matte_foreground.png")
    np.testing.assert_array_equal(fg, estimate_foreground(image, alpha))
    # Inside the trimap's definite foreground, away from the band the (random) model predicts, the matte is
    # opaque and the estimated foreground is the image itself.
    inner = np.zeros_like(trimap, dtype=bool)
    inner[:, -8:] = True
    assert (alpha[inner] == 255).all()
    assert (np.abs(fg[inner].astype(int) - image[inner]) <= 2).all(axis=1).mean() > 0.9
    cut = cv2.imread(str(tmp_path / "res" / "matte_cutout.png"), cv2.IMREAD_UNCHANGED)
    assert cut.shape == (40, 50, 4)
    np.testing.assert_array_equal(cut[:, :, 3], alpha)
    np.testing.assert_array_equal(cut[:, :, 2::-1], fg)  # OpenCV's BGRA -> RGB


@pytest.mark.slow
def test_grey_rgba_and_16bit_inputs(tmp_path, checkpoint, matter):
    image, trimap = make_pair(seed=2)
    grey = image[:, :, 0]
    write_pair(tmp_path, "grey", grey, trimap)
    write_pair(tmp_path, "rgba", np.concatenate([image, np.full_like(image[:, :, :1], 7)], axis=2), trimap)
    # 16-bit image and trimap with full-range values (x * 257).
    cv2.imwrite(str(tmp_path / "images" / "deep.png"), image[:, :, ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "trimaps" / "deep.png"), trimap.astype(np.uint16) * 257)
    out = tmp_path / "o" / "alpha"
    args = ["--image", str(tmp_path / "images"), "--trimap", str(tmp_path / "trimaps"), "--out", str(tmp_path / "o")]
    assert run(checkpoint, *args) == 0
    np.testing.assert_array_equal(read_gray(out / "grey.png"), matter.predict_uint8(np.dstack([grey] * 3), trimap))
    np.testing.assert_array_equal(read_gray(out / "rgba.png"), matter.predict_uint8(image, trimap))
    np.testing.assert_array_equal(read_gray(out / "deep.png"), matter.predict_uint8(image, trimap))
    # Guard: the grey input is not scored as if it were the colour image.
    assert not np.array_equal(read_gray(out / "grey.png"), read_gray(out / "rgba.png"))


@pytest.mark.slow
def test_folders_pair_by_stem(tmp_path, checkpoint, matter, capsys):
    pairs = {f"img{k}": make_pair(30 + 4 * k, 44, seed=k) for k in range(3)}
    for stem, (image, trimap) in pairs.items():
        write_pair(tmp_path, stem, image, trimap)
    # A JPEG image pairs with its PNG trimap by stem; trimaps without an image are ignored.
    jpg_image, jpg_trimap = make_pair(32, 32, seed=9)
    cv2.imwrite(str(tmp_path / "images" / "shot.jpg"), jpg_image[:, :, ::-1])
    write_png(tmp_path / "trimaps" / "shot.png", jpg_trimap)
    write_png(tmp_path / "trimaps" / "orphan.png", jpg_trimap)
    out = tmp_path / "out"
    args = ["--image", str(tmp_path / "images"), "--trimap", str(tmp_path / "trimaps"), "--out", str(out)]
    assert run(checkpoint, *args, "--cutout") == 0
    assert sorted(p.name for p in (out / "alpha").iterdir()) == ["img0.png", "img1.png", "img2.png", "shot.png"]
    assert sorted(p.name for p in (out / "cutout").iterdir()) == ["img0.png", "img1.png", "img2.png", "shot.png"]
    for stem, (image, trimap) in pairs.items():
        np.testing.assert_array_equal(read_gray(out / "alpha" / f"{stem}.png"), matter.predict_uint8(image, trimap))
    shot = read_rgb(tmp_path / "images" / "shot.jpg")
    np.testing.assert_array_equal(read_gray(out / "alpha" / "shot.png"), matter.predict_uint8(shot, jpg_trimap))
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)


def test_mismatched_sizes_exit_2_naming_both_files(tmp_path, checkpoint, capsys):
    image, _ = make_pair(40, 50)
    _, trimap = make_pair(40, 52)
    img_path, tri_path = write_pair(tmp_path, "photo", image, trimap)
    assert run(checkpoint, "--image", str(img_path), "--trimap", str(tri_path), "--out", str(tmp_path / "o")) == 2
    err = one_line_error(capsys)
    assert str(img_path) in err and str(tri_path) in err and "50x40" in err and "52x40" in err
    assert not (tmp_path / "o").exists()


def test_folder_with_missing_trimap_or_mixed_inputs_exit_2(tmp_path, checkpoint, capsys):
    image, trimap = make_pair()
    img_path, tri_path = write_pair(tmp_path, "a", image, trimap)
    write_png(tmp_path / "images" / "b.png", image)
    assert run(checkpoint, "--image", str(tmp_path / "images"), "--trimap", str(tmp_path / "trimaps")) == 2
    assert "b.png" in one_line_error(capsys)
    assert run(checkpoint, "--image", str(img_path), "--trimap", str(tmp_path / "trimaps")) == 2
    assert "two files or two folders" in one_line_error(capsys)
    assert run(checkpoint, "--image", str(tmp_path / "nope.png"), "--trimap", str(tri_path)) == 2
    assert "nope.png" in one_line_error(capsys)


def test_missing_checkpoint_exit_2(tmp_path, capsys):
    image, trimap = make_pair()
    img_path, tri_path = write_pair(tmp_path, "a", image, trimap)
    args = ["--image", str(img_path), "--trimap", str(tri_path), "--out", str(tmp_path / "o")]
    assert main(["--checkpoint", str(tmp_path / "none.pth"), *args]) == 2
    assert "none.pth" in one_line_error(capsys)


@pytest.mark.slow
def test_module_entry_point_reports_user_errors_without_traceback(tmp_path):
    image, _ = make_pair(40, 50)
    _, trimap = make_pair(30, 50)
    img_path, tri_path = write_pair(tmp_path, "photo", image, trimap)
    proc = subprocess.run(
        [sys.executable, "-m", "matting.infer", "--image", str(img_path), "--trimap", str(tri_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "does not match" in proc.stderr


def truncated_jpeg(path: Path, image: np.ndarray) -> Path:
    """A JPEG of ``image`` cut to half its bytes (an interrupted download): libjpeg decodes it with grey."""
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_image_is_an_error_naming_it(tmp_path, checkpoint, capsys):
    image, trimap = make_pair()
    img_path, tri_path = write_pair(tmp_path, "photo", image, trimap)
    bad = truncated_jpeg(tmp_path / "images" / "cut.jpg", image)
    write_png(tmp_path / "trimaps" / "cut.png", trimap)
    assert run(checkpoint, "--image", str(bad), "--trimap", str(tmp_path / "trimaps" / "cut.png"),
               "--out", str(tmp_path / "one")) == 2
    assert f"{bad}: not a readable image, truncated JPEG" in one_line_error(capsys)
    assert not (tmp_path / "one").exists()
    # In a folder the others are still done, and the run fails naming it.
    assert run(checkpoint, "--image", str(tmp_path / "images"), "--trimap", str(tmp_path / "trimaps"),
               "--out", str(tmp_path / "many")) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not a readable image, truncated JPEG" in err and "1 of 2 images failed: cut.jpg" in err
    assert sorted(p.name for p in (tmp_path / "many" / "alpha").iterdir()) == ["photo.png"]
