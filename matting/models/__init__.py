"""Encoder-decoder matting networks with a registry upsampler at every decoder stage.

    from matting.models import MobileNetV2Options, build_model, make_input, model_from_config, predict_alpha

    model = build_model("resnet34", upsampler="fade")            # the paper's network, output stride 16
    small = build_model("mobilenetv2", "fade", width_mult=0.5)   # encoder options as keyword arguments, or
    small = build_model("mobilenetv2", "fade", options=MobileNetV2Options(width_mult=0.5))
    model = model_from_config(cfg.model)                         # what a validated config describes
    x = make_input(image, trimap)      # image (B, 3, H, W) in [0, 1], trimap (B, 1, H, W) uint8 0/128/255
    raw = model(x)                     # (B, 1, H, W), unbounded: what the losses see in training
    alpha = predict_alpha(model.eval(), x)                        # clamped to [0, 1]

H and W must be multiples of ``model.output_stride`` (16 for resnet34, 32 for mobilenetv2); other sizes raise
:class:`InputSizeError`, a ValueError (the evaluation pads, the network never crops).
"""

from .aspp import ASPP
from .batchnorm import FrozenBatchNorm2d, convert_sync_batchnorm, freeze_batchnorm
from .build import ENCODER_OPTIONS, HEAD_CHOICES, INIT_CHOICES, MODELS, build_model, model_from_config
from .decoder import Decoder, DecoderStage
from .matting_net import (
    HEADS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSizeError,
    MattingHead,
    MattingNet,
    OfficialHead,
    make_input,
    predict_alpha,
)
from .mobilenet_encoder import MobileNetV2Encoder
from .official import load_official_a2u, official_model_config, official_module_names
from .options import EncoderOptions, MobileNetV2Options, OptionError, ResNet34Options, encoder_options
from .resnet_encoder import ResNet34Encoder
from .summary import count_parameters, model_costs, summary

__all__ = [
    "ASPP",
    "Decoder",
    "DecoderStage",
    "ENCODER_OPTIONS",
    "EncoderOptions",
    "FrozenBatchNorm2d",
    "HEADS",
    "HEAD_CHOICES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INIT_CHOICES",
    "InputSizeError",
    "MODELS",
    "MattingHead",
    "MattingNet",
    "MobileNetV2Encoder",
    "MobileNetV2Options",
    "OfficialHead",
    "OptionError",
    "ResNet34Encoder",
    "ResNet34Options",
    "build_model",
    "convert_sync_batchnorm",
    "count_parameters",
    "encoder_options",
    "freeze_batchnorm",
    "load_official_a2u",
    "make_input",
    "model_from_config",
    "model_costs",
    "official_model_config",
    "official_module_names",
    "predict_alpha",
    "summary",
]
