"""FADE and FADE-Lite (Lu et al., ECCV 2022): upsampling that fuses the encoder and decoder features.

For a decoder feature ``de`` (B, C, H, W) and the encoder feature ``en`` (B, C, sH, sW) of the target size:

    gate    = sigmoid(nearest_up(gate(de)))                                   (B, 1, sH, sW)
    logits  = kernel_conv(compress_en(en)) + nearest_up(kernel_conv(compress_de(de)))      (B, K*K, sH, sW)
    kernels = softmax(logits, dim=1)
    out     = gate * en + (1 - gate) * carafe(de, kernels, K, s)

``kernel_conv`` is one 3x3 convolution shared by both branches (its bias therefore enters twice, as in the
official code); applying it to the decoder at low resolution and nearest-upsampling the result is the same
as sliding its 3x3 window over the decoder at stride 1/s: the "semi-shift" convolution. FADE-Lite compresses
straight to K*K channels and makes ``kernel_conv`` depthwise.

Both ``en`` and ``de`` must have the same channel count C, because the gate mixes ``en`` with the upsampled
``de``: a decoder of another width projects its feature (or the encoder's) to C channels before calling FADE.

Parameters are named ``gate``, ``compress_en``, ``compress_de``, ``kernel_conv`` (plain ``nn.Conv2d``), so
weights of the official implementation load after :func:`convert_official_fade_state_dict`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .reassembly import IMPLEMENTATIONS, carafe
from .registry import Upsampler, UpsamplerConfigError, register_upsampler

__all__ = ["FADE", "FADELite", "semi_shift_logits", "convert_official_fade_state_dict"]


def semi_shift_logits(
    en: torch.Tensor,
    de: torch.Tensor,
    compress_en: nn.Module,
    compress_de: nn.Module,
    kernel_conv: nn.Module,
    scale: int,
) -> torch.Tensor:
    """The semi-shift kernel generator before softmax.

    Args:
        en: (B, C_en, sH, sW) encoder feature.  de: (B, C_de, H, W) decoder feature.
        compress_en, compress_de: 1x1 convolutions to the embedding width.
        kernel_conv: the shared 3x3 convolution (zero padding 1) to K*K channels.
    Returns:
        (B, K*K, sH, sW) logits; each equals one 3x3 window over ``en`` at stride 1 plus the same window
        over ``de`` at stride 1/s (the decoder branch is computed at low resolution, then nearest-upsampled).
    """
    from_en = kernel_conv(compress_en(en))
    from_de = kernel_conv(compress_de(de))
    return from_en + F.interpolate(from_de, scale_factor=scale, mode="nearest")


class _SemiShiftUpsampler(Upsampler):
    """Shared body of FADE and FADE-Lite; ``embedding_dim`` and ``depthwise`` select the kernel generator."""

    uses_encoder = True

    def __init__(
        self,
        in_channels: int,
        scale: int,
        up_kernel_size: int,
        embedding_dim: int,
        depthwise: bool,
        reassembly: str,
    ) -> None:
        super().__init__(in_channels, scale)
        name = type(self).__name__
        if isinstance(up_kernel_size, bool) or not isinstance(up_kernel_size, int) or up_kernel_size < 1 or up_kernel_size % 2 == 0:
            raise UpsamplerConfigError(f"{name}: up_kernel_size must be a positive odd int, got {up_kernel_size!r}")
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise UpsamplerConfigError(f"{name}: embedding_dim must be a positive int, got {embedding_dim!r}")
        if reassembly not in IMPLEMENTATIONS:
            raise UpsamplerConfigError(
                f"{name}: reassembly must be one of {', '.join(IMPLEMENTATIONS)}, got {reassembly!r}"
            )
        self.up_kernel_size = up_kernel_size
        self.reassembly = reassembly
        k2 = up_kernel_size * up_kernel_size
        self.gate = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.compress_en = nn.Conv2d(in_channels, embedding_dim, kernel_size=1)
        self.compress_de = nn.Conv2d(in_channels, embedding_dim, kernel_size=1, bias=False)
        self.kernel_conv = nn.Conv2d(embedding_dim, k2, kernel_size=3, padding=1, groups=k2 if depthwise else 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: Xavier-uniform weights, zero biases."""
        for m in (self.gate, self.compress_en, self.compress_de, self.kernel_conv):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, up_kernel_size={self.up_kernel_size}, reassembly={self.reassembly!r}"

    def gate_map(self, de: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, sH, sW) in (0, 1): the weight of ``en`` in the output."""
        return torch.sigmoid(F.interpolate(self.gate(de), scale_factor=self.scale, mode="nearest"))

    def kernel_logits(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(B, K*K, sH, sW) semi-shift logits, before softmax."""
        return semi_shift_logits(en, de, self.compress_en, self.compress_de, self.kernel_conv, self.scale)

    def kernels(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(B, K*K, sH, sW) reassembly kernels: non-negative, summing to 1 over dim 1."""
        return torch.softmax(self.kernel_logits(en, de), dim=1)

    def upsample(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        up = carafe(de, self.kernels(en, de), self.up_kernel_size, self.scale, impl=self.reassembly)
        # lerp(up, en, g) = g * en + (1 - g) * up, in one op and one saved difference fewer.
        return torch.lerp(up, en, self.gate_map(de))


@register_upsampler("fade")
class FADE(_SemiShiftUpsampler):
    """FADE upsampler: ``forward(en, de)`` with en (B, C, sH, sW), de (B, C, H, W) -> (B, C, sH, sW).

    Args:
        in_channels: C, the channel count of both ``en`` and ``de``.
        scale: upsampling factor s (2 in the paper).
        up_kernel_size: reassembly kernel size K (5).
        embedding_dim: width m of the compressed features (64).
        reassembly: ``"lean"`` (default) or ``"reference"`` (the official unfold formulation; same result,
            about 25x the output in extra memory; for tests and benchmarks).
    """

    def __init__(
        self,
        in_channels: int,
        scale: int = 2,
        up_kernel_size: int = 5,
        embedding_dim: int = 64,
        reassembly: str = "lean",
    ) -> None:
        super().__init__(in_channels, scale, up_kernel_size, embedding_dim, depthwise=False, reassembly=reassembly)


@register_upsampler("fade_lite")
class FADELite(_SemiShiftUpsampler):
    """FADE-Lite: compressors to K*K channels and a depthwise 3x3 ``kernel_conv``. Interface as :class:`FADE`."""

    def __init__(self, in_channels: int, scale: int = 2, up_kernel_size: int = 5, reassembly: str = "lean") -> None:
        k2 = up_kernel_size * up_kernel_size if isinstance(up_kernel_size, int) else 1
        super().__init__(in_channels, scale, up_kernel_size, k2, depthwise=True, reassembly=reassembly)


# Official (poppinace/fade, FADE_L2H.py) module paths -> ours. Matched as whole dotted segments anywhere in a
# key, so a FADE nested in a larger official model converts too (decoder.up.gate_generator.conv.weight ->
# decoder.up.gate.weight).
_OFFICIAL_NAMES = {
    "gate_generator.conv": "gate",
    "ker_generator.compressor_en": "compress_en",
    "ker_generator.compressor_de": "compress_de",
    "ker_generator.content_encoder": "kernel_conv",
}
_OFFICIAL_PATTERN = re.compile(r"(^|\.)(" + "|".join(re.escape(k) for k in _OFFICIAL_NAMES) + r")\.")


def convert_official_fade_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames the keys of an official FADE/FADE-Lite state dict (or of a model containing them) to ours.

    Keys that do not belong to FADE are kept unchanged, so a whole-network checkpoint can be passed.
    """
    def rename(key: str) -> str:
        return _OFFICIAL_PATTERN.sub(lambda m: f"{m.group(1)}{_OFFICIAL_NAMES[m.group(2)]}.", key)

    return {rename(k): v for k, v in state_dict.items()}
