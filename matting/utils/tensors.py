"""Small tensor helpers shared by the network input and the losses."""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

__all__ = ["device_tensor"]


def device_tensor(values: List[float], like: Tensor) -> Tensor:
    """The 1-D tensor of ``values`` with ``like``'s dtype and device, filled there, not copied from the host.

    ``torch.tensor(values, device="cuda")`` copies from pageable host memory, which makes the host wait for the
    device's queue; a fill per value does not. The values are those of ``torch.tensor(values, dtype=...)``
    (each rounded to the dtype once). Scriptable (TorchScript) and traceable.
    """
    return torch.cat([torch.full([1], v, dtype=like.dtype, device=like.device) for v in values])
