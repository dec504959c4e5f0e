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

The forward hands the reassembly, the softmax and the gate to one op, :func:`~.reassembly.fade_carafe`, with
the decoder branch of the logits and the gate logits at the decoder's resolution: the op upsamples them
itself, so no full-resolution copy of either (nor the normalised kernels) is ever stored. The op picks its
implementation per device (lean on the CPU, Triton on CUDA).

When it needs fewer multiply-adds (FADE with C < 90 for m = 64, K = 5) the compressors are folded into
``kernel_conv``: all are linear, so ``kernel_conv(compress_en(en))`` is one 3x3 conv C -> K*K of ``en`` with
weights ``W @ A``, plus the bias of ``compress_en`` seen through the zero-padded 3x3 window (which is not
constant on the border); likewise for ``compress_de`` (no bias, no border term). The m-channel embeddings
are then never stored, which is most of FADE's memory at full resolution. Gradients reach ``compress_*``
and ``kernel_conv`` through the folded weights; :func:`~matting.utils.flops.count_macs` charges the folded
convolutions to FADE itself, not to those submodules. Both rewrites are exact up to float rounding and
tested against the plain definition; inside :func:`~.reassembly.plain_ops` (export) FADE runs the plain
definition instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from matting.utils.flops import add_macs

from .banded import conv2d_banded
from .reassembly import OBSOLETE_OPTIONS, fade_carafe, fade_logits, plain_ops_enabled
from .registry import Upsampler, check_int, register_upsampler

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


def _fold(conv_weight: torch.Tensor, proj_weight: torch.Tensor) -> torch.Tensor:
    """Weights of conv(proj(x)) as one conv: (O, m, k, k) and a 1x1 (m, C, 1, 1) -> (O, C, k, k)."""
    return torch.einsum("omij,mc->ocij", conv_weight, proj_weight.flatten(1))


def _valid_taps(n: int, like: torch.Tensor) -> torch.Tensor:
    """(3, n): entry [i, y] is 1 where tap i of a zero-padded 3-wide window centred at y is inside 0..n-1."""
    pos = torch.arange(n, device=like.device) + torch.arange(-1, 2, device=like.device)[:, None]
    return ((pos >= 0) & (pos < n)).to(like.dtype)


