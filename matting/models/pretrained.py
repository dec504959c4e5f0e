"""ImageNet weights for the encoders: torchvision's weights API, the torch hub cache, or a local file.

Never hangs offline: the hub cache file (``torch.hub.get_dir()/checkpoints/<name in the weights URL>``) is used
when present; otherwise one download is tried with a short timeout (host-name resolution included, which
socket timeouts do not cover), and any failure becomes a one-line :class:`MattingError` saying how to supply
the file instead.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet34_Weights

from matting.errors import MattingError

__all__ = [
    "IMAGENET_WEIGHTS",
    "INPLACE_ABN_EPS",
    "inplace_abn_imagenet_to_torchvision",
    "is_inplace_abn_imagenet",
    "imagenet_cache_path",
    "fetch_imagenet_state_dict",
    "read_state_dict",
    "load_encoder_weights",
]

#: Encoder name -> the torchvision weights enum entry used for "imagenet".
IMAGENET_WEIGHTS = {
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "mobilenetv2": MobileNet_V2_Weights.IMAGENET1K_V1,
}

DOWNLOAD_TIMEOUT_S = 10.0

#: InPlace-ABN's eps: its BatchNorm scale is ``|weight| + INPLACE_ABN_EPS``.
INPLACE_ABN_EPS = 1e-5


def imagenet_cache_path(encoder: str) -> Path:
    """Where torchvision's weights API caches the ImageNet file of ``encoder``."""
    url = IMAGENET_WEIGHTS[encoder].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _download(url: str, dst: Path, timeout: float) -> None:
    """Downloads ``url`` to ``dst`` (atomically, hash-checked) or raises OSError within about 2 x ``timeout``."""
    host = urlparse(url).hostname or ""
    outcome: dict[str, object] = {}

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, 443)
            outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = exc

    # getaddrinfo ignores socket timeouts and can block for a long time on an offline machine; a daemon
    # thread lets us stop waiting for it.
    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" not in outcome:
        raise OSError(f"cannot resolve {host}: {outcome.get('error', f'no answer in {timeout:g} s')}")
    match = re.search(r"-([a-f0-9]+)\.", os.path.basename(dst))
    dst.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=match.group(1) if match else None, progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def fetch_imagenet_state_dict(encoder: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``encoder``, from the hub cache or downloaded into it."""
    if encoder not in IMAGENET_WEIGHTS:
        raise MattingError(f"no ImageNet weights for encoder {encoder!r} (known: {', '.join(IMAGENET_WEIGHTS)})")
    url = IMAGENET_WEIGHTS[encoder].url
    path = imagenet_cache_path(encoder)
    if not path.is_file():
        try:
            _download(url, path, timeout)
        except Exception as exc:  # noqa: BLE001 - any failure here means "no weights", reported in one line
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise MattingError(
                f"ImageNet weights for {encoder} are not in the torch hub cache ({path}) and downloading "
                f"{url} failed ({reason}); this machine looks offline: copy that file to {path}, or set "
                f"model.pretrained to a local .pth file (or null to train from scratch)"
            ) from None
    return read_state_dict(path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a state dict from a .pth file: a plain one, or one under "state_dict" / "model"; "module." prefixes
    (DataParallel) are removed. Raises MattingError naming the file if it is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise MattingError(f"pretrained weights file {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign files fail in many ways
        reason = " ".join(str(exc).split())[:200]
        raise MattingError(f"pretrained weights file {p} cannot be read as a PyTorch state dict ({reason})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MattingError(f"pretrained weights file {p} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_encoder_weights(
    encoder: nn.Module, state_dict: Mapping[str, torch.Tensor], encoder_name: str, source: str
) -> None:
    """Loads torchvision-named weights into the ImageNet parts of ``encoder`` (its ``backbone_modules()``).

    Keys the encoder does not have (the classifier, ResNet's layer4, MobileNetV2's last 1x1 conv) are ignored.
    The input conv's 3-channel RGB filter is copied into the 4-channel one, whose trimap channel starts at
    zero (so the network starts as the ImageNet one, and learns how to use the trimap). ``source`` names the
    weights in error messages.
    """
    names = {id(m): n for n, m in encoder.named_modules()}
    own = encoder.state_dict()
    wanted: list[str] = []
    for m in encoder.backbone_modules():
        prefix = names[id(m)] + "." if names[id(m)] else ""
        wanted += [prefix + k for k in m.state_dict()]
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise MattingError(
            f"{source}: not {encoder_name} weights: {len(missing)} of the encoder's {len(wanted)} tensors are "
            f"missing, e.g. {missing[0]!r}"
        )
    loaded: dict[str, torch.Tensor] = {}
    for k in wanted:
        src, dst = state_dict[k], own[k]
        if src.shape != dst.shape:
            rgb_filter = src.dim() == 4 and dst.dim() == 4 and src.shape[1] == 3 and dst.shape[1] == 4
            if not (rgb_filter and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]):
                raise MattingError(
                    f"{source}: not {encoder_name} weights: {k!r} has shape {tuple(src.shape)}, "
                    f"the encoder expects {tuple(dst.shape)}"
                )
            src = torch.cat([src, src.new_zeros(src.shape[0], 1, *src.shape[2:])], dim=1)
        loaded[k] = src.to(dst.dtype)
    result = encoder.load_state_dict(loaded, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


# ---------------------------------------------------------------------------------- inplace_abn's ImageNet file

_IMAGENET_STEM = {"mod1.conv1": "conv1", "mod1.bn1": "bn1"}
_IMAGENET_BLOCK = re.compile(r"mod([2-5])\.block(\d+)\.(.+)")


def is_inplace_abn_imagenet(state: Mapping[str, torch.Tensor]) -> bool:
    """True for inplace_abn's ImageNet ResNet names (``mod1.conv1.weight``, ``mod2.block1.convs.conv1...``)."""
    return "mod1.conv1.weight" in state and "mod2.block1.convs.conv1.weight" in state


def inplace_abn_imagenet_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """inplace_abn's ImageNet ResNet-34 (leaky ReLU, InPlace-ABN sync; the weights the official matting code
    starts from) renamed to torchvision's ResNet names, BN scales mapped to ``|w| + 1e-5``.

    ``modK.blockB`` -> ``layer{K-1}.{B-1}``; ``convs.conv1/bn1/conv2/bn2`` keep their names; ``proj_conv/proj_bn``
    -> ``downsample.0/1``. The classifier and any other key are dropped. Input: a state dict without ``module.``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        if module in _IMAGENET_STEM:
            target = _IMAGENET_STEM[module]
        else:
            m = _IMAGENET_BLOCK.fullmatch(module)
            if m is None:
                continue
            inner = m.group(3).removeprefix("convs.")
            inner = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(inner, inner)
            target = f"layer{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.{inner}"
        if tensor == "weight" and value.dim() == 1:  # a BatchNorm scale (convolutions are 4-D)
            value = value.abs() + INPLACE_ABN_EPS
        out[f"{target}.{tensor}"] = value
    return out
