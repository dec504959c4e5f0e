"""Fixed and plain learned upsamplers: nearest, bilinear, transposed convolution, pixel shuffle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Upsampler, check_int, register_upsampler

__all__ = ["NearestUpsampler", "BilinearUpsampler", "DeconvUpsampler", "PixelShuffleUpsampler"]


@register_upsampler("nearest")
class NearestUpsampler(Upsampler):
    """Nearest-neighbour interpolation of ``de``; no parameters, ignores ``en``."""

    def upsample(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        return F.interpolate(de, scale_factor=self.scale, mode="nearest")


@register_upsampler("bilinear")
class BilinearUpsampler(Upsampler):
    """Bilinear interpolation of ``de`` (``align_corners=False``); no parameters, ignores ``en``."""

    def upsample(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        return F.interpolate(de, scale_factor=self.scale, mode="bilinear", align_corners=False)


@register_upsampler("deconv")
class DeconvUpsampler(Upsampler):
    """Transposed convolution C -> C with stride ``scale``; ignores ``en``.

    The kernel is 2s (s even) or 2s - 1 (s odd) wide so that every output pixel is covered by the same number
    of taps; a kernel of exactly s would make the output a pixel-wise copy pattern (no overlap at all).
    With ``bilinear_init`` the weights start as per-channel bilinear interpolation (as in FCN), else PyTorch's
    default initialisation.
    """

    def __init__(self, channels: int, scale: int = 2, bilinear_init: bool = False) -> None:
        super().__init__(channels, scale)
        k = 2 * scale - scale % 2
        self.deconv = nn.ConvTranspose2d(channels, channels, k, stride=scale, padding=(k - scale) // 2)
        if bilinear_init:
            with torch.no_grad():
                self.deconv.weight.zero_()
                idx = torch.arange(channels)
                self.deconv.weight[idx, idx] = _bilinear_kernel(k, scale)
                self.deconv.bias.zero_()

    def upsample(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        return self.deconv(de)


def _bilinear_kernel(size: int, scale: int) -> torch.Tensor:
    """(size, size) tent filter that makes a stride-``scale`` transposed conv interpolate bilinearly."""
    center = (size - 1) / 2 if size % 2 == 1 else scale - 0.5
    t = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / scale
    return torch.outer(t, t).clamp_min(0).float()


@register_upsampler("pixelshuffle")
class PixelShuffleUpsampler(Upsampler):
    """Sub-pixel convolution (Shi et al., 2016): conv C -> C*s*s, then pixel shuffle; ignores ``en``.

    ``icnr`` (Aitken et al., 2017) starts the conv so that all s*s sub-pixels of a channel share one filter:
    the initial output is then nearest upsampling of a conv, free of the checkerboard pattern.
    """

    def __init__(self, channels: int, scale: int = 2, kernel_size: int = 3, icnr: bool = True) -> None:
        super().__init__(channels, scale)
        check_int("pixelshuffle", "kernel_size", kernel_size, odd=True)
        self.conv = nn.Conv2d(channels, channels * scale * scale, kernel_size, padding=kernel_size // 2)
        self.shuffle = nn.PixelShuffle(scale)
        if icnr:
            with torch.no_grad():
                base = nn.Conv2d(channels, channels, kernel_size).weight
                # PixelShuffle reads output channel c*s*s + k as sub-pixel k of channel c.
                self.conv.weight.copy_(base.repeat_interleave(scale * scale, dim=0))
                self.conv.bias.zero_()

    def upsample(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(de))
