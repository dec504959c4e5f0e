"""CARAFE reassembly: every output pixel is a K x K weighted sum of the low-resolution feature around it.

    out[b, c, y, x] = sum_{i, j in -r..r} kernels[b, (i + r) * K + (j + r), y, x]
                                          * features[b, c, y // s + i, x // s + j]       (zero outside)

with r = K // 2; :func:`gated_carafe` also blends the result with a skip feature, as FADE's gate does:
``gate * skip + (1 - gate) * carafe(...)``. Two implementations behind both functions:

- ``"reference"``: the official pure-PyTorch formulation. It unfolds ``features`` into (B, C*K*K, H*W), copies
  that to all s*s output phases and contracts with the kernels, so it holds about s*s*K*K = 100 copies of the
  input (25x the output) at once, in forward and again in backward. Kept for tests and as a benchmark row.
- ``"lean"`` (default): works a band of input rows at a time; for all s*s output phases of the band at once
  (the output pixels (s*y + py, s*x + px)), it accumulates K*K in-place multiply-adds of shifted views of the
  input (clipped at the border instead of padding a copy) into a phase-major buffer that stays in cache,
  blends it with the skip feature and scatters it to the output. Extra memory is a few band buffers besides
  the output and the gradients; the backward recomputes each band instead of saving the (B, C, sH, sW)
  reassembled tensor. It is a ``torch.library`` custom op with its own backward (plain
  slicing ops would allocate a zero-filled gradient of the whole input for each of the s*s*K*K slices), so
  ``torch.compile`` sees one opaque node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matting.utils.flops import add_macs

from .registry import check_choice, check_int, is_channels_last

__all__ = ["carafe", "gated_carafe", "carafe_reference", "check_carafe_inputs", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("lean", "reference")

# Accumulator size of one band of the lean CPU path. A few MiB keeps the K*K read-modify-write passes over a
# band in cache (faster than whole-image passes) and the band buffers small next to the output, while keeping
# the op count low: on a shared machine every multi-threaded op pays an OpenMP barrier.
_BAND_BYTES = 8 << 20
_GPU_BAND_BYTES = 256 << 20


def check_carafe_inputs(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> None:
    """Raises ValueError (naming the shapes) unless the arguments describe a valid reassembly."""
    check_int("carafe", "kernel_size", kernel_size, odd=True)
    check_int("carafe", "scale", scale)
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
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    impl: str = "lean",
    softmax: bool = False,
) -> torch.Tensor:
    """Reassembles ``features`` with per-pixel kernels.

    Args:
        features: (B, C, H, W) float tensor.
        kernels: (B, K*K, s*H, s*W), same dtype and device, already normalised (e.g. softmax over dim 1);
            channel k = (i + r) * K + (j + r) weights the source offset (i, j), row-major.
        kernel_size: K, odd.
        scale: s, a positive int.
        impl: ``"lean"`` (default) or ``"reference"``; both give the same result and gradients.
        softmax: the kernels are logits: normalise them with a softmax over dim 1 first. The lean op then
            never stores the normalised kernels (it recomputes them per band in backward).

    Returns:
        (B, C, s*H, s*W) tensor of ``features``' dtype.
    """
    check_carafe_inputs(features, kernels, kernel_size, scale)
    check_choice("carafe", "impl", impl, IMPLEMENTATIONS)
    b, c, h, w = features.shape
    add_macs(b * c * h * w * scale * scale * kernel_size * kernel_size)
    if impl == "reference":
        return carafe_reference(features, kernels.softmax(dim=1) if softmax else kernels, kernel_size, scale)
    return _carafe_lean_op(features.contiguous(), _dense(kernels), kernel_size, scale, None, None, softmax)


def gated_carafe(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    skip: torch.Tensor,
    gate: torch.Tensor,
    impl: str = "lean",
    softmax: bool = False,
) -> torch.Tensor:
    """``gate * skip + (1 - gate) * carafe(features, kernels, kernel_size, scale)`` in one pass.

    Args:
        features, kernels, kernel_size, scale, softmax: as in :func:`carafe`.
        skip: (B, C, s*H, s*W), the tensor the gate lets through (FADE's ``en``).
        gate: (B, 1, s*H, s*W) or (B, C, s*H, s*W), usually in [0, 1].
        impl: ``"lean"`` computes it as ``torch.lerp(carafe(...), skip, gate)`` band by band (so gate 0 gives
            the reassembly and gate 1 gives ``skip`` exactly); ``"reference"`` evaluates the formula above
            with whole tensors, as the official code does.

    Returns:
        (B, C, s*H, s*W).
    """
    check_carafe_inputs(features, kernels, kernel_size, scale)
    check_choice("gated_carafe", "impl", impl, IMPLEMENTATIONS)
    b, c, h, w = features.shape
    out_shape = (b, c, scale * h, scale * w)
    if tuple(skip.shape) != out_shape or gate.dim() != 4 or gate.shape[1] not in (1, c) or (
        (gate.shape[0],) + tuple(gate.shape[2:]) != (b, scale * h, scale * w)
    ):
        raise ValueError(
            f"gated_carafe: skip {tuple(skip.shape)} and gate {tuple(gate.shape)} do not match features "
            f"{tuple(features.shape)}: expected skip {out_shape} and gate {(b, 1, scale * h, scale * w)} or {out_shape}"
        )
    if not (skip.dtype == gate.dtype == features.dtype):
        raise ValueError(f"gated_carafe: skip ({skip.dtype}) and gate ({gate.dtype}) must be {features.dtype}")
    add_macs(b * c * h * w * scale * scale * kernel_size * kernel_size)
    if impl == "reference":
        kernels = kernels.softmax(dim=1) if softmax else kernels
        return gate * skip + (1 - gate) * carafe_reference(features, kernels, kernel_size, scale)
    return _carafe_lean_op(
        features.contiguous(), _dense(kernels), kernel_size, scale, _dense(skip), _dense(gate), softmax
    )


def carafe_reference(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """The official-style unfold reassembly; memory ~ s*s*K*K copies of ``features``. Shapes as in carafe."""
    b, c, h, w = features.shape
    k2, s = kernel_size * kernel_size, scale
    patches = F.unfold(features, kernel_size, padding=kernel_size // 2)  # (B, C*K*K, H*W), k fastest
    patches = patches.view(b, c, k2, h, w).transpose(1, 2)  # (B, K*K, C, H, W)
    # Nearest-repeat every patch to its s*s output pixels, materialised as the official einops.repeat does.
    patches = patches[:, :, :, :, None, :, None].expand(b, k2, c, h, s, w, s).reshape(b, k2, c, s * h, s * w)
    return torch.einsum("bkchw,bkhw->bchw", patches, kernels)


# --- the lean implementation ------------------------------------------------------------------------------
#
# Work is split into bands of input rows [y0, y1). A band feeds output rows [s*y0, s*y1), i.e. s*s output
# phases (s*y + py, s*x + px). Per band, the kernels (and skip, gate, output gradient) are gathered
# phase-major into small dense (B, s, s, ., n, W) buffers; the reassembly of all phases is accumulated in
# place, one op per kernel offset (nothing is allocated per offset), and the result is scattered back. With
# ``softmax`` the op receives logits and normalises each band's kernels itself, so neither the normalised
# kernels nor their gradient ever exist as full-size tensors. Few, large ops matter on CPU: each op pays an
# OpenMP barrier, which stalls whenever another process holds a core.


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it is dense in the NCHW or the channels-last layout, else an NCHW copy. The full-resolution
    operands (kernels, skip, gate, output) are only gathered and scattered band by band, which works with any
    dense layout; converting a channels-last network's tensors to NCHW would cost more than the op itself."""
    return t if t.is_contiguous() or is_channels_last(t) else t.contiguous()


def _new_output(features: torch.Tensor, scale: int, skip: torch.Tensor | None) -> torch.Tensor:
    """Uninitialised (B, C, s*H, s*W) output in the skip feature's layout (channels-last in a channels-last
    network), else NCHW; the op and its fake implementation allocate it alike."""
    b, c, h, w = features.shape
    layout = torch.channels_last if skip is not None and is_channels_last(skip) else torch.contiguous_format
    return torch.empty((b, c, scale * h, scale * w), dtype=features.dtype, device=features.device, memory_format=layout)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision sums of 25 terms lose ~2 bits; accumulate in float32 like the matmul in the reference.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _band_rows(features: torch.Tensor, scale: int) -> int:
    """Input rows per band so that one (B, s, s, C, rows, W) accumulator is about _BAND_BYTES on CPU, and
    _GPU_BAND_BYTES elsewhere (where launches, not caches, set the trade-off)."""
    b, c, h, w = features.shape
    budget = _BAND_BYTES if features.device.type == "cpu" else _GPU_BAND_BYTES
    per_row = max(1, b * scale * scale * c * w * torch.finfo(_acc_dtype(features.dtype)).bits // 8)
    return max(1, min(h, budget // per_row))


def _phases(t: torch.Tensor, y0: int, y1: int, scale: int) -> torch.Tensor:
    """View of the output-resolution rows fed by input rows [y0, y1) of t (B, C, s*H, s*W), phase-major:
    (B, s, s, C, n, W) with [:, py, px, :, y, x] = t[:, :, s*(y0 + y) + py, s*x + px]."""
    b, c, _, ws = t.shape
    n, w = y1 - y0, ws // scale
    return t[:, :, scale * y0 : scale * y1].view(b, c, n, scale, w, scale).permute(0, 3, 5, 1, 2, 4)


class _Buffers:
    """Band buffers reused across bands: (B, s, s, channels, rows, W), sliced to each band's height."""

    def __init__(self, features: torch.Tensor, scale: int) -> None:
        self.features, self.scale, self.rows, self.cache = features, scale, _band_rows(features, scale), {}

    def get(self, name: str, channels: int, n: int, dtype: torch.dtype, phases: bool = True) -> torch.Tensor:
        if name not in self.cache:
            b, _, _, w = self.features.shape
            s = self.scale if phases else 1
            self.cache[name] = self.features.new_empty(b, s, s, channels, self.rows, w, dtype=dtype)
        return self.cache[name][..., :n, :]

    def gather(self, name: str, t: torch.Tensor, y0: int, y1: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.get(name, t.shape[1], y1 - y0, dtype)
        buf.copy_(_phases(t, y0, y1, self.scale))
        return buf


def _kernels_of_band(buf: _Buffers, kernels, y0, y1, softmax: bool) -> torch.Tensor:
    """(B, s, s, K*K, n, W) kernels of one band, normalised here when ``softmax`` (in float32 or wider)."""
    if not softmax:
        return buf.gather("ker", kernels, y0, y1, kernels.dtype)
    logits = buf.gather("logits", kernels, y0, y1, _acc_dtype(kernels.dtype))
    return torch.softmax(logits, dim=3, out=buf.get("ker", kernels.shape[1], y1 - y0, logits.dtype))


def _offsets(kernel_size: int, y0: int, y1: int, h: int, w: int):
    """Yields (k, band, source) per kernel offset k, the centre first: ``band`` indexes the (rows, cols) of a
    band buffer whose source pixel is inside the image (the rest reads zero padding and is skipped), and
    ``source`` the matching (rows, cols) of the (H, W) feature. No padded copy of the feature is needed."""
    r = kernel_size // 2
    centre = kernel_size * kernel_size // 2
    for k in [centre] + [k for k in range(kernel_size * kernel_size) if k != centre]:
        di, dj = k // kernel_size - r, k % kernel_size - r
        ya, yb, xa, xb = max(y0, -di), min(y1, h - di), max(0, -dj), min(w, w - dj)
        if ya < yb and xa < xb:
            band = (slice(ya - y0, yb - y0), slice(xa, xb))
            yield k, band, (slice(ya + di, yb + di), slice(xa + dj, xb + dj))


def _reassemble(acc, features, ker, y0, y1, kernel_size) -> None:
    """acc (B, s, s, C, n, W) = sum_k ker[:, :, :, k] * (features rows y0..y1 shifted by offset k)."""
    h, w = features.shape[-2:]
    for k, (rows, cols), (src_rows, src_cols) in _offsets(kernel_size, y0, y1, h, w):
        window = features[:, None, None, :, src_rows, src_cols]
        if k == kernel_size * kernel_size // 2:  # the centre offset is never clipped: it initialises acc
            torch.mul(window, ker[:, :, :, k : k + 1], out=acc)
        else:
            acc[..., rows, cols].addcmul_(window, ker[:, :, :, k : k + 1, rows, cols])


@torch.library.custom_op("matting::carafe_lean", mutates_args=())
def _carafe_lean_op(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    skip: torch.Tensor | None,
    gate: torch.Tensor | None,
    softmax: bool,
) -> torch.Tensor:
    b, c, h, w = features.shape
    acc_dtype = _acc_dtype(features.dtype)
    out = _new_output(features, scale, skip)
    buf = _Buffers(features, scale)
    for y0 in range(0, h, buf.rows):
        y1 = min(h, y0 + buf.rows)
        ker = _kernels_of_band(buf, kernels, y0, y1, softmax)
        acc = buf.get("acc", c, y1 - y0, acc_dtype)
        _reassemble(acc, features, ker, y0, y1, kernel_size)
        if skip is not None:
            skip_band = buf.gather("skip", skip, y0, y1, acc_dtype)
            torch.lerp(acc, skip_band, buf.gather("gate", gate, y0, y1, acc_dtype), out=acc)
        _phases(out, y0, y1, scale).copy_(acc)
    return out


@_carafe_lean_op.register_fake
def _(features, kernels, kernel_size, scale, skip, gate, softmax):
    return _new_output(features, scale, skip)


@torch.library.custom_op("matting::carafe_lean_backward", mutates_args=())
def _carafe_lean_backward_op(
    grad_out: torch.Tensor,
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    skip: torch.Tensor | None,
    gate: torch.Tensor | None,
    softmax: bool,
    needs: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, c, h, w = features.shape
    k2 = kernel_size * kernel_size
    acc_dtype = _acc_dtype(features.dtype)
    need_features, need_kernels, need_skip, need_gate = needs
    gated = skip is not None
    # Accumulated in place; for float32/float64 this is the returned gradient itself.
    grad_acc = features.new_zeros(features.shape, dtype=acc_dtype) if need_features else None
    grad_kernels = torch.empty_like(kernels) if need_kernels else kernels.new_empty(0)
    grad_skip = torch.empty_like(skip) if gated and need_skip else features.new_empty(0)
    grad_gate = torch.empty_like(gate) if gated and need_gate else features.new_empty(0)
    buf = _Buffers(features, scale)
    for y0 in range(0, h, buf.rows):
        y1 = min(h, y0 + buf.rows)
        n = y1 - y0
        ker = _kernels_of_band(buf, kernels, y0, y1, softmax)
        grad = buf.gather("grad", grad_out, y0, y1, acc_dtype)  # becomes the gradient of the reassembly
        prod = buf.get("prod", c, n, acc_dtype)
        if gated:
            gate_band = buf.gather("gate", gate, y0, y1, acc_dtype)
            if need_skip:
                _phases(grad_skip, y0, y1, scale).copy_(torch.mul(grad, gate_band, out=prod))
            if need_gate:
                # d/dgate of lerp(up, skip, gate) = skip - up: recompute this band of up rather than store it.
                diff = buf.get("acc", c, n, acc_dtype)
                _reassemble(diff, features, ker, y0, y1, kernel_size)
                torch.sub(buf.gather("skip", skip, y0, y1, acc_dtype), diff, out=diff).mul_(grad)
                grad_gate_band = diff.sum(dim=3, keepdim=True) if gate.shape[1] == 1 else diff
                _phases(grad_gate, y0, y1, scale).copy_(grad_gate_band)
            grad.mul_(1 - gate_band)
        if need_kernels:
            grad_ker = buf.get("grad_ker", k2, n, acc_dtype).zero_()  # clipped offsets leave zeros
        if need_features:
            summed = buf.get("summed", c, n, acc_dtype, phases=False)[:, 0, 0]
        for k, (rows, cols), (src_rows, src_cols) in _offsets(kernel_size, y0, y1, h, w):
            g, p = grad[..., rows, cols], prod[..., rows, cols]
            if need_features:  # transpose of the gather: the phases' gradients flow back through offset k
                torch.mul(g, ker[:, :, :, k : k + 1, rows, cols], out=p)
                grad_acc[:, :, src_rows, src_cols].add_(torch.sum(p, dim=(1, 2), out=summed[..., rows, cols]))
            if need_kernels:  # channel-wise dot product of gradient and window
                torch.mul(g, features[:, None, None, :, src_rows, src_cols], out=p)
                torch.sum(p, dim=3, out=grad_ker[:, :, :, k, rows, cols])
        if need_kernels:
            if softmax:  # through the softmax: k * (g - sum_j k_j g_j)
                dot = torch.mul(grad_ker, ker, out=buf.get("logits", k2, n, acc_dtype)).sum(dim=3, keepdim=True)
                grad_ker.sub_(dot).mul_(ker)
            _phases(grad_kernels, y0, y1, scale).copy_(grad_ker)
    if need_features:
        grad_features = grad_acc if grad_acc.dtype == features.dtype else grad_acc.to(features.dtype)
    else:
        grad_features = features.new_empty(0)
    return grad_features, grad_kernels, grad_skip, grad_gate


@_carafe_lean_backward_op.register_fake
def _(grad_out, features, kernels, kernel_size, scale, skip, gate, softmax, needs):
    def like(t, needed):
        return torch.empty_like(t) if t is not None and needed else features.new_empty(0)

    return like(features, needs[0]), like(kernels, needs[1]), like(skip, needs[2]), like(gate, needs[3])


def _setup_context(ctx, inputs, output) -> None:
    features, kernels, kernel_size, scale, skip, gate, softmax = inputs
    ctx.save_for_backward(features, kernels, skip, gate)
    ctx.kernel_size, ctx.scale, ctx.softmax = kernel_size, scale, softmax


def _backward(ctx, grad_out):
    features, kernels, skip, gate = ctx.saved_tensors
    needs = [bool(x) for x in ctx.needs_input_grad[:2]] + [bool(ctx.needs_input_grad[i]) for i in (4, 5)]
    grads = _carafe_lean_backward_op(
        grad_out, features, kernels, ctx.kernel_size, ctx.scale, skip, gate, ctx.softmax, needs
    )
    grad_features, grad_kernels, grad_skip, grad_gate = (g if need else None for g, need in zip(grads, needs))
    return grad_features, grad_kernels, None, None, grad_skip, grad_gate, None


_carafe_lean_op.register_autograd(_backward, setup_context=_setup_context)
