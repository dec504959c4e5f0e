"""CARAFE reassembly: every output pixel is a K x K weighted sum of the low-resolution feature around it.

    out[b, c, y, x] = sum_{i, j in -r..r} kernels[b, (i + r) * K + (j + r), y, x]
                                          * features[b, c, y // s + i, x // s + j]       (zero outside)

with r = K // 2. Three public entry points share ONE operator, ``matting::reassemble``:

- :func:`carafe`: the reassembly (optionally of softmax-normalised logits);
- :func:`gated_carafe`: ``gate * skip + (1 - gate) * carafe(...)``, the blend FADE's gate does;
- :func:`fade_carafe`: FADE's whole output from what its kernel generator and gate produce, with the decoder
  branch of the logits and the gate logits at the INPUT resolution (upsampled inside the op):
  ``g * skip + (1 - g) * carafe(features, softmax(logits + up(logits_lo)))`` with ``g = sigmoid(up(gate_lo))``,
  ``up`` = nearest upsampling by s. Neither the upsampled copies nor the normalised kernels are stored.

Implementations (``impl=``), all equal up to float rounding in the output and in the gradients of every input:

- ``"auto"`` (default): chosen per device by this module, not by the caller: Triton on CUDA, the lean op on the
  CPU (and on CUDA when triton cannot be imported: one warning, then the lean op). Inside :func:`plain_ops`
  it is ``"reference"``.
- ``"lean"``: works a band of input rows at a time; for all s*s output phases of the band at once (the output
  pixels (s*y + py, s*x + px)), it accumulates K*K in-place multiply-adds of shifted views of the input
  (clipped at the border instead of padding a copy) into a phase-major buffer that stays in cache, blends it
  with the skip feature and scatters it to the output. Extra memory is a few band buffers besides the output
  and the gradients; the backward recomputes each band instead of saving the (B, C, sH, sW) reassembled tensor.
- ``"triton"``: fused Triton kernels (:mod:`.reassembly_triton`): one forward kernel, and for the backward one
  kernel per output pixel (gradients of the logits, skip and gate) plus one per input pixel that gathers the
  features' gradient from the output pixels reading it (no atomics: deterministic). CUDA tensors, or CPU
  tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported; for tests).
- ``"reference"``: the official pure-PyTorch formulation in plain tensor ops (unfold, repeat to the s*s
  phases, contract), about s*s*K*K = 100 copies of the input at once. The test oracle, and what
  :func:`plain_ops` gives export.

``"lean"`` and ``"triton"`` run as the ``torch.library`` custom op ``matting::reassemble`` with its own backward
op (``matting::reassemble_backward``) and fake kernels, so ``torch.compile`` sees one opaque node.

Dtype and layout contract (all entry points, all implementations):

- every input is a floating tensor on the features' device; kernels, logits, skip and gate of another floating
  dtype are cast to the FEATURES' dtype at the op boundary (e.g. under CUDA autocast, where
  ``upsample_nearest2d`` and ``sigmoid`` give float32 next to float16 features). Gradients flow back through
  the casts in each input's own dtype;
- sums and the softmax are computed in float32 for float16/bfloat16 (float64 stays float64);
- the output has the features' dtype and layout (channels-last or NCHW), as torch's upsampling ops do;
- any dense layout (NCHW or channels-last) is accepted for every input; other strides are copied first.

The export hook: inside ``with plain_ops():`` ``impl="auto"`` gives the reference formulation and the other
custom ops of :mod:`matting.upsamplers` (FADE's folded and banded convolutions) their plain-op forms, so that
a trace (ONNX, TorchScript, torch.export) holds standard operators only; values are unchanged.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from matting.utils.flops import add_macs

from .registry import check_choice, check_int, is_channels_last
from .reassembly_common import block_sums, new_grads

__all__ = [
    "carafe",
    "gated_carafe",
    "fade_carafe",
    "fade_logits",
    "carafe_reference",
    "check_carafe_inputs",
    "plain_ops",
    "plain_ops_enabled",
    "resolve_impl",
    "IMPLEMENTATIONS",
    "OBSOLETE_OPTIONS",
]

IMPLEMENTATIONS = ("auto", "lean", "triton", "reference")

#: The upsamplers' former ``reassembly`` option (the implementation is now the op's choice), with the values
#: that configs may still carry: ``build_upsampler`` accepts them with a warning and ignores them.
OBSOLETE_OPTIONS = {"reassembly": IMPLEMENTATIONS}

# Accumulator size of one band of the lean CPU path. A few MiB keeps the K*K read-modify-write passes over a
# band in cache (faster than whole-image passes) and the band buffers small next to the output, while keeping
# the op count low: on a shared machine every multi-threaded op pays an OpenMP barrier.
_BAND_BYTES = 8 << 20
_GPU_BAND_BYTES = 256 << 20


# --- the export hook and the choice of implementation ------------------------------------------------------

_PLAIN_OPS = False


@contextlib.contextmanager
def plain_ops():
    """Within this block the custom ops of :mod:`matting.upsamplers` give way to plain tensor ops.

    ``impl="auto"`` reassemblies use the reference formulation, and FADE neither folds its compressors nor
    bands its convolutions. Values are the same (up to float rounding); memory at high resolution is larger.
    Export enters it so that traced graphs contain standard operators only. Not thread-local: do not run
    training in another thread meanwhile.
    """
    global _PLAIN_OPS
    previous, _PLAIN_OPS = _PLAIN_OPS, True
    try:
        yield
    finally:
        _PLAIN_OPS = previous


def plain_ops_enabled() -> bool:
    """True inside :func:`plain_ops`."""
    return _PLAIN_OPS


_TRITON: dict = {}


def _triton_module():
    """The Triton kernels module, or None when triton cannot be imported (the reason is kept for messages)."""
    if "module" not in _TRITON:
        try:
            # Imported on first use, not at module level: triton is optional (absent on CPU-only installs), and
            # it must see TRITON_INTERPRET as set by whoever runs the kernels on the CPU.
            from . import reassembly_triton as module
        except ImportError as exc:
            module, _TRITON["error"] = None, exc
        _TRITON["module"] = module
    return _TRITON["module"]


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation that ``impl`` stands for on ``device``: "lean", "triton" or "reference"."""
    if impl == "auto":
        if _PLAIN_OPS:
            return "reference"
        if device.type != "cuda":
            return "lean"
        if _triton_module() is not None:
            return "triton"
        if not _TRITON.get("warned"):
            _TRITON["warned"] = True
            warnings.warn(
                f"reassembly: triton is unavailable ({_TRITON['error']}); using the slower lean op on CUDA",
                RuntimeWarning, stacklevel=3,
            )
        return "lean"
    if impl == "triton":
        module = _triton_module()
        if module is None:
            raise RuntimeError(f"reassembly: impl='triton' needs the triton package ({_TRITON['error']})")
        if device.type != "cuda" and not module.interpreting():
            raise ValueError(
                f"reassembly: impl='triton' runs on CUDA tensors (or under TRITON_INTERPRET=1), got {device}"
            )
    return impl


