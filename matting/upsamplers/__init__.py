"""Upsamplers behind one interface, ``up(en, de) -> (B, C, s*H, s*W)``, buildable by name.

    up = build_upsampler("fade", 64)
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
from .carafe import CARAFE
from .dysample import DySample, convert_dysample_state_dict
from .encoder_paired import A2U, IndexNetUpsampler
from .fade import FADE, FADELite, convert_official_fade_state_dict, semi_shift_logits
from .reassembly import carafe, fade_carafe, gated_carafe
from .sapa import SAPA, SAPAG, sapa_similarity, sapa_similarity_reference
from .simple import BilinearUpsampler, DeconvUpsampler, NearestUpsampler, PixelShuffleUpsampler

__all__ = [
    "UPSAMPLERS",
    "Upsampler",
    "UpsamplerConfigError",
    "available_upsamplers",
    "build_upsampler",
    "register_upsampler",
    "carafe",
    "gated_carafe",
    "fade_carafe",
    "FADE",
    "FADELite",
    "semi_shift_logits",
    "convert_official_fade_state_dict",
    "CARAFE",
    "SAPA",
    "SAPAG",
    "sapa_similarity",
    "sapa_similarity_reference",
    "DySample",
    "convert_dysample_state_dict",
    "A2U",
    "IndexNetUpsampler",
    "BilinearUpsampler",
    "DeconvUpsampler",
    "NearestUpsampler",
    "PixelShuffleUpsampler",
]
