"""Scoring whole folders: pairing files, checking them up front, a process pool, means, a table and a CSV.

``evaluate_folders(pred_dir, gt_dir, trimap_dir)`` pairs every prediction ``<stem>.<ext>`` with the alpha
``find_alpha(gt_dir, stem)`` (``<stem>.*``, else ``<fgstem>.*`` for a composite named ``<fgstem>_<k>``) and the
trimap ``<stem>.*`` in ``trimap_dir``, checks all files before any work (every missing file, every 16-bit or
palette PNG and every size mismatch visible in the PNG headers is reported in one error), then scores the images
in a pool of processes with a progress bar. Nothing is ever skipped: a file that cannot be read stops the run
with a one-line error naming it.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import struct
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from tqdm import tqdm

from matting.data.io import (
    atomic_path,
    check_same_size,
    find_alpha,
    find_by_stem,
    images_by_stem,
    list_images,
    png_header,
    read_gray,
)
from matting.errors import MattingError
from matting.metrics.official import NoUnknownPixelsWarning, compute_metrics

METRIC_KEYS = ("sad", "mse", "grad", "conn")
CSV_COLUMNS = ("name",) + METRIC_KEYS
_SHOW = 5  # how many names an error message lists before "(+N more)"


class ImagePaths(NamedTuple):
    """The files of one test image: ``name`` is the prediction's stem (e.g. ``cat_7``)."""

    name: str
    pred: Path
    gt: Path
    trimap: Path


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def pair_files(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    trimap_dir: str | os.PathLike,
    allow_missing: bool = False,
) -> list[ImagePaths]:
    """Pairs each prediction with its ground-truth alpha and trimap, sorted by prediction name.

    Every trimap is an image to score: a trimap without a prediction is an error unless ``allow_missing``
    (then only the predicted images are scored; :func:`unpredicted` names the others).

    Raises:
        MattingError: a folder is missing or has no images, two predictions share a stem, any alpha or
            trimap is missing, or (without ``allow_missing``) any prediction (all missing ones are counted and
            the first few named, in one line).
    """
    preds = list_images(pred_dir)
    gt_dir, trimap_dir = Path(gt_dir), Path(trimap_dir)
    for d in (gt_dir, trimap_dir):
        if not d.is_dir():
            raise MattingError(f"{d}: folder not found")
    missing = unpredicted(pred_dir, trimap_dir)
    if missing and not allow_missing:
        total = len(images_by_stem(trimap_dir))
        raise MattingError(f"{pred_dir}: {len(missing)} of {total} images have no prediction: {_some(missing)} "
                           f"(every trimap in {trimap_dir} is an image to score; --allow-missing scores the others)")
    stems: dict[str, Path] = {}
    for p in preds:
        if p.stem in stems:
            raise MattingError(f"{p}: same name as {stems[p.stem].name}; keep one prediction per image")
        stems[p.stem] = p
    items, no_alpha, no_trimap = [], [], []
    for stem, pred in stems.items():
        alpha = find_alpha(gt_dir, stem)
        trimap = find_by_stem(trimap_dir, stem)
        if alpha is None:
            no_alpha.append(stem)
        if trimap is None:
            no_trimap.append(stem)
        if alpha is not None and trimap is not None:
            items.append(ImagePaths(stem, pred, alpha, trimap))
    if no_alpha or no_trimap:
        parts = []
        if no_alpha:
            parts.append(f"no alpha in {gt_dir} for {len(no_alpha)}: {_some(no_alpha)}")
        if no_trimap:
            parts.append(f"no trimap in {trimap_dir} for {len(no_trimap)}: {_some(no_trimap)}")
        raise MattingError(f"{pred_dir}: {len(preds) - len(items)} of {len(preds)} predictions unmatched; "
                           + "; ".join(parts))
    return items


def unpredicted(pred_dir: str | os.PathLike, trimap_dir: str | os.PathLike) -> list[str]:
    """The images (trimap names without suffix) that have no prediction in ``pred_dir``, sorted."""
    predicted = {p.stem for p in list_images(pred_dir)}
    return sorted(set(images_by_stem(trimap_dir)) - predicted)


def _png_info(path: Path) -> tuple[int, int, int, int] | None:
    """(width, height, bit_depth, colour_type) from a PNG's IHDR, or None if the file is not a PNG."""
    header = png_header(path)
    if header is None:
        return None
    with open(path, "rb") as f:
        head = f.read(24)
    width, height = struct.unpack(">II", head[16:24])
    return width, height, header[0], header[1]


