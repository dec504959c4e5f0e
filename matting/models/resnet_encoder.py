"""The ResNet-34 encoder of the paper's matting network (A2U matting with FADE), built from torchvision's ResNet-34.

Differences from the ImageNet network, all as in the official ``a2u_matting/resnet.py``:

- 4 input channels (RGB + trimap), and the 7x7 stem conv runs at STRIDE 1, so ``l0`` is at full resolution;
- the stem's 3x3/2 max-pool is replaced by two 2x2/2 max-pools (``l0p`` at /2, then /4);
- the first block of layer2 and of layer3 computes its first 3x3 conv BEFORE downsampling (stride 1), keeps
  that activation (``l10`` at /4, ``l20`` at /8: FADE's encoder features), and downsamples it with a 2x2/2
  max-pool before the second conv; the 1x1/2 shortcut is unchanged;
- leaky ReLU (slope 0.01) instead of ReLU; layer4 and the classifier are dropped (output stride 16);
- layer3 keeps its first 4 blocks, not 6: the official ``resnetmat()`` builds ResNet-34 with the block counts
  ``[3, 4, 4, 2]`` (and never builds layer4), so its layer3 is the first conv block plus 3 more. That network
  has 8.05M parameters with bilinear upsampling, and A2U's reported 8.09M is it plus A2U's 40k; with all 6
  blocks it would have 10.41M (torchvision's layer3 has 6). ``layer3_blocks=6`` keeps all of them.
  docs/network.md describes the network layer by layer.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), so torchvision's ImageNet
state dict loads directly (see :mod:`matting.models.pretrained`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet34
from torchvision.models.resnet import BasicBlock

from .layers import LEAKY_SLOPE

__all__ = ["ResNet34Encoder", "PreDownsampleBlock"]


class PreDownsampleBlock(nn.Module):
    """A torchvision ``BasicBlock`` with stride 2, rearranged to expose its pre-downsampling activation.

        pre = act(bn1(conv1(x)))            conv1 at stride 1: (B, C_out, H, W)
        out = act(bn2(conv2(max_pool2(pre))) + downsample(x))            (B, C_out, H/2, W/2)

    ``forward`` returns ``(out, pre)``. The submodules (and so the state-dict keys) are the block's own.
    """

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        if block.downsample is None or block.conv1.stride != (2, 2):
            raise ValueError("PreDownsampleBlock expects a BasicBlock with stride 2 and a downsample shortcut")
        block.conv1.stride = (1, 1)
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(F.max_pool2d(pre, 2, 2)))
        return self.act(out + self.downsample(x)), pre


class ResNet34Encoder(nn.Module):
    """ResNet-34 layers 1-3 with a stride-1 stem: (B, 4, H, W) -> deepest feature + per-stage decoder inputs.

    ``forward(x)`` returns ``(l3, stages)``: ``l3`` is (B, 256, H/16, W/16), and ``stages`` lists, deepest
    first, the ``(en, skip_source)`` pair of each decoder stage:

    ======  ==================  ===================  ==========================
    stage   target resolution   en (FADE's encoder)  skip source
    ======  ==================  ===================  ==========================
    0       /8                  l20 (256)            l2 (128)
    1       /4                  l10 (128)            l1 (64)
    2       /2                  l0p (64)             l0p (64)
    3       /1                  l0 (64)              the input x (4)
    ======  ==================  ===================  ==========================

    ``stage_channels`` gives the matching ``(en_channels, skip_channels)``.
    """

    output_stride = 16
    out_channels = 256
    stage_channels = ((256, 128), (128, 64), (64, 64), (64, 4))

    def __init__(self, in_channels: int = 4, layer3_blocks: int = 4) -> None:
        super().__init__()
        if not 1 <= layer3_blocks <= 6:
            raise ValueError(f"layer3_blocks must be in 1..6 (ResNet-34's layer3 has 6 blocks), got {layer3_blocks}")
        net = resnet34(weights=None)
        # torchvision's initialisation of the stem, kept for the new 4-channel conv.
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=1, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = net.bn1
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        for layer in (net.layer1, net.layer2, net.layer3):
            for block in layer:
                block.relu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.layer1 = net.layer1
        # The first blocks of layer2/3 become PreDownsampleBlocks; indices (hence state-dict keys) are kept.
        self.layer2 = nn.Sequential(PreDownsampleBlock(net.layer2[0]), *net.layer2[1:])
        self.layer3 = nn.Sequential(PreDownsampleBlock(net.layer3[0]), *net.layer3[1:layer3_blocks])

    def backbone_modules(self) -> list[nn.Module]:
        """The modules that ImageNet weights initialise (all of them here)."""
        return [self]

    def forward(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        l0 = self.act(self.bn1(self.conv1(x)))
        l0p = F.max_pool2d(l0, 2, 2)
        l1 = self.layer1(F.max_pool2d(l0p, 2, 2))
        l2, l10 = self.layer2[0](l1)
        l2 = self.layer2[1:](l2)
        l3, l20 = self.layer3[0](l2)
        l3 = self.layer3[1:](l3)
        return l3, [(l20, l2), (l10, l1), (l0p, l0p), (l0, x)]
