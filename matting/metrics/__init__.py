"""The official Composition-1k metrics (SAD, MSE, Grad, Conn), faithful to the MATLAB evaluation code.

Per image (2-D uint8 arrays of one size, values 0..255; only trimap == 128 counts)::

    compute_metrics(pred, gt, trimap) -> {"sad", "mse", "grad", "conn"}   # SAD/Grad/Conn /1000, MSE raw
    sad(pred, gt, trimap), mse(...), grad(...), conn(...)

Whole folders (pairing by name, a process pool, a progress bar)::

    rows = evaluate_folders(pred_dir, gt_dir, trimap_dir, workers=None, progress=True)
    summary = summarize(rows)            # means; MSE over images that have unknown pixels
    write_csv(rows, "metrics.csv")       # one row per image + a final "mean" row, written atomically

Command line: ``python -m matting.metrics --pred DIR --gt DIR --trimap DIR [--out CSV]`` and ``--bench``.
"""

from matting.metrics.batch import (
    ImagePaths,
    check_files,
    csv_cell,
    evaluate_folders,
    evaluate_items,
    format_table,
    pair_files,
    score_image,
    summarize,
    write_csv,
)
from matting.metrics.official import (
    CONN_THRESHOLD_CODES,
    NoUnknownPixelsWarning,
    compute_metrics,
    conn,
    grad,
    mse,
    sad,
)

__all__ = [
    "CONN_THRESHOLD_CODES",
    "ImagePaths",
    "NoUnknownPixelsWarning",
    "check_files",
    "compute_metrics",
    "conn",
    "csv_cell",
    "evaluate_folders",
    "evaluate_items",
    "format_table",
    "grad",
    "mse",
    "pair_files",
    "sad",
    "score_image",
    "summarize",
    "write_csv",
]
