"""The upsampling halves of two encoder-paired operators: A2U and IndexNet.

Both were published as a pair: a learned downsampler in the encoder plus an upsampler in the decoder that
reuses what the downsampler learned. Here the encoder stays fixed (the matting network is not changed), so
only the upsampling half is built, and its kernels or indices are generated *inside the upsampler* from
``en``, the encoder feature at the target resolution (the feature the paired downsampler would have seen).
Not included: the encoder-side learned downsampling (A2U's downsampling kernels, IndexNet's encoder index
``idx_en`` and its index-weighted pooling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from matting.utils.flops import add_macs

from .reassembly import OBSOLETE_OPTIONS, carafe
from .registry import Upsampler, UpsamplerConfigError, check_choice, check_int, in_layout_of, register_upsampler

__all__ = ["A2U", "IndexNetUpsampler"]


@register_upsampler("a2u")
class A2U(Upsampler):
    """Affinity-aware upsampling (Dai, Lu, Shen, CVPR 2021), upsampler half with kernels from ``en``.

    en (B, C, 2H, 2W), de (B, C, H, W) -> (B, C, 2H, 2W). The kernels come from a low-rank bilinear
    (second-order) affinity of ``en``, following the authors' stand-alone A2U upsampler:

        u, v  = conv1x1(adaptive_avg_pool(en, k x k))           per-image k x k filters, shared by channels
        U, V  = LeakyReLU(GroupNorm(en (*) u)), same for v      stride-2 depthwise, (B, C, H, W) each
        a     = sum_c U * V / sqrt(C)                           (B, rank, H, W) affinity
        p     = conv1x1(global_avg_pool(en))                    per-image (4*K*K, rank) projection
        kernels = softmax_K*K(sigmoid(pixel_shuffle(p a, 2)))   (B, K*K, 2H, 2W)
        out   = carafe(de, kernels, K, 2)

    Args:
        channels: C.  scale: must be 2 (the stride-2 affinity is specific to it).
        up_kernel_size: K (3).  encoder_kernel_size: k (6; even, padding (k - 1) // 2).
        rank: number of u/v pairs, d (1).  norm_groups: GroupNorm groups (32 in the paper; reduced to
            gcd(32, C) when C is not a multiple).
    """

    uses_encoder = True
    obsolete_options = OBSOLETE_OPTIONS

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        up_kernel_size: int = 3,
        encoder_kernel_size: int = 6,
        rank: int = 1,
        norm_groups: int = 32,
    ) -> None:
        super().__init__(channels, scale)
        if scale != 2:
            raise UpsamplerConfigError(f"a2u: only scale 2 is supported, got {scale!r}")
        check_int("a2u", "up_kernel_size", up_kernel_size, odd=True)
        check_int("a2u", "encoder_kernel_size", encoder_kernel_size)
        check_int("a2u", "rank", rank)
        check_int("a2u", "norm_groups", norm_groups)
        self.up_kernel_size = up_kernel_size
        self.encoder_kernel_size = encoder_kernel_size
        self.rank = rank
        k, groups = encoder_kernel_size, math.gcd(norm_groups, channels)
        self.pool_u = nn.AdaptiveAvgPool2d(k)
        self.pool_v = nn.AdaptiveAvgPool2d(k)
        self.filter_u = nn.Conv2d(channels, rank, 1)
        self.filter_v = nn.Conv2d(channels, rank, 1)
        self.norm_u = nn.GroupNorm(groups, channels)
        self.norm_v = nn.GroupNorm(groups, channels)
        self.projection = nn.Conv2d(channels, rank * 4 * up_kernel_size * up_kernel_size, 1)

    def _filtered(self, en: torch.Tensor, pool: nn.Module, make_filter: nn.Module, norm: nn.Module) -> torch.Tensor:
        """(B, C, 2H, 2W) -> (B * rank, C, H, W): en filtered depthwise by each image's own k x k filters."""
        b, c, h2, w2 = en.shape
        k = self.encoder_kernel_size
        filters = make_filter(pool(en))  # (B, rank, k, k)
        # One grouped conv for the whole batch: group (b, r, c) applies filter (b, r) to channel c of image b.
        weight = filters.reshape(b, self.rank, 1, 1, k, k).expand(b, self.rank, c, 1, k, k).reshape(-1, 1, k, k)
        x = en.unsqueeze(1).expand(b, self.rank, c, h2, w2).reshape(1, -1, h2, w2)
        out = F.conv2d(x, weight, stride=2, padding=(k - 1) // 2, groups=b * self.rank * c)
        out = out.view(b * self.rank, c, out.shape[-2], out.shape[-1])
        add_macs(out.numel() * k * k)  # functional conv: invisible to module hooks
        return F.leaky_relu(norm(out), 0.01)

    def kernels(self, en: torch.Tensor) -> torch.Tensor:
        """(B, C, 2H, 2W) -> (B, K*K, 2H, 2W) kernels, normalised over dim 1."""
        return torch.softmax(self.kernel_logits(en), dim=1)

    def kernel_logits(self, en: torch.Tensor) -> torch.Tensor:
        """(B, C, 2H, 2W) -> (B, K*K, 2H, 2W) logits of the kernels' softmax."""
        b, c, h2, w2 = en.shape
        u = self._filtered(en, self.pool_u, self.filter_u, self.norm_u)
        v = self._filtered(en, self.pool_v, self.filter_v, self.norm_v)
        h, w = u.shape[-2:]
        affinity = (u * v).sum(dim=1).view(b, self.rank, h, w) / math.sqrt(c)
        proj = self.projection(F.adaptive_avg_pool2d(en, 1)).view(b, -1, self.rank)  # (B, 4*K*K, rank)
        logits = torch.einsum("bkr,brhw->bkhw", proj, affinity)
        add_macs(u.numel() + logits.numel() * self.rank)
        logits = F.pixel_shuffle(logits, 2)
        # Sigmoid before the softmax, as in the authors' code: it bounds the logits to (0, 1).
        return torch.sigmoid(logits)

    def upsample(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        logits = self.kernel_logits(en)
        return carafe(de, logits, self.up_kernel_size, 2, logits=True)


@register_upsampler("indexnet")
class IndexNetUpsampler(Upsampler):
    """IndexNet's learned index upsampling (Lu et al., ICCV 2019), decoder half with indices from ``en``.

    en (B, C, sH, sW), de (B, C, H, W) -> (B, C, sH, sW):  out = index * nearest_up(de), where the decoder
    index ``index = pixel_shuffle(sigmoid(index_blocks(en)), s)`` is (B, 1, sH, sW) for the holistic index
    network and (B, C, sH, sW) for the depthwise ones. Each index block is a stride-s convolution of ``en``
    (kernel s, or 2s with ``context``), followed with ``nonlinear`` by BN + ReLU6 + a 1x1 convolution.

    Args:
        channels: C.  scale: s.
        mode: ``"holistic"`` (one C -> s*s block, shared index), ``"o2o"`` (depthwise one-to-one: per channel)
            or ``"m2o"`` (depthwise many-to-one: each channel's index from all channels; the IndexNet Matting
            default, and the largest: about 4*17*C^2 parameters).
        nonlinear, context: the two IndexNet options (both on in IndexNet Matting).
    """

    uses_encoder = True

    def __init__(
        self, channels: int, scale: int = 2, mode: str = "m2o", nonlinear: bool = True, context: bool = True
    ) -> None:
        super().__init__(channels, scale)
        check_choice("indexnet", "mode", mode, ("holistic", "o2o", "m2o"))
        self.mode = mode
        c, s = channels, scale
        kernel, padding = (2 * s, (s + 1) // 2) if context else (s, 0)
        if mode == "holistic":
            hidden = 2 * c
            blocks = [self._block(c, hidden, s * s, kernel, s, padding, groups=1, nonlinear=nonlinear)]
        else:
            groups = c if mode == "o2o" else 1
            blocks = [self._block(c, c, c, kernel, s, padding, groups, nonlinear) for _ in range(s * s)]
        self.index_blocks = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _block(c_in, hidden, c_out, kernel, stride, padding, groups, nonlinear) -> nn.Sequential:
        if not nonlinear:
            return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False))
        return nn.Sequential(
            nn.Conv2d(c_in, hidden, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, groups=groups, bias=False),
        )

    def index(self, en: torch.Tensor) -> torch.Tensor:
        """(B, C, sH, sW) -> decoder index in (0, 1): (B, 1, sH, sW) holistic, else (B, C, sH, sW)."""
        s = self.scale
        if self.mode == "holistic":
            logits = self.index_blocks[0](en)  # (B, s*s, H, W)
        else:
            # Channel c of phase p goes to pixel-shuffle input channel c*s*s + p.
            logits = torch.stack([block(en) for block in self.index_blocks], dim=2).flatten(1, 2)
        return F.pixel_shuffle(torch.sigmoid(logits), s)

    def upsample(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        return in_layout_of(self.index(en) * F.interpolate(de, scale_factor=self.scale, mode="nearest"), de)
