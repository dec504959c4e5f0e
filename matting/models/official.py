"""The authors' official A2U/FADE matting checkpoints (inplace_abn's ImageNet ResNet-34, the file the official
training starts from, is read by :mod:`matting.models.pretrained`).

The official matting network (``a2u_matting/resnet.py`` of the FADE code, built on A2U matting's code) is this
project's ``resnet34`` network with ``model.head: official``, module for module; docs/network.md lists the
correspondence. Two things change on the way in:

- names: the table of :func:`official_module_names` (e.g. ``layer2_1.proj_conv`` -> ``encoder.layer2.0.
  downsample.0``, ``decoder_layer4`` -> ``decoder.stages.0``, ``short3`` -> ``decoder.stages.0.skip``);
- BatchNorm scales: the official network normalises with InPlace-ABN, which scales by ``|weight| + eps``
  (eps = 1e-5) instead of ``weight``, so a plain ``nn.BatchNorm2d`` gets ``|w| + 1e-5`` as its weight.

Checkpoints written by the official trainer are ``{"state_dict": {"module.<name>": tensor}, "optimizer": ...,
"epoch": ..., "measure": ...}`` (its ``tools/clean_model.py`` keeps only ``state_dict``); both are read with
``torch.load(weights_only=True)``, allowing the numpy scalars that the trainer's metric lists hold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from matting.errors import MattingError
from matting.upsamplers.fade import _OFFICIAL_NAMES as _FADE_NAMES

from .build import build_model
from .pretrained import INPLACE_ABN_EPS, inplace_abn_imagenet_to_torchvision, is_inplace_abn_imagenet

__all__ = [
    "INPLACE_ABN_EPS",
    "OFFICIAL_UPSAMPLERS",
    "inplace_abn_imagenet_to_torchvision",
    "is_inplace_abn_imagenet",
    "load_official_a2u",
    "official_model_config",
    "official_module_names",
    "read_official_checkpoint",
]

#: Upsamplers the official matting network was built with (``MODEL.upsample`` of ``a2u_matting/decoder.py``).
OFFICIAL_UPSAMPLERS = ("fade", "fade_lite", "bilinear")

# The numpy scalars the official trainer stores in its metric lists (np.mean of per-image SADs), under the
# names numpy 1.x (the authors' environment) and numpy 2.x pickle them with. Data only: nothing is executed.
_NUMPY_GLOBALS = [
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
]


def _block(official: str, ours: str, layout: str) -> dict[str, str]:
    """Module names of one residual block with two 3x3 convs and an optional 1x1 projection."""
    if layout == "resnet":  # torchvision BasicBlock
        convs = {"conv1": "conv1", "bn1": "bn1", "conv2": "conv2", "bn2": "bn2"}
        proj = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}
    else:  # matting.models.layers.ResidualConvBlock (the official decoder's residual_conv)
        convs = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv2.0", "bn2": "conv2.1"}
        proj = {"proj_conv": "shortcut.0", "proj_bn": "shortcut.1"}
    inner = "convs" if layout == "resnet" else "dep_sep_conv"
    names = {f"{official}.{inner}.{k}": f"{ours}.{v}" for k, v in convs.items()}
    names.update({f"{official}.{k}": f"{ours}.{v}" for k, v in proj.items()})
    return names


def official_module_names(upsampler: str = "fade") -> dict[str, str]:
    """Official module name -> this project's, for the official ``resnet34`` matting network with ``upsampler``.

    Covers every module with weights: encoder (3 + 4 + 4 basic blocks), ASPP, the four decoder stages (two
    residual blocks, skip, upsampler each) and the head. Optional modules (block projections) are listed
    whether or not a given block has one.
    """
    if upsampler not in OFFICIAL_UPSAMPLERS:
        raise MattingError(f"official checkpoints exist for {', '.join(OFFICIAL_UPSAMPLERS)}, not {upsampler!r}")
    names = {"layer0.0": "encoder.conv1", "layer0.1": "encoder.bn1"}
    for b in range(3):
        names.update(_block(f"layer1.block{b + 1}", f"encoder.layer1.{b}", "resnet"))
    for n in (2, 3):  # the first block of layer2/3 is split in two around its max-pool (PreDownsampleBlock)
        o, p = f"layer{n}_1", f"encoder.layer{n}.0"
        names.update({f"{o}.layer1.conv1": f"{p}.conv1", f"{o}.layer1.bn1": f"{p}.bn1",
                      f"{o}.layer2.conv2": f"{p}.conv2", f"{o}.layer2.bn2": f"{p}.bn2",
                      f"{o}.proj_conv": f"{p}.downsample.0", f"{o}.proj_bn": f"{p}.downsample.1"})
        for b in range(3):
            names.update(_block(f"layer{n}_2.block{b + 1}", f"encoder.layer{n}.{b + 1}", "resnet"))
    aspp = {"aspp1.atrous_conv.0": "branch1x1.0", "aspp1.atrous_conv.1": "branch1x1.1",
            "global_avg_pool.1": "pool_conv", "global_avg_pool.2": "pool_bn",
            "bottleneck_conv.0": "project.0", "bottleneck_conv.1": "project.1"}
    for i in range(3):  # depthwise dilated conv + BN, then 1x1 conv + BN
        for j, ours in enumerate(("0.0", "0.1", "1.0", "1.1")):
            aspp[f"aspp{i + 2}.atrous_conv.{j}"] = f"branches3x3.{i}.{ours}"
    names.update({f"dconv_pp.{k}": f"context.{v}" for k, v in aspp.items()})
    for s, n in enumerate((4, 3, 2, 1)):  # decoder_layer4 is the deepest stage
        stage = f"decoder.stages.{s}"
        names.update(_block(f"decoder_layer{n}.dconv", f"{stage}.blocks.0", "decoder"))
        names.update(_block(f"decoder_layer{n}.dconv1", f"{stage}.blocks.1", "decoder"))
        names.update({f"short{n - 1}.0": f"{stage}.skip.0", f"short{n - 1}.1": f"{stage}.skip.1"})
        if upsampler != "bilinear":
            names.update({f"decoder_layer{n}.up.{k}": f"{stage}.up.{v}" for k, v in _FADE_NAMES.items()})
    names.update({"pred.0.0": "head.0", "pred.0.1": "head.1", "pred.1": "head.3"})
    return names


def official_model_config(upsampler: str = "fade") -> dict[str, Any]:
    """The ``model`` config section of this project's copy of the official network (no pretrained weights, the
    encoder options at resnet34's defaults); its keys are also :func:`build_model`'s keyword arguments."""
    if upsampler not in OFFICIAL_UPSAMPLERS:
        raise MattingError(f"official checkpoints exist for {', '.join(OFFICIAL_UPSAMPLERS)}, not {upsampler!r}")
    return {"encoder": "resnet34", "upsampler": upsampler, "upsampler_options": {}, "pretrained": None,
            "freeze_bn": False, "head": "official", "init": "official"}


def read_official_checkpoint(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict (``module.`` prefixes removed) of an official checkpoint file or dict, and its name.

    Accepts the trainer's file, a cleaned ``{"state_dict": ...}`` file, or a bare state dict. Raises MattingError
    naming the file when it cannot be read with ``weights_only=True`` or holds no state dict of tensors.
    """
    where = "official checkpoint (dict)"
    obj: Any = source
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        if not Path(source).is_file():
            raise MattingError(f"{where}: official checkpoint not found")
        try:
            with torch.serialization.safe_globals(_NUMPY_GLOBALS):
                obj = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign files fail in many ways
            reason = " ".join(str(exc).split())[:300]
            raise MattingError(f"{where}: cannot be read with torch.load(weights_only=True) ({reason})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise MattingError(f"{where}: no state dict of tensors (expected {{'state_dict': {{name: tensor}}}})")
    return {k.removeprefix("module."): v for k, v in obj.items()}, where


def _detect_upsampler(state: Mapping[str, torch.Tensor]) -> str | None:
    """"fade", "fade_lite" or "bilinear" from the upsampler weights of an official state dict; None if unclear."""
    kernel = state.get("decoder_layer4.up.ker_generator.content_encoder.weight")
    if kernel is None:
        return None if any(".up." in k for k in state) else "bilinear"
    return "fade_lite" if kernel.shape[1] == 1 else "fade"


def _listing(keys: list[str], limit: int = 4) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_official_a2u(source: str | os.PathLike | Mapping[str, Any], upsampler: str = "fade") -> nn.Module:
    """This project's copy of the official matting network holding an official checkpoint's weights.

    Args:
        source: path of a checkpoint written by the official trainer (or cleaned to ``{"state_dict": ...}``),
            or such a dict, or a bare state dict; keys with or without the ``module.`` prefix.
        upsampler: "fade", "fade_lite" or "bilinear": the network the checkpoint was trained with.

    Returns:
        ``build_model(**official_model_config(upsampler))`` in eval mode, in the checkpoint's floating dtype
        (float32 for the authors' files), holding every weight and running statistic of the checkpoint
        (InPlace-ABN scales mapped to ``|w| + 1e-5``). Its forward takes :func:`make_input`'s (B, 4, H, W),
        H and W multiples of 16, and returns the raw alpha (B, 1, H, W) as the official network does.

    Raises:
        MattingError (one line) naming the file and the keys that do not map, the tensors the checkpoint lacks,
        shape mismatches, or an upsampler other than the one the checkpoint holds.
    """
    config = official_model_config(upsampler)
    state, where = read_official_checkpoint(source)
    found = _detect_upsampler(state)
    if found is not None and found != upsampler:
        raise MattingError(f"{where}: holds an official resnet34+{found} network, not {upsampler}: use {found}")
    model = build_model(**config)
    mapped = _project_state(state, model, upsampler, where)
    dtype = next(v.dtype for v in mapped.values() if v.is_floating_point())
    model.to(dtype).load_state_dict(mapped)
    return model.eval()


def _project_state(state: Mapping[str, torch.Tensor], model: nn.Module, upsampler: str, where: str):
    """An official state dict renamed to ``model``'s names, InPlace-ABN scales mapped; checked key by key."""
    names = official_module_names(upsampler)
    ours = model.state_dict()
    bn_modules = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    mapped: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        target = names.get(module)
        if target is None or f"{target}.{tensor}" not in ours:
            unmapped.append(key)
            continue
        if target in bn_modules and tensor == "weight":
            value = value.abs() + INPLACE_ABN_EPS
        mapped[f"{target}.{tensor}"] = value
    if unmapped:
        raise MattingError(
            f"{where}: {len(unmapped)} keys do not map to the official resnet34+{upsampler} network: "
            f"{_listing(unmapped)}"
        )
    # Older InPlace-ABN versions stored no num_batches_tracked; it does not affect the forward.
    for key in ours:
        if key.endswith(".num_batches_tracked"):
            mapped.setdefault(key, ours[key])
    missing = [k for k in ours if k not in mapped]
    if missing:
        raise MattingError(f"{where}: lacks {len(missing)} tensors of the resnet34+{upsampler} network: "
                           f"{_listing(missing)} (ours)")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(ours[k].shape)})" for k, v in mapped.items()
             if v.shape != ours[k].shape]
    if wrong:
        raise MattingError(f"{where}: tensors of the wrong shape: {_listing(wrong, 2)}")
    return mapped
