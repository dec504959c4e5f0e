"""The upsampler interface, its shape check and the name registry that configs use.

Every upsampler is called as ``up(en, de)``:

- ``en``: (B, C, sH, sW) encoder feature at the target resolution (ignored when ``uses_encoder`` is False;
  those upsamplers also accept ``en=None``); an upsampler may accept another width (``encoder_channels``,
  e.g. SAPA's ``dim_y``),
- ``de``: (B, C, H, W) decoder feature to upsample,
- returns (B, C, sH, sW), same dtype (also under autocast), device and memory layout as ``de``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Callable, TypeVar

import torch
from torch import nn

from matting.errors import MattingError

__all__ = [
    "check_choice",
    "check_int",
    "Upsampler",
    "UpsamplerConfigError",
    "UPSAMPLERS",
    "available_upsamplers",
    "build_upsampler",
    "register_upsampler",
]


class UpsamplerConfigError(MattingError, ValueError):
    """A bad upsampler name or option. A ValueError for library callers, a one-line user error for the CLI."""


def check_int(owner: str, key: str, value, minimum: int = 1, odd: bool = False) -> None:
    """Raises UpsamplerConfigError unless ``value`` is an int >= ``minimum`` (and odd when ``odd``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (odd and value % 2 == 0):
        kind = f"an {'odd ' if odd else ''}int >= {minimum}"
        raise UpsamplerConfigError(f"{owner}: {key} must be {kind}, got {value!r}")


def check_choice(owner: str, key: str, value, choices) -> None:
    """Raises UpsamplerConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise UpsamplerConfigError(f"{owner}: {key} must be one of {', '.join(map(str, choices))}, got {value!r}")


class Upsampler(nn.Module):
    """Base class: stores ``channels`` and ``scale`` and checks the inputs before ``upsample`` runs.

    Subclasses implement ``upsample(en, de)``; ``forward`` validates shapes first so that a mismatch is
    reported with both shapes instead of surfacing as an obscure broadcasting error deep inside an op.
    """

    #: Whether ``en`` is read. Class attribute, so the network can decide what to pass without building one.
    uses_encoder: bool = False
    #: Whether the upsampler's own initialisation is part of its definition, so a network-wide re-initialisation
    #: (``model.init: official``) must leave it alone: e.g. DySample's near-zero offsets make it start as
    #: bilinear upsampling.
    keeps_own_init: bool = False

    #: Options of earlier versions that configs (and checkpoints' configs) may still carry, with their valid
    #: values: :func:`build_upsampler` checks them, warns and ignores them.
    obsolete_options: dict[str, tuple] = {}

    def __init__(self, channels: int, scale: int = 2) -> None:
        super().__init__()
        check_int(type(self).__name__, "channels", channels)
        check_int(type(self).__name__, "scale", scale, minimum=2)
        self.channels = channels
        self.scale = scale
        #: Channels ``en`` must have; a subclass whose ``en`` may be wider or narrower than ``de`` (SAPA) sets it.
        self.encoder_channels = channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, scale={self.scale}"

    def check_inputs(self, en: torch.Tensor | None, de: torch.Tensor) -> None:
        """Raises ValueError naming both shapes unless en is (B, C_en, s*H, s*W) for de (B, C, H, W), where
        C_en = ``encoder_channels`` (C unless a subclass says otherwise)."""
        name = type(self).__name__
        if not isinstance(de, torch.Tensor) or de.dim() != 4:
            shape = tuple(de.shape) if isinstance(de, torch.Tensor) else type(de).__name__
            raise ValueError(f"{name}: de must be a (B, C, H, W) tensor, got {shape}")
        if de.shape[1] != self.channels:
            raise ValueError(f"{name}: de has {de.shape[1]} channels, expected {self.channels} (de {tuple(de.shape)})")
        if en is None:
            if self.uses_encoder:
                raise ValueError(f"{name}: needs the encoder feature en, got None (de {tuple(de.shape)})")
            return
        if not isinstance(en, torch.Tensor) or en.dim() != 4:
            shape = tuple(en.shape) if isinstance(en, torch.Tensor) else type(en).__name__
            raise ValueError(f"{name}: en must be a (B, C, H, W) tensor, got {shape} (de {tuple(de.shape)})")
        s, ce = self.scale, self.encoder_channels
        b, c, h, w = de.shape
        if en.shape[0] != b or en.shape[1] != ce or en.shape[2] != s * h or en.shape[3] != s * w:
            channels = "channels" if ce == c else f"{ce} channels"
            raise ValueError(
                f"{name}: en {tuple(en.shape)} does not match de {tuple(de.shape)}: "
                f"expected en of shape {(b, ce, s * h, s * w)} (same batch and {channels}, {s}x the spatial size)"
            )

    def forward(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        self.check_inputs(en, de)
        out = self.upsample(en, de)
        # Under CUDA autocast some ops (e.g. upsample_nearest2d) run in float32 next to float16 features; the
        # decoder stays in one dtype, so the output has de's.
        if out.dtype != de.dtype:
            out = out.to(de.dtype)
        return out

    def upsample(self, en: torch.Tensor | None, de: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def is_channels_last(t: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels-last (and not also plainly contiguous, as when H = W = 1)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def in_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s memory layout (channels-last or NCHW); a copy only when the two differ. For
    upsamplers whose last op (``grid_sample``, a broadcast product) does not keep the input's layout, so that
    every upsampler's output is laid out as its ``de``, as torch's upsampling ops do."""
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


UPSAMPLERS: dict[str, type[Upsampler]] = {}

U = TypeVar("U", bound=type[Upsampler])


def register_upsampler(name: str) -> Callable[[U], U]:
    """Class decorator: makes ``build_upsampler(name, ...)`` construct the class."""

    def decorator(cls: U) -> U:
        if not (isinstance(cls, type) and issubclass(cls, Upsampler)):
            raise TypeError(f"register_upsampler({name!r}): {cls!r} is not an Upsampler subclass")
        if name in UPSAMPLERS and UPSAMPLERS[name] is not cls:
            raise ValueError(f"register_upsampler: name {name!r} is already taken by {UPSAMPLERS[name].__name__}")
        UPSAMPLERS[name] = cls
        return cls

    return decorator


def available_upsamplers() -> list[str]:
    """The registered names, sorted."""
    return sorted(UPSAMPLERS)


def _options_of(cls: type[Upsampler]) -> list[str]:
    # The first argument after self is the channel count, whatever a class calls it (FADE: in_channels).
    params = list(inspect.signature(cls.__init__).parameters)[2:]
    return [p for p in params if p != "scale"]


def build_upsampler(name: str, channels: int, /, scale: int = 2, **options) -> Upsampler:
    """Builds the upsampler registered as ``name`` for ``channels``-channel features and an integer ``scale``.

    ``name`` and ``channels`` are positional-only, so an option of either name (from a config's
    ``upsampler_options``) is reported as an unknown option instead of clashing with them.

    Raises UpsamplerConfigError (a ValueError and a MattingError) for an unknown name or option, or a bad value.
    """
    if name not in UPSAMPLERS:
        raise UpsamplerConfigError(
            f"unknown upsampler {name!r}; known upsamplers: {', '.join(available_upsamplers())}"
        )
    cls = UPSAMPLERS[name]
    for key in set(options) & set(cls.obsolete_options):
        value = options.pop(key)
        check_choice(name, key, value, cls.obsolete_options[key])
        warnings.warn(
            f"upsampler {name!r}: option {key!r} is obsolete and ignored (implementations are chosen "
            "internally, per device)", FutureWarning, stacklevel=2,
        )
    known = _options_of(cls)
    for key in options:
        if key not in known:
            hint = ", ".join(known) if known else "none"
            raise UpsamplerConfigError(f"upsampler {name!r}: unknown option {key!r} (options: {hint})")
    return cls(channels, scale=scale, **options)
