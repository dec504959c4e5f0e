"""Reading Adobe's Composition-1k release and prepared test folders.

Two sources, both read without opening any image (the release lists 43,100 backgrounds):

- ``read_training_release(Combined_Dataset/, coco_train2014/)``: the training foregrounds, their alphas and
  the background list, exactly as Adobe ships them (``Adobe-licensed images`` and ``Other`` side by side).
- ``read_test_folder(dir)``: a prepared test folder in the common ``merged/``, ``alpha/`` or ``alpha_copy/``,
  ``trimaps/`` layout (``matting.data.compose_test.resolve_test_source`` also accepts the raw release plus
  the VOC folder and composes its test set once).

Every missing file is reported in one error, up front. Image contents (sizes, bit depth) are checked when a
sample is loaded, or all at once by ``verify_training_release``.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch.utils.data

from matting.data.io import (
    check_same_size,
    images_by_stem,
    list_images,
    read_gray,
    read_rgb,
    read_trimap,
    split_composite_stem,
)
from matting.errors import MattingError

# The two halves of Adobe's release; each holds fg/ and alpha/ (and trimaps/ for the test set).
RELEASE_SUBSETS = ("Adobe-licensed images", "Other")
TRAIN_DIR = "Training_set"
TEST_DIR = "Test_set"
TRAIN_FG_LIST = "training_fg_names.txt"
# The file with which matting.data.compose_test records a composed test folder (its inputs, its outputs, whether
# it finished); read here so that a prepared folder is checked against it.
MANIFEST = "manifest.json"
MANIFEST_TOOL = "matting.data.compose_test"
TRAIN_BG_LIST = "training_bg_names.txt"
TEST_FG_LIST = "test_fg_names.txt"
TEST_BG_LIST = "test_bg_names.txt"

# How many paths an error message shows before saying "and N more".
_SHOWN = 10


def format_list(items: list, shown: int = _SHOWN, sep: str = ", ") -> str:
    """``"a, b, c and 12 more"``: a one-line list of the first ``shown`` items."""
    head = sep.join(str(p) for p in items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def missing_error(what: str, missing: list) -> MattingError:
    """One error for every missing file: ``"3 <what> missing: a, b, c"``."""
    return MattingError(f"{len(missing)} {what} missing: {format_list(missing)}")


def read_names(path: str | os.PathLike) -> list[str]:
    """Reads one of the release's ``*_names.txt`` lists: one file name per line.

    Surrounding whitespace and blank lines are ignored (some copies of the lists end with blank lines or
    carry Windows line ends). Raises if the list is missing or holds no names.
    """
    p = Path(path)
    if not p.is_file():
        raise MattingError(f"{p}: names list not found")
    names = [line.strip() for line in p.read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise MattingError(f"{p}: names list is empty")
    return names


def check_unique(names: list[str], list_path: str | os.PathLike) -> None:
    """Raises if a names list repeats a name (two foregrounds with one name would share one output file)."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for n in names:
        (repeated if n in seen else seen).add(n)
    dups = sorted(repeated)
    if dups:
        raise MattingError(f"{list_path}: {len(dups)} names listed more than once: {format_list(dups)}")


