"""Each encoder's options, typed: one dataclass per encoder, validated when it is made.

The config loader makes one from ``model.options`` (once, when the config is loaded, naming the file on a bad
value); :func:`~matting.models.build_model` makes one from its keyword arguments. Either way the network is
built from a checked object, never from a loose dict.

    ResNet34Options(layer3_blocks=6)                       # the 6-block layer3 of torchvision's ResNet-34
    MobileNetV2Options(width_mult=0.5, decoder_channels=[48, 32, 24, 16, 16])
    encoder_options("mobilenetv2", {"width_mult": 0.5})    # by encoder name, from plain data

A ``None`` width or dilation means "the encoder's default" (see each field); lists stay lists, so an options
object round-trips through a checkpoint's plain-data config unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from matting.errors import MattingError
from matting.utils.fields import doc_field

__all__ = ["ENCODER_OPTIONS", "EncoderOptions", "MobileNetV2Options", "OptionError", "ResNet34Options",
           "encoder_options", "option_names", "options_markdown"]


class OptionError(MattingError, ValueError):
    """A model option of the right name with a bad value. ``key``: the option; ``problem``: what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"model option {key} {problem}")
        self.key, self.problem = key, problem


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise OptionError(key, f"must be {what}, got {value!r}")


def _check_int_list(key: str, value: Any, count: int) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) == count and all(_is_int(v) and v >= 1 for v in value)
    _check(ok, key, f"a list of {count} positive ints", value)


@dataclass
class EncoderOptions:
    """What every encoder takes: the context module's and the decoder's widths, ASPP's settings.

    Subclasses set ``stages`` (decoder stages, one per encoder downsampling) and check their own fields.
    """

    stages: ClassVar[int]

    context_channels: int | None = doc_field(
        None, "width of the ASPP output, the decoder input (null: 256 for resnet34, the encoder's last width for "
        "mobilenetv2)")
    decoder_channels: list | None = doc_field(
        None, "output width of each decoder stage, deepest first (null: 128/64/64/32 for resnet34; the next "
        "encoder widths for mobilenetv2, so FADE's en needs no projection)")
    aspp_channels: int = doc_field(256, "width of each ASPP branch")
    aspp_dropout: float = doc_field(0.5, "dropout after the ASPP (0.5 in the official code), in [0, 1)")
    aspp_dilations: list | None = doc_field(
        None, "dilations of the three dilated ASPP branches (null: the official ones for the output stride)")
    aspp_pooling: bool = doc_field(
        True, "keep ASPP's image-pooling branch (true, as the official code; false for small training crops)")

    def __post_init__(self) -> None:
        if self.context_channels is not None:
            _check(_is_int(self.context_channels) and self.context_channels >= 1, "context_channels",
                   "a positive int", self.context_channels)
        if self.decoder_channels is not None:
            _check_int_list("decoder_channels", self.decoder_channels, self.stages)
        _check(_is_int(self.aspp_channels) and self.aspp_channels >= 1, "aspp_channels", "a positive int",
               self.aspp_channels)
        _check(_is_number(self.aspp_dropout) and 0 <= self.aspp_dropout < 1, "aspp_dropout", "a number in [0, 1)",
               self.aspp_dropout)
        if self.aspp_dilations is not None:
            _check_int_list("aspp_dilations", self.aspp_dilations, 3)
        _check(isinstance(self.aspp_pooling, bool), "aspp_pooling", "true or false", self.aspp_pooling)


@dataclass
class ResNet34Options(EncoderOptions):
    """Options of the ``resnet34`` network (the paper's; output stride 16, 4 decoder stages)."""

    stages: ClassVar[int] = 4

    layer3_blocks: int = doc_field(
        4, "blocks of ResNet-34's layer3 that are kept (4: the official network; 6: all of them)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(_is_int(self.layer3_blocks) and 1 <= self.layer3_blocks <= 6, "layer3_blocks",
               "an int in 1..6 (ResNet-34's layer3 has 6 blocks)", self.layer3_blocks)


@dataclass
class MobileNetV2Options(EncoderOptions):
    """Options of the ``mobilenetv2`` network (IndexNet-style; output stride 32, 5 decoder stages)."""

    stages: ClassVar[int] = 5

    width_mult: float = doc_field(1.0, "MobileNetV2 width multiplier (ImageNet weights exist for 1.0 only)")
    stem_channels: int = doc_field(16, "width of the full-resolution input stem (FADE's en at /1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(_is_number(self.width_mult) and self.width_mult > 0, "width_mult", "a positive number",
               self.width_mult)
        _check(_is_int(self.stem_channels) and self.stem_channels >= 1, "stem_channels", "a positive int",
               self.stem_channels)


#: Encoder name -> its options class.
ENCODER_OPTIONS: dict[str, type[EncoderOptions]] = {"resnet34": ResNet34Options, "mobilenetv2": MobileNetV2Options}


def option_names(encoder: str) -> list[str]:
    """The option names of ``encoder``, in declaration order."""
    return [f.name for f in dataclasses.fields(ENCODER_OPTIONS[encoder])]


def encoder_options(encoder: str, values: Mapping[str, Any] | EncoderOptions | None = None) -> EncoderOptions:
    """``encoder``'s options from plain data (``None``: all defaults), or ``values`` itself if it already is one.

    Raises MattingError for an unknown encoder, an unknown option (listing the valid ones), an options object
    of another encoder, or a bad value (:class:`OptionError`).
    """
    if encoder not in ENCODER_OPTIONS:
        raise MattingError(f"unknown encoder {encoder!r}; known encoders: {', '.join(ENCODER_OPTIONS)}")
    cls = ENCODER_OPTIONS[encoder]
    if isinstance(values, EncoderOptions):
        if type(values) is not cls:
            raise MattingError(f"{type(values).__name__} given for encoder {encoder!r}, which takes {cls.__name__}")
        return values
    values = dict(values or {})
    names = option_names(encoder)
    unknown = [key for key in values if key not in names]
    if unknown:
        raise MattingError(f"unknown option {unknown[0]!r} for encoder {encoder!r}; options: {', '.join(names)}")
    return cls(**values)


def options_markdown() -> str:
    """The options of every encoder as a markdown table (docs/network.md carries this output)."""
    lines = ["| option | resnet34 | mobilenetv2 | meaning |", "|---|---|---|---|"]
    classes = list(ENCODER_OPTIONS.values())
    names = list(dict.fromkeys(n for encoder in ENCODER_OPTIONS for n in option_names(encoder)))
    for name in names:
        fields = [next((f for f in dataclasses.fields(c) if f.name == name), None) for c in classes]
        cells = ["-" if f is None else f"`{_shown(f)}`" for f in fields]
        doc = next(f.metadata["doc"] for f in fields if f is not None)
        lines.append(f"| `{name}` | {' | '.join(cells)} | {doc} |")
    return "\n".join(lines)


def _shown(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
