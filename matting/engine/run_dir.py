"""A run's output folder: one run per folder, checked before anything is built, moved aside on request.

A fresh run into a folder that holds another run's checkpoints or logs would overwrite ``latest.pth`` at its
first save, keep the other run's ``best.pth`` and mix both runs in ``train.log`` and TensorBoard. So, like
detectron2's and Lightning's refusal to clobber, a fresh run there is an error that names the two ways on:
``--resume`` (continue that run) or ``--restart`` (move it aside to ``<output_dir>.old-<time>`` and start over;
nothing is ever deleted).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from matting.errors import MattingError

# What a run writes into its output folder (besides eval/, which evaluation writes on request).
_CHECKPOINTS, _LOG, _BOARD = "checkpoints", "train.log", "tb"


def run_contents(out_dir: Path) -> list[str]:
    """The earlier run's files in ``out_dir``, for messages: e.g. ``["checkpoints/latest.pth", "train.log"]``."""
    found = []
    ckpt_dir = out_dir / _CHECKPOINTS
    if ckpt_dir.is_dir():
        found += [f"{_CHECKPOINTS}/{p.name}" for p in sorted(ckpt_dir.iterdir()) if not p.name.startswith(".")]
    if (out_dir / _LOG).is_file():
        found.append(_LOG)
    if (out_dir / _BOARD).is_dir() and any((out_dir / _BOARD).iterdir()):
        found.append(f"{_BOARD}/")
    return found


def check_run_dir(out_dir: Path, resume: str | os.PathLike | None, restart: bool) -> None:
    """Refuses, before anything is built, a run that would overwrite or mix with another run in ``out_dir``.

    Allowed: an empty or new folder; ``resume`` from a checkpoint inside ``out_dir/checkpoints`` (the same run);
    anything with ``restart`` (the folder is moved aside when the run starts, see :func:`move_aside`).
    """
    if restart:
        return
    found = run_contents(out_dir)
    if not found:
        return
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    if resume is None:
        raise MattingError(
            f"{out_dir}: holds an earlier run ({shown}); continue it with --resume, or start over with --restart "
            f"(moves it to {out_dir}.old-<time>), or set output_dir to a new folder"
        )
    if Path(resume).resolve().parent != (out_dir / _CHECKPOINTS).resolve():
        raise MattingError(
            f"{out_dir}: holds another run ({shown}) that resuming from {resume} would overwrite; add --restart "
            "to move it aside first, or set output_dir to a new folder"
        )


def move_aside(out_dir: Path) -> Path | None:
    """Renames ``out_dir`` to ``<out_dir>.old-<YYYYmmdd-HHMMSS>[-N]`` if it holds anything; returns the new name.

    A rename, on the same file system: instant, and nothing is copied or deleted.
    """
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = out_dir.with_name(f"{out_dir.name}.old-{stamp}"), 1
    while target.exists():
        n += 1
        target = out_dir.with_name(f"{out_dir.name}.old-{stamp}-{n}")
    try:
        out_dir.rename(target)
    except OSError as exc:
        raise MattingError(f"{out_dir}: could not move it aside to {target} ({exc.strerror or exc})") from None
    return target
