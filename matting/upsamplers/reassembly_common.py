"""Tensor helpers shared by the reassembly op's implementations: the lean op (:mod:`.reassembly`) and the
Triton kernels (:mod:`.reassembly_triton`, imported by the op on first use). In a module of their own so that
neither implementation imports the other."""

from __future__ import annotations

import torch

__all__ = ["block_sums", "new_grads"]


def block_sums(t: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, N, sH, sW) -> (B, N, H, W): the sum of each s x s block (the gradient of a nearest upsampling)."""
    return t.unflatten(3, (-1, scale)).unflatten(2, (-1, scale)).sum(dim=(3, 5))


def new_grads(features, kernels, kernels_lo, skip, gate, needs) -> list[torch.Tensor]:
    """Uninitialised gradients in their inputs' layouts; an empty tensor for an input that needs none."""
    inputs = (features, kernels, kernels_lo, skip, gate)
    return [torch.empty_like(t) if t is not None and need else features.new_empty(0) for t, need in zip(inputs, needs)]