def check_files(items: Iterable[ImagePaths]) -> None:
    """Finds, before any scoring, what ``read_gray`` would reject in PNG headers (16-bit, palette) and size
    mismatches between each prediction, its alpha and its trimap. Other formats are checked when read.

    Raises:
        MattingError: one line with the number of problems and the first few, each naming its file.
    """
    cache: dict[Path, tuple[int, int, int, int] | None] = {}

    def info(path: Path) -> tuple[int, int, int, int] | None:
        if path not in cache:
            cache[path] = _png_info(path)
        return cache[path]

    problems: list[str] = []
    reported: set[Path] = set()
    for item in items:
        sizes = {}
        for path in (item.pred, item.gt, item.trimap):
            meta = info(path)
            if meta is None:
                continue
            width, height, depth, colour = meta
            if path not in reported:
                if depth == 16:
                    problems.append(f"{path}: 16-bit PNG, 8-bit (0..255) is required")
                    reported.add(path)
                elif colour == 3:
                    problems.append(f"{path}: palette (indexed-colour) PNG, save it as 8-bit grayscale")
                    reported.add(path)
            sizes[path] = (width, height)
        if item.gt in sizes:
            for path in (item.pred, item.trimap):
                if path in sizes and sizes[path] != sizes[item.gt]:
                    (w, h), (gw, gh) = sizes[path], sizes[item.gt]
                    problems.append(f"{path}: size {w}x{h} does not match {item.gt} ({gw}x{gh})")
    if problems:
        raise MattingError(f"{len(problems)} input problem(s): " + "; ".join(problems[:_SHOW])
                           + (f"; (+{len(problems) - _SHOW} more)" if len(problems) > _SHOW else ""))


def score_image(item: ImagePaths) -> tuple[dict, list[str]]:
    """Reads and scores one image (the worker function of the pool).

    Returns:
        ``({"name", "sad", "mse", "grad", "conn"}, warning messages)``; the warnings are raised again by the
        caller so they reach the user from a pool too.
    Raises:
        MattingError: a file is unreadable, 16-bit, a palette PNG, or the sizes differ (naming the file).
    """
    pred = read_gray(item.pred)
    gt = read_gray(item.gt)
    trimap = read_gray(item.trimap)  # not read_trimap: only exactly-128 pixels count, 127/129 must not be remapped
    check_same_size(item.gt, gt, item.pred, pred)
    check_same_size(item.gt, gt, item.trimap, trimap)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = compute_metrics(pred, gt, trimap, name=str(item.trimap))
    return {"name": item.name, **values}, [str(w.message) for w in caught]


def _resolve_workers(workers: int | None, n_items: int) -> int:
    if workers is None or workers == 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 0:
        raise MattingError(f"workers must be >= 0 (0 = all cores), got {workers}")
    return max(1, min(workers, n_items))


def evaluate_items(items: Sequence[ImagePaths], workers: int | None = None, progress: bool = True) -> list[dict]:
    """Scores already-paired images, in ``workers`` processes (None or 0: one per available core; 1: in this
    process). Returns one row per item, in the order given: ``{"name", "sad", "mse", "grad", "conn"}``.

    Child processes are started with 'spawn' (safe when the caller has threads, CUDA or OpenMP running), so a
    calling script needs the usual ``if __name__ == "__main__":`` guard.
    """
    n = _resolve_workers(workers, len(items))
    rows: list[dict | None] = [None] * len(items)
    bar = tqdm(total=len(items), desc="metrics", unit="img", disable=not progress, dynamic_ncols=True)

    def collect(i: int, result: tuple[dict, list[str]]) -> None:
        row, messages = result
        rows[i] = row
        for message in messages:
            category = NoUnknownPixelsWarning if "no unknown (128) pixel" in message else UserWarning
            warnings.warn(message, category, stacklevel=4)
        bar.update(1)

    try:
        if n == 1:
            for i, item in enumerate(items):
                collect(i, score_image(item))
        else:
            pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
            try:
                futures = {pool.submit(score_image, item): i for i, item in enumerate(items)}
                for future in as_completed(futures):
                    collect(futures[future], future.result())
            finally:
                # On an error or Ctrl-C, drop the queued images instead of scoring them all first.
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return rows  # type: ignore[return-value]


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    trimap_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    allow_missing: bool = False,
) -> list[dict]:
    """Pairs, checks and scores a folder of predictions (see the module docstring).

    Args:
        pred_dir: predicted alphas, 8-bit single-channel images clamped to the trimap.
        gt_dir: ground-truth alphas (``<stem>.png`` or ``<fgstem>.png`` for predictions ``<fgstem>_<k>``).
        trimap_dir: trimaps named like the predictions.
        workers: processes (None or 0: one per available core; 1: no pool).
        progress: show a tqdm progress bar on stderr.
        allow_missing: score the predicted images when some have no prediction (else an error naming them).
    Returns:
        One dict per prediction, sorted by name: ``{"name": str, "sad", "mse", "grad", "conn": float}`` as the
        MATLAB drivers report them (MSE NaN, with a warning naming the trimap, when it has no 128 pixel).
    """
    items = pair_files(pred_dir, gt_dir, trimap_dir, allow_missing=allow_missing)
    check_files(items)
    return evaluate_items(items, workers=workers, progress=progress)


