"""The matting network (encoder -> context -> decoder -> head), its input encoding and inference clamp."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from matting.errors import MattingError
from matting.utils.tensors import device_tensor

from .layers import LEAKY_SLOPE, init_new_conv
from .summary import summary

__all__ = [
    "HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputSizeError",
    "MattingHead",
    "MattingNet",
    "OfficialHead",
    "make_input",
    "predict_alpha",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputSizeError(MattingError, ValueError):
    """The network input has a size the network cannot take (not a multiple of its output stride)."""


def make_input(image: Tensor, trimap: Tensor) -> Tensor:
    """The network input: ImageNet-normalised RGB plus the trimap / 255 as a 4th channel (IndexNet, A2U).

    Args:
        image: (B, 3, H, W) float RGB in [0, 1] (not normalised).
        trimap: (B, 1, H, W) uint8 with values {0, 128, 255} (background, unknown, foreground).

    Returns:
        (B, 4, H, W) tensor of ``image``'s dtype and device: channels 0-2 are ``(rgb - mean) / std`` with the
        ImageNet statistics, channel 3 is ``trimap / 255`` in {0, 128/255, 1}.

    Plain tensor ops only, so it traces and exports with the network; the constants are made on the device
    (no host-to-device copy, which would make the host wait for the device in the training loop).
    """
    if image.dim() != 4 or image.shape[1] != 3 or not image.is_floating_point():
        raise ValueError(
            f"make_input: image must be a (B, 3, H, W) float tensor, got {list(image.shape)} {image.dtype}"
        )
    if trimap.dim() != 4 or trimap.shape[1] != 1 or trimap.dtype != torch.uint8:
        raise ValueError(
            f"make_input: trimap must be a (B, 1, H, W) uint8 tensor with values 0/128/255, "
            f"got {list(trimap.shape)} {trimap.dtype}"
        )
    if image.shape[0] != trimap.shape[0] or image.shape[2:] != trimap.shape[2:]:
        raise ValueError(
            f"make_input: image {list(image.shape)} and trimap {list(trimap.shape)} differ in size"
        )
    # Literal lists rather than the module constants: TorchScript cannot read global tuples.
    mean = device_tensor([0.485, 0.456, 0.406], image).view(1, 3, 1, 1)
    std = device_tensor([0.229, 0.224, 0.225], image).view(1, 3, 1, 1)
    return torch.cat([(image - mean) / std, trimap.to(image.dtype) / 255.0], dim=1)


class MattingHead(nn.Sequential):
    """The ``one_conv`` head: one 3x3 conv (C -> 1, with bias), linear output, initialised to zero.

    Shapes: (B, C, H, W) -> (B, 1, H, W), unbounded.

    The head starts at zero (weight and bias), so the untrained network predicts alpha = 0 everywhere instead
    of a random field of magnitude ~2 (what a Kaiming-initialised head on activated features gives): from that
    start, training from scratch first spends hundreds of steps shrinking the output and then settles
    poorly. Measured on the demo data (this decoder, ASPP and head on a small plain-conv encoder, Adam 1e-3,
    150 steps of batch 8): training alpha error 0.37 with a Kaiming head, 0.22 with a zero head. The zero
    head's weight gradient is not zero, so the head moves at the first step and the rest of the network gets
    gradients from the second.

    The official network's head is :class:`OfficialHead` (``model.head: official``); its 1-channel bottleneck
    is a trap in training from scratch (once the last filter sums negative, positive alphas need the
    activation's 0.01 leaky side and the network settles on ~0 over the unknown region), which is why the demo
    uses this one.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, 1, 3, padding=1, bias=True))
        nn.init.zeros_(self[0].weight)
        nn.init.zeros_(self[0].bias)


