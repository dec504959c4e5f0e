"""DySample (Liu et al., ICCV 2023): upsampling by sampling the decoder feature at predicted positions.

``de`` (B, C, H, W) alone decides everything (``en`` is ignored). With G channel groups and scale s, a 1x1
conv predicts, per low-resolution pixel, an (x, y) offset for each group and each of the s*s sub-pixels:

    'lp':  o = offset(de) * 0.25 + init_pos                                   static scope
           o = offset(de) * sigmoid(scope(de)) * 0.5 + init_pos               dynamic scope (dyscope)
    'pl':  the same on de' = pixel_shuffle(de, s) (C/s^2 channels at full resolution), the result
           pixel_unshuffled back: o = pixel_unshuffle(offset(de') [* sigmoid(scope(de'))], s) * (0.25 | 0.5)
           + init_pos

``o`` has 2*G*s*s channels, index ((d*G + g)*s + i)*s + j for component d (0: x, 1: y), group g, sub-pixel
row i and column j. ``init_pos`` is ((j - (s-1)/2)/s, (i - (s-1)/2)/s), i.e. +-0.25 for s = 2. Output pixel
(h*s + i, w*s + j) of group g samples ``de``'s channel block [g*C/G, (g+1)*C/G) bilinearly at the point

    (x, y) = (w + 0.5 + o[0, g, i, j, h, w], h + 0.5 + o[1, g, i, j, h, w])     (pixel-edge units)

via ``grid_sample(align_corners=False, padding_mode='border')``. With zero offset weights this is exactly
bilinear upsampling (``F.interpolate(..., 'bilinear', align_corners=False)``). The factors scale the offsets,
they do not bound them.

Parameters and buffers keep the official names (``offset``, ``scope``, the persistent buffer ``init_pos``),
so a state dict of the authors' ``dysample.py`` loads with ``strict=True``. Their mmdet/mmseg copies, which
trained the released checkpoints, give ``scope`` a bias: build with ``scope_bias=True`` for those, or see
:func:`convert_dysample_state_dict`.

Unlike the official code, positions and the sampling grid are computed in float32 (float64 for float64 input)
whatever the input dtype: in float16 the official grid loses the sub-pixel offsets from W >= 512 and the +0.5
from W >= 1024. For half inputs, ``de`` is sampled in float32 and the output cast back to its dtype.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from matting.errors import MattingError
from matting.utils.flops import add_macs

from .registry import Upsampler, UpsamplerConfigError, check_choice, check_int, in_layout_of, register_upsampler

__all__ = ["DySample", "convert_dysample_state_dict"]


def _position_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@register_upsampler("dysample")
class DySample(Upsampler):
    """DySample upsampler; ignores ``en``. de (B, C, H, W) -> (B, C, sH, sW), de's dtype.

    Args:
        channels: C; divisible by ``groups`` (and by s*s for ``style='pl'``).
        scale: s (2).
        style: ``"lp"`` (offsets predicted at low resolution, then pixel-shuffled; the paper's default) or
            ``"pl"`` (pixel-shuffle first, predict at full resolution from C/s^2 channels).
        groups: G channel groups, each with its own sampling positions (4).
        dyscope: dynamic scope, a second 1x1 conv whose sigmoid modulates the offsets (DySample+).
        scope_bias: give the scope conv a bias, as the authors' mmdet/mmseg copies (the released checkpoints)
            do; the current standalone ``dysample.py`` has none. Only with ``dyscope``.
    Parameters: ``offset`` (1x1 conv with bias, init N(0, 0.001^2) / 0), ``scope`` (1x1 conv, init 0; only
    with ``dyscope``), buffer ``init_pos`` (1, 2*G*s*s, 1, 1).
    """

    # Its offsets start near zero so that it starts as bilinear upsampling (the paper's design): a network-wide
    # Xavier re-initialisation would make its first sampling positions random.
    keeps_own_init = True

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        style: str = "lp",
        groups: int = 4,
        dyscope: bool = False,
        scope_bias: bool = False,
    ) -> None:
        super().__init__(channels, scale)
        name = type(self).__name__
        check_choice(name, "style", style, ("lp", "pl"))
        check_int(name, "groups", groups)
        for key, value in (("dyscope", dyscope), ("scope_bias", scope_bias)):
            if not isinstance(value, bool):
                raise UpsamplerConfigError(f"{name}: {key} must be true or false, got {value!r}")
        if channels % groups:
            raise UpsamplerConfigError(f"{name}: channels ({channels}) must be divisible by groups ({groups})")
        if style == "pl" and channels % (scale * scale):
            raise UpsamplerConfigError(
                f"{name}: style 'pl' needs channels ({channels}) divisible by scale^2 ({scale * scale})"
            )
        if scope_bias and not dyscope:
            raise UpsamplerConfigError(f"{name}: scope_bias needs dyscope (there is no scope conv without it)")
        self.style, self.groups, self.dyscope, self.scope_bias = style, groups, dyscope, scope_bias
        in_channels = channels // (scale * scale) if style == "pl" else channels
        out_channels = 2 * groups if style == "pl" else 2 * groups * scale * scale
        self.offset = nn.Conv2d(in_channels, out_channels, 1)
        self.scope = nn.Conv2d(in_channels, out_channels, 1, bias=scope_bias) if dyscope else None
        self.register_buffer("init_pos", self._initial_positions())
        self.reset_parameters()

    def _initial_positions(self) -> torch.Tensor:
        """(1, 2*G*s*s, 1, 1): x offset (j - (s-1)/2)/s and y offset (i - (s-1)/2)/s of sub-pixel (i, j)."""
        s = self.scale
        h = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        pos = torch.stack([h.expand(s, s), h[:, None].expand(s, s)])  # [d, i, j]: d = 0 -> h[j], d = 1 -> h[i]
        return pos[:, None].expand(2, self.groups, s, s).reshape(1, -1, 1, 1).clone()

    def reset_parameters(self) -> None:
        """The official initialisation: offset weights N(0, 0.001^2), zero bias; scope all zeros."""
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)
            if self.scope.bias is not None:
                nn.init.zeros_(self.scope.bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, style={self.style!r}, groups={self.groups}, dyscope={self.dyscope}, "
            f"scope_bias={self.scope_bias}"
        )

    def offsets(self, de: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2*G*s*s, H, W) sampling offsets in input pixels, init_pos included; float32
        (float64 for float64 input)."""
        s, dtype = self.scale, _position_dtype(de.dtype)
        src = F.pixel_shuffle(de, s) if self.style == "pl" else de
        o = self.offset(src).to(dtype)
        if self.scope is not None:
            o = o * self.scope(src).to(dtype).sigmoid()
        if self.style == "pl":
            o = F.pixel_unshuffle(o, s)
        return o * (0.5 if self.scope is not None else 0.25) + self.init_pos.to(dtype)

    def sampling_grid(self, offsets: torch.Tensor) -> torch.Tensor:
        """(B, 2*G*s*s, H, W) offsets -> (B*G, sH, sW, 2) ``grid_sample`` grid, (x, y) normalised to [-1, 1]
        with align_corners=False; row b*G + g holds group g of image b."""
        b, _, h, w = offsets.shape
        s, g = self.scale, self.groups
        o = offsets.view(b, 2, g, s, s, h, w)
        x = torch.arange(w, dtype=o.dtype, device=o.device) + 0.5
        y = torch.arange(h, dtype=o.dtype, device=o.device)[:, None] + 0.5
        grid = torch.stack([2 * (x + o[:, 0]) / w - 1, 2 * (y + o[:, 1]) / h - 1], dim=-1)  # (B, G, s, s, H, W, 2)
        return grid.permute(0, 1, 4, 2, 5, 3, 6).reshape(b * g, s * h, s * w, 2)

    def upsample(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        b, c, h, w = de.shape
        s, g = self.scale, self.groups
        grid = self.sampling_grid(self.offsets(de))
        add_macs(b * c * s * h * s * w * 4)  # bilinear sampling: 4 taps per output element
        # grid_sample needs input and grid in one dtype; the grid must stay float32, so half inputs are
        # sampled in float32.
        src = de.reshape(b * g, c // g, h, w).to(grid.dtype)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return in_layout_of(out.view(b, c, s * h, s * w).to(de.dtype), de)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        # A strict load already fails on the scope bias; say which variant the checkpoint is and what to do.
        has, wants = prefix + "scope.bias" in state_dict, self.scope is not None and self.scope.bias is not None
        if strict and self.scope is not None and has != wants:
            variant = "has" if has else "lacks"
            errors.append(
                f"{prefix}scope.bias: the checkpoint {variant} a scope bias and this DySample is built with "
                f"scope_bias={wants}; build it with scope_bias={has}, or convert the state dict with "
                f"convert_dysample_state_dict(state_dict, scope_bias={wants})"
            )


_SCOPE_WEIGHT = re.compile(r"(^|.*\.)scope\.weight$")


def convert_dysample_state_dict(
    state_dict: Mapping[str, torch.Tensor], scope_bias: bool
) -> dict[str, torch.Tensor]:
    """Makes the DySample entries of a state dict fit modules built with ``scope_bias``, exactly.

    A DySample is recognised by its ``<prefix>scope.weight`` next to ``<prefix>offset.weight`` and
    ``<prefix>init_pos``, anywhere in the dict (a whole network's checkpoint converts too); other keys pass
    unchanged.

    - ``scope_bias=True`` (target: the older, biased variant): a missing ``scope.bias`` is added as zeros,
      which adds nothing to the scope, so the output is unchanged.
    - ``scope_bias=False`` (target: the current, bias-free variant): a ``scope.bias`` is dropped only if it is
      all zeros. A non-zero bias has no exact bias-free equivalent: MattingError, naming the key, says to
      build the module with ``scope_bias=True`` instead (e.g. ``upsampler_options: {dyscope: true,
      scope_bias: true}``).
    """
    out = dict(state_dict)
    for key in state_dict:
        match = _SCOPE_WEIGHT.match(key)
        if match is None:
            continue
        prefix = match.group(1)
        if prefix + "offset.weight" not in state_dict or prefix + "init_pos" not in state_dict:
            continue
        bias_key = prefix + "scope.bias"
        if scope_bias and bias_key not in out:
            weight = state_dict[key]
            out[bias_key] = weight.new_zeros(weight.shape[0])
        elif not scope_bias and bias_key in out:
            if out[bias_key].any():
                raise MattingError(
                    f"{bias_key} is not zero: this DySample checkpoint needs a scope bias; build the module "
                    f"with dyscope=True, scope_bias=True and load it unconverted"
                )
            del out[bias_key]
    return out
