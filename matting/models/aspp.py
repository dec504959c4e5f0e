"""Atrous spatial pyramid pooling, the context module of the IndexNet / A2U / FADE matting networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import LEAKY_SLOPE, ConvBNAct, init_new_conv

__all__ = ["ASPP", "aspp_dilations"]


def aspp_dilations(output_stride: int) -> tuple[int, int, int]:
    """The dilations of the three 3x3 branches used by the official code at a given output stride."""
    table = {8: (12, 24, 36), 16: (6, 12, 18), 32: (2, 4, 8)}
    if output_stride not in table:
        raise ValueError(f"ASPP: no dilation preset for output stride {output_stride} (known: 8, 16, 32)")
    return table[output_stride]


class ASPP(nn.Module):
    """ASPP as in the official matting code: five parallel branches, concatenated, fused by a 1x1 conv.

    Branches (each ending in BN + leaky ReLU): a 1x1 conv; three depthwise-separable dilated 3x3 convs (a
    depthwise 3x3 with the given dilation, then a 1x1 conv: the official code's way of saving parameters);
    image pooling (global average -> 1x1 conv, broadcast back to H x W). Then 1x1 conv of the concatenation to
    ``out_channels`` (BN + leaky ReLU) and dropout.

    ``pooling=False`` drops the image-pooling branch. Both the pooling branch and large dilations make the
    module see the whole training crop at once; when the crops are small next to the test images (the CPU
    demo trains on 128 px crops, an 8x8 map at output stride 16, and tests on 400 px images) the test-time
    context is one the network never saw, and its mattes get worse than on crops. Small dilations and no
    pooling keep the context module local, as the rest of the network is.

    The pooling branch normalises the 1 x 1 map, as the official code does, so that its BN sees B values per
    channel and updates its running variance with the unbiased factor B / (B - 1) of the official run. A batch
    of one (where BN on a 1 x 1 map raises) is normalised after broadcasting to H x W instead: the normalised
    values are the same (B broadcast copies have the batch's mean and biased variance), only the running
    variance is then updated with the factor H*W / (H*W - 1).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (6, 12, 18),
        inner_channels: int = 256,
        dropout: float = 0.5,
        pooling: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ASPP: dropout must be in [0, 1), got {dropout!r}")
        self.branch1x1 = ConvBNAct(in_channels, inner_channels, 1)
        self.branches3x3 = nn.ModuleList(
            nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, dilation=d, groups=in_channels),
                ConvBNAct(in_channels, inner_channels, 1),
            )
            for d in dilations
        )
        self.pooling = bool(pooling)
        if self.pooling:
            self.pool_conv = nn.Conv2d(in_channels, inner_channels, 1, bias=False)
            self.pool_bn = nn.BatchNorm2d(inner_channels)
            self.pool_act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.project = ConvBNAct(inner_channels * (1 + len(dilations) + self.pooling), out_channels, 1)
        self.dropout = nn.Dropout(dropout)
        init_new_conv(self)

    def forward(self, x: Tensor) -> Tensor:
        feats = [self.branch1x1(x)] + [b(x) for b in self.branches3x3]
        if self.pooling:
            h, w = x.shape[-2:]
            pooled = self.pool_conv(x.mean(dim=(2, 3), keepdim=True))
            if self.training and x.shape[0] == 1:
                pooled = self.pool_act(self.pool_bn(pooled.expand(-1, -1, h, w)))
            else:
                pooled = self.pool_act(self.pool_bn(pooled)).expand(-1, -1, h, w)
            feats.append(pooled)
        return self.dropout(self.project(torch.cat(feats, dim=1)))