def check_release_dir(dataset_dir: str | os.PathLike, part: str) -> Path:
    """Returns ``dataset_dir/part`` (``Training_set`` or ``Test_set``), or raises a hint on a wrong folder."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise MattingError(f"{root}: folder not found")
    if (root / part).is_dir():
        return root / part
    if (root / "Combined_Dataset" / part).is_dir():
        raise MattingError(f"{root}: no {part}/ here; pass {root / 'Combined_Dataset'} instead")
    if root.name == part:
        raise MattingError(f"{root}: pass the Combined_Dataset folder that contains {part}/, not {part}/ itself")
    raise MattingError(f"{root}: not Adobe's Combined_Dataset folder (no {part}/ inside)")


def locate_foregrounds(names: list[str], part_dir: Path, list_path: Path) -> tuple[list[Path], list[Path]]:
    """Finds each listed foreground in ``<part_dir>/<subset>/fg/`` for the subsets of ``RELEASE_SUBSETS``.

    Returns ``(fg_paths, alpha_paths)`` in list order, the alpha being the same file name in the sibling
    ``alpha/`` folder. Every missing fg or alpha is reported in one error; a name present in both subsets
    is ambiguous and an error too.
    """
    check_unique(names, list_path)
    subsets = [part_dir / s for s in RELEASE_SUBSETS if (part_dir / s).is_dir()]
    if not subsets:
        raise MattingError(f"{part_dir}: neither of {' / '.join(RELEASE_SUBSETS)} is here")
    # A missing fg could belong to either subset: name both, like a shell brace pattern.
    where = subsets[0] if len(subsets) == 1 else part_dir / ("{" + ",".join(s.name for s in subsets) + "}")
    fg_paths, alpha_paths, missing, ambiguous = [], [], [], []
    for name in names:
        found = [s for s in subsets if (s / "fg" / name).is_file()]
        if len(found) > 1:
            ambiguous.append(name)
            continue
        if not found:
            missing.append(where / "fg" / name)
            continue
        fg, alpha = found[0] / "fg" / name, found[0] / "alpha" / name
        if not alpha.is_file():
            missing.append(alpha)
        fg_paths.append(fg)
        alpha_paths.append(alpha)
    if missing:
        raise missing_error(f"files listed in {list_path} are", missing)
    if ambiguous:
        raise MattingError(f"{part_dir}: {len(ambiguous)} foregrounds are in more than one subset: "
                           f"{format_list(ambiguous)}")
    return fg_paths, alpha_paths


def locate_backgrounds(names: list[str], bg_dir: str | os.PathLike, list_path: Path) -> list[Path]:
    """Resolves background names in ``bg_dir`` with one directory listing (no per-file ``stat``).

    Repeated names are allowed: the lists are positional (the test composer pairs fg ``i`` with list entries
    ``n*i .. n*i+n-1``), so a repeated background is simply used twice.
    """
    d = Path(bg_dir)
    if not d.is_dir():
        raise MattingError(f"{d}: background folder not found")
    present = {e.name for e in os.scandir(d) if e.is_file()}
    missing = [d / n for n in names if n not in present]
    if missing:
        raise missing_error(f"backgrounds listed in {list_path} are", missing)
    return [d / n for n in names]


@dataclass
class TrainingRelease:
    """The training half of Composition-1k: foregrounds with their alphas, and the backgrounds.

    Attributes:
        fg_paths: one foreground image per entry.
        alpha_paths: the alpha of ``fg_paths[i]`` (same order, same length).
        bg_paths: background images (in list order; may repeat a file if the list does).
        names: the foregrounds' file names (as in ``training_fg_names.txt``).
        split: which part this is, for logs: ``"all"``, ``"train"`` or ``"val"``.
    """

    fg_paths: list[Path]
    alpha_paths: list[Path]
    bg_paths: list[Path]
    names: list[str]
    split: str = field(default="all")

    def __post_init__(self) -> None:
        if not (len(self.fg_paths) == len(self.alpha_paths) == len(self.names)):
            raise ValueError("fg_paths, alpha_paths and names must have the same length")

    def __len__(self) -> int:
        return len(self.fg_paths)


def read_training_release(
    dataset_dir: str | os.PathLike, bg_dir: str | os.PathLike, *, use_bg_list: bool = True
) -> TrainingRelease:
    """Reads the training part of Adobe's release without opening any image.

    Args:
        dataset_dir: Adobe's ``Combined_Dataset/`` folder.
        bg_dir: the backgrounds (COCO ``train2014/`` for the real release).
        use_bg_list: take the backgrounds named in ``training_bg_names.txt`` (in order); if False, every image
            directly inside ``bg_dir``.
    Raises:
        MattingError: missing lists or files (all listed in one message), empty lists, repeated fg names.
    """
    part = check_release_dir(dataset_dir, TRAIN_DIR)
    fg_list = part / TRAIN_FG_LIST
    names = read_names(fg_list)
    fg_paths, alpha_paths = locate_foregrounds(names, part, fg_list)
    if use_bg_list:
        bg_list = part / TRAIN_BG_LIST
        bg_paths = locate_backgrounds(read_names(bg_list), bg_dir, bg_list)
    else:
        bg_paths = list_images(bg_dir)
    return TrainingRelease(fg_paths, alpha_paths, bg_paths, names)


def load_fg_alpha(fg_path: str | os.PathLike, alpha_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads one training foreground and its alpha.

    Returns:
        fg: (H, W, 3) uint8 RGB; alpha: (H, W) uint8 in [0, 255] (channel 0 of a multi-channel file).
    Raises:
        MattingError naming both files if their sizes differ; unreadable or 16-bit files.
    """
    fg = read_rgb(fg_path)
    alpha = read_gray(alpha_path)
    check_same_size(fg_path, fg, alpha_path, alpha)
    return fg, alpha


