"""The U-shaped decoder: one x2 upsampling stage per encoder downsampling, each with a registry upsampler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from matting.upsamplers import UpsamplerConfigError, build_upsampler

from .layers import ConvBNAct, ResidualConvBlock, init_new_conv

__all__ = ["DecoderStage", "Decoder"]


class DecoderStage(nn.Module):
    """One decoder stage, as in the official A2U/FADE matting decoder:

        x = up(en, de)                     (B, C, 2H, 2W)     C = de_channels
        x = x + skip(skip_source)          skip: 3x3 conv + BN + leaky ReLU, skip_channels -> C
        out = blocks(x)                    two residual conv blocks, C -> out_channels -> out_channels

    ``up`` comes from the upsampler registry (``matting.upsamplers``), built for C channels at scale 2. FADE-like
    upsamplers mix ``en`` with the upsampled ``de``, so they need both at C channels: when ``en_channels != C``
    the encoder feature is first projected by ``en_proj`` (1x1 conv + BN + leaky ReLU, C_en -> C). Upsamplers
    that ignore the encoder (``uses_encoder`` False) get ``en=None`` and no projection is built.

    Args:
        de_channels: C, width of the decoder feature entering the stage.
        en_channels: width of the encoder feature at the target resolution.
        skip_channels: width of the skip source at the target resolution.
        out_channels: width of the stage output.
        upsampler: registry name ("fade", "bilinear", ...).
        upsampler_options: extra keyword arguments of the upsampler.
    """

    def __init__(
        self,
        de_channels: int,
        en_channels: int,
        skip_channels: int,
        out_channels: int,
        upsampler: str = "fade",
        upsampler_options: Mapping | None = None,
    ) -> None:
        super().__init__()
        options = dict(upsampler_options or {})
        if "scale" in options:
            raise UpsamplerConfigError(f"upsampler {upsampler!r}: 'scale' is not an option here (every stage is x2)")
        self.up = build_upsampler(upsampler, de_channels, scale=2, **options)
        self.uses_encoder = bool(self.up.uses_encoder)
        needs_proj = self.uses_encoder and en_channels != de_channels
        self.en_proj = ConvBNAct(en_channels, de_channels, 1) if needs_proj else None
        self.skip = ConvBNAct(skip_channels, de_channels, 3)
        self.blocks = nn.Sequential(
            ResidualConvBlock(de_channels, out_channels), ResidualConvBlock(out_channels, out_channels)
        )
        # The upsampler keeps its own initialisation; only the layers added here get the official one.
        for m in (self.en_proj, self.skip, self.blocks):
            if m is not None:
                init_new_conv(m)

    def forward(self, de: Tensor, en: Tensor, skip_source: Tensor) -> Tensor:
        if self.uses_encoder:
            x = self.up(en if self.en_proj is None else self.en_proj(en), de)
        else:
            x = self.up(None, de)
        return self.blocks(x + self.skip(skip_source))


class Decoder(nn.Module):
    """A stack of :class:`DecoderStage` s, deepest first; ``stages[i].up`` is the upsampler of stage i.

    Args:
        in_channels: width of the context module's output (the decoder's input).
        stage_channels: per stage, deepest first, the encoder's ``(en_channels, skip_channels)``.
        out_channels: per stage, the output width (the next stage's ``de_channels``).
        upsampler, upsampler_options: as in :class:`DecoderStage`, the same for every stage.

    ``forward(x, stages)`` takes the context output (B, in_channels, h, w) and the encoder's
    ``[(en, skip_source), ...]`` (each at twice the previous resolution) and returns
    (B, out_channels[-1], h * 2**n, w * 2**n).
    """

    def __init__(
        self,
        in_channels: int,
        stage_channels: Sequence[tuple[int, int]],
        out_channels: Sequence[int],
        upsampler: str = "fade",
        upsampler_options: Mapping | None = None,
    ) -> None:
        super().__init__()
        if len(stage_channels) != len(out_channels):
            raise ValueError(
                f"decoder: {len(out_channels)} output widths given for {len(stage_channels)} stages"
            )
        stages = []
        de = in_channels
        for (en, skip), out in zip(stage_channels, out_channels):
            stages.append(DecoderStage(de, en, skip, out, upsampler, upsampler_options))
            de = out
        self.stages = nn.ModuleList(stages)
        self.out_channels = de

    def forward(self, x: Tensor, stages: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        for stage, (en, skip) in zip(self.stages, stages):
            x = stage(x, en, skip)
        return x
