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


def smooth_image(h: int = 48, w: int = 64) -> np.ndarray:
    """An RGB image with structure (gradients), so a grey-filled missing part differs from the original."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("suffix, params", [
    (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".jpg", [cv2.IMWRITE_JPEG_RST_INTERVAL, 1]),
    (".png", []),
])
def test_truncated_files_are_errors_in_every_reader(tmp_path, suffix, params):
    """A cut-off JPEG decodes with its missing part grey and only a libjpeg line on stderr; it must be an error
    that names the file, whichever reader opens it (OpenCV or Pillow based)."""
    from matting.data.io import read_rgb_pil

    full = tmp_path / f"full{suffix}"
    assert cv2.imwrite(str(full), cv2.cvtColor(smooth_image(), cv2.COLOR_RGB2BGR), params)
    data = full.read_bytes()
    for cut in (1, 3, 40, len(data) // 2):
        part = tmp_path / f"part{cut}{suffix}"
        part.write_bytes(data[:-cut])
        for reader in (read_rgb, read_gray, read_trimap, read_rgb_pil):
            with pytest.raises(MattingError, match=f"part{cut}{suffix}: not a readable image, truncated") as err:
                reader(part)
            assert "\n" not in str(err.value)
    # The complete file reads exactly as OpenCV decodes it.
    expected = cv2.cvtColor(cv2.imread(str(full), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert np.array_equal(read_rgb(full), expected)


def test_complete_jpegs_with_unusual_structure_are_read(tmp_path):
    """Bytes after the end marker, and an end marker inside metadata (an EXIF thumbnail), are not truncation."""
    image = smooth_image()
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    data = encoded.tobytes()
    expected = read_rgb_from(tmp_path / "plain.jpg", data)
    assert np.array_equal(read_rgb_from(tmp_path / "trailing.jpg", data + b"\x00\x00trailer"), expected)
    thumbnail = b"Exif\x00\x00" + b"\xff\xd8\xff\xd9" * 4  # a metadata segment holding another image's markers
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    with_app1 = data[:2] + app1 + data[2:]
    assert np.array_equal(read_rgb_from(tmp_path / "app1.jpg", with_app1), expected)
    with pytest.raises(MattingError, match="truncated"):  # cut inside the image data, after the metadata
        read_rgb_from(tmp_path / "app1_cut.jpg", with_app1[: len(app1) + len(data) // 2])


def read_rgb_from(path, data: bytes) -> np.ndarray:
    path.write_bytes(data)
    return read_rgb(path)