class _SemiShiftUpsampler(Upsampler):
    """Shared body of FADE and FADE-Lite; ``embedding_dim`` and ``depthwise`` select the kernel generator."""

    uses_encoder = True

    obsolete_options = {**OBSOLETE_OPTIONS, "fold_compressors": (None, True, False)}

    def __init__(self, in_channels: int, scale: int, up_kernel_size: int, embedding_dim: int, depthwise: bool) -> None:
        super().__init__(in_channels, scale)
        name = type(self).__name__
        check_int(name, "up_kernel_size", up_kernel_size, odd=True)
        check_int(name, "embedding_dim", embedding_dim)
        k2 = up_kernel_size * up_kernel_size
        self.up_kernel_size = up_kernel_size
        # Fold when it needs fewer multiply-adds per pixel (the border term is negligible). Not an option:
        # both forms give the same values (tests set the attribute to compare them).
        plain = in_channels * embedding_dim + 9 * embedding_dim * k2
        self.fold_compressors = not depthwise and 9 * k2 * in_channels < plain
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
        return f"{super().extra_repr()}, up_kernel_size={self.up_kernel_size}"

    def logit_branches(self, en: torch.Tensor, de: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two branches of the semi-shift logits: ``kernel_conv(compress_en(en))`` (B, K*K, sH, sW) and
        ``kernel_conv(compress_de(de))`` (B, K*K, H, W); the logits are the first plus the second upsampled."""
        if not self.fold_compressors or plain_ops_enabled():
            return self.kernel_conv(self.compress_en(en)), self.kernel_conv(self.compress_de(de))
        # The encoder branch first: autograd runs the later-created decoder branch's backward first, which
        # frees its small gradient before the encoder branch's full-resolution one is allocated.
        from_en = self._folded_encoder_logits(en)
        # compress_de has no bias, so its fold is exact with no border term.
        weight = _fold(self.kernel_conv.weight, self.compress_de.weight)
        from_de = conv2d_banded(de, weight, self.kernel_conv.bias)
        add_macs(from_de.numel() * weight[0].numel())
        return from_en, from_de

    def kernel_logits(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(B, K*K, sH, sW) semi-shift logits, before softmax; equal to :func:`semi_shift_logits`."""
        from_en, from_de = self.logit_branches(en, de)
        return from_en + F.interpolate(from_de, scale_factor=self.scale, mode="nearest")

    def _folded_encoder_logits(self, en: torch.Tensor) -> torch.Tensor:
        """kernel_conv(compress_en(en)) as one 3x3 conv of ``en``; see the module docstring."""
        conv_w, conv_b = self.kernel_conv.weight, self.kernel_conv.bias  # (K2, m, 3, 3), (K2,)
        proj_b = self.compress_en.bias  # (m,)
        # Banded: at full resolution a plain conv backward holds two extra full-size oneDNN reorders.
        logits = conv2d_banded(en, _fold(conv_w, self.compress_en.weight), conv_b)
        # The embedding's bias is zero-padded like the rest of the embedding, so on the border fewer of the
        # 3x3 taps see it. Its contribution, the same for every image of the batch, is
        #   sum_ij taps[o, i, j] * row_ok[i, y] * col_ok[j, x],
        # computed as two small contractions instead of a conv of a ones map.
        taps = torch.einsum("omij,m->oij", conv_w, proj_b)  # (K2, 3, 3)
        h, w = en.shape[-2:]
        per_row = torch.einsum("oij,jx->oix", taps, _valid_taps(w, en))  # (K2, 3, W)
        border_bias = torch.matmul(_valid_taps(h, en).t(), per_row)  # (K2, H, W)
        k2, b, c = conv_w.shape[0], en.shape[0], en.shape[1]
        add_macs(h * w * 9 * k2 * b * c + h * w * k2 * 3)
        return logits.add_(border_bias)

    def kernels(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(B, K*K, sH, sW) reassembly kernels: non-negative, summing to 1 over dim 1."""
        return torch.softmax(self.kernel_logits(en, de), dim=1)

    def upsample(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        # One op from here, with the gate logits at the decoder's resolution. The logit branches go through
        # fade_logits without a name holding them, so that a branch the op does not keep is freed at once.
        logits, logits_lo = fade_logits(*self.logit_branches(en, de), self.scale)
        return fade_carafe(de, logits, logits_lo, en, self.gate(de), self.up_kernel_size, self.scale)


@register_upsampler("fade")
class FADE(_SemiShiftUpsampler):
    """FADE upsampler: ``forward(en, de)`` with en (B, C, sH, sW), de (B, C, H, W) -> (B, C, sH, sW).

    Args:
        in_channels: C, the channel count of both ``en`` and ``de``.
        scale: upsampling factor s (2 in the paper).
        up_kernel_size: reassembly kernel size K (5).
        embedding_dim: width m of the compressed features (64).

    The reassembly's implementation is the op's choice per device (see :mod:`.reassembly`), not an option.
    """

    def __init__(self, in_channels: int, scale: int = 2, up_kernel_size: int = 5, embedding_dim: int = 64) -> None:
        super().__init__(in_channels, scale, up_kernel_size, embedding_dim, False)


@register_upsampler("fade_lite")
class FADELite(_SemiShiftUpsampler):
    """FADE-Lite: compressors to K*K channels and a depthwise 3x3 ``kernel_conv``. Interface as :class:`FADE`."""

    obsolete_options = OBSOLETE_OPTIONS  # it never had fold_compressors: that option is unknown here

    def __init__(self, in_channels: int, scale: int = 2, up_kernel_size: int = 5) -> None:
        k2 = up_kernel_size * up_kernel_size if isinstance(up_kernel_size, int) else 1
        super().__init__(in_channels, scale, up_kernel_size, k2, True)


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
