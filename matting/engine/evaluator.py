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
import functools
import itertools
import json
import math
import multiprocessing
import multiprocessing.context
import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from matting.data.io import atomic_path, check_writable_dir, same_path, write_png, write_text_atomic
from matting.engine.predictor import Predictor
from matting.errors import MattingError, OutputError
from matting.metrics.batch import csv_cell, summarize
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
    """``summarize``'s means (MSE over the images that have an unknown region), with None, which JSON can hold,
    where there is nothing to average."""
    means = summarize(rows)
    out: dict[str, float | None] = {k: None if math.isnan(means[k]) else means[k] for k in METRICS}
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
        return _prefetched(items)
    return _iterated(items)


def _prefetched(items: Any) -> Iterator[tuple[str, Callable[[], dict]]]:
    n = len(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-load") as loader:
        ahead: Future | None = loader.submit(items.__getitem__, 0) if n else None
        for i in range(n):
            current = ahead
            ahead = loader.submit(items.__getitem__, i + 1) if i + 1 < n else None
            yield _item_name(items, i), current.result


def _iterated(items: Iterable[dict]) -> Iterator[tuple[str, Callable[[], dict]]]:
    iterator = iter(items)
    for index in itertools.count():
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - reported as a failed item by the caller
            yield f"item {index}", functools.partial(_raise, exc)
            return
        yield f"item {index}", functools.partial(_identity, item)


def _raise(exc: Exception) -> dict:
    raise exc


def _identity(item: dict) -> dict:
    return item


def _score(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray, name: str) -> tuple[dict, dict]:
    """Metrics of the prediction and of the constant-0.5 baseline (run in a worker process)."""
    return (
        compute_metrics(pred, gt, trimap, name=name),
        compute_metrics(constant_baseline(trimap), gt, trimap, name=name),
    )


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe, else spawn.

    fork: workers start in milliseconds and need nothing re-imported; they run only numpy/scipy (no OpenMP, no
    CUDA), which makes forking a process that holds torch safe. Not a process that holds a CUDA context or a
    process group (the trainer's validation under DDP): the threads of CUDA and NCCL/gloo may hold locks at the
    fork, which the child would inherit held. spawn starts clean workers there (they import this module; the
    caller's ``__main__`` needs its ``if __name__ == "__main__"`` guard, as the command lines have).
    """
    if torch.cuda.is_initialized() or dist.is_initialized():
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def _make_pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 0:
        return None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    # With fork, the first submit starts every worker: do it now, before _iterate starts its loader thread,
    # so no fork happens while another thread of ours may hold a lock.
    pool.submit(int).result()
    return pool


#: A scored item: (name, (metrics, baseline metrics) or None, error message or None).
_Result = tuple[str, tuple[dict, dict] | None, str | None]


class _Scorer:
    """Scores predictions in worker processes (or in this process with ``workers=0``), at most a few in flight.

    ``results`` maps item index -> :data:`_Result`, failures included. If the pool breaks (a worker killed for
    memory), the rest is scored in this process.
    """

    def __init__(self, workers: int, bar) -> None:
        self.pool = _make_pool(workers)
        # Bound the predictions held for scoring (full-resolution arrays) to a few per worker.
        self.in_flight = 2 * max(workers, 1)
        self.bar = bar
        self.pending: OrderedDict[Future, tuple[int, str, tuple]] = OrderedDict()
        self.results: dict[int, _Result] = {}

    def submit(self, index: int, name: str, args: tuple) -> None:
        """Scores ``_score(*args)`` for item ``index``, then collects what is finished."""
        if self.pool is not None:
            try:
                self.pending[self.pool.submit(_score, *args)] = (index, name, args)
            except BrokenProcessPool:
                self._pool_broke()
        if self.pool is None:
            self._score_here(index, name, args)
        self.collect(block_until=self.in_flight)

    def collect(self, block_until: int = 0) -> None:
        """Gathers finished jobs, waiting until at most ``block_until`` remain in flight."""
        while self.pending and (len(self.pending) > block_until or next(iter(self.pending)).done()):
            future, (index, name, args) = self.pending.popitem(last=False)
            try:
                self.record(index, name, future.result())
            except BrokenProcessPool:
                self._pool_broke()
                self._score_here(index, name, args)
            except Exception as exc:  # noqa: BLE001 - a scoring failure is a failed image, not a crash
                self.fail(index, name, exc)

    def record(self, index: int, name: str, metrics: tuple[dict, dict]) -> None:
        self.results[index] = (name, metrics, None)
        self._advance()

    def fail(self, index: int, name: str, exc: BaseException) -> None:
        message = _error_text(exc)
        self.results[index] = (name, None, message)
        _write_line(f"failed: {name}: {message}", self.bar)
        self._advance()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _score_here(self, index: int, name: str, args: tuple) -> None:
        try:
            self.record(index, name, _score(*args))
        except Exception as exc:  # noqa: BLE001
            self.fail(index, name, exc)

    def _pool_broke(self) -> None:
        if self.pool is not None:
            _write_line("metrics worker pool broke; computing metrics in the main process", self.bar)
        self.pool = None

    def _advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def evaluate(
    predictor: Predictor,
    items: Iterable[dict],
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    workers: int = 2,
    *,
    meta: dict[str, Any] | None = None,
) -> Summary:
    """Predicts and scores every item; never skips one: load -> predict (-> write the alpha) -> score -> write.

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
    bar = _progress_bar(len(items) if hasattr(items, "__len__") else None, progress)
    scorer = _Scorer(workers, bar)
    try:
        written = _predict_all(predictor, items, out, scorer)
    finally:
        scorer.close()
        if bar is not None:
            bar.close()
    results = [scorer.results[i] for i in sorted(scorer.results)]
    summary = _summarize(results, predictor, time.perf_counter() - start, meta)
    if out is not None:
        _write_outputs(out, results, summary, written)
    return summary


def _predict_all(predictor: Predictor, items: Iterable[dict], out: Path | None, scorer: _Scorer) -> int:
    """Loads and predicts every item, writes its alpha PNG (with ``out``), hands it to ``scorer``. Returns the
    number of PNGs written. A failing item is recorded as failed; a failed write stops everything (OutputError)."""
    written = 0
    for index, (name, load) in enumerate(_iterate(items)):
        try:
            item = load()
            name = str(item["name"])
            pred = predictor.predict_uint8(item["image"], item["trimap"])
            if out is not None:
                write_png(out / "alpha" / f"{name}.png", pred)
                written += 1
            args = (pred, item["alpha"], item["trimap"], name)
            del item  # the image is no longer needed while the metrics are computed
        except OutputError as exc:  # the next write would fail too: stop, saying what is there
            raise OutputError(f"{exc}; stopped: {written} alpha mattes are in {out / 'alpha'}, no metrics.csv "
                              "or summary.json was written") from None
        except Exception as exc:  # noqa: BLE001 - never skip an image: report it and go on
            scorer.fail(index, name, exc)
            continue
        scorer.submit(index, name, args)
    scorer.collect(block_until=0)
    return written


def _summarize(results: list[_Result], predictor: Predictor, seconds: float, meta: dict[str, Any] | None) -> Summary:
    """The summary dict of :func:`evaluate` from the results in item order."""
    scored = [(name, r) for name, r, _ in results if r is not None]
    return {
        "mean": _means([r[0] for _, r in scored]),
        BASELINE_KEY: _means([r[1] for _, r in scored]),
        "count": len(scored),
        "images": len(results),
        "failed": len(results) - len(scored),
        "failures": [{"name": name, "error": err} for name, r, err in results if r is None],
        "mse_undefined": sum(1 for _, r in scored if math.isnan(r[0]["mse"])),
        "checkpoint": predictor.checkpoint,
        "step": predictor.step,
        "seconds": round(seconds, 3),
        "units": _UNITS,
        **(meta or {}),
    }


def _write_outputs(out: Path, results: list[_Result], summary: Summary, written: int) -> None:
    """``metrics.csv`` and ``summary.json`` (atomic); a failed write says where the alpha mattes are."""
    try:
        write_metrics_csv(out / "metrics.csv", [(name, r[0] if r else None) for name, r, _ in results], summary)
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n")
    except OutputError as exc:
        raise OutputError(f"{exc}; the {written} alpha mattes are in {out / 'alpha'}") from None


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
            writer.writerow([name, *(csv_cell(metrics[k]) if metrics else "" for k in METRICS)])
        writer.writerow(["mean", *(csv_cell(summary["mean"][k]) for k in METRICS)])


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
    return tqdm(total=total, desc="evaluate", unit="img", dynamic_ncols=True, file=sys.stderr)


def _write_line(text: str, bar) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)