def _check_pair(paths: tuple[Path, Path]) -> str | None:
    try:
        load_fg_alpha(*paths)
    except MattingError as exc:
        return str(exc)
    return None


def _check_background(path: Path) -> str | None:
    try:
        read_rgb(path)
    except MattingError as exc:
        return str(exc)
    return None


def verify_training_release(release: TrainingRelease, workers: int = 2) -> None:
    """Opens every foreground, alpha and background and reports all problems at once.

    Checks readability, 8-bit depth and fg/alpha size agreement. Slow on the real release (it decodes
    ~44,000 images); meant for a one-off ``--check`` pass. Each background file is opened once even if the
    list repeats it.

    Raises:
        MattingError: ``"N problems in the training data: <first 10>"``.
    """
    pairs = list(zip(release.fg_paths, release.alpha_paths))
    bgs = list(dict.fromkeys(release.bg_paths))
    if workers <= 1:
        problems = [m for m in map(_check_pair, pairs) if m] + [m for m in map(_check_background, bgs) if m]
    else:
        with ProcessPoolExecutor(workers) as pool:
            found = list(pool.map(_check_pair, pairs, chunksize=8))
            found += list(pool.map(_check_background, bgs, chunksize=64))
        problems = [m for m in found if m]
    if problems:
        raise MattingError(f"{len(problems)} problems in the training data: {format_list(problems, sep='; ')}")


def split_validation(release: TrainingRelease, val_count: int, seed: int) -> tuple[TrainingRelease, TrainingRelease]:
    """Carves ``val_count`` foregrounds out of training for model selection, so the test set stays unseen.

    The choice depends only on the set of names and the seed (not on list order). Both parts keep every
    background; inside each part the foregrounds are sorted by name.

    Returns:
        ``(train, val)`` with ``split`` set to ``"train"`` and ``"val"``. ``val_count=0`` gives an empty val.
    Raises:
        MattingError if ``val_count`` is negative or leaves no training foreground.
    """
    n = len(release)
    if val_count < 0:
        raise MattingError(f"validation count must be >= 0, got {val_count}")
    if val_count >= n:
        raise MattingError(f"validation count {val_count} leaves no training foreground (there are {n})")
    by_name = sorted(range(n), key=lambda i: release.names[i])
    chosen = np.random.default_rng(seed).permutation(n)[:val_count]
    val_set = {by_name[j] for j in chosen}

    def part(indices: list[int], split: str) -> TrainingRelease:
        return replace(
            release,
            fg_paths=[release.fg_paths[i] for i in indices],
            alpha_paths=[release.alpha_paths[i] for i in indices],
            names=[release.names[i] for i in indices],
            bg_paths=list(release.bg_paths),
            split=split,
        )

    return (part([i for i in by_name if i not in val_set], "train"),
            part([i for i in by_name if i in val_set], "val"))


# ----------------------------------------------------------------------------------------------- test side

# Folder names accepted in a prepared test folder, in order of preference.
_IMAGE_DIRS = ("merged",)
_ALPHA_DIRS = ("alpha", "alpha_copy")
_TRIMAP_DIRS = ("trimaps", "trimap")


@dataclass(frozen=True)
class TestRecord:
    """One test image, not yet loaded. ``name`` is the composite's stem, e.g. ``"cat_7"``."""

    __test__ = False  # not a pytest test class despite the name

    name: str
    image_path: Path
    alpha_path: Path
    trimap_path: Path


def _pick_dir(root: Path, candidates: tuple[str, ...]) -> Path:
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    raise MattingError(f"{root}: no {' or '.join(c + '/' for c in candidates)} folder")


