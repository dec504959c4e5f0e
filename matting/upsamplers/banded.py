"""A "same" convolution computed in bands of rows, forward and backward.

At full matting resolution a plain ``F.conv2d`` backward on CPU allocates, besides the input gradient,
oneDNN reorders of the input and of the output gradient: two more full-resolution tensors at the moment of
FADE's peak memory. Running the convolution on bands of rows (each with its k // 2 halo rows) bounds those
temporaries to one band. Values and gradients are those of ``F.conv2d(x, weight, bias, padding=k // 2)``,
which runs instead on other devices, for channels-last inputs, under CPU autocast and inside
:func:`~.reassembly.plain_ops`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reassembly import plain_ops_enabled
from .registry import is_channels_last

__all__ = ["conv2d_banded"]

# Input + output bytes of one band on CPU; large enough that oneDNN runs at full speed.
_BAND_BYTES = 8 << 20


def _band_rows(x: torch.Tensor, out_channels: int) -> int:
    b, c, h, w = x.shape
    per_row = max(1, b * (c + out_channels) * w * x.element_size())
    return max(1, min(h, _BAND_BYTES // per_row))


def _bands(h: int, rows: int, p: int):
    """Yields (y0, y1, a, b, top, bottom): output rows [y0, y1), the input rows [a, b) they read, and how
    many zero rows pad that slice above and below (only at the image border)."""
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        a, b = max(0, y0 - p), min(h, y1 + p)
        yield y0, y1, a, b, p - (y0 - a), p - (b - y1)


def conv2d_banded(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2)`` for odd square k, groups 1; shapes as in F.conv2d."""
    k = weight.shape[-1]
    if weight.shape[-2] != k or k % 2 == 0 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv2d_banded: need an odd square dense kernel, got weight {tuple(weight.shape)} for x {tuple(x.shape)}"
        )
    if x.device.type != "cpu" or is_channels_last(x) or plain_ops_enabled() or torch.is_autocast_enabled("cpu"):
        # The reorders that banding avoids are oneDNN's (CPU), and not made for channels-last inputs; export
        # wants the plain op, and autocast casts only for ops it knows.
        return F.conv2d(x, weight, bias, padding=k // 2)
    return _conv2d_banded_op(x.contiguous(), weight, bias)


@torch.library.custom_op("matting::conv2d_banded", mutates_args=())
def _conv2d_banded_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    b, _, h, w = x.shape
    o, p = weight.shape[0], weight.shape[-1] // 2
    out = x.new_empty(b, o, h, w)
    for y0, y1, a, b_, top, bottom in _bands(h, _band_rows(x, o), p):
        band = F.pad(x[:, :, a:b_], (0, 0, top, bottom))
        out[:, :, y0:y1] = F.conv2d(band, weight, bias, padding=(0, p))
    return out


@_conv2d_banded_op.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0], x.shape[2], x.shape[3])


@torch.library.custom_op("matting::conv2d_banded_backward", mutates_args=())
def _conv2d_banded_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool, need_weight: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x.shape[2]
    p = weight.shape[-1] // 2
    grad_x = torch.zeros_like(x) if need_x else x.new_empty(0)
    grad_w = torch.zeros_like(weight) if need_weight else weight.new_empty(0)
    for y0, y1, a, b_, top, bottom in _bands(h, _band_rows(x, weight.shape[0]), p):
        band = F.pad(x[:, :, a:b_], (0, 0, top, bottom))
        gi, gw, _ = torch.ops.aten.convolution_backward(
            grad_out[:, :, y0:y1].contiguous(), band, weight, None,
            [1, 1], [0, p], [1, 1], False, [0, 0], 1, [need_x, need_weight, False],
        )
        if need_x:
            grad_x[:, :, a:b_] += gi[:, :, top : gi.shape[2] - bottom]
        if need_weight:
            grad_w += gw
    return grad_x, grad_w


@_conv2d_banded_backward_op.register_fake
def _(grad_out, x, weight, need_x, need_weight):
    return (torch.empty_like(x) if need_x else x.new_empty(0)), (
        torch.empty_like(weight) if need_weight else weight.new_empty(0)
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    grad_x, grad_w = _conv2d_banded_backward_op(grad_out, x, weight, need_x, need_w)
    grad_b = grad_out.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return (grad_x if need_x else None), (grad_w if need_w else None), grad_b


_conv2d_banded_op.register_autograd(_backward, setup_context=_setup_context)
