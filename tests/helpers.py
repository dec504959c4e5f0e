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


#: A very small network (mobilenetv2 + FADE, 8 channels) for tests that need a real checkpoint.
TINY_MODEL = {
    "encoder": "mobilenetv2",
    "upsampler": "fade",
    "width_mult": 0.25,
    "stem_channels": 4,
    "context_channels": 8,
    "aspp_channels": 8,
    "decoder_channels": [8, 8, 8, 8, 8],
}


def save_tiny_checkpoint(path, step: int = 1):
    """Writes a checkpoint of ``TINY_MODEL`` (random weights, a trained-looking head) to ``path``; returns it."""
    from matting.engine.checkpoint import atomic_torch_save
    from matting.models import build_model

    model = trained_head(build_model(**TINY_MODEL)).eval()
    payload = {"format": 1, "model": model.state_dict(), "config": {"model": TINY_MODEL}, "step": step}
    atomic_torch_save(payload, path)
    return path
