"""A MobileNetV2 encoder (torchvision's ``features``) for an IndexNet-style network with output stride 32.

IndexNet removes every stride of MobileNetV2 and downsamples with (index) pooling after the layer instead, so the
whole network runs at 2x the resolution of the ImageNet one (about 4x the multiply-adds). This encoder keeps
torchvision's strided blocks unchanged (so ImageNet weights are used exactly as trained, and the network is light
enough to train on a CPU) and taps the last feature at each resolution, which is what IndexNet's pooling-based
design hands to its decoder too: the feature just before each downsampling.

A small stem (3x3 conv + BN + leaky ReLU on the 4-channel input) supplies the full-resolution feature that the
last decoder stage needs (FADE's ``en`` and the skip at /1); it is not part of the ImageNet network.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import mobilenet_v2
from torchvision.ops.misc import Conv2dNormActivation

from .layers import ConvBNAct, init_new_conv

__all__ = ["MobileNetV2Encoder"]


def _block_stride(block: nn.Module) -> int:
    if isinstance(block, Conv2dNormActivation):
        return block[0].stride[0]
    return block.stride


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 ``features[0:18]`` (the 1x1 conv to 1280 is dropped) with a 4-channel first conv.

    ``forward(x)`` with x (B, 4, H, W) returns ``(f32, stages)``: ``f32`` is the (B, 320*w, H/32, W/32) output,
    and ``stages`` lists, deepest first, the ``(en, skip_source)`` pairs of the five decoder stages; in this
    encoder both are the same tensor, the last feature at the stage's target resolution:

    =====  ======  ============================  ========================
    stage  target  feature                       channels at width_mult 1
    =====  ======  ============================  ========================
    0      /16     features[13]                  96
    1      /8      features[6]                   32
    2      /4      features[3]                   24
    3      /2      features[1]                   16
    4      /1      stem(x)                       ``stem_channels`` (16)
    =====  ======  ============================  ========================

    Args:
        width_mult: torchvision's MobileNetV2 width multiplier (ImageNet weights exist for 1.0 only).
        stem_channels: width of the full-resolution stem.
        in_channels: input channels (4: RGB + trimap).
    """

    output_stride = 32

    def __init__(self, width_mult: float = 1.0, stem_channels: int = 16, in_channels: int = 4) -> None:
        super().__init__()
        if not (isinstance(width_mult, (int, float)) and not isinstance(width_mult, bool) and width_mult > 0):
            raise ValueError(f"mobilenetv2: width_mult must be a positive number, got {width_mult!r}")
        if isinstance(stem_channels, bool) or not isinstance(stem_channels, int) or stem_channels < 1:
            raise ValueError(f"mobilenetv2: stem_channels must be a positive int, got {stem_channels!r}")
        self.width_mult = float(width_mult)
        features = mobilenet_v2(weights=None, width_mult=width_mult).features[:18]
        first = features[0][0]
        features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=2, padding=1, bias=False)
        nn.init.kaiming_normal_(features[0][0].weight, mode="fan_out")  # torchvision's init of this conv
        self.features = features
        self.stem = ConvBNAct(in_channels, stem_channels, 3)
        init_new_conv(self.stem)

        # Tap the last block before every stride-2 block (and the last block): index -> resolution.
        strides = [_block_stride(b) for b in features]
        taps, res = [], 1
        for i, s in enumerate(strides):
            res *= s
            if i + 1 == len(strides) or strides[i + 1] == 2:
                taps.append((i, res))
        if [r for _, r in taps] != [2, 4, 8, 16, 32]:
            raise AssertionError(f"unexpected MobileNetV2 layout: taps at {taps}")
        self.tap_indices = tuple(i for i, _ in taps)  # (1, 3, 6, 13, 17)
        channels = [features[i].out_channels for i in self.tap_indices]
        self.out_channels = channels[-1]
        # Deepest first: /16, /8, /4, /2, then the stem at /1; en and skip are the same feature.
        self.stage_channels = tuple((c, c) for c in channels[-2::-1]) + ((stem_channels, stem_channels),)

    def backbone_modules(self) -> list[nn.Module]:
        """The modules that ImageNet weights initialise (``features``; the stem is new)."""
        return [self.features]

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        taps: list[Tensor] = []
        f = x
        for i, block in enumerate(self.features):
            f = block(f)
            if i in self.tap_indices:
                taps.append(f)
        s = self.stem(x)
        stages = [(t, t) for t in taps[-2::-1]] + [(s, s)]
        return taps[-1], stages
