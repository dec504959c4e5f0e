"""Checkpoints: written atomically, loaded with clear errors, and the one way to rebuild a model from one.

A checkpoint is a ``torch.save``'d dict:

- ``model``: the model's state dict (unwrapped from DDP);
- ``config``: the full resolved experiment config (a plain dict), so evaluation and inference rebuild the exact
  network with ``config["model"]`` and need nothing else;
- ``step``: optimisation steps done; ``epoch``: data epochs started;
- ``optimizer``, ``scheduler``, ``scaler``: their state dicts (``scaler`` is None without fp16 AMP);
- ``rng``: per process (rank), its CPU torch, own CUDA device's, numpy and Python RNG states, so ``--resume``
  continues bit-exactly on CPU; a list by rank since format 3 (one state before);
- ``epoch_start_step``: the step at which the current data epoch started (since format 3);
- ``best``: ``{"metric": name, "value": float, "step": int}`` or None;
- ``format``: ``CHECKPOINT_FORMAT`` (bumped on incompatible changes).

Everything is tensors and plain data (dicts, lists, tuples, str, int, float, bool, None), so checkpoints load with
``torch.load(..., weights_only=True)``: unpickling a file never runs code from it. A file that needs anything else
is refused with a one-line error naming what it would have called. Format 1 (before the RNG states became plain
data) stored numpy's state as a uint32 ndarray; exactly what rebuilds such an array is allowed for those files.

Files are written to a temporary name in the same folder and renamed, so a crash or Ctrl-C never leaves a
half-written ``latest.pth``; the temporary file of a process killed mid-write is removed by the next save.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pickle
import pickletools
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from matting.config import ModelConfig, model_config_from_dict
from matting.errors import MattingError, OutputError
from matting.models import model_from_config

CHECKPOINT_FORMAT = 3

# What a format-1 checkpoint holds besides tensors and plain data: numpy's MT19937 state, a uint32 ndarray. The
# weights-only unpickler calls only allow-listed functions and builds only allow-listed types, so with these it
# can rebuild uint32 arrays and nothing else. numpy 1 pickles name the rebuilder numpy.core.multiarray.
_FORMAT1_GLOBALS = [
    np._core.multiarray._reconstruct,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
]
_FORMAT1_NAMES = {
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
    "numpy.dtypes.UInt32DType",
}


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target folder, fsync, then rename over ``path``.

    First removes the temporary files of earlier saves of ``path`` whose process is gone (killed mid-write).
    A failed write (a full disk: torch's zip writer raises RuntimeError "unexpected pos") is an OutputError
    naming ``path``; the previous file there is unchanged.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(p)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except (OSError, RuntimeError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc).strip().splitlines()[0]
        raise OutputError(f"{p}: could not write ({reason})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Deletes ``.<name>.tmp<pid>`` files next to ``path`` left by processes that no longer run (kill -9 during
    a save). A live process's file is kept: it may be writing."""
    prefix = f".{path.name}.tmp"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap check elsewhere: keep the file
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG state a training step of this process can consume, as tensors and plain data (weights-only
    loadable).

    ``torch``: the CPU generator, a uint8 tensor; ``cuda`` (when ``device`` is a CUDA device: the one GPU this
    process drives): that device's generator, a uint8 tensor; ``numpy``: ``{"name", "keys": (624,) int64 tensor,
    "pos", "has_gauss", "cached_gaussian"}``; ``python``: ``random.getstate()`` (a tuple of ints).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restores ``rng_state()``'s states; ``cuda`` goes to ``device`` when that is a CUDA device.

    Older checkpoints are accepted: format 1's numpy tuple, and (formats 1-2) a list of every visible GPU's state
    under ``cuda``, of which ``device``'s entry is used (none if that machine had fewer GPUs).
    """
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].cpu().numpy().astype(np.uint32)
        numpy_state = (numpy_state["name"], keys, numpy_state["pos"], numpy_state["has_gauss"],
                       numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda.cpu(), device)


def rank_rng_states(ckpt: dict[str, Any]) -> list[dict[str, Any]]:
    """The RNG states of every process that wrote ``ckpt``, by rank (format 3); older files held one state."""
    states = ckpt["rng"]
    return list(states) if isinstance(states, (list, tuple)) else [states]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# What evaluate, infer and export take when no --checkpoint is given: the demo's (scripts/demo.sh).
DEMO_CHECKPOINT = "runs/demo/checkpoints/latest.pth"


def existing_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a file; else a MattingError saying how to get one (for command lines)."""
    p = Path(path)
    if not p.is_file():
        hint = "; train the demo first (scripts/train.sh)" if p == Path(DEMO_CHECKPOINT) else ""
        raise MattingError(f"{p}: checkpoint not found{hint} or pass --checkpoint FILE")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint written by this project. Raises MattingError naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise MattingError(f"{p}: checkpoint not found")
    try:
        try:
            ckpt = _weights_only_load(p, map_location)
        except pickle.UnpicklingError:
            unsafe = _unsafe_globals(p)
            if not unsafe:
                raise
            if not set(unsafe) <= _FORMAT1_NAMES:
                raise MattingError(
                    f"{p}: refused: loading it would call {', '.join(unsafe[:3])}; a checkpoint of this project "
                    "holds only tensors and plain data (this file was written by something else or altered; "
                    "nothing of it was run)"
                ) from None
            with torch.serialization.safe_globals(_FORMAT1_GLOBALS):
                ckpt = _weights_only_load(p, map_location)
    except MattingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other unpickling failure is a bad file for the user
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise MattingError(f"{p}: not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise MattingError(f"{p}: not a checkpoint of this project (no 'model'/'config' entries)")
    if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
        raise MattingError(f"{p}: checkpoint format {ckpt['format']} is newer than this code ({CHECKPOINT_FORMAT})")
    return ckpt


def _weights_only_load(path: Path, map_location: str | torch.device) -> Any:
    with warnings.catch_warnings():
        # A pickle written by pickle.dump (protocol > 2) makes torch warn before it refuses or loads the file.
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(path, map_location=map_location, weights_only=True)


def _unsafe_globals(path: Path) -> list[str]:
    """The functions and classes outside the weights-only allow-list that a file's pickle names, found without
    running any of them; [] if the file is no pickle at all."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a torch zip file: read the opcodes of a raw pickle
        pass
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - not a pickle
        return []
    # Only a hint for the message: torch's own rebuild functions and containers are not the danger.
    return [n for n in dict.fromkeys(names) if n.split(".")[0] not in _PLAIN_MODULES]


_PLAIN_MODULES = {"torch", "collections", "builtins", "_codecs"}


def checkpoint_model_config(ckpt: dict[str, Any], path: str | os.PathLike) -> ModelConfig:
    """The validated ``model`` section a loaded checkpoint was written with (older layouts included: see
    :func:`matting.config.model_config_from_dict`); a bad one is a MattingError naming the file."""
    section = ckpt["config"].get("model") if isinstance(ckpt["config"], dict) else None
    if not isinstance(section, dict):
        raise MattingError(f"{path}: its config has no 'model' section")
    return model_config_from_dict(section, f"{path}: its config")


def model_from_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the network a checkpoint was trained with and loads its weights.

    Returns ``(model in eval mode on device, info)`` with ``info`` = ``{"config", "step", "epoch", "best"}`` of
    the checkpoint (no weights or optimiser state). Pretrained weights are never fetched here: the checkpoint
    already holds every weight.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    model_cfg = checkpoint_model_config(ckpt, path)
    model = model_from_config(dataclasses.replace(model_cfg, pretrained=None))
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
