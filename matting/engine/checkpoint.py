"""Checkpoints: written atomically, loaded with clear errors, and the one way to rebuild a model from one.

A checkpoint is a ``torch.save``'d dict:

- ``model``: the model's state dict (unwrapped from DDP);
- ``config``: the full resolved experiment config (a plain dict), so evaluation and inference rebuild the exact
  network with ``config["model"]`` and need nothing else;
- ``step``: optimisation steps done; ``epoch``: data epochs started;
- ``optimizer``, ``scheduler``, ``scaler``: their state dicts (``scaler`` is None without fp16 AMP);
- ``rng``: the CPU/CUDA torch, numpy and Python RNG states, so ``--resume`` continues bit-exactly on CPU;
- ``best``: ``{"metric": name, "value": float, "step": int}`` or None;
- ``format``: ``CHECKPOINT_FORMAT`` (bumped on incompatible changes).

Files are written to a temporary name in the same folder and renamed, so a crash or Ctrl-C never leaves a
half-written ``latest.pth``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from matting.errors import MattingError

CHECKPOINT_FORMAT = 1


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target folder, fsync, then rename over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step can consume."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint written by this project. Raises MattingError naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise MattingError(f"{p}: checkpoint not found")
    try:
        # weights_only=False: our checkpoints hold RNG states (numpy arrays, tuples), written by us.
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise MattingError(f"{p}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise MattingError(f"{p}: not a checkpoint of this project (no 'model'/'config' entries)")
    if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
        raise MattingError(f"{p}: checkpoint format {ckpt['format']} is newer than this code ({CHECKPOINT_FORMAT})")
    return ckpt


def build_model_from_config(model_cfg: dict[str, Any], *, pretrained: Any = "config") -> nn.Module:
    """``build_model`` from a config's ``model`` section (``options`` are flattened into keyword arguments).

    ``pretrained="config"`` keeps the section's value; pass None to skip loading pretrained weights (checkpoint
    loading, where every weight comes from the checkpoint).
    """
    from matting.models import build_model

    kwargs = {k: v for k, v in model_cfg.items() if k != "options"}
    kwargs.update(model_cfg.get("options") or {})
    if pretrained != "config":
        kwargs["pretrained"] = pretrained
    return build_model(**kwargs)


def model_from_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the network a checkpoint was trained with and loads its weights.

    Returns ``(model in eval mode on device, info)`` with ``info`` = ``{"config", "step", "epoch", "best"}`` of
    the checkpoint (no weights or optimiser state). Pretrained weights are never fetched here: the checkpoint
    already holds every weight.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    model = build_model_from_config(ckpt["config"]["model"], pretrained=None)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        hint = ""
        if not missing and all(k.startswith("encoder.layer3.") for k in unexpected):
            # Written before resnet34 kept only the official network's 4 layer3 blocks (they were 6).
            blocks = 1 + max(int(k.split(".")[2]) for k in unexpected)
            hint = f"; it has {blocks} layer3 blocks: its config needs model.options.layer3_blocks: {blocks}"
        raise MattingError(
            f"{path}: weights do not match the network in its config "
            f"(missing {len(missing)} e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]}){hint}"
        )
    info = {key: ckpt.get(key) for key in ("config", "step", "epoch", "best")}
    return model.to(device).eval(), info
