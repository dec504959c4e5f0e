"""BatchNorm that stays frozen, and SyncBatchNorm conversion that leaves frozen layers alone.

The anchors freeze BN by calling ``bn.eval()`` once; the next ``model.train()`` (every training step calls it)
silently turns the layers back to batch statistics. :class:`FrozenBatchNorm2d` is a separate module type whose
forward always uses the stored statistics, whatever ``training`` says, so nothing can unfreeze it by accident,
and ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (which only converts ``_BatchNorm`` instances) skips it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "freeze_batchnorm", "convert_sync_batchnorm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d in permanent inference mode: ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    ``weight`` and ``bias`` are parameters with ``requires_grad=False`` (so parameter counts do not change when
    freezing); the state-dict keys are those of ``nn.BatchNorm2d``, ``num_batches_tracked`` included, so
    checkpoints load both ways. Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn`` (same statistics, affine parameters, eps, device and dtype)."""
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(f"cannot freeze {bn}: it tracks no running statistics")
        ref = bn.running_mean
        frozen = cls(bn.num_features, bn.eps).to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
        return frozen

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> int:
    """Replaces every ``nn.BatchNorm2d`` inside ``module`` (in place) by a :class:`FrozenBatchNorm2d` copy.

    Returns the number of layers frozen. ``SyncBatchNorm`` layers are frozen too (they share the base class).
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Converts the trainable BatchNorm layers to ``nn.SyncBatchNorm`` for distributed training.

    Frozen layers (:class:`FrozenBatchNorm2d`) are kept as they are: they use no batch statistics, so there is
    nothing to synchronise. Returns the model (converted in place unless ``model`` itself is a BN layer).
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