# --- public entry points -----------------------------------------------------------------------------------


def carafe(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    impl: str = "auto",
    logits: bool = False,
    *,
    softmax: bool | None = None,
) -> torch.Tensor:
    """Reassembles ``features`` with per-pixel kernels.

    Args:
        features: (B, C, H, W) float tensor.
        kernels: (B, K*K, s*H, s*W) float, on the same device: kernels (e.g. softmax-normalised over dim 1),
            or logits with ``logits=True``; channel k = (i + r) * K + (j + r) weights the source offset (i, j).
        kernel_size: K, odd.
        scale: s, a positive int.
        impl: "auto" (default), "lean", "triton" or "reference"; see the module docstring.
        logits: the kernels are logits: the op normalises them with a softmax over dim 1 first (and never
            stores the normalised kernels).
        softmax: the former name of ``logits``, kept for one release (a FutureWarning).

    Returns:
        (B, C, s*H, s*W) tensor of ``features``' dtype (the dtype and layout contract of the module docstring).
    """
    logits = _logits_flag("carafe", logits, softmax)
    return _reassemble("carafe", features, kernels, None, None, None, kernel_size, scale, logits, False, impl)


def gated_carafe(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernel_size: int,
    scale: int,
    skip: torch.Tensor,
    gate: torch.Tensor,
    impl: str = "auto",
    logits: bool = False,
    *,
    softmax: bool | None = None,
) -> torch.Tensor:
    """``gate * skip + (1 - gate) * carafe(features, kernels, kernel_size, scale)`` in one pass.

    Args:
        features, kernels, kernel_size, scale, impl, logits, softmax: as in :func:`carafe`.
        skip: (B, C, s*H, s*W), the tensor the gate lets through (FADE's ``en``).
        gate: (B, 1, s*H, s*W) or (B, C, s*H, s*W), usually in [0, 1]. The op computes
            ``torch.lerp(carafe(...), skip, gate)``, so gate 0 gives the reassembly and gate 1 gives ``skip``
            exactly (the reference evaluates the formula above, as the official code does).

    Returns:
        (B, C, s*H, s*W) of ``features``' dtype.
    """
    logits = _logits_flag("gated_carafe", logits, softmax)
    return _reassemble("gated_carafe", features, kernels, None, skip, gate, kernel_size, scale, logits, False, impl)