def is_test_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like a prepared test folder (it has ``merged/``)."""
    return (Path(path) / _IMAGE_DIRS[0]).is_dir()


def read_test_folder(test_dir: str | os.PathLike) -> list[TestRecord]:
    """Lists a prepared test folder: ``merged/``, ``alpha/`` or ``alpha_copy/``, ``trimaps/``.

    Alphas may be named per composite (``<stem>_<k>``, GCA's ``alpha_copy``) or per foreground (``<stem>``,
    Adobe's layout); trimaps likewise. Records are sorted by name. A partial or mixed folder is an error that
    lists the files, never a smaller evaluation: a ``manifest.json`` of ``compose_test`` that says the
    composition did not finish, or whose files are missing or joined by others; every missing alpha or trimap;
    alphas or trimaps no image uses (images missing from ``merged/``); two files of one name (``a.png``, ``a.jpg``).
    """
    root = Path(test_dir)
    if not root.is_dir():
        raise MattingError(f"{root}: test folder not found")
    image_dir = _pick_dir(root, _IMAGE_DIRS)
    images = images_by_stem(image_dir)
    _check_manifest(root, image_dir, images)
    folders = (_pick_dir(root, _ALPHA_DIRS), _pick_dir(root, _TRIMAP_DIRS))
    alphas, trimaps = (images_by_stem(d, allow_empty=True) for d in folders)
    records, missing, used = [], [], set()
    for stem, image_path in images.items():
        found = []
        for folder, files in zip(folders, (alphas, trimaps)):
            path = files.get(stem) or files.get(split_composite_stem(stem))
            missing += [] if path else [folder / f"{stem}.png"]
            found.append(path)
        if all(found):
            records.append(TestRecord(stem, image_path, *found))
            used.update(found)
    if missing:
        raise missing_error(f"alphas/trimaps for images in {image_dir} are", missing)
    unused = sorted(set(alphas.values()) - used) + sorted(set(trimaps.values()) - used)
    if unused:
        raise MattingError(f"{len(unused)} alphas/trimaps that no image in {image_dir} uses: {format_list(unused)} "
                           "(images missing there? otherwise remove these)")
    return records


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    """The manifest ``compose_test`` wrote in ``out_dir``, or None if there is none or it is not its own."""
    p = Path(out_dir) / MANIFEST
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == MANIFEST_TOOL else None


def _check_manifest(root: Path, image_dir: Path, images: dict[str, Path]) -> None:
    """If ``compose_test`` made this folder: it finished, and the images are exactly the ones it wrote."""
    manifest, path = read_manifest(root), root / MANIFEST
    if manifest is None:
        return
    if manifest.get("complete") is not True:
        raise MattingError(
            f"{path}: the composition did not finish (interrupted?); compose it again: python -m "
            f"matting.data.compose_test --dataset {manifest.get('dataset')} --bg-dir {manifest.get('bg_dir')} "
            f"--out {root}"
        )
    listed = set(manifest.get("outputs", []))
    missing = [root / rel for rel in sorted(listed) if not (root / rel).is_file()]
    if missing:
        raise missing_error(f"files listed in {path} are", missing)
    extra = [p.name for p in images.values() if f"{image_dir.name}/{p.name}" not in listed]
    if extra:
        raise MattingError(f"{len(extra)} images in {image_dir} are not in {path}: {format_list(extra)} (added "
                           "after composing? remove them, or compose again)")


def load_test_item(record: TestRecord) -> dict:
    """Loads one test image at full resolution.

    Returns:
        ``{"image": (H,W,3) uint8 RGB, "alpha": (H,W) uint8, "trimap": (H,W) uint8 in {0,128,255},
        "name": str}``. Trimap values near 0/128/255 are mapped with a warning.
    Raises:
        MattingError naming the files if sizes differ, or if a file is unreadable or 16-bit.
    """
    image = read_rgb(record.image_path)
    alpha = read_gray(record.alpha_path)
    trimap = read_trimap(record.trimap_path)
    check_same_size(record.image_path, image, record.alpha_path, alpha)
    check_same_size(record.image_path, image, record.trimap_path, trimap)
    return {"image": image, "alpha": alpha, "trimap": trimap, "name": record.name}


class TestDataset(torch.utils.data.Dataset):
    """The test records as a dataset, so evaluation can prefetch with ``DataLoader`` workers.

    Items are ``load_test_item`` dicts of numpy arrays (full resolution, sizes differ between items: use
    ``batch_size=1``, or ``batch_size=None`` to get the arrays unbatched).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, records: list[TestRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return load_test_item(self.records[index])


__all__ = [
    "TestDataset",
    "TestRecord",
    "TrainingRelease",
    "load_fg_alpha",
    "load_test_item",
    "read_names",
    "read_test_folder",
    "read_training_release",
    "split_validation",
    "verify_training_release",
]
