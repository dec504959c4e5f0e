"""Scores a :class:`~matting.engine.predictor.Predictor` on eval items: the test set, or the trainer's validation split.

One function, :func:`evaluate`, so test and validation numbers are computed the same way. It never skips an
image: an item that fails to load, predict or score is reported with its name, counted in ``failures`` and the
run goes on. Next to the network it scores the constant-0.5 baseline (128 in the unknown region, the trimap
elsewhere), a floor that any trained model must beat by a wide margin.

Outputs under ``out_dir`` (when given):

- ``alpha/<name>.png``: the prediction, clamped to the trimap and rounded (what the metrics saw);
- ``metrics.csv``: ``name,sad,mse,grad,conn`` per image in item order (empty cells for a failed image), then a
  ``mean`` row over the scored images;
- ``summary.json``: see :func:`evaluate`'s return value.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from matting.data.io import atomic_path, check_writable_dir, same_path, write_png, write_text_atomic
from matting.engine.predictor import Predictor
from matting.errors import MattingError, OutputError
from matting.metrics.official import compute_metrics

__all__ = ["BASELINE_KEY", "METRICS", "Summary", "constant_baseline", "evaluate", "format_table", "write_metrics_csv"]

#: The metric names, in the order of the CSV columns and of the printed table.
METRICS = ("sad", "mse", "grad", "conn")
#: Where summary.json keeps the constant-0.5 baseline's means.
BASELINE_KEY = "baseline_constant_0.5"

#: The summary dict (see :func:`evaluate`). A plain dict so it goes to JSON and loggers as is.
Summary = dict[str, Any]

_UNITS = (
    "MATLAB drivers' units: sad, grad, conn = sum over the unknown region / 1000; mse = mean squared error over "
    "the unknown region (not x1000; NaN without unknown pixels); mse_x1e3 = mse * 1000 as papers since 2022 "
    "print it"
)


def constant_baseline(trimap: np.ndarray) -> np.ndarray:
    """The constant-0.5 prediction: (H, W) uint8, 0 / 128 / 255 where trimap is 0 / unknown / 255.

    0.5 * 255 = 127.5 rounds to 128 (``np.round`` rounds half to even, and 128 is even).
    """
    pred = np.full(trimap.shape, 128, np.uint8)
    pred[trimap == 0] = 0
    pred[trimap == 255] = 255
    return pred


def _means(rows: list[dict[str, float]]) -> dict[str, float | None]:
    """Plain means over images (MSE over the images that have an unknown region); None when nothing to average."""
    out: dict[str, float | None] = {}
    for key in METRICS:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        out[key] = float(values.mean()) if values.size else None
    out["mse_x1e3"] = None if out["mse"] is None else out["mse"] * 1000.0
    return out


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MattingError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _item_name(items: Any, index: int) -> str:
    """The name of item ``index`` before it is loaded (for a failure while loading): from ``records`` if any."""
    records = getattr(items, "records", None)
    if records is not None:
        try:
            return str(records[index].name)
        except Exception:  # noqa: BLE001 - only a label for an error message
            pass
    return f"item {index}"


def _iterate(items: Any) -> Iterator[tuple[str, Callable[[], dict]]]:
    """Yields ``(fallback name, load)`` per item; ``load()`` returns the item dict or raises.

    Indexable datasets (``__len__`` + ``__getitem__``: lists, ``TestDataset``, ``ValidationDataset``) are loaded
    one item ahead in a thread (image decoding releases the GIL), and an item that fails to load does not stop
    the others. A plain iterator that raises cannot be resumed: that failure is counted and the run ends there.
    """
    if hasattr(items, "__len__") and hasattr(items, "__getitem__"):
        n = len(items)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-load") as loader:
            ahead: Future | None = loader.submit(items.__getitem__, 0) if n else None
            for i in range(n):
                current = ahead
                ahead = loader.submit(items.__getitem__, i + 1) if i + 1 < n else None
                yield _item_name(items, i), current.result
        return
    iterator = iter(items)
    index = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - reported as a failed item below
            err = exc

            def fail(err: Exception = err) -> dict:
                raise err

            yield f"item {index}", fail
            return
        yield f"item {index}", (lambda item=item: item)
        index += 1


def _score(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray, name: str) -> tuple[dict, dict]:
    """Metrics of the prediction and of the constant-0.5 baseline (run in a worker process)."""
    return (
        compute_metrics(pred, gt, trimap, name=name),
        compute_metrics(constant_baseline(trimap), gt, trimap, name=name),
    )


def _make_pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 0:
        return None
    # fork: workers start in milliseconds and need nothing re-imported. spawn/forkserver would re-run the
    # caller's __main__ in every worker (slow: torch; fatal: scripts without a main guard). The workers only
    # run numpy/scipy (no OpenMP, no CUDA), which is what makes forking a process that holds torch safe.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    # With fork, the first submit starts every worker: do it now, before _iterate starts its loader thread,
    # so no fork happens while another thread of ours may hold a lock.
    pool.submit(int).result()
    return pool


def evaluate(
    predictor: Predictor,
    items: Iterable[dict],
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int = 2,
    *,
    meta: dict[str, Any] | None = None,
) -> Summary:
    """Predicts and scores every item; never skips one.

    Args:
        predictor: the predictor (``Predictor(model, device)`` or ``Predictor.from_checkpoint(...)``).
        items: eval-item dicts ``{"image": (H,W,3) uint8 RGB, "alpha": (H,W) uint8, "trimap": (H,W) uint8 in
            {0,128,255}, "name": str}`` as ``load_test_item`` / ``TestDataset`` / ``ValidationDataset`` give them.
        out_dir: where ``alpha/``, ``metrics.csv`` and ``summary.json`` go; None writes nothing.
        progress: show a progress bar (stderr).
        workers: processes computing the metrics while the network runs; 0 computes them in this process.
        meta: provenance stored in the summary, e.g. ``{"data": "data/demo/test", "split": "test"}``.
    Returns:
        The summary (also written to ``summary.json``)::

            {"mean": {"sad", "mse", "mse_x1e3", "grad", "conn"},      # over the scored images
             "baseline_constant_0.5": {same keys},                   # the constant-0.5 prediction
             "count": scored images, "images": items seen, "failed": number of failures,
             "failures": [{"name", "error"}], "mse_undefined": images without unknown pixels (MSE NaN),
             "checkpoint": path or None, "step": int or None, "seconds": wall time, "units": str,
             **meta}

        A mean is None when no image could be scored.

    Raises:
        MattingError before any prediction if ``out_dir`` cannot be written or is an input folder of ``items``;
        OutputError if a write fails on the way (saying which alpha mattes are there).
    """
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_eval_outputs(out, items)
    start = time.perf_counter()
    results: dict[int, tuple[str, tuple[dict, dict] | None, str | None]] = {}
    pending: OrderedDict[Future, tuple[int, str, tuple]] = OrderedDict()
    pool = _make_pool(workers)
    written = 0
    total = len(items) if hasattr(items, "__len__") else None
    bar = _progress_bar(total, progress)

    def fail(index: int, name: str, exc: BaseException) -> None:
        message = _error_text(exc)
        results[index] = (name, None, message)
        _write_line(f"failed: {name}: {message}", bar)

    def collect(block_until: int) -> None:
        """Gathers finished metric jobs, waiting until at most ``block_until`` remain in flight."""
        nonlocal pool
        while pending and (len(pending) > block_until or next(iter(pending)).done()):
            future, (index, name, args) = pending.popitem(last=False)
            try:
                results[index] = (name, future.result(), None)
            except BrokenProcessPool:
                # A metrics worker died (e.g. killed for memory): score the rest in this process.
                _write_line("metrics worker pool broke; computing metrics in the main process", bar)
                pool = None
                try:
                    results[index] = (name, _score(*args), None)
                except Exception as exc:  # noqa: BLE001
                    fail(index, name, exc)
            except Exception as exc:  # noqa: BLE001 - a scoring failure is a failed image, not a crash
                fail(index, name, exc)
            if bar is not None:
                bar.update(1)

    try:
        for index, (name, load) in enumerate(_iterate(items)):
            try:
                item = load()
                name = str(item["name"])
                pred = predictor.predict_uint8(item["image"], item["trimap"])
                if out is not None:
                    write_png(out / "alpha" / f"{name}.png", pred)
                    written += 1
                args = (pred, item["alpha"], item["trimap"], name)
                del item
            except OutputError as exc:  # the next write would fail too: stop, saying what is there
                raise OutputError(f"{exc}; stopped: {written} alpha mattes are in {out / 'alpha'}, no metrics.csv "
                                  "or summary.json was written") from None
            except Exception as exc:  # noqa: BLE001 - never skip an image: report it and go on
                fail(index, name, exc)
                if bar is not None:
                    bar.update(1)
                continue
            if pool is not None:
                try:
                    pending[pool.submit(_score, *args)] = (index, name, args)
                except BrokenProcessPool:
                    pool = None
            if pool is None:
                try:
                    results[index] = (name, _score(*args), None)
                except Exception as exc:  # noqa: BLE001
                    fail(index, name, exc)
                if bar is not None:
                    bar.update(1)
            # Bound the predictions held for scoring (full-resolution arrays) to a few per worker.
            collect(block_until=2 * max(workers, 1))
        collect(block_until=0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()

    ordered = [results[i] for i in sorted(results)]
    scored = [(name, r) for name, r, _ in ordered if r is not None]
    summary: Summary = {
        "mean": _means([r[0] for _, r in scored]),
        BASELINE_KEY: _means([r[1] for _, r in scored]),
        "count": len(scored),
        "images": len(ordered),
        "failed": len(ordered) - len(scored),
        "failures": [{"name": name, "error": err} for name, r, err in ordered if r is None],
        "mse_undefined": sum(1 for _, r in scored if math.isnan(r[0]["mse"])),
        "checkpoint": predictor.checkpoint,
        "step": predictor.step,
        "seconds": round(time.perf_counter() - start, 3),
        "units": _UNITS,
        **(meta or {}),
    }
    if out is not None:
        try:
            write_metrics_csv(out / "metrics.csv", [(name, r[0] if r else None) for name, r, _ in ordered], summary)
            write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n")
        except OutputError as exc:
            raise OutputError(f"{exc}; the {written} alpha mattes are in {out / 'alpha'}") from None
    return summary


def check_eval_outputs(out: Path, items: Any) -> None:
    """Before any prediction: ``out`` can be written, and its ``alpha/`` is not a folder the items are read from
    (the predictions would land among, or replace, the ground truth)."""
    check_writable_dir(out, "evaluation outputs")
    records = getattr(items, "records", None) or []
    paths = (getattr(r, key, None) for r in records for key in ("image_path", "alpha_path", "trimap_path"))
    for folder in {Path(p).parent for p in paths if p is not None}:
        if same_path(out / "alpha", folder):
            raise MattingError(f"{out}: the predictions would go to {out / 'alpha'}, a folder the test set is read "
                               "from (they would mix with its files); choose another --out")


def write_metrics_csv(path: Path, rows: list[tuple[str, dict | None]], summary: Summary) -> None:
    """``name,sad,mse,grad,conn`` per image (empty cells for a failed one), then the ``mean`` row. Atomic."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["name", *METRICS])
        for name, metrics in rows:
            writer.writerow([name, *(_fmt(metrics[k]) if metrics else "" for k in METRICS)])
        writer.writerow(["mean", *(_fmt(summary["mean"][k]) for k in METRICS)])


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else format(value, ".10g")


def format_table(summary: Summary) -> str:
    """A markdown table of the model's and the baseline's means (MSE shown raw and x1e3)."""

    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| | SAD | MSE | MSE x1e3 | Grad | Conn |", "|---|---|---|---|---|---|"]
    for label, key in (("model", "mean"), ("constant 0.5", BASELINE_KEY)):
        m = summary[key]
        lines.append(
            f"| {label} | {cell(m['sad'], 2)} | {cell(m['mse'], 5)} | {cell(m['mse_x1e3'], 2)} "
            f"| {cell(m['grad'], 2)} | {cell(m['conn'], 2)} |"
        )
    lines.append(f"\n{summary['count']} of {summary['images']} images scored, {summary['failed']} failed")
    return "\n".join(lines)


def _progress_bar(total: int | None, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="evaluate", unit="img", dynamic_ncols=True, file=sys.stderr)


def _write_line(text: str, bar) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)
