"""``build_model``: the one builder shared by the configs, the tests and users."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from matting.errors import MattingError
from matting.upsamplers import UPSAMPLERS, available_upsamplers

from .aspp import ASPP, aspp_dilations
from .batchnorm import freeze_batchnorm
from .decoder import Decoder
from .layers import init_official
from .matting_net import HEADS, MattingNet
from .mobilenet_encoder import MobileNetV2Encoder
from .official import inplace_abn_imagenet_to_torchvision, is_inplace_abn_imagenet
from .pretrained import fetch_imagenet_state_dict, load_encoder_weights, read_state_dict
from .resnet_encoder import ResNet34Encoder

__all__ = ["MODELS", "ENCODER_OPTIONS", "HEAD_CHOICES", "INIT_CHOICES", "build_model"]

#: Encoder name -> what the network is.
MODELS: dict[str, str] = {
    "resnet34": "the paper's network: ResNet-34 layers 1-3, stride-1 stem, output stride 16, ASPP, 4 stages",
    "mobilenetv2": "IndexNet-style MobileNetV2 network: output stride 32, ASPP, 5 stages, light enough for CPU",
}

_COMMON_OPTIONS = {
    "context_channels": "width of the ASPP output (the decoder input)",
    "decoder_channels": "output width of each decoder stage, deepest first",
    "aspp_channels": "width of each ASPP branch",
    "aspp_dropout": "dropout after the ASPP (0.5 in the official code)",
    "aspp_dilations": "dilations of the three dilated ASPP branches (default: the official ones for the stride)",
    "aspp_pooling": "keep ASPP's image-pooling branch (true, as the official code; false for small training crops)",
}

#: ``head`` name -> what it is.
HEAD_CHOICES: dict[str, str] = {
    "one_conv": "one 3x3 conv C -> 1 with bias, initialised to zero (MattingHead)",
    "official": "the official head: 3x3 conv C -> 1, BN(1) + leaky ReLU, 3x3 conv 1 -> 1, no biases (OfficialHead)",
}

#: ``init`` name -> what it does.
INIT_CHOICES: dict[str, str] = {
    "per_module": "each part its own: torchvision's for the encoder, Kaiming-normal for the new convs, the "
    "upsamplers' published ones, the head's",
    "official": "the official code's: every conv xavier_normal (gain of leaky ReLU 0.01), zero bias, BN 1/0, "
    "at the end of construction; ImageNet weights are loaded over it",
}

#: Encoder name -> {option: meaning}, the keyword options build_model accepts for it.
ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "resnet34": {
        **_COMMON_OPTIONS,
        "layer3_blocks": "blocks of ResNet-34's layer3 that are kept (4: the official network; 6: all of them)",
    },
    "mobilenetv2": {
        **_COMMON_OPTIONS,
        "width_mult": "MobileNetV2 width multiplier (ImageNet weights exist for 1.0 only)",
        "stem_channels": "width of the full-resolution input stem (FADE's en at /1)",
    },
}


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MattingError(f"model option {name} must be a positive int, got {value!r}")
    return value


def _int_list(name: str, value: Any, count: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != count:
        raise MattingError(f"model option {name} must be a list of {count} positive ints, got {value!r}")
    return tuple(_positive_int(name, v) for v in value)


def build_model(
    encoder: str = "resnet34",
    upsampler: str = "fade",
    pretrained: str | os.PathLike | None = None,
    upsampler_options: Mapping[str, Any] | None = None,
    freeze_bn: bool | str = False,
    head: str = "one_conv",
    init: str = "per_module",
    options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> MattingNet:
    """Builds the matting network: (B, 4, H, W) from :func:`make_input` -> raw alpha (B, 1, H, W).

    Args:
        encoder: "resnet34" (the paper's network, output stride 16) or "mobilenetv2" (output stride 32).
        upsampler: registry name of the upsampler used at every decoder stage ("fade", "bilinear", ...).
        pretrained: None (train from scratch), "imagenet" (torchvision's ImageNet weights, from the torch hub
            cache or downloaded; offline without the cache file: MattingError), or the path of a local .pth
            file with torchvision-named weights or, for resnet34, inplace_abn's ImageNet ResNet-34 (the file
            the official code starts from). The trimap channel of the input conv starts at zero.
        upsampler_options: extra keyword arguments of the upsampler (e.g. ``{"up_kernel_size": 3}``).
        freeze_bn: True or "encoder": the encoder's ImageNet BatchNorm layers become
            :class:`~matting.models.batchnorm.FrozenBatchNorm2d` (running statistics and affine parameters
            fixed, whatever ``model.train()`` says). False: all BN layers train (batch statistics in
            ``model.train()``, as the official run did).
        head: "one_conv" (default) or "official", see ``HEAD_CHOICES``.
        init: "per_module" (default) or "official", see ``INIT_CHOICES``. Order of construction: network,
            then ``init``, then the ``pretrained`` encoder weights, then ``freeze_bn``.
        options: the config's ``model.options`` section; merged with ``kwargs`` (``kwargs`` win).
        **kwargs: encoder-specific options, see ``ENCODER_OPTIONS`` (e.g. ``width_mult=0.5``,
            ``decoder_channels=[...]``).

    Unknown encoders, upsamplers and options raise :class:`MattingError` listing the valid ones.
    """
    if encoder not in MODELS:
        raise MattingError(f"unknown encoder {encoder!r}; known encoders: {', '.join(MODELS)}")
    if upsampler not in UPSAMPLERS:
        raise MattingError(f"unknown upsampler {upsampler!r}; known upsamplers: {', '.join(available_upsamplers())}")
    opts = {**dict(options or {}), **kwargs}
    known = ENCODER_OPTIONS[encoder]
    for key in opts:
        if key not in known:
            raise MattingError(f"unknown option {key!r} for encoder {encoder!r}; options: {', '.join(known)}")
    if freeze_bn not in (False, True, "encoder"):
        raise MattingError(f"freeze_bn must be false, true or 'encoder', got {freeze_bn!r}")
    for key, value, choices in (("head", head, HEAD_CHOICES), ("init", init, INIT_CHOICES)):
        if value not in choices:
            raise MattingError(f"model {key} must be one of {', '.join(choices)}, got {value!r}")

    if encoder == "resnet34":
        try:  # the encoder knows how many blocks there are; its ValueError becomes a config error here
            enc: nn.Module = ResNet34Encoder(
                layer3_blocks=_positive_int("layer3_blocks", opts.get("layer3_blocks", 4))
            )
        except ValueError as exc:
            raise MattingError(f"model option {exc}") from None
        default_context, default_decoder = 256, (128, 64, 64, 32)
    else:
        width_mult = opts.get("width_mult", 1.0)
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise MattingError(f"model option width_mult must be a positive number, got {width_mult!r}")
        enc = MobileNetV2Encoder(width_mult, _positive_int("stem_channels", opts.get("stem_channels", 16)))
        # Widths follow the encoder, so FADE's en never needs a projection: each stage outputs the width of
        # the next stage's encoder feature.
        widths = [en for en, _ in enc.stage_channels]
        default_context, default_decoder = widths[0], (*widths[1:], widths[-1])

    n_stages = len(enc.stage_channels)
    context_channels = _positive_int("context_channels", opts.get("context_channels", default_context))
    decoder_channels = _int_list("decoder_channels", opts.get("decoder_channels", default_decoder), n_stages)
    aspp_channels = _positive_int("aspp_channels", opts.get("aspp_channels", 256))
    dropout = opts.get("aspp_dropout", 0.5)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise MattingError(f"model option aspp_dropout must be a number in [0, 1), got {dropout!r}")

    dilations = _int_list("aspp_dilations", opts.get("aspp_dilations", aspp_dilations(enc.output_stride)), 3)
    pooling = opts.get("aspp_pooling", True)
    if not isinstance(pooling, bool):
        raise MattingError(f"model option aspp_pooling must be true or false, got {pooling!r}")

    context = ASPP(enc.out_channels, context_channels, dilations, aspp_channels, float(dropout), pooling)
    decoder = Decoder(context_channels, enc.stage_channels, decoder_channels, upsampler, upsampler_options)
    model = MattingNet(enc, context, decoder, HEADS[head](decoder.out_channels))
    if init == "official":
        init_official(model)
    if pretrained is not None:
        _load_pretrained(enc, encoder, pretrained, opts)
    if freeze_bn:
        for m in enc.backbone_modules():
            freeze_batchnorm(m)
    return model


def _load_pretrained(enc: nn.Module, encoder: str, pretrained: Any, opts: Mapping[str, Any]) -> None:
    if pretrained == "imagenet":
        if encoder == "mobilenetv2" and opts.get("width_mult", 1.0) != 1.0:
            raise MattingError(
                f"pretrained='imagenet' needs width_mult 1.0 for mobilenetv2 (got {opts['width_mult']}): "
                f"torchvision has ImageNet weights for that width only"
            )
        load_encoder_weights(enc, fetch_imagenet_state_dict(encoder), encoder, f"ImageNet weights for {encoder}")
    elif isinstance(pretrained, (str, os.PathLike)):
        state = read_state_dict(pretrained)
        if encoder == "resnet34" and is_inplace_abn_imagenet(state):  # the official code's ImageNet weights
            state = inplace_abn_imagenet_to_torchvision(state)
        load_encoder_weights(enc, state, encoder, f"pretrained weights file {pretrained}")
    else:
        raise MattingError(f"pretrained must be null, 'imagenet' or a file path, got {pretrained!r}")
