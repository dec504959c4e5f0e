"""Upsamplers behind one interface, ``up(en, de) -> (B, C, s*H, s*W)``, buildable by name.

    up = build_upsampler("fade", channels=64)
    out = up(en, de)    # en: (B, 64, 2H, 2W) encoder feature, de: (B, 64, H, W) decoder feature
"""

from .registry import (
    UPSAMPLERS,
    Upsampler,
    UpsamplerConfigError,
    available_upsamplers,
    build_upsampler,
    register_upsampler,
)
from .simple import BilinearUpsampler, DeconvUpsampler, NearestUpsampler, PixelShuffleUpsampler

__all__ = [
    "UPSAMPLERS",
    "Upsampler",
    "UpsamplerConfigError",
    "available_upsamplers",
    "build_upsampler",
    "register_upsampler",
    "BilinearUpsampler",
    "DeconvUpsampler",
    "NearestUpsampler",
    "PixelShuffleUpsampler",
]
