"""The test-set composer: Adobe's exact pixel rule, background fitting, layout, manifest, caching, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from matting.data.compose_test import composite_adobe, compose_test_set, fit_background, main
from matting.data.io import read_gray, read_rgb, write_jpeg, write_png
from matting.errors import MattingError

SUBSET = "Adobe-licensed images"


def reference_composite(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Adobe's rule written as the per-pixel Python loop it is (Python floats, int() truncation)."""
    out = bg.copy()
    for y in range(fg.shape[0]):
        for x in range(fg.shape[1]):
            a = int(alpha[y, x]) / 255
            if a >= 1:
                out[y, x] = fg[y, x]
            elif a > 0:
                out[y, x] = [int(a * int(f) + (1 - a) * int(b)) for f, b in zip(fg[y, x], bg[y, x])]
    return out


# ------------------------------------------------------------------------------------------- pixel rule

def test_composite_matches_per_pixel_reference_on_every_alpha_value():
    rng = np.random.default_rng(0)
    alpha = np.arange(256, dtype=np.uint8).reshape(16, 16)
    fg = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(composite_adobe(fg, alpha, bg), reference_composite(fg, alpha, bg))


@pytest.mark.parametrize(
    "a, fg, bg, expected",
    [
        (0, 17, 200, 200),  # alpha 0: background untouched
        (255, 17, 200, 17),  # alpha 1: foreground exactly
        (128, 200, 100, 150),  # 150.196 truncated
        (43, 0, 255, 211),  # exact value 212; float64 rounding gives 211.99999999999997, int() -> 211
        (65, 0, 255, 190),  # float64 gives 190 exactly; float32 arithmetic would give 189
    ],
)
def test_composite_known_values(a, fg, bg, expected):
    out = composite_adobe(np.full((1, 1, 3), fg, np.uint8), np.full((1, 1), a, np.uint8),
                          np.full((1, 1, 3), bg, np.uint8))
    assert out.tolist() == [[[expected] * 3]]


# ----------------------------------------------------------------------------------- background fitting

def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr, "RGB")


def test_larger_background_is_cropped_top_left_without_resampling():
    bg = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = np.asarray(fit_background(_pil(bg), 11, 9))
    np.testing.assert_array_equal(out, bg[:9, :11])


def test_smaller_background_is_upscaled_by_the_larger_ratio_with_pil_bicubic():
    bg = np.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=np.uint8)  # 5 wide, 4 high
    out = fit_background(_pil(bg), 10, 6)  # wratio 2 > hratio 1.5: scale both sides by 2 -> 10 x 8
    expected = _pil(bg).resize((10, 8), Image.Resampling.BICUBIC).crop((0, 0, 10, 6))
    assert out.size == (10, 6)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_background_smaller_in_one_side_only_is_upscaled():
    bg = np.random.default_rng(3).integers(0, 256, (8, 30, 3), dtype=np.uint8)  # wide but short
    out = fit_background(_pil(bg), 12, 10)  # ratio = 10/8 = 1.25 -> 38 x 10
    expected = _pil(bg).resize((38, 10), Image.Resampling.BICUBIC).crop((0, 0, 12, 10))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_upscaled_size_uses_ceil_of_the_float_product_like_adobe():
    # 7 * (29 / 7) == 29.000000000000004 in floats, so Adobe's math.ceil gives 30, not 29.
    assert 7 * (29 / 7) > 29
    bg = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = np.asarray(fit_background(_pil(bg), 29, 9))  # wratio 4.14 > hratio 1.8
    new_h = math.ceil(5 * (29 / 7))
    adobe = np.asarray(_pil(bg).resize((30, new_h), Image.Resampling.BICUBIC).crop((0, 0, 29, 9)))
    naive = np.asarray(_pil(bg).resize((29, new_h), Image.Resampling.BICUBIC).crop((0, 0, 29, 9)))
    np.testing.assert_array_equal(out, adobe)
    assert not np.array_equal(out, naive)


# ------------------------------------------------------------------------------------------ whole tree

