"""Training logs: a plain text file, TensorBoard scalars and image grids. Only rank 0 writes anything."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch


def text_logger(log_file: Path | None, enabled: bool = True) -> logging.Logger:
    """A logger that writes to stderr and (when given) to ``log_file``; silent on ranks other than 0."""
    logger = logging.getLogger(f"matting.train.{id(log_file)}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    if not enabled:
        return logger
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


class Board:
    """TensorBoard writer that does nothing when disabled (ranks other than 0)."""

    def __init__(self, log_dir: Path | None):
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # import late: tensorboard is slow to import

            self.writer = SummaryWriter(str(log_dir))

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
        from torchvision.utils import make_grid

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

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
