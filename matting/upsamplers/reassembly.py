"""CARAFE reassembly: every output pixel is a K x K weighted sum of the low-resolution feature around it.

    out[b, c, y, x] = sum_{i, j in -r..r} kernels[b, (i + r) * K + (j + r), y, x]
                                          * features[b, c, y // s + i, x // s + j]       (zero outside)

with r = K // 2. Two implementations behind :func:`carafe`:

- ``"reference"``: the official pure-PyTorch formulation. It unfolds ``features`` into (B, C*K*K, H*W), copies
  that to all s*s output phases and contracts with the kernels, so it holds about s*s*K*K = 100 copies of the
  input (25x the output) at once, in forward and again in backward. Kept for tests and as a benchmark row.
- ``"lean"`` (default): computes each output phase (the s*s pixels sharing one source pixel) as K*K in-place
  multiply-adds of shifted views of the padded input, a band of rows at a time so that the accumulator stays
  in cache. Extra memory is of the order of one phase of the output; its backward (a custom op, because plain
  slicing ops would allocate a zero-filled gradient of the whole input for every one of the 100 slices) is
  equally lean. It is a ``torch.library`` custom op, so ``torch.compile`` treats it as one opaque node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matting.utils.flops import add_macs

__all__ = ["carafe", "carafe_reference", "carafe_lean", "check_carafe_inputs", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("lean", "reference")

# Accumulator band size for the lean CPU path: ~2 MiB keeps the K*K read-modify-write passes over the band
# in L2/L3 instead of main memory (measured ~1.5x faster than whole-phase passes at C=32, 1024^2 output).
_BAND_BYTES = 2 << 20


def check_carafe_inputs(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> None:
    """Raises ValueError (naming the shapes) unless the arguments describe a valid reassembly."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"carafe: kernel_size must be a positive odd int, got {kernel_size!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"carafe: scale must be a positive int, got {scale!r}")
    if features.dim() != 4 or kernels.dim() != 4:
        raise ValueError(
            f"carafe: features and kernels must be 4-D, got features {tuple(features.shape)} "
            f"and kernels {tuple(kernels.shape)}"
        )
    b, _, h, w = features.shape
    expected = (b, kernel_size * kernel_size, scale * h, scale * w)
    if tuple(kernels.shape) != expected:
        raise ValueError(
            f"carafe: kernels {tuple(kernels.shape)} do not match features {tuple(features.shape)}: "
            f"expected {expected} for kernel_size={kernel_size}, scale={scale}"
        )
    if features.dtype != kernels.dtype or features.device != kernels.device:
        raise ValueError(
            f"carafe: features ({features.dtype}, {features.device}) and kernels ({kernels.dtype}, "
            f"{kernels.device}) must share dtype and device"
        )


def carafe(
    features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int, impl: str = "lean"
) -> torch.Tensor:
    """Reassembles ``features`` with per-pixel kernels.

    Args:
        features: (B, C, H, W) float tensor.
        kernels: (B, K*K, s*H, s*W), same dtype and device, already normalised (e.g. softmax over dim 1);
            channel k = (i + r) * K + (j + r) weights the source offset (i, j), row-major.
        kernel_size: K, odd.
        scale: s, a positive int.
        impl: ``"lean"`` (default) or ``"reference"``; both give the same result and gradients.

    Returns:
        (B, C, s*H, s*W) tensor of ``features``' dtype.
    """
    check_carafe_inputs(features, kernels, kernel_size, scale)
    b, c, h, w = features.shape
    add_macs(b * c * h * w * scale * scale * kernel_size * kernel_size)
    if impl == "lean":
        return carafe_lean(features, kernels, kernel_size, scale)
    if impl == "reference":
        return carafe_reference(features, kernels, kernel_size, scale)
    raise ValueError(f"carafe: unknown impl {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")