def build_test_release(root: Path, sizes=((12, 10), (9, 14)), bgs_per_fg: int = 2, bg_sizes=None) -> dict:
    """A tiny Combined_Dataset/Test_set plus a VOC folder. ``sizes`` are fg (h, w). Returns the arrays."""
    rng = np.random.default_rng(5)
    part = root / "Combined_Dataset" / "Test_set"
    d = part / SUBSET
    voc = root / "voc"
    fg_names, bg_names, data = [], [], {"fg": {}, "alpha": {}, "bg": {}, "trimap": {}}
    for i, (h, w) in enumerate(sizes):
        stem = f"obj{i}_1920"
        fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        alpha = rng.choice(np.array([0, 0, 255, 255, 1, 43, 128, 254], np.uint8), (h, w))
        write_png(d / "fg" / f"{stem}.png", fg)
        if i == 0:  # a 3-channel alpha: channel 0 counts, the others are noise
            three = np.stack([alpha, rng.integers(0, 256, (h, w), dtype=np.uint8), alpha], axis=-1)
            write_png(d / "alpha" / f"{stem}.png", three)
        else:
            write_png(d / "alpha" / f"{stem}.png", alpha)
        data["fg"][stem], data["alpha"][stem] = fg, alpha
        fg_names.append(f"{stem}.png")
        for k in range(bgs_per_fg):
            j = i * bgs_per_fg + k
            bh, bw = bg_sizes[j] if bg_sizes else ((h // 2, w + 3) if k == 0 else (h + 5, w + 6))
            bg = rng.integers(0, 256, (bh, bw, 3), dtype=np.uint8)
            name = f"2008_{j:06d}.png"  # PNG so the test can predict pixels without a JPEG decoder
            write_png(voc / name, bg)
            data["bg"][name] = bg
            bg_names.append(name)
            trimap = rng.choice(np.array([0, 128, 255], np.uint8), (h, w))
            write_png(d / "trimaps" / f"{stem}_{k}.png", trimap)
            data["trimap"][f"{stem}_{k}"] = trimap
    (part / "test_fg_names.txt").write_text("\n".join(fg_names) + "\n")
    (part / "test_bg_names.txt").write_text("\n".join(bg_names) + "\n")
    data.update(dataset=root / "Combined_Dataset", voc=voc, fg_names=fg_names, bg_names=bg_names)
    return data


def test_compose_writes_adobe_pixels_layout_and_manifest(tmp_path):
    data = build_test_release(tmp_path)
    out = tmp_path / "out"
    manifest_path = compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False)
    assert manifest_path == out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["complete"] is True and manifest["bgs_per_fg"] == 2 and manifest["foregrounds"] == 2
    entries = manifest["composites"]
    # fg i takes list entries 2i and 2i+1, in order.
    assert [(e["name"], e["bg"], e["k"]) for e in entries] == [
        ("obj0_1920_0", "2008_000000.png", 0), ("obj0_1920_1", "2008_000001.png", 1),
        ("obj1_1920_0", "2008_000002.png", 0), ("obj1_1920_1", "2008_000003.png", 1),
    ]
    assert [e["bg_upscaled"] for e in entries] == [True, False, True, False]
    for e in entries:
        stem = e["name"].rsplit("_", 1)[0]
        fg, alpha = data["fg"][stem], data["alpha"][stem]
        h, w = alpha.shape
        assert e["fg_size"] == [w, h]
        bg = np.asarray(fit_background(_pil(data["bg"][e["bg"]]), w, h))
        merged = read_rgb(out / "merged" / f"{e['name']}.png")
        np.testing.assert_array_equal(merged, reference_composite(fg, alpha, bg))
        np.testing.assert_array_equal(read_gray(out / "trimaps" / f"{e['name']}.png"), data["trimap"][e["name"]])
    for stem, alpha in data["alpha"].items():
        written = cv2.imread(str(out / "alpha" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert written.ndim == 2 and written.dtype == np.uint8  # channel 0 only, 8-bit
        np.testing.assert_array_equal(written, alpha)


def test_two_workers_write_the_same_files_as_one(tmp_path):
    data = build_test_release(tmp_path)
    compose_test_set(data["dataset"], data["voc"], tmp_path / "a", workers=1, progress=False)
    compose_test_set(data["dataset"], data["voc"], tmp_path / "b", workers=2, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 + 4 + 4
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_jpeg_backgrounds_are_decoded_with_pillow(tmp_path):
    data = build_test_release(tmp_path, sizes=((16, 16),), bgs_per_fg=1, bg_sizes=[(20, 20)])
    jpg = data["voc"] / "2008_000000.jpg"
    write_jpeg(jpg, data["bg"]["2008_000000.png"], quality=70)
    (data["dataset"] / "Test_set" / "test_bg_names.txt").write_text("2008_000000.jpg\n")
    out = tmp_path / "out"
    compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False)
    with Image.open(jpg) as im:
        bg = np.asarray(im.convert("RGB"))[:16, :16]
    expected = reference_composite(data["fg"]["obj0_1920"], data["alpha"]["obj0_1920"], bg)
    np.testing.assert_array_equal(read_rgb(out / "merged" / "obj0_1920_0.png"), expected)


def test_second_run_is_skipped_until_an_input_changes(tmp_path):
    data = build_test_release(tmp_path)
    out = tmp_path / "out"
    compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False)
    merged = out / "merged" / "obj0_1920_0.png"
    merged.write_bytes(b"sentinel")  # a skipped run leaves it alone
    compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False)
    assert merged.read_bytes() == b"sentinel"
    write_png(data["voc"] / "2008_000000.png", np.zeros((3, 3, 3), np.uint8))  # new bg content and size
    compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False)
    assert read_rgb(merged).shape == (12, 10, 3)
    merged.write_bytes(b"sentinel")
    compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False, force=True)
    assert merged.read_bytes() != b"sentinel"