class OfficialHead(nn.Sequential):
    """The official network's head (``pred`` in ``a2u_matting/resnet.py``), ``model.head: official``.

        conv3x3 C -> 1 (no bias) -> BatchNorm(1) -> leaky ReLU 0.01 -> conv3x3 1 -> 1 (no bias)

    Shapes: (B, C, H, W) -> (B, 1, H, W), unbounded. Submodules 0 (conv), 1 (BN), 2 (activation), 3 (conv).
    Initialised as the project's other new layers (Kaiming-normal convs, BN 1/0); ``model.init: official``
    re-initialises it with the rest of the network.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 1, 3, padding=1, bias=False),
            nn.BatchNorm2d(1),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            nn.Conv2d(1, 1, 3, padding=1, bias=False),
        )
        init_new_conv(self)


#: ``model.head`` name -> head class (each built as ``cls(decoder_out_channels)``).
HEADS: dict[str, type[nn.Module]] = {"one_conv": MattingHead, "official": OfficialHead}


class MattingNet(nn.Module):
    """Encoder -> context (ASPP) -> decoder (one registry upsampler per stage) -> head.

    ``forward(x)``: x (B, 4, H, W) from :func:`make_input`, H and W multiples of ``output_stride``; returns the
    raw alpha (B, 1, H, W), NOT limited to [0, 1]. Training uses this raw output (no sigmoid, no clipping),
    as the official IndexNet/A2U/FADE code does: much of the ground truth is exactly 0 or 1, which a sigmoid
    reaches only at infinite logits (its gradient vanishes where the loss is most often evaluated), and
    clipping in training would zero the gradient of every out-of-range pixel. Inference clamps to [0, 1]:
    :func:`predict_alpha`.

    Submodules: ``encoder``, ``context``, ``decoder`` (``decoder.stages[i].up`` is stage i's upsampler),
    ``head``. Build it with :func:`matting.models.build_model`.
    """

    def __init__(self, encoder: nn.Module, context: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.context = context
        self.decoder = decoder
        self.head = head
        self.output_stride: int = encoder.output_stride

    def check_input(self, x: Tensor) -> None:
        """Raises InputSizeError (a ValueError) naming the size and the stride if ``x`` cannot be processed."""
        if x.dim() != 4 or x.shape[1] != 4:
            raise InputSizeError(f"network input must be (B, 4, H, W) (see make_input), got {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        s = self.output_stride
        if h % s or w % s or h == 0 or w == 0:
            ph, pw = max(s, -(-h // s) * s), max(s, -(-w // s) * s)
            raise InputSizeError(
                f"input size {h}x{w} is not a multiple of the output stride {s}: pad it to {ph}x{pw} "
                f"(the evaluation pads and crops back; the network never crops)"
            )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        deep, stages = self.encoder(x)
        return self.head(self.decoder(self.context(deep), stages))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split for the optimiser, as in the IndexNet/A2U recipes.

        Returns ``{"encoder": [...], "decoder": [...]}``: "encoder" holds the parameters that ImageNet weights
        initialise (trained at lr x 0.01 in the recipes), "decoder" everything else: context module, skips,
        projections, decoder blocks, upsamplers, head, and new encoder parts such as MobileNetV2's input stem.
        Frozen parameters (``requires_grad=False``, e.g. frozen BatchNorm) are in neither list.
        """
        backbone = {id(p) for m in self.encoder.backbone_modules() for p in m.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"encoder": [], "decoder": []}
        for p in self.parameters():
            if p.requires_grad:
                groups["encoder" if id(p) in backbone else "decoder"].append(p)
        return groups

    def summary(self, input_size: tuple[int, int, int, int] = (1, 4, 512, 512)) -> str:
        """Markdown table of parameters and multiply-adds per part; see :func:`matting.models.summary.summary`."""
        return summary(self, input_size)


@torch.no_grad()
def predict_alpha(model: nn.Module, x: Tensor) -> Tensor:
    """Inference: ``model(x)`` clamped to [0, 1], without gradients. Returns (B, 1, H, W) float in [0, 1].

    The caller pads ``x`` to a multiple of ``model.output_stride`` and puts the model in eval mode.
    """
    return model(x).clamp_(0.0, 1.0)