def carafe_reference(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """The official-style unfold reassembly; memory ~ s*s*K*K copies of ``features``. Shapes as in carafe."""
    b, c, h, w = features.shape
    k2, s = kernel_size * kernel_size, scale
    patches = F.unfold(features, kernel_size, padding=kernel_size // 2)  # (B, C*K*K, H*W), k fastest
    patches = patches.view(b, c, k2, h, w).transpose(1, 2)  # (B, K*K, C, H, W)
    # Nearest-repeat every patch to its s*s output pixels, materialised as the official einops.repeat does.
    patches = patches[:, :, :, :, None, :, None].expand(b, k2, c, h, s, w, s).reshape(b, k2, c, s * h, s * w)
    return torch.einsum("bkchw,bkhw->bchw", patches, kernels)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision sums of 25 terms lose ~2 bits; accumulate in float32 like the matmul in the reference.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype



def _band_rows(t: torch.Tensor, rows_total: int) -> int:
    """Rows per band so that one (B, C, rows, W) accumulator band is about _BAND_BYTES (whole phase on GPU)."""
    if t.device.type != "cpu":
        return rows_total
    b, c, _, w = t.shape
    per_row = max(1, b * c * w * torch.finfo(_acc_dtype(t.dtype)).bits // 8)
    return max(1, min(rows_total, _BAND_BYTES // per_row))


def _bands(h: int, rows: int, scale: int):
    """Yields (y0, y1, out_rows, out_cols) per (row band, output phase): input rows [y0, y1) and the slices
    of the (s*H, s*W) output that phase (py, px) of those rows occupies."""
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        for py in range(scale):
            for px in range(scale):
                yield y0, y1, slice(scale * y0 + py, scale * y1, scale), slice(px, None, scale)


# The lean op works on one (row band, output phase) at a time: the kernels of that band and phase are gathered
# into a small dense buffer, the output rows are accumulated densely (in place, so nothing is allocated per
# offset) and then scattered to their phase. No full-size phase-major copy of anything is made, in forward or
# in backward.


@torch.library.custom_op("matting::carafe_lean", mutates_args=())
def _carafe_lean_op(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    b, c, h, w = features.shape
    r, k2 = kernel_size // 2, kernel_size * kernel_size
    padded = F.pad(features, (r, r, r, r))
    out = features.new_empty(b, c, scale * h, scale * w)
    rows = _band_rows(features, h)
    acc_buf = features.new_empty(b, c, rows, w, dtype=_acc_dtype(features.dtype))
    ker_buf = kernels.new_empty(b, k2, rows, w)
    for y0, y1, out_rows, out_cols in _bands(h, rows, scale):
        acc, ker = acc_buf[:, :, : y1 - y0], ker_buf[:, :, : y1 - y0]
        ker.copy_(kernels[:, :, out_rows, out_cols])
        for k in range(k2):
            i, j = divmod(k, kernel_size)
            window = padded[:, :, y0 + i : y1 + i, j : j + w]
            if k == 0:
                torch.mul(window, ker[:, k : k + 1], out=acc)
            else:
                acc.addcmul_(window, ker[:, k : k + 1])
        out[:, :, out_rows, out_cols] = acc
    return out


@_carafe_lean_op.register_fake
def _(features, kernels, kernel_size, scale):
    b, c, h, w = features.shape
    return features.new_empty(b, c, h * scale, w * scale)


@torch.library.custom_op("matting::carafe_lean_backward", mutates_args=())
def _carafe_lean_backward_op(
    grad_out: torch.Tensor,
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    need_features: bool,
    need_kernels: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = features.shape
    r, k2 = kernel_size // 2, kernel_size * kernel_size
    acc_dtype = _acc_dtype(features.dtype)
    padded = F.pad(features, (r, r, r, r))
    grad_padded = features.new_zeros(b, c, h + 2 * r, w + 2 * r, dtype=acc_dtype) if need_features else None
    grad_kernels = torch.empty_like(kernels) if need_kernels else kernels.new_empty(0)
    rows = _band_rows(features, h)
    grad_buf = features.new_empty(b, c, rows, w, dtype=acc_dtype)
    prod_buf = features.new_empty(b, c, rows, w, dtype=acc_dtype)
    ker_buf = kernels.new_empty(b, k2, rows, w)
    grad_ker_buf = kernels.new_empty(b, k2, rows, w, dtype=acc_dtype)
    for y0, y1, out_rows, out_cols in _bands(h, rows, scale):
        n = y1 - y0
        g, ker, prod, grad_ker = grad_buf[:, :, :n], ker_buf[:, :, :n], prod_buf[:, :, :n], grad_ker_buf[:, :, :n]
        g.copy_(grad_out[:, :, out_rows, out_cols])
        if need_features:
            ker.copy_(kernels[:, :, out_rows, out_cols])
        for k in range(k2):
            i, j = divmod(k, kernel_size)
            if need_features:
                # d out / d features: scatter the output gradient back through the same window (transpose).
                grad_padded[:, :, y0 + i : y1 + i, j : j + w].addcmul_(g, ker[:, k : k + 1])
            if need_kernels:
                # d out / d kernel k: the channel-wise dot product of gradient and window.
                torch.mul(g, padded[:, :, y0 + i : y1 + i, j : j + w], out=prod)
                torch.sum(prod, dim=1, out=grad_ker[:, k])
        if need_kernels:
            grad_kernels[:, :, out_rows, out_cols] = grad_ker
    if need_features:
        grad_features = grad_padded[:, :, r : r + h, r : r + w].to(features.dtype, copy=False)
    else:
        grad_features = features.new_empty(0)
    return grad_features, grad_kernels


@_carafe_lean_backward_op.register_fake
def _(grad_out, features, kernels, kernel_size, scale, need_features, need_kernels):
    grad_features = torch.empty_like(features) if need_features else features.new_empty(0)
    grad_kernels = torch.empty_like(kernels) if need_kernels else kernels.new_empty(0)
    return grad_features, grad_kernels


def _setup_context(ctx, inputs, output) -> None:
    features, kernels, kernel_size, scale = inputs
    ctx.save_for_backward(features, kernels)
    ctx.kernel_size, ctx.scale = kernel_size, scale


def _backward(ctx, grad_out):
    features, kernels = ctx.saved_tensors
    need_features, need_kernels = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_features, grad_kernels = _carafe_lean_backward_op(
        grad_out, features, kernels, ctx.kernel_size, ctx.scale, need_features, need_kernels
    )
    return (grad_features if need_features else None, grad_kernels if need_kernels else None, None, None)


_carafe_lean_op.register_autograd(_backward, setup_context=_setup_context)


def carafe_lean(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """The memory-lean reassembly (see module docstring). Shapes as in :func:`carafe`; no input checks."""
    return _carafe_lean_op(features.contiguous(), kernels.contiguous(), kernel_size, scale)