def test_outputs_of_a_previous_larger_plan_are_removed(tmp_path):
    data = build_test_release(tmp_path)
    out = tmp_path / "out"
    compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False)
    part = data["dataset"] / "Test_set"
    (part / "test_fg_names.txt").write_text(data["fg_names"][0] + "\n")
    (part / "test_bg_names.txt").write_text("\n".join(data["bg_names"][:2]) + "\n")
    compose_test_set(data["dataset"], data["voc"], out, workers=1, progress=False)
    assert sorted(p.name for p in (out / "merged").iterdir()) == ["obj0_1920_0.png", "obj0_1920_1.png"]
    assert sorted(p.name for p in (out / "alpha").iterdir()) == ["obj0_1920.png"]


def test_refuses_an_output_folder_with_foreign_images(tmp_path):
    data = build_test_release(tmp_path)
    write_png(tmp_path / "out" / "merged" / "someone_else.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(MattingError, match="not written by this composer"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)


# ------------------------------------------------------------------------------------------- bad inputs

def test_uneven_background_count_is_an_error(tmp_path):
    data = build_test_release(tmp_path)
    (data["dataset"] / "Test_set" / "test_bg_names.txt").write_text("\n".join(data["bg_names"][:3]) + "\n")
    with pytest.raises(MattingError, match="3 backgrounds for 2 foregrounds"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)


def test_all_missing_backgrounds_and_trimaps_are_listed(tmp_path):
    data = build_test_release(tmp_path)
    for name in data["bg_names"][1:]:
        (data["voc"] / name).unlink()
    with pytest.raises(MattingError, match=r"^3 backgrounds listed in .* are missing: .*2008_000001.*2008_000003"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)
    data = build_test_release(tmp_path / "t")
    for t in (data["dataset"] / "Test_set" / SUBSET / "trimaps").glob("obj1*"):
        t.unlink()
    with pytest.raises(MattingError, match=r"^2 test trimaps are missing: .*obj1_1920_0\.png.*obj1_1920_1\.png"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "t" / "out", workers=1, progress=False)


def test_empty_and_duplicate_names_lists_are_errors(tmp_path):
    data = build_test_release(tmp_path)
    fg_list = data["dataset"] / "Test_set" / "test_fg_names.txt"
    fg_list.write_text("\n\n")
    with pytest.raises(MattingError, match="names list is empty"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)
    fg_list.write_text(f"{data['fg_names'][0]}\n{data['fg_names'][0]}\n")
    with pytest.raises(MattingError, match="listed more than once: obj0_1920.png"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)


def test_fg_alpha_size_mismatch_names_both_files(tmp_path):
    data = build_test_release(tmp_path)
    write_png(data["dataset"] / "Test_set" / SUBSET / "alpha" / "obj1_1920.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(MattingError, match=r"1 of 2 test foregrounds failed: .*alpha/obj1_1920.png: size 5x5 "
                                           r"does not match .*fg/obj1_1920.png \(14x9\)"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False  # a failed run is never taken as current


def test_16bit_and_unreadable_inputs_are_reported(tmp_path):
    data = build_test_release(tmp_path)
    fg16 = np.zeros((12, 10, 3), np.uint16)
    cv2.imwrite(str(data["dataset"] / "Test_set" / SUBSET / "fg" / "obj0_1920.png"), fg16)
    (data["voc"] / "2008_000003.png").write_bytes(b"not a png at all")
    with pytest.raises(MattingError, match=r"2 of 2 test foregrounds failed: .*16-bit.*000003.png: not a readable"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)


def test_fg_names_that_clash_with_composite_names_are_an_error(tmp_path):
    data = build_test_release(tmp_path)
    d = data["dataset"] / "Test_set" / SUBSET
    (d / "fg" / "obj1_1920.png").rename(d / "fg" / "obj0_1920_1.png")
    (d / "alpha" / "obj1_1920.png").rename(d / "alpha" / "obj0_1920_1.png")
    (data["dataset"] / "Test_set" / "test_fg_names.txt").write_text("obj0_1920.png\nobj0_1920_1.png\n")
    with pytest.raises(MattingError, match="clash with composite names.*obj0_1920_1"):
        compose_test_set(data["dataset"], data["voc"], tmp_path / "out", workers=1, progress=False)


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    code = main(["--dataset", str(tmp_path / "nowhere"), "--bg-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "nowhere" in err


def test_cli_composes_then_reports_up_to_date(tmp_path, capsys):
    data = build_test_release(tmp_path)
    args = ["--dataset", str(data["dataset"]), "--bg-dir", str(data["voc"]), "--out", str(tmp_path / "o"),
            "--workers", "1", "--no-progress"]
    assert main(args) == 0
    assert "4 composites of 2 foregrounds" in capsys.readouterr().out
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
