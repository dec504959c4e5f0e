"""Reading the release (training side), the validation split, prepared test folders and test sources."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch.utils.data

from matting.data.compose_test import resolve_test_source
from matting.data.io import write_jpeg, write_png
from matting.data.make_demo import make_demo
from matting.data.release import (
    TestDataset,
    TestRecord,
    TrainingRelease,
    load_fg_alpha,
    load_test_item,
    read_test_folder,
    read_training_release,
    split_validation,
    verify_training_release,
)
from matting.errors import MattingError

ADOBE, OTHER = "Adobe-licensed images", "Other"


def build_training_release(root: Path, adobe=("a1.jpg", "a2.jpg"), other=("o1.jpg",), bgs=4) -> Path:
    """A tiny Combined_Dataset/Training_set and a COCO-like folder of ``bgs`` images. Returns the dataset dir."""
    part = root / "Combined_Dataset" / "Training_set"
    for subset, names in ((ADOBE, adobe), (OTHER, other)):
        for name in names:
            write_jpeg(part / subset / "fg" / name, np.full((6, 8, 3), 90, np.uint8))
            write_jpeg(part / subset / "alpha" / name, np.full((6, 8), 200, np.uint8))
    # Listed out of folder order: the list, not the folders, decides the order.
    (part / "training_fg_names.txt").write_text("\n".join([*other, *adobe]) + "\n")
    bg_names = [f"COCO_train2014_{j:012d}.jpg" for j in range(bgs)]
    for name in bg_names:
        write_jpeg(root / "coco" / name, np.full((9, 9, 3), 10, np.uint8))
    (part / "training_bg_names.txt").write_text("\n".join(reversed(bg_names)) + "\n")
    return root / "Combined_Dataset"


# ----------------------------------------------------------------------------------------- training side

def test_reads_both_subsets_in_list_order(tmp_path):
    ds = build_training_release(tmp_path)
    rel = read_training_release(ds, tmp_path / "coco")
    part = ds / "Training_set"
    assert rel.names == ["o1.jpg", "a1.jpg", "a2.jpg"] and len(rel) == 3 and rel.split == "all"
    assert rel.fg_paths == [
        part / OTHER / "fg" / "o1.jpg", part / ADOBE / "fg" / "a1.jpg", part / ADOBE / "fg" / "a2.jpg"
    ]
    assert rel.alpha_paths == [p.parent.parent / "alpha" / p.name for p in rel.fg_paths]
    assert [p.name for p in rel.bg_paths] == [f"COCO_train2014_{j:012d}.jpg" for j in (3, 2, 1, 0)]


def test_without_the_bg_list_every_image_in_the_folder_is_used(tmp_path):
    ds = build_training_release(tmp_path)
    write_jpeg(tmp_path / "coco" / "extra.jpg", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "coco" / "notes.txt").write_text("not an image")
    from matting.errors import MattingWarning

    with pytest.warns(MattingWarning, match="coco: skipped 1 files that are hidden or not images .*: notes.txt"):
        rel = read_training_release(ds, tmp_path / "coco", use_bg_list=False)
    assert [p.name for p in rel.bg_paths] == [f"COCO_train2014_{j:012d}.jpg" for j in range(4)] + ["extra.jpg"]


def test_reading_opens_no_image(tmp_path):
    ds = build_training_release(tmp_path)
    for p in (tmp_path / "coco").iterdir():
        p.write_bytes(b"garbage")  # cheap read: only names are checked
    (ds / "Training_set" / ADOBE / "fg" / "a1.jpg").write_bytes(b"garbage")
    assert len(read_training_release(ds, tmp_path / "coco").bg_paths) == 4


def test_every_missing_file_is_listed_in_one_error(tmp_path):
    ds = build_training_release(tmp_path, adobe=tuple(f"a{i:02d}.jpg" for i in range(12)))
    part = ds / "Training_set"
    for i in range(11):
        (part / ADOBE / "fg" / f"a{i:02d}.jpg").unlink()
    (part / OTHER / "alpha" / "o1.jpg").unlink()
    with pytest.raises(MattingError) as err:
        read_training_release(ds, tmp_path / "coco")
    msg = str(err.value)
    assert msg.startswith("12 files listed in") and "and 2 more" in msg and "\n" not in msg
    assert str(part / OTHER / "alpha" / "o1.jpg") in msg
    assert str(part / "{Adobe-licensed images,Other}" / "fg" / "a00.jpg") in msg


def test_every_missing_background_is_listed(tmp_path):
    ds = build_training_release(tmp_path)
    (tmp_path / "coco" / "COCO_train2014_000000000001.jpg").unlink()
    (tmp_path / "coco" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(MattingError, match=r"^2 backgrounds listed in .*000000000002\.jpg, .*000000000001\.jpg$"):
        read_training_release(ds, tmp_path / "coco")


@pytest.mark.parametrize("which", ["training_fg_names.txt", "training_bg_names.txt"])
def test_empty_or_missing_lists_are_errors(tmp_path, which):
    ds = build_training_release(tmp_path)
    (ds / "Training_set" / which).write_text("  \n\n")
    with pytest.raises(MattingError, match=f"{which}: names list is empty"):
        read_training_release(ds, tmp_path / "coco")
    (ds / "Training_set" / which).unlink()
    with pytest.raises(MattingError, match=f"{which}: names list not found"):
        read_training_release(ds, tmp_path / "coco")


def test_duplicate_and_ambiguous_fg_names_are_errors(tmp_path):
    ds = build_training_release(tmp_path)
    fg_list = ds / "Training_set" / "training_fg_names.txt"
    fg_list.write_text("a1.jpg\no1.jpg\na1.jpg\n")
    with pytest.raises(MattingError, match="1 names listed more than once: a1.jpg"):
        read_training_release(ds, tmp_path / "coco")
    fg_list.write_text("a1.jpg\n")
    build_training_release(tmp_path, adobe=(), other=("a1.jpg",))  # now in both subsets
    with pytest.raises(MattingError, match="1 foregrounds are in more than one subset: a1.jpg"):
        read_training_release(ds, tmp_path / "coco")


def test_wrong_folder_gets_a_hint(tmp_path):
    build_training_release(tmp_path)
    with pytest.raises(MattingError, match="pass .*Combined_Dataset instead"):
        read_training_release(tmp_path, tmp_path / "coco")
    with pytest.raises(MattingError, match="not Adobe's Combined_Dataset"):
        read_training_release(tmp_path / "coco", tmp_path / "coco")


def test_load_checks_fg_alpha_sizes(tmp_path):
    write_png(tmp_path / "fg.png", np.zeros((4, 6, 3), np.uint8))
    write_png(tmp_path / "alpha.png", np.stack([np.full((4, 6), 7, np.uint8)] * 3, -1))  # 3-channel alpha
    fg, alpha = load_fg_alpha(tmp_path / "fg.png", tmp_path / "alpha.png")
    assert fg.shape == (4, 6, 3) and alpha.shape == (4, 6) and alpha.dtype == np.uint8 and (alpha == 7).all()
    write_png(tmp_path / "alpha.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(MattingError, match=r"alpha.png: size 5x4 does not match .*fg.png \(6x4\)"):
        load_fg_alpha(tmp_path / "fg.png", tmp_path / "alpha.png")


def test_verify_reports_every_problem_at_once(tmp_path):
    ds = build_training_release(tmp_path)
    part = ds / "Training_set"
    write_jpeg(part / ADOBE / "alpha" / "a1.jpg", np.zeros((5, 8), np.uint8))  # size mismatch
    cv2.imwrite(str(part / ADOBE / "alpha" / "a2.png"), np.zeros((6, 8), np.uint16))
    (part / ADOBE / "alpha" / "a2.png").rename(part / ADOBE / "alpha" / "a2.jpg")  # 16-bit (PNG content)
    (tmp_path / "coco" / "COCO_train2014_000000000003.jpg").write_bytes(b"\xff\xd8 broken")
    rel = read_training_release(ds, tmp_path / "coco")
    for workers in (1, 2):
        with pytest.raises(MattingError) as err:
            verify_training_release(rel, workers=workers)
        msg = str(err.value)
        assert msg.startswith("3 problems in the training data")
        assert "a1.jpg: size 8x5 does not match" in msg and "16-bit" in msg
        assert "000000000003.jpg: not a readable" in msg
    verify_training_release(read_training_release(build_training_release(tmp_path / "ok"), tmp_path / "ok" / "coco"))


# ------------------------------------------------------------------------------------- validation split

def _release(n: int) -> TrainingRelease:
    names = [f"fg{i:02d}.jpg" for i in range(n)]
    return TrainingRelease([Path("fg") / m for m in names], [Path("alpha") / m for m in names],
                           [Path("bg") / "b.jpg"], names)


def test_split_is_a_deterministic_partition_sorted_by_name():
    rel = _release(10)
    train, val = split_validation(rel, 3, seed=7)
    assert (train.split, val.split) == ("train", "val")
    assert len(val) == 3 and len(train) == 7
    assert sorted(train.names + val.names) == rel.names
    assert train.names == sorted(train.names) and val.names == sorted(val.names)
    assert [p.name for p in val.fg_paths] == val.names and [p.name for p in val.alpha_paths] == val.names
    assert train.bg_paths == val.bg_paths == rel.bg_paths
    assert split_validation(rel, 3, seed=7)[1].names == val.names
    assert len({tuple(split_validation(rel, 3, seed=s)[1].names) for s in range(10)}) > 1


def test_split_does_not_depend_on_list_order():
    rel = _release(10)
    shuffled = TrainingRelease(rel.fg_paths[::-1], rel.alpha_paths[::-1], rel.bg_paths, rel.names[::-1])
    assert split_validation(shuffled, 4, seed=1)[1].names == split_validation(rel, 4, seed=1)[1].names


def test_split_edge_cases():
    rel = _release(5)
    train, val = split_validation(rel, 0, seed=0)
    assert len(val) == 0 and train.names == rel.names
    with pytest.raises(MattingError, match="leaves no training foreground"):
        split_validation(rel, 5, seed=0)
    with pytest.raises(MattingError, match=">= 0"):
        split_validation(rel, -1, seed=0)


# ------------------------------------------------------------------------------------------- test folder

def build_test_folder(root: Path, alpha_dir="alpha", per_composite=False, n=2) -> Path:
    for k in range(n):
        write_png(root / "merged" / f"cat_1920_{k}.png", np.full((5, 7, 3), 40 + k, np.uint8))
        write_png(root / "trimaps" / f"cat_1920_{k}.png", np.full((5, 7), 128, np.uint8))
        if per_composite:
            write_png(root / alpha_dir / f"cat_1920_{k}.png", np.full((5, 7), 100 + k, np.uint8))
    if not per_composite:
        write_png(root / alpha_dir / "cat_1920.png", np.full((5, 7), 100, np.uint8))
    return root


@pytest.mark.parametrize("alpha_dir, per_composite", [("alpha", False), ("alpha_copy", True)])
def test_reads_prepared_folders_in_both_alpha_layouts(tmp_path, alpha_dir, per_composite):
    root = build_test_folder(tmp_path, alpha_dir, per_composite)
    records = read_test_folder(root)
    assert [r.name for r in records] == ["cat_1920_0", "cat_1920_1"]
    expected_alpha = [f"cat_1920_{k}.png" for k in range(2)] if per_composite else ["cat_1920.png"] * 2
    assert [r.alpha_path.name for r in records] == expected_alpha
    item = load_test_item(records[1])
    assert item["name"] == "cat_1920_1"
    assert item["image"].shape == (5, 7, 3) and item["image"].dtype == np.uint8 and (item["image"] == 41).all()
    assert item["alpha"].shape == (5, 7) and item["alpha"].dtype == np.uint8
    assert item["trimap"].dtype == np.uint8 and (item["trimap"] == 128).all()


def test_every_missing_alpha_and_trimap_is_listed(tmp_path):
    root = build_test_folder(tmp_path, n=3)
    (root / "alpha" / "cat_1920.png").unlink()
    (root / "trimaps" / "cat_1920_2.png").unlink()
    with pytest.raises(MattingError, match=r"^4 alphas/trimaps .* missing: .*cat_1920_0.png.*trimaps/cat_1920_2.png"):
        read_test_folder(root)


def test_missing_subfolder_is_named(tmp_path):
    root = build_test_folder(tmp_path)
    (root / "trimaps" / "cat_1920_0.png").unlink()
    (root / "trimaps" / "cat_1920_1.png").unlink()
    (root / "trimaps").rmdir()
    with pytest.raises(MattingError, match="no trimaps/ or trimap/ folder"):
        read_test_folder(root)


def test_near_trimap_values_are_mapped_with_a_warning_and_sizes_are_checked(tmp_path):
    root = build_test_folder(tmp_path)
    write_png(root / "trimaps" / "cat_1920_0.png", np.array([[0, 3, 127, 129, 200, 255, 84]] * 5, np.uint8))
    rec = read_test_folder(root)[0]
    with pytest.warns(UserWarning, match="5 trimap pixels .* mapped"):
        item = load_test_item(rec)
    assert item["trimap"][0].tolist() == [0, 0, 128, 128, 255, 255, 0]
    write_png(root / "trimaps" / "cat_1920_0.png", np.zeros((5, 6), np.uint8))
    with pytest.raises(MattingError, match=r"trimaps/cat_1920_0.png: size 6x5 does not match .*merged/cat_1920_0.png"):
        load_test_item(rec)
    write_png(root / "alpha" / "cat_1920.png", np.zeros((4, 7), np.uint8))
    with pytest.raises(MattingError, match=r"alpha/cat_1920.png: size 7x4 does not match"):
        load_test_item(read_test_folder(root)[1])


def test_16bit_and_unreadable_test_images_are_errors(tmp_path):
    root = build_test_folder(tmp_path)
    cv2.imwrite(str(root / "merged" / "cat_1920_0.png"), np.zeros((5, 7, 3), np.uint16))
    (root / "merged" / "cat_1920_1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r0, r1 = read_test_folder(root)
    with pytest.raises(MattingError, match="cat_1920_0.png: 16-bit image"):
        load_test_item(r0)
    with pytest.raises(MattingError, match="cat_1920_1.png: not a readable image"):
        load_test_item(r1)


def test_test_dataset_works_with_a_dataloader(tmp_path):
    ds = TestDataset(read_test_folder(build_test_folder(tmp_path)))
    assert len(ds) == 2 and isinstance(ds.records[0], TestRecord)
    items = list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0))
    assert [it["name"] for it in items] == ["cat_1920_0", "cat_1920_1"]
    assert items[0]["image"].shape == (5, 7, 3)


# ----------------------------------------------------------------------------------------- test sources

def test_resolve_returns_prepared_folders_and_composes_raw_releases(tmp_path):
    prepared = build_test_folder(tmp_path / "prepared")
    assert resolve_test_source(prepared) == prepared
    demo = make_demo(tmp_path / "demo", seed=3, train_fgs=1, test_fgs=2, min_size=40, max_size=56, workers=1)
    with pytest.raises(MattingError, match="raw release; give the VOC background folder"):
        resolve_test_source(demo.dataset_dir)
    out = resolve_test_source(demo.dataset_dir, demo.test_bg_dir, tmp_path / "composed", workers=1, progress=False)
    assert out == tmp_path / "composed"
    assert len(read_test_folder(out)) == 4
    stamp = (out / "manifest.json").stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_test_source(demo.dataset_dir, demo.test_bg_dir, tmp_path / "composed", workers=1, progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # cached: not recomposed
    default = resolve_test_source(demo.dataset_dir, demo.test_bg_dir, workers=1, progress=False)
    assert default == tmp_path / "demo" / "Composition-1k-testset" and (default / "manifest.json").is_file()
    with pytest.raises(MattingError, match="neither a prepared test folder"):
        resolve_test_source(tmp_path / "demo" / "train_bg")


def test_an_unfinished_composition_is_refused(tmp_path):
    """compose_test writes manifest.json with "complete": false before its first image: an interrupted run."""
    from matting.data.compose_test import compose_test_set

    demo = make_demo(tmp_path / "demo", seed=3, train_fgs=1, test_fgs=2, min_size=40, max_size=56, workers=1)
    out = tmp_path / "composed"
    compose_test_set(demo.dataset_dir, demo.test_bg_dir, out, workers=1, progress=False)
    assert len(read_test_folder(out)) == 4
    manifest = out / "manifest.json"
    complete = manifest.read_text()
    manifest.write_text(complete.replace('"complete": true', '"complete": false'))
    with pytest.raises(MattingError, match=r"manifest.json: the composition did not finish .*compose_test"):
        read_test_folder(out)
    manifest.write_text(complete)
    merged = sorted((out / "merged").iterdir())
    merged[1].unlink()  # deleted since: listed in the manifest, and its trimap is left over
    with pytest.raises(MattingError, match=rf"1 files listed in {manifest} are missing: {merged[1]}"):
        read_test_folder(out)
    merged[1].write_bytes(merged[0].read_bytes())
    write_png(out / "merged" / "stray_0.png", np.zeros((4, 4, 3), np.uint8))
    write_png(out / "trimaps" / "stray_0.png", np.zeros((4, 4), np.uint8))
    write_png(out / "alpha" / "stray.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(MattingError, match=r"1 images in .*merged are not in .*manifest.json: stray_0.png"):
        read_test_folder(out)


def test_leftover_alphas_and_trimaps_are_errors(tmp_path):
    """A trimap or alpha no image uses means the images are not all there (or the folder mixes two sets)."""
    root = build_test_folder(tmp_path, n=3)
    (root / "merged" / "cat_1920_2.png").unlink()
    unused = r"1 alphas/trimaps that no image in .*merged uses: .*trimaps/cat_1920_2.png"
    with pytest.raises(MattingError, match=unused):
        read_test_folder(root)
    (root / "trimaps" / "cat_1920_2.png").unlink()
    write_png(root / "alpha" / "dog.png", np.zeros((5, 7), np.uint8))
    with pytest.raises(MattingError, match=r"1 alphas/trimaps that no image in .*merged uses: .*alpha/dog.png"):
        read_test_folder(root)


def test_duplicate_stems_in_a_test_folder_are_errors(tmp_path):
    root = build_test_folder(tmp_path)
    write_jpeg(root / "merged" / "cat_1920_1.jpg", np.full((5, 7, 3), 41, np.uint8))
    repeated = r"merged: 1 names used by several files .*cat_1920_1.jpg and cat_1920_1.png"
    with pytest.raises(MattingError, match=repeated):
        read_test_folder(root)
    (root / "merged" / "cat_1920_1.jpg").unlink()
    write_png(root / "alpha" / "cat_1920.bmp", np.zeros((5, 7), np.uint8))
    with pytest.raises(MattingError, match=r"alpha: 1 names used by several files"):
        read_test_folder(root)


def test_skipped_files_in_an_image_folder_are_reported(tmp_path):
    from matting.data.io import list_images
    from matting.errors import MattingWarning

    root = build_test_folder(tmp_path)
    (root / "merged" / ".DS_Store").write_bytes(b"x")
    (root / "merged" / "._cat_1920_0.png").write_bytes(b"x")
    (root / "merged" / "cat_1920_2.gif").write_bytes(b"GIF89a")
    (root / "merged" / "sub").mkdir()
    with pytest.warns(MattingWarning, match=r"merged: skipped 3 files that are hidden or not images "
                                            r"\(.png, .*\): .DS_Store, ._cat_1920_0.png, cat_1920_2.gif$"):
        assert [p.name for p in list_images(root / "merged")] == ["cat_1920_0.png", "cat_1920_1.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list_images(root / "trimaps")  # nothing skipped: nothing said