def _logits_flag(owner: str, logits: bool, softmax: bool | None) -> bool:
    """``logits``, or the deprecated ``softmax`` keyword that meant the same."""
    if softmax is None:
        return logits
    warnings.warn(f"{owner}(..., softmax=...) is now logits=...; softmax will be removed", FutureWarning,
                  stacklevel=3)
    return softmax


def fade_carafe(
    features: torch.Tensor,
    logits: torch.Tensor,
    logits_lo: torch.Tensor | None,
    skip: torch.Tensor,
    gate_lo: torch.Tensor,
    kernel_size: int,
    scale: int,
    impl: str = "auto",
) -> torch.Tensor:
    """FADE's output: ``g * skip + (1 - g) * carafe(features, softmax(logits + up(logits_lo)))``.

    ``g = sigmoid(up(gate_lo))``, ``up`` is nearest upsampling by ``scale``: the op reads ``logits_lo`` and
    ``gate_lo`` at the input resolution and never stores their upsampled copies.

    Args:
        features: (B, C, H, W), FADE's ``de``.
        logits: (B, K*K, s*H, s*W), the encoder branch of the kernel logits.
        logits_lo: (B, K*K, H, W), the decoder branch of the logits (added to each s x s block), or None.
        skip: (B, C, s*H, s*W), FADE's ``en``.
        gate_lo: (B, 1, H, W) or (B, C, H, W) gate LOGITS at the input resolution (before the sigmoid).
        kernel_size, scale, impl: as in :func:`carafe`.

    Returns:
        (B, C, s*H, s*W) of ``features``' dtype.
    """
    return _reassemble("fade_carafe", features, logits, logits_lo, skip, gate_lo, kernel_size, scale, True, True, impl)


