"""Device choice, the CPU denormal flag, seeding and the (optional) distributed process group."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from matting.errors import MattingError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU. ``"cuda"`` on a machine without CUDA is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MattingError(f"device '{name}' requested but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MattingError(f"device '{name}' is not a valid torch device (use auto, cpu, cuda or cuda:N)") from None


def flush_denormals() -> None:
    """Sets the process-wide CPU flag that flushes denormal floats to zero (``torch.set_flush_denormal``).

    Softmax kernels (FADE, CARAFE) and decaying gradients produce values below float32's normal range (1e-38);
    x86 CPUs process those many times slower than normal numbers, which slowed CPU training of the demo network
    by more than an order of magnitude. The values lost are far below anything a matte can show. A global flag
    of the process, so the command lines set it (``train``, ``evaluate``, ``infer``, ``export`` and the
    benchmark scripts), and :class:`~matting.engine.predictor.Predictor` only when asked
    (``flush_denormals=True``); library code never sets it behind the caller's back.
    """
    torch.set_flush_denormal(True)


#: Former name of :func:`flush_denormals`, kept for one release.
fast_cpu_math = flush_denormals


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` set to ``enabled`` inside the block, restored after it.

    On: cuDNN times its algorithms for each new input shape and keeps the fastest, which pays off for the
    fixed-size training crops; off for evaluation, whose every image has its own size (each new shape would
    be timed again). Only CUDA reads the flag.
    """
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    wait_group: object = None  # see EVAL_WAIT; None when single-process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


# How long the other ranks wait while rank 0 evaluates alone (validation, a test-set curve). They wait in a gloo
# group of their own: NCCL's default 10-minute timeout, right for collectives, is shorter than a full-size
# Composition-1k evaluation.
EVAL_WAIT = timedelta(hours=3)


def init_distributed(device: torch.device) -> DistInfo:
    """Joins the process group that ``torchrun`` describes in the environment; a plain run stays single-process.

    NCCL on CUDA, gloo on CPU (which is how the tests run two processes on one machine).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    wait_group = dist.new_group(backend="gloo", timeout=EVAL_WAIT)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, wait_group=wait_group)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
