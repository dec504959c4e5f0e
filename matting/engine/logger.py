"""Training logs: a plain text file, TensorBoard scalars and image grids. Only rank 0 writes anything.

Nothing is written before the run really starts: records logged while a Trainer is being built are kept in
memory and written to ``train.log`` by :func:`attach_log_file`, so a run that fails to start leaves no file.
"""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid

_LOGGER_IDS = itertools.count()
#: ``extra`` for records that go to train.log only (e.g. a fatal error the command line prints itself).
FILE_ONLY = {"file_only": True}
_FORMAT = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")


class _Pending(logging.Handler):
    """Keeps records until the log file exists."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def text_logger(log_file: Path | None = None, enabled: bool = True) -> logging.Logger:
    """A logger that writes to stderr and to ``log_file``; silent on ranks other than 0.

    With ``log_file`` None, records wait in memory for :func:`attach_log_file`. Records logged with
    ``extra=FILE_ONLY`` skip stderr.
    """
    logger = logging.getLogger(f"matting.train.{next(_LOGGER_IDS)}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    if not enabled:
        return logger
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_FORMAT)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    logger.addHandler(console)
    logger.addHandler(_Pending())
    if log_file is not None:
        attach_log_file(logger, log_file)
    return logger


def attach_log_file(logger: logging.Logger, log_file: Path) -> None:
    """Starts writing ``logger``'s records to ``log_file`` (appending), first the ones kept since it was made."""
    if not logger.isEnabledFor(logging.CRITICAL):
        return  # a disabled (non-zero rank) logger
    pending = [h for h in logger.handlers if isinstance(h, _Pending)]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(_FORMAT)
    for kept in pending:
        for record in kept.records:
            handler.handle(record)
        logger.removeHandler(kept)
    logger.addHandler(handler)


class TensorBoardWriter:
    """TensorBoard writer that does nothing when disabled (ranks other than 0)."""

    def __init__(self, log_dir: Path | None, purge_step: int | None = None):
        """``purge_step``: hide events of steps >= this written by an earlier process (a resumed run logs the
        steps after its checkpoint again)."""
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # import late: tensorboard is slow to import

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def image_grid(self, tag: str, batch: dict[str, torch.Tensor], pred: torch.Tensor, step: int, n: int = 4) -> None:
        """Rows of (image, trimap, ground truth, prediction, |error|) for the first ``n`` samples.

        batch: image (B,3,H,W) in [0,1], trimap (B,1,H,W) uint8, alpha (B,1,H,W) in [0,1]; pred (B,1,H,W).
        """
        if self.writer is None:
            return
        k = min(n, pred.shape[0])
        pred = pred[:k].detach().float().clamp(0, 1).cpu()
        alpha = batch["alpha"][:k].float().cpu()
        tiles = []
        for i in range(k):
            tiles += [
                batch["image"][i].float().cpu(),
                (batch["trimap"][i].float() / 255).cpu().expand(3, -1, -1),
                alpha[i].expand(3, -1, -1),
                pred[i].expand(3, -1, -1),
                (pred[i] - alpha[i]).abs().expand(3, -1, -1),
            ]
        self.writer.add_image(tag, make_grid(tiles, nrow=5, padding=2), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


#: Former name of :class:`TensorBoardWriter`, kept for one release.
Board = TensorBoardWriter
