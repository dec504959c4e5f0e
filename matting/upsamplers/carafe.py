"""CARAFE (Wang et al., ICCV 2019): content-aware reassembly with kernels predicted from the decoder alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .reassembly import OBSOLETE_OPTIONS, carafe
from .registry import Upsampler, check_int, register_upsampler

__all__ = ["CARAFE"]


@register_upsampler("carafe")
class CARAFE(Upsampler):
    """CARAFE upsampler; ignores ``en``. de (B, C, H, W) -> (B, C, sH, sW).

    kernels = softmax_K*K(pixel_shuffle(content_encoder(channel_compressor(de)), s)), then the same
    :func:`carafe` reassembly FADE uses. ``channel_compressor`` (1x1, C -> m) and ``content_encoder``
    (k_enc x k_enc, m -> K*K*s*s) keep mmcv's ``CARAFEPack`` names, channel order and initialisation
    (Xavier-uniform, content encoder N(0, 0.001)), so its weights load unchanged (``up_group`` = 1).

    Args:
        channels: C.  scale: s.  up_kernel_size: K (5).  encoder_kernel_size: k_enc (3).
        compressed_channels: m (64).
    """

    obsolete_options = OBSOLETE_OPTIONS

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        up_kernel_size: int = 5,
        encoder_kernel_size: int = 3,
        compressed_channels: int = 64,
    ) -> None:
        super().__init__(channels, scale)
        check_int("carafe", "up_kernel_size", up_kernel_size, odd=True)
        check_int("carafe", "encoder_kernel_size", encoder_kernel_size, odd=True)
        check_int("carafe", "compressed_channels", compressed_channels)
        self.up_kernel_size = up_kernel_size
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            up_kernel_size * up_kernel_size * scale * scale,
            encoder_kernel_size,
            padding=encoder_kernel_size // 2,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.channel_compressor.weight)
        nn.init.zeros_(self.channel_compressor.bias)
        # Near-zero logits: the kernels start close to uniform averaging over the K x K window.
        nn.init.normal_(self.content_encoder.weight, std=0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def kernel_logits(self, de: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K*K, sH, sW) kernel logits (channel k*s*s + phase before the pixel shuffle)."""
        return F.pixel_shuffle(self.content_encoder(self.channel_compressor(de)), self.scale)

    def kernels(self, de: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K*K, sH, sW) kernels, softmax-normalised over dim 1."""
        return torch.softmax(self.kernel_logits(de), dim=1)

    def upsample(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        logits = self.kernel_logits(de)
        return carafe(de, logits, self.up_kernel_size, self.scale, logits=True)