def summarize(rows: Sequence[dict]) -> dict:
    """Dataset figures: plain means over images of the per-image values, as the MATLAB driver's ``mean``.

    MSE differs on purpose: an image whose trimap has no 128 pixel has MSE NaN, which would make MATLAB's
    mean NaN; here MSE is averaged over the images that have an unknown region and ``mse_nan`` counts the
    others (their SAD, Grad and Conn are 0 and stay in those means, as in MATLAB).

    Returns:
        ``{"sad", "mse", "grad", "conn": float, "images": int, "mse_nan": int}``; means are NaN if ``rows`` is
        empty (or, for MSE, if every image has NaN MSE).
    """
    n = len(rows)
    out: dict = {}
    for key in ("sad", "grad", "conn"):
        out[key] = math.fsum(r[key] for r in rows) / n if n else math.nan
    finite = [r["mse"] for r in rows if not math.isnan(r["mse"])]
    out["mse"] = math.fsum(finite) / len(finite) if finite else math.nan
    out["images"] = n
    out["mse_nan"] = n - len(finite)
    return {k: out[k] for k in ("sad", "mse", "grad", "conn", "images", "mse_nan")}


def write_csv(rows: Sequence[dict], path: str | os.PathLike, summary: dict | None = None) -> None:
    """Writes ``name,sad,mse,grad,conn``: one row per image and a final ``mean`` row (``summarize``'s means),
    with full float precision (``repr``; NaN as ``nan``). Atomic: a temporary file is renamed into place.
    """
    p = Path(path)
    if p.is_dir():
        raise MattingError(f"{p}: is a folder; give a file name for the CSV")
    summary = summarize(rows) if summary is None else summary
    with atomic_path(p) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r["name"]] + [csv_cell(r[k]) for k in METRIC_KEYS])
        writer.writerow(["mean"] + [csv_cell(summary[k]) for k in METRIC_KEYS])


def csv_cell(value: float | None) -> str:
    """A metric as a CSV cell: full float precision (``repr``), ``nan`` for NaN, empty for None (not scored)."""
    return "" if value is None else repr(float(value))


def format_table(rows: Sequence[dict], summary: dict | None = None, per_image: bool = True) -> str:
    """The scores as text: one line per image (if ``per_image``), then the means and what the units are."""
    summary = summarize(rows) if summary is None else summary
    width = max([len("mean")] + [len(r["name"]) for r in rows]) if per_image else len("mean")
    head = f"{'name':<{width}}  {'SAD':>10}  {'MSE':>10}  {'MSE x1e3':>9}  {'Grad':>10}  {'Conn':>10}"

    def line(name: str, r: dict) -> str:
        return (f"{name:<{width}}  {r['sad']:10.4f}  {r['mse']:10.6f}  {r['mse'] * 1e3:9.4f}  "
                f"{r['grad']:10.4f}  {r['conn']:10.4f}")

    out = [head]
    if per_image:
        out += [line(r["name"], r) for r in rows]
        out.append("-" * len(head))
    out.append(line("mean", summary))
    out.append(f"{summary['images']} images. SAD, Grad and Conn are divided by 1000 and MSE is raw, as the MATLAB "
               "code reports them; 'MSE x1e3' is the form many papers since 2022 print.")
    if summary["mse_nan"]:
        out.append(f"MSE is averaged over {summary['images'] - summary['mse_nan']} images: {summary['mse_nan']} "
                   "trimap(s) have no unknown (128) pixel, so their MSE is NaN (MATLAB's mean would be NaN).")
    return "\n".join(out)
