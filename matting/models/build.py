"""``build_model``: the one builder shared by the configs, the tests and users; ``model_from_config``: the network
a config's ``model`` section describes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from matting.errors import MattingError
from matting.upsamplers import UPSAMPLERS, available_upsamplers

from .aspp import ASPP, aspp_dilations
from .batchnorm import freeze_batchnorm
from .decoder import Decoder
from .layers import init_official
from .matting_net import HEADS, MattingNet
from .mobilenet_encoder import MobileNetV2Encoder
from .options import ENCODER_OPTIONS, EncoderOptions, MobileNetV2Options, encoder_options
from .pretrained import (
    fetch_imagenet_state_dict,
    inplace_abn_imagenet_to_torchvision,
    is_inplace_abn_imagenet,
    load_encoder_weights,
    read_state_dict,
)
from .resnet_encoder import ResNet34Encoder

if TYPE_CHECKING:  # annotations only: the config imports this room, never the other way round
    from matting.config import ModelConfig

__all__ = ["MODELS", "ENCODER_OPTIONS", "HEAD_CHOICES", "INIT_CHOICES", "build_model", "model_from_config"]

#: Encoder name -> what the network is.
MODELS: dict[str, str] = {
    "resnet34": "the paper's network: ResNet-34 layers 1-3, stride-1 stem, output stride 16, ASPP, 4 stages",
    "mobilenetv2": "IndexNet-style MobileNetV2 network: output stride 32, ASPP, 5 stages, light enough for CPU",
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


def build_model(
    encoder: str = "resnet34",
    upsampler: str = "fade",
    *,
    options: EncoderOptions | None = None,
    pretrained: str | os.PathLike | None = None,
    upsampler_options: Mapping[str, Any] | None = None,
    freeze_bn: bool | str = False,
    head: str = "one_conv",
    init: str = "per_module",
    **encoder_kwargs: Any,
) -> MattingNet:
    """Builds the matting network: (B, 4, H, W) from :func:`make_input` -> raw alpha (B, 1, H, W).

    Args:
        encoder: "resnet34" (the paper's network, output stride 16) or "mobilenetv2" (output stride 32).
        upsampler: registry name of the upsampler used at every decoder stage ("fade", "bilinear", ...).
        options: the encoder's typed options (:class:`ResNet34Options`, :class:`MobileNetV2Options`); or give
            them as keyword arguments (``**encoder_kwargs``, e.g. ``width_mult=0.5``), not both.
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

    Unknown encoders, upsamplers, options and choices raise :class:`MattingError` listing the valid ones.
    """
    if encoder not in MODELS:
        raise MattingError(f"unknown encoder {encoder!r}; known encoders: {', '.join(MODELS)}")
    if upsampler not in UPSAMPLERS:
        raise MattingError(f"unknown upsampler {upsampler!r}; known upsamplers: {', '.join(available_upsamplers())}")
    if options is not None and not isinstance(options, EncoderOptions):
        raise MattingError(f"options= takes an encoder's options object (e.g. MobileNetV2Options(...)), got "
                           f"{type(options).__name__}; give plain values as keyword arguments")
    if options is not None and encoder_kwargs:
        raise MattingError("give the encoder options as options= or as keyword arguments, not both")
    opts = encoder_options(encoder, options if options is not None else encoder_kwargs)
    if freeze_bn not in (False, True, "encoder"):
        raise MattingError(f"freeze_bn must be false, true or 'encoder', got {freeze_bn!r}")
    for key, value, choices in (("head", head, HEAD_CHOICES), ("init", init, INIT_CHOICES)):
        if value not in choices:
            raise MattingError(f"model {key} must be one of {', '.join(choices)}, got {value!r}")

    enc, default_context, default_decoder = _encoder(opts)
    context_channels = opts.context_channels or default_context
    decoder_channels = tuple(opts.decoder_channels or default_decoder)
    dilations = tuple(opts.aspp_dilations or aspp_dilations(enc.output_stride))
    context = ASPP(enc.out_channels, context_channels, dilations, opts.aspp_channels, float(opts.aspp_dropout),
                   opts.aspp_pooling)
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


def _encoder(opts: EncoderOptions) -> tuple[nn.Module, int, tuple[int, ...]]:
    """The encoder, and the default context width and decoder widths that go with it."""
    if isinstance(opts, MobileNetV2Options):
        enc = MobileNetV2Encoder(opts.width_mult, opts.stem_channels)
        # Widths follow the encoder, so FADE's en never needs a projection: each stage outputs the width of
        # the next stage's encoder feature.
        widths = [en for en, _ in enc.stage_channels]
        return enc, widths[0], (*widths[1:], widths[-1])
    return ResNet34Encoder(layer3_blocks=opts.layer3_blocks), 256, (128, 64, 64, 32)


def model_from_config(cfg: ModelConfig) -> MattingNet:
    """The network that a config's validated ``model`` section describes (:class:`matting.config.ModelConfig`),
    ImageNet weights included when ``cfg.pretrained`` says so. A checkpoint's network is built with
    ``dataclasses.replace(cfg, pretrained=None)``: its weights come from the checkpoint."""
    return build_model(
        cfg.encoder, cfg.upsampler, options=cfg.options, pretrained=cfg.pretrained,
        upsampler_options=cfg.upsampler_options, freeze_bn=cfg.freeze_bn, head=cfg.head, init=cfg.init,
    )


def _load_pretrained(enc: nn.Module, encoder: str, pretrained: Any, opts: EncoderOptions) -> None:
    if pretrained == "imagenet":
        width = getattr(opts, "width_mult", 1.0)
        if width != 1.0:
            raise MattingError(
                f"pretrained='imagenet' needs width_mult 1.0 for {encoder} (got {width}): "
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