def fade_logits(
    logits: torch.Tensor, logits_lo: torch.Tensor, scale: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FADE's two logit branches in the form the op reads best on their device, for :func:`fade_carafe`.

    Triton (and the reference) read ``logits_lo`` at the input resolution: both come back unchanged. The lean
    op gets ``(logits + up(logits_lo), None)``, summed IN PLACE into ``logits`` (which must be a temporary of
    the caller that autograd has not saved): then only the sum is kept for the backward, as in a plain
    ``from_en + up(from_de)``, instead of both branches.

    Args:
        logits: (B, K*K, s*H, s*W).  logits_lo: (B, K*K, H, W), same dtype and device.
    """
    if resolve_impl("auto", logits.device) != "lean":
        return logits, logits_lo
    return _AddUpsampled.apply(logits, logits_lo, scale), None


class _AddUpsampled(torch.autograd.Function):
    """In place: ``logits += nearest_up(logits_lo)`` through a broadcast view (no upsampled copy)."""

    @staticmethod
    def forward(ctx, logits, logits_lo, scale):
        b, k2, h, w = logits_lo.shape
        logits.view(b, k2, h, scale, w, scale).add_(logits_lo[:, :, :, None, :, None])
        ctx.mark_dirty(logits)
        ctx.scale = scale
        return logits

    @staticmethod
    def backward(ctx, grad):
        return grad, block_sums(grad, ctx.scale), None


def _shape(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else tuple(t.shape)


def check_carafe_inputs(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> None:
    """Raises ValueError (naming the shapes) unless ``carafe(features, kernels, kernel_size, scale)`` is valid."""
    _check("carafe", features, kernels, None, None, None, kernel_size, scale, False)


def _check(owner, features, kernels, kernels_lo, skip, gate, kernel_size, scale, gate_lo) -> None:
    """Raises ValueError (naming the shapes) unless the arguments describe a valid reassembly."""
    check_int(owner, "kernel_size", kernel_size, odd=True)
    check_int(owner, "scale", scale)
    tensors = {"features": features, "kernels": kernels, "kernels_lo": kernels_lo, "skip": skip, "gate": gate}
    for name, t in tensors.items():
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point()):
            what = f"{_shape(t)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{owner}: {name} must be a 4-D floating tensor, got {what}")
        if t is not None and t.device != features.device:
            raise ValueError(f"{owner}: {name} is on {t.device}, features on {features.device}: use one device")
    b, c, h, w = features.shape
    k2, s = kernel_size * kernel_size, scale
    expected = (b, k2, s * h, s * w)
    if tuple(kernels.shape) != expected:
        raise ValueError(
            f"{owner}: kernels {_shape(kernels)} do not match features {_shape(features)}: "
            f"expected {expected} for kernel_size={kernel_size}, scale={scale}"
        )
    if kernels_lo is not None and tuple(kernels_lo.shape) != (b, k2, h, w):
        raise ValueError(
            f"{owner}: kernels_lo {_shape(kernels_lo)} do not match features {_shape(features)}: "
            f"expected {(b, k2, h, w)}"
        )
    if (skip is None) != (gate is None):
        raise ValueError(f"{owner}: skip and gate go together, got skip {_shape(skip)} and gate {_shape(gate)}")
    if skip is None:
        return
    out_shape = (b, c, s * h, s * w)
    gh, gw = (h, w) if gate_lo else (s * h, s * w)
    if tuple(skip.shape) != out_shape or gate.shape[1] not in (1, c) or (
        (gate.shape[0],) + tuple(gate.shape[2:]) != (b, gh, gw)
    ):
        raise ValueError(
            f"{owner}: skip {_shape(skip)} and gate {_shape(gate)} do not match features {_shape(features)}: "
            f"expected skip {out_shape} and gate {(b, 1, gh, gw)} or {(b, c, gh, gw)}"
        )


def _dense_layout(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` if it is dense in the NCHW or the channels-last layout, else an NCHW copy. Both implementations
    read any dense layout; converting a channels-last network's tensors to NCHW would cost more than the op."""
    return t if t is None or t.is_contiguous() or is_channels_last(t) else t.contiguous()


def _reassemble(owner, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo, impl):
    """The one entry to the operator: checks, casts to the features' dtype, picks the implementation."""
    _check(owner, features, kernels, kernels_lo, skip, gate, kernel_size, scale, gate_lo)
    check_choice(owner, "impl", impl, IMPLEMENTATIONS)
    b, c, h, w = features.shape
    add_macs(b * c * h * w * scale * scale * kernel_size * kernel_size)
    kernels, kernels_lo, skip, gate = (
        t if t is None or t.dtype == features.dtype else t.to(features.dtype) for t in (kernels, kernels_lo, skip, gate)
    )
    impl = resolve_impl(impl, features.device)
    if impl == "reference":
        return _reference(features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo)
    tensors = (_dense_layout(t) for t in (features, kernels, kernels_lo, skip, gate))
    return _reassemble_op(*tensors, kernel_size, scale, softmax, gate_lo, impl)


def _reference(features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo) -> torch.Tensor:
    """The formulas of the public functions in plain tensor ops (autograd gives the gradients)."""
    if kernels_lo is not None:
        kernels = kernels + F.interpolate(kernels_lo, scale_factor=scale, mode="nearest")
    if softmax:
        kernels = kernels.softmax(dim=1)
    out = carafe_reference(features, kernels, kernel_size, scale)
    if skip is not None:
        if gate_lo:
            gate = torch.sigmoid(F.interpolate(gate, scale_factor=scale, mode="nearest"))
        out = gate * skip + (1 - gate) * out
    # Autocast may have run some of these ops in another dtype, and a skip in another layout sets the output's.
    layout = torch.channels_last if is_channels_last(features) else torch.contiguous_format
    return out.to(features.dtype, memory_format=layout)


def carafe_reference(features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """The official-style unfold reassembly; memory ~ s*s*K*K copies of ``features``. Shapes as in carafe."""
    b, c, h, w = features.shape
    k2, s = kernel_size * kernel_size, scale
    patches = F.unfold(features, kernel_size, padding=kernel_size // 2)  # (B, C*K*K, H*W), k fastest
    patches = patches.view(b, c, k2, h, w).transpose(1, 2)  # (B, K*K, C, H, W)
    # Nearest-repeat every patch to its s*s output pixels, materialised as the official einops.repeat does.
    patches = patches[:, :, :, :, None, :, None].expand(b, k2, c, h, s, w, s).reshape(b, k2, c, s * h, s * w)
    return torch.einsum("bkchw,bkhw->bchw", patches, kernels)


# --- the operator ------------------------------------------------------------------------------------------
#
# matting::reassemble(features, kernels, kernels_lo?, skip?, gate?, kernel_size, scale, softmax, gate_lo, impl)
#   features (B, C, H, W); kernels (B, K*K, sH, sW); kernels_lo (B, K*K, H, W) added to every s x s block;
#   skip (B, C, sH, sW); gate (B, 1|C, sH, sW) values, or with gate_lo (B, 1|C, H, W) logits; all one dtype.
#   impl: "lean" or "triton" (resolved by resolve_impl before the call).


def _new_output(features: torch.Tensor, scale: int) -> torch.Tensor:
    """Uninitialised (B, C, s*H, s*W) output in the features' layout (channels-last in a channels-last network,
    else NCHW), as torch's own upsampling ops do. Every implementation and the fake kernel allocate it alike."""
    b, c, h, w = features.shape
    layout = torch.channels_last if is_channels_last(features) else torch.contiguous_format
    return torch.empty((b, c, scale * h, scale * w), dtype=features.dtype, device=features.device, memory_format=layout)


@torch.library.custom_op("matting::reassemble", mutates_args=())
def _reassemble_op(
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernels_lo: torch.Tensor | None,
    skip: torch.Tensor | None,
    gate: torch.Tensor | None,
    kernel_size: int,
    scale: int,
    softmax: bool,
    gate_lo: bool,
    impl: str,
) -> torch.Tensor:
    out = _new_output(features, scale)
    run = _triton_module().forward if impl == "triton" else _lean_forward
    run(out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo)
    return out


@_reassemble_op.register_fake
def _(features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo, impl):
    return _new_output(features, scale)


@torch.library.custom_op("matting::reassemble_backward", mutates_args=())
def _reassemble_backward_op(
    grad_out: torch.Tensor,
    features: torch.Tensor,
    kernels: torch.Tensor,
    kernels_lo: torch.Tensor | None,
    skip: torch.Tensor | None,
    gate: torch.Tensor | None,
    kernel_size: int,
    scale: int,
    softmax: bool,
    gate_lo: bool,
    impl: str,
    needs_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of features, kernels, kernels_lo, skip, gate (an empty tensor where ``needs_grad`` is False)."""
    run = _triton_module().backward if impl == "triton" else _lean_backward
    return tuple(run(needs_grad, grad_out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax,
                     gate_lo))


@_reassemble_backward_op.register_fake
def _(grad_out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo, impl, needs_grad):
    return tuple(new_grads(features, kernels, kernels_lo, skip, gate, needs_grad))


def _setup_context(ctx, inputs, output) -> None:
    features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo, impl = inputs
    ctx.save_for_backward(features, kernels, kernels_lo, skip, gate)
    ctx.args = (kernel_size, scale, softmax, gate_lo, impl)


def _backward(ctx, grad_out):
    features, kernels, kernels_lo, skip, gate = ctx.saved_tensors
    kernel_size, scale, softmax, gate_lo, impl = ctx.args
    needs_grad = [bool(ctx.needs_input_grad[i]) for i in range(5)]
    grads = _reassemble_backward_op(
        grad_out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo, impl, needs_grad
    )
    return (*(g if need else None for g, need in zip(grads, needs_grad)), None, None, None, None, None)


_reassemble_op.register_autograd(_backward, setup_context=_setup_context)


# --- the lean implementation ------------------------------------------------------------------------------
#
# Work is split into bands of input rows [y0, y1). A band feeds output rows [s*y0, s*y1), i.e. s*s output
# phases (s*y + py, s*x + px). Per band, the kernels (and skip, gate, output gradient) are gathered
# phase-major into small dense (B, s, s, ., n, W) buffers; the reassembly of all phases is accumulated in
# place, one op per kernel offset (nothing is allocated per offset), and the result is scattered back. The
# input-resolution operands (kernels_lo, gate logits) broadcast over the phase axes as they are. With
# ``softmax`` the op receives logits and normalises each band's kernels itself, so neither the normalised
# kernels nor their gradient ever exist as full-size tensors. Few, large ops matter on CPU: each op pays an
# OpenMP barrier, which stalls whenever another process holds a core.


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


def _rows(t: torch.Tensor, y0: int, y1: int) -> torch.Tensor:
    """Rows [y0, y1) of an input-resolution t (B, C, H, W) as (B, 1, 1, C, n, W), to broadcast over phases."""
    return t[:, None, None, :, y0:y1]


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

    def read(self, name: str, t: torch.Tensor, y0: int, y1: int, dtype: torch.dtype) -> torch.Tensor:
        """Like :meth:`gather` for an operand that is only read: its phase view itself when it has ``dtype``."""
        return _phases(t, y0, y1, self.scale) if t.dtype == dtype else self.gather(name, t, y0, y1, dtype)


def _kernels_of_band(buf: _Buffers, kernels, kernels_lo, y0, y1, softmax: bool) -> torch.Tensor:
    """(B, s, s, K*K, n, W) kernels of one band: plus kernels_lo, normalised when ``softmax`` (in float32 or
    wider when either applies)."""
    if not softmax and kernels_lo is None:
        return buf.gather("ker", kernels, y0, y1, kernels.dtype)
    logits = buf.gather("logits", kernels, y0, y1, _acc_dtype(kernels.dtype))
    if kernels_lo is not None:
        logits.add_(_rows(kernels_lo, y0, y1))
    if not softmax:
        return logits
    return torch.softmax(logits, dim=3, out=buf.get("ker", kernels.shape[1], y1 - y0, logits.dtype))


def _gate_of_band(buf: _Buffers, gate, y0, y1, gate_lo: bool) -> torch.Tensor:
    """The gate of one band: (B, s, s, 1|C, n, W), or with ``gate_lo`` sigmoid(logits) as (B, 1, 1, 1|C, n, W)."""
    acc_dtype = _acc_dtype(gate.dtype)
    if not gate_lo:
        return buf.gather("gate", gate, y0, y1, acc_dtype)
    band = buf.get("gate", gate.shape[1], y1 - y0, acc_dtype, phases=False)
    return band.copy_(_rows(gate, y0, y1)).sigmoid_()


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


def _accumulate(acc, features, ker, y0, y1, kernel_size) -> None:
    """acc (B, s, s, C, n, W) = sum_k ker[:, :, :, k] * (features rows y0..y1 shifted by offset k)."""
    h, w = features.shape[-2:]
    for k, (rows, cols), (src_rows, src_cols) in _offsets(kernel_size, y0, y1, h, w):
        window = features[:, None, None, :, src_rows, src_cols]
        if k == kernel_size * kernel_size // 2:  # the centre offset is never clipped: it initialises acc
            torch.mul(window, ker[:, :, :, k : k + 1], out=acc)
        else:
            acc[..., rows, cols].addcmul_(window, ker[:, :, :, k : k + 1, rows, cols])


def _lean_forward(out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo) -> None:
    # The shifted-window multiply-adds run fastest on NCHW features (a quarter of the output's size).
    features = features.contiguous()
    b, c, h, w = features.shape
    acc_dtype = _acc_dtype(features.dtype)
    buf = _Buffers(features, scale)
    for y0 in range(0, h, buf.rows):
        y1 = min(h, y0 + buf.rows)
        ker = _kernels_of_band(buf, kernels, kernels_lo, y0, y1, softmax)
        acc = buf.get("acc", c, y1 - y0, acc_dtype)
        _accumulate(acc, features, ker, y0, y1, kernel_size)
        if skip is not None:
            skip_band = buf.read("skip", skip, y0, y1, acc_dtype)
            torch.lerp(acc, skip_band, _gate_of_band(buf, gate, y0, y1, gate_lo), out=acc)
        _phases(out, y0, y1, scale).copy_(acc)


def _lean_backward(
    needs_grad, grad_out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo
):
    layout = torch.channels_last if is_channels_last(features) else torch.contiguous_format
    features = features.contiguous()  # as in the forward
    b, c, h, w = features.shape
    k2 = kernel_size * kernel_size
    acc_dtype = _acc_dtype(features.dtype)
    need_features, need_kernels, need_lo, need_skip, need_gate = needs_grad
    grads = new_grads(features, kernels, kernels_lo, skip, gate, [False, *needs_grad[1:]])
    _, grad_kernels, grad_lo, grad_skip, grad_gate = grads
    need_ker = need_kernels or need_lo
    gated = skip is not None
    # Accumulated in place, NCHW; for float32/float64 and NCHW features it is the returned gradient itself.
    grad_acc = torch.zeros_like(features, dtype=acc_dtype) if need_features else None
    buf = _Buffers(features, scale)
    for y0 in range(0, h, buf.rows):
        y1 = min(h, y0 + buf.rows)
        n = y1 - y0
        ker = _kernels_of_band(buf, kernels, kernels_lo, y0, y1, softmax)
        grad = buf.gather("grad", grad_out, y0, y1, acc_dtype)  # becomes the gradient of the reassembly
        prod = buf.get("prod", c, n, acc_dtype)
        if gated:
            gate_band = _gate_of_band(buf, gate, y0, y1, gate_lo)
            if need_skip:
                _phases(grad_skip, y0, y1, scale).copy_(torch.mul(grad, gate_band, out=prod))
            if need_gate:
                _gate_gradient(buf, grad_gate, grad, gate_band, features, ker, skip, y0, y1, kernel_size, gate_lo)
            grad.mul_(1 - gate_band)
        if need_ker:
            grad_ker = buf.get("grad_ker", k2, n, acc_dtype).zero_()  # clipped offsets leave zeros
        if need_features:
            summed = buf.get("summed", c, n, acc_dtype, phases=False)[:, 0, 0]
        for k, (rows, cols), (src_rows, src_cols) in _offsets(kernel_size, y0, y1, h, w):
            g, p = grad[..., rows, cols], prod[..., rows, cols]
            if need_features:  # transpose of the gather: the phases' gradients flow back through offset k
                torch.mul(g, ker[:, :, :, k : k + 1, rows, cols], out=p)
                grad_acc[:, :, src_rows, src_cols].add_(torch.sum(p, dim=(1, 2), out=summed[..., rows, cols]))
            if need_ker:  # channel-wise dot product of gradient and window
                torch.mul(g, features[:, None, None, :, src_rows, src_cols], out=p)
                torch.sum(p, dim=3, out=grad_ker[:, :, :, k, rows, cols])
        if need_ker:
            if softmax:  # through the softmax: k * (g - sum_j k_j g_j)
                dot = torch.mul(grad_ker, ker, out=buf.get("logits", k2, n, acc_dtype)).sum(dim=3, keepdim=True)
                grad_ker.sub_(dot).mul_(ker)
            if need_kernels:
                _phases(grad_kernels, y0, y1, scale).copy_(grad_ker)
            if need_lo:  # each input-resolution logit feeds the s*s output pixels of its block
                grad_lo[:, :, y0:y1].copy_(grad_ker.sum(dim=(1, 2)))
    if need_features:  # in the features' own layout, as the fake kernel promises
        grads[0] = grad_acc.to(features.dtype, memory_format=layout)
    return grads


def _gate_gradient(buf, grad_gate, grad, gate_band, features, ker, skip, y0, y1, kernel_size, gate_lo) -> None:
    """One band of the gate's gradient: d/dgate of lerp(up, skip, gate) = skip - up, with this band of up
    recomputed rather than stored; through the sigmoid and summed over each block's s*s pixels with gate_lo."""
    c, n, scale = features.shape[1], y1 - y0, buf.scale
    diff = buf.get("acc", c, n, grad.dtype)
    _accumulate(diff, features, ker, y0, y1, kernel_size)
    torch.sub(buf.read("skip", skip, y0, y1, grad.dtype), diff, out=diff).mul_(grad)
    band = diff.sum(dim=3, keepdim=True) if grad_gate.shape[1] == 1 else diff
    if gate_lo:
        grad_gate[:, :, y0:y1].copy_((band * (gate_band * (1 - gate_band))).sum(dim=(1, 2)))
    else:
        _phases(grad_gate, y0, y1, scale).copy_(band)
