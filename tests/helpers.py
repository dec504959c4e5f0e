"""Small helpers shared by several test modules."""

from __future__ import annotations

import torch
from torch import nn


def trained_head(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives a new network's head random weights, as if it had been trained, and returns the model.

    A new network's head is all zeros (``MattingHead``): it predicts alpha = 0 everywhere, and nothing before
    the head gets a gradient at the first backward. Tests that compare predictions, or check gradients of
    the whole network, need a head that passes signal on.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.head[0].weight
        weight.copy_(torch.randn(weight.shape, generator=g) * 0.1)
    return model
