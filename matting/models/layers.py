"""Small building blocks shared by the encoders, the context module, the decoder and the head.

The paper's network (A2U matting with FADE) uses BatchNorm followed by leaky ReLU with slope 0.01 after every
convolution (InPlaceABN's default), so that is the default here too.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LEAKY_SLOPE", "OFFICIAL_INIT_GAIN", "ConvBNAct", "ResidualConvBlock", "init_new_conv", "init_official"]

#: Negative slope of the leaky ReLU used throughout the paper's network.
LEAKY_SLOPE = 0.01

#: Gain of the official initialisation, ``calculate_gain("leaky_relu", 0.01)`` = sqrt(2 / (1 + 0.01^2)) ~ 1.4141.
OFFICIAL_INIT_GAIN = nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)


def init_new_conv(module: nn.Module) -> None:
    """Kaiming-normal conv weights, zero conv biases, BN weight 1 and bias 0, for every layer in ``module``.

    This is what the official matting code does for the layers it adds (``kaiming_normal_`` with its defaults).
    Upsamplers are never passed here: they keep their own initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_official(module: nn.Module) -> None:
    """The official network's initialisation (``_initialize_weights`` at the end of its constructor).

    Every ``nn.Conv2d`` in ``module`` (encoder, context, decoder, skips, head AND the upsamplers' convolutions)
    gets ``xavier_normal_`` weights with gain :data:`OFFICIAL_INIT_GAIN`, i.e. std = gain * sqrt(2 / (fan_in +
    fan_out)), and zero biases; every BatchNorm gets weight 1 and bias 0 (running statistics are left alone).
    The official rule is a type test on ``nn.Conv2d``, so transposed convolutions keep their own init. The
    ImageNet weights, when used, are loaded after this (see :func:`matting.models.build_model`).

    Upsamplers that declare ``keeps_own_init`` (DySample, which postdates the official code and is defined to
    start as bilinear upsampling) are left as they are.
    """
    kept = {id(p) for m in module.modules() if getattr(m, "keeps_own_init", False) for p in m.modules()}
    for m in module.modules():
        if id(m) in kept:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight, OFFICIAL_INIT_GAIN)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> leaky ReLU (or no activation with ``act=False``).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride). Padding keeps the size at
    stride 1 (``dilation * (kernel_size // 2)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        super().__init__(*layers)


class ResidualConvBlock(nn.Module):
    """The official decoder block (``residual_conv``): two 3x3 conv+BN with a (projected) identity shortcut.

        out = leaky_relu(bn2(conv2(leaky_relu(bn1(conv1(x))))) + shortcut(x))

    ``shortcut`` is a 1x1 conv + BN when the widths differ, else the identity.
    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, kernel_size)
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel_size, act=False)
        self.shortcut = (
            ConvBNAct(in_channels, out_channels, 1, act=False) if in_channels != out_channels else nn.Identity()
        )
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
