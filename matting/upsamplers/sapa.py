"""SAPA (Lu et al., NeurIPS 2022): upsampling kernels from the similarity of encoder and decoder points.

For the encoder feature ``en`` (B, C_en, sH, sW) and the decoder feature ``de`` (B, C, H, W), with every
projection applied per pixel over the channels:

    q      = q(norm_y(en))                                          (B, E, sH, sW)   SAPA-B
           = g * qy(norm_y(en)) + (1 - g) * qx(nearest_up(de)),
             g = nearest_up(sigmoid(gate(norm_x(de))))               SAPA-G
    k      = k(norm_x(de))                                          (B, E, H, W)
    logits[n, Y, X] = <q[:, Y, X], k[:, Y//s + a - r, X//s + b - r]>     n = a*K + b, r = K // 2
                      (exactly 0 where that neighbour lies outside the map: no 1/sqrt(E), no mask)
    out    = carafe(de, softmax_n(logits))                           (B, C, sH, sW)

``norm_*`` are LayerNorms over the channels (eps 1e-5, affine), ``q``/``k``/``qy``/``qx``/``gate`` Linear
layers, as the official ``SAPA.py`` / ``SAPAExp.py`` (``q_mode='gate'``) name them, so their state dicts load
with ``strict=True`` unchanged. Note the value is the RAW decoder feature, and ``qx`` reads the raw (not
normalised) decoder feature. The out-of-map neighbours take part in the softmax with logit 0 and add nothing
to the sum (value 0), so border outputs are attenuated: with q = k = 0 and de = 1 on a 4x4 map, a corner
output is 9/25.

Two exact rewrites keep full resolution cheap: ``qx(nearest_up(de)) = nearest_up(qx(de))`` (the Linear is
per pixel), applied by broadcasting at low resolution; and the similarity is accumulated one kernel offset at
a time over bands of rows (:func:`sapa_similarity`), never holding the K*K shifted copies of ``k`` that the
official unfold formulation builds. Softmax and reassembly run in the project's :func:`carafe` op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matting.utils.flops import add_macs

from .reassembly import carafe, plain_ops_enabled
from .registry import Upsampler, UpsamplerConfigError, check_int, register_upsampler

__all__ = ["SAPA", "SAPAG", "sapa_similarity", "sapa_similarity_reference"]

# Bytes of the per-band buffers of the similarity on CPU (a few MiB: the K*K passes over a band stay in
# cache) and elsewhere (where kernel launches, not caches, set the trade-off).
_BAND_BYTES = 8 << 20
_GPU_BAND_BYTES = 256 << 20


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # A dot product of E half-precision terms would lose bits in every partial sum: accumulate in float32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_similarity_inputs(q: torch.Tensor, k: torch.Tensor, kernel_size: int, scale: int) -> None:
    check_int("sapa_similarity", "kernel_size", kernel_size, odd=True)
    check_int("sapa_similarity", "scale", scale)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"sapa_similarity: q and k must be 4-D, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    b, e, h, w = k.shape
    if tuple(q.shape) != (b, e, scale * h, scale * w):
        raise ValueError(
            f"sapa_similarity: q {tuple(q.shape)} does not match k {tuple(k.shape)}: "
            f"expected q of shape {(b, e, scale * h, scale * w)} for scale={scale}"
        )


def sapa_similarity(q: torch.Tensor, k: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """SAPA's similarity logits, accumulated per kernel offset (no K*K copies of anything).

    Args:
        q: (B, E, s*H, s*W) query, float.  k: (B, E, H, W) key (q's dtype, or promoted to a common one).
        kernel_size: K, odd.  scale: s.
    Returns:
        (B, K*K, s*H, s*W) logits, channel n = a*K + b (row-major offsets (a - r, b - r), r = K // 2):
        ``<q[:, Y, X], k[:, Y//s + a - r, X//s + b - r]>``, exactly 0 where the neighbour is outside the map.
        float32 for half-precision inputs (the sums are accumulated in float32), else the inputs' dtype.
        Laid out channels-last (what the op computes; :func:`carafe` reads any dense layout).
    """
    _check_similarity_inputs(q, k, kernel_size, scale)
    dtype = torch.promote_types(q.dtype, k.dtype)
    b, e, sh, sw = q.shape
    add_macs(b * sh * sw * kernel_size * kernel_size * e)
    # The op works channels-last: the E-channel dot products then read contiguous memory. For the
    # channels-last tensors that SAPA's Linear layers produce, these permutes are free.
    q_nhwc = q.to(dtype).permute(0, 2, 3, 1).contiguous()
    k_nhwc = k.to(dtype).permute(0, 2, 3, 1).contiguous()
    return _similarity_op(q_nhwc, k_nhwc, kernel_size, scale).permute(0, 3, 1, 2)


def sapa_similarity_reference(q: torch.Tensor, k: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """The same logits with plain tensor ops: an unfold of the zero-padded ``k`` (K*K copies at low
    resolution), contracted with ``q``. Exportable (no custom op); shapes and dtype as in :func:`sapa_similarity`
    except that half inputs give half logits."""
    _check_similarity_inputs(q, k, kernel_size, scale)
    dtype = torch.promote_types(q.dtype, k.dtype)
    q, k = q.to(dtype), k.to(dtype)
    b, e, h, w = k.shape
    s, k2 = scale, kernel_size * kernel_size
    add_macs(b * s * h * s * w * k2 * e)
    windows = F.unfold(k, kernel_size, padding=kernel_size // 2).view(b, e, k2, h, w)
    logits = torch.einsum("behiwj,benhw->bnhiwj", q.view(b, e, h, s, w, s), windows)
    return logits.reshape(b, k2, s * h, s * w)


# --- the per-offset similarity op -------------------------------------------------------------------------
#
# Channels-last tensors: q (B, sH, sW, E), k (B, H, W, E), logits (B, sH, sW, K*K). Work goes by bands of
# low-resolution rows (so that a band's passes stay in cache); within a band, one dot product over E per
# kernel offset and sub-pixel phase, written straight into the logits. The key is zero-padded by r at low
# resolution (one small copy), so out-of-map neighbours give exactly 0.


def _band_rows(q: torch.Tensor, scale: int, h: int, k2: int) -> int:
    """Low-resolution rows per band: the band of the query (and its float32 copy for half inputs) and of
    the logits fit the byte budget."""
    b, _, sw, e = q.shape
    budget = _BAND_BYTES if q.device.type == "cpu" else _GPU_BAND_BYTES
    per_row = max(1, b * scale * sw * (e + k2) * torch.finfo(_acc_dtype(q.dtype)).bits // 8)
    return max(1, min(h, budget // per_row))


def _padded_key(k: torch.Tensor, kernel_size: int, dtype: torch.dtype) -> torch.Tensor:
    r = kernel_size // 2
    return F.pad(k.to(dtype), (0, 0, r, r, r, r))  # (B, H + 2r, W + 2r, E)


def _query_band(q: torch.Tensor, y0: int, y1: int, scale: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, n, s, W, s, E) view of the query rows fed by low-resolution rows [y0, y1), in ``dtype``."""
    b, _, sw, e = q.shape
    return q[:, scale * y0 : scale * y1].view(b, y1 - y0, scale, sw // scale, scale, e).to(dtype)


@torch.library.custom_op("matting::sapa_similarity", mutates_args=())
def _similarity_op(q: torch.Tensor, k: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    b, h, w, e = k.shape
    s, k2 = scale, kernel_size * kernel_size
    acc = _acc_dtype(q.dtype)
    padded = _padded_key(k, kernel_size, acc)
    out = q.new_empty(b, s * h, s * w, k2, dtype=acc)
    rows = _band_rows(q, s, h, k2)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        q_band = _query_band(q, y0, y1, s, acc)
        out_band = out[:, s * y0 : s * y1].view(b, y1 - y0, s, w, s, k2)
        for off in range(k2):
            a, c = divmod(off, kernel_size)
            window = padded[:, y0 + a : y1 + a, c : c + w]  # (B, n, W, E): the keys this offset reads
            for i in range(s):
                for j in range(s):
                    torch.linalg.vecdot(q_band[:, :, i, :, j], window, out=out_band[:, :, i, :, j, off])
    return out


@_similarity_op.register_fake
def _(q, k, kernel_size, scale):
    b, h, w, _ = k.shape
    return q.new_empty(b, scale * h, scale * w, kernel_size * kernel_size, dtype=_acc_dtype(q.dtype))


@torch.library.custom_op("matting::sapa_similarity_key_grad", mutates_args=())
def _key_grad_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, kernel_size: int, scale: int) -> torch.Tensor:
    """Gradient of the logits w.r.t. k: for each offset n and sub-pixel (i, j), grad[..., n] * q added to
    the key pixels that offset read (the transpose of the forward's gather), one fused multiply-add each."""
    b, h, w, e = k.shape
    s, r, k2 = scale, kernel_size // 2, kernel_size * kernel_size
    acc = grad.dtype
    grad_padded = k.new_zeros(b, h + 2 * r, w + 2 * r, e, dtype=acc)
    rows = _band_rows(q, s, h, k2)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        q_band = _query_band(q, y0, y1, s, acc)
        grad_band = grad[:, s * y0 : s * y1].view(b, y1 - y0, s, w, s, k2)
        for off in range(k2):
            a, c = divmod(off, kernel_size)
            target = grad_padded[:, y0 + a : y1 + a, c : c + w]  # (B, n, W, E)
            for i in range(s):
                for j in range(s):
                    target.addcmul_(q_band[:, :, i, :, j], grad_band[:, :, i, :, j, off, None])
    return torch.empty_like(k).copy_(grad_padded[:, r : r + h, r : r + w])


@_key_grad_op.register_fake
def _(grad, q, k, kernel_size, scale):
    return torch.empty_like(k)


def _setup_context(ctx, inputs, output) -> None:
    q, k, kernel_size, scale = inputs
    ctx.save_for_backward(q, k)
    ctx.kernel_size, ctx.scale = kernel_size, scale


def _backward(ctx, grad):
    q, k = ctx.saved_tensors
    kernel_size, scale = ctx.kernel_size, ctx.scale
    grad = grad.contiguous()
    grad_q = grad_k = None
    if ctx.needs_input_grad[0]:
        # d logits[n] / dq = k at offset n (zero outside the map): the reassembly of k with ``grad`` as kernels.
        features = k.to(grad.dtype).permute(0, 3, 1, 2)
        grad_q = carafe(features, grad.permute(0, 3, 1, 2), kernel_size, scale).permute(0, 2, 3, 1).to(q.dtype)
    if ctx.needs_input_grad[1]:
        grad_k = _key_grad_op(grad, q, k, kernel_size, scale)
    return grad_q, grad_k, None, None


_similarity_op.register_autograd(_backward, setup_context=_setup_context)


# --- the modules ------------------------------------------------------------------------------------------


class _SAPABase(Upsampler):
    """Shared body of SAPA-B and SAPA-G; subclasses build their query layers and implement ``query``. The
    constructor, with its defaults, is theirs (the registry reads the options from its signature)."""

    uses_encoder = True

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        up_kernel_size: int = 5,
        embedding_dim: int = 64,
        qkv_bias: bool = True,
        encoder_channels: int | None = None,
    ) -> None:
        super().__init__(channels, scale)
        name = type(self).__name__
        check_int(name, "up_kernel_size", up_kernel_size, odd=True)
        check_int(name, "embedding_dim", embedding_dim)
        if not isinstance(qkv_bias, bool):
            raise UpsamplerConfigError(f"{name}: qkv_bias must be true or false, got {qkv_bias!r}")
        if encoder_channels is not None:
            check_int(name, "encoder_channels", encoder_channels)
            self.encoder_channels = encoder_channels
        self.up_kernel_size = up_kernel_size
        self.embedding_dim = embedding_dim
        # Registration order as in the official modules (norm_y, norm_x, query layers, k).
        self.norm_y = nn.LayerNorm(self.encoder_channels)
        self.norm_x = nn.LayerNorm(channels)
        self._build_query(embedding_dim, qkv_bias)
        self.k = nn.Linear(channels, embedding_dim, bias=qkv_bias)
        self.reset_parameters()

    def _build_query(self, embedding_dim: int, bias: bool) -> None:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """The official initialisation: Linear weights truncated-normal (std 0.02, cut at +-2), zero biases;
        LayerNorm weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, encoder_channels={self.encoder_channels}, up_kernel_size={self.up_kernel_size}"
            f", embedding_dim={self.embedding_dim}"
        )

    def query(self, en_normed: torch.Tensor, de: torch.Tensor, de_normed: torch.Tensor) -> torch.Tensor:
        """Channels-last (B, sH, sW, C_en), (B, H, W, C), (B, H, W, C) -> (B, sH, sW, E) query."""
        raise NotImplementedError

    def kernel_logits(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(B, K*K, sH, sW) similarity logits before the softmax (float32 for half inputs)."""
        # Per-pixel LayerNorm and Linear act on the channels-last order; for channels-last inputs the
        # permutes are views.
        y, x = en.permute(0, 2, 3, 1), de.permute(0, 2, 3, 1)
        x_normed = self.norm_x(x)
        q = self.query(self.norm_y(y), x, x_normed).permute(0, 3, 1, 2)
        k = self.k(x_normed).permute(0, 3, 1, 2)
        # Inside plain_ops() (export) the similarity, like the reassembly, uses plain tensor ops.
        similarity = sapa_similarity_reference if plain_ops_enabled() else sapa_similarity
        return similarity(q, k, self.up_kernel_size, self.scale)

    def kernels(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        """(B, K*K, sH, sW) reassembly kernels: non-negative, summing to 1 over dim 1."""
        return torch.softmax(self.kernel_logits(en, de), dim=1)

    def upsample(self, en: torch.Tensor, de: torch.Tensor) -> torch.Tensor:
        return carafe(de, self.kernel_logits(en, de), self.up_kernel_size, self.scale, logits=True)


@register_upsampler("sapa")
class SAPA(_SAPABase):
    """SAPA-B (official ``SAPA.py``): query from the normalised encoder feature.

    ``forward(en, de)``: en (B, C_en, sH, sW), de (B, C, H, W) -> (B, C, sH, sW), de's dtype.

    Args:
        channels: C, the decoder width (``dim_x``).  scale: s (``up_factor``, 2).
        up_kernel_size: K (5).  embedding_dim: E (64, the official default; 32 in the authors' logged runs).
        qkv_bias: biases of the Linear layers (True).
        encoder_channels: C_en (``dim_y``); None: C.
    Parameters: ``norm_y``, ``norm_x`` (LayerNorm), ``q`` (C_en -> E), ``k`` (C -> E), all ``nn.Linear``.
    """

    def _build_query(self, embedding_dim: int, bias: bool) -> None:
        self.q = nn.Linear(self.encoder_channels, embedding_dim, bias=bias)

    def query(self, en_normed: torch.Tensor, de: torch.Tensor, de_normed: torch.Tensor) -> torch.Tensor:
        return self.q(en_normed)


@register_upsampler("sapa_g")
class SAPAG(_SAPABase):
    """SAPA-G (official ``SAPAExp(q_mode='gate')``): a gated blend of encoder and decoder queries,

        q = g * qy(norm_y(en)) + (1 - g) * qx(nearest_up(de)),   g = nearest_up(sigmoid(gate(norm_x(de)))).

    Interface and arguments as :class:`SAPA`. Parameters: ``norm_y``, ``norm_x``, ``qy`` (C_en -> E),
    ``qx`` (C -> E), ``gate`` (C -> 1), ``k`` (C -> E). (SAPAExp's optional value projection ``v``, absent
    unless ``v_embed`` or ``out_dim != dim_x``, is not supported.)
    """

    def _build_query(self, embedding_dim: int, bias: bool) -> None:
        self.qy = nn.Linear(self.encoder_channels, embedding_dim, bias=bias)
        self.qx = nn.Linear(self.channels, embedding_dim, bias=bias)
        self.gate = nn.Linear(self.channels, 1, bias=bias)

    def query(self, en_normed: torch.Tensor, de: torch.Tensor, de_normed: torch.Tensor) -> torch.Tensor:
        s = self.scale
        from_en = self.qy(en_normed)  # (B, sH, sW, E)
        b, sh, sw, e = from_en.shape
        # qx and the gate are per pixel, so they are computed at low resolution and nearest-upsampled by a
        # broadcast over the s x s sub-pixels instead of projecting a nearest-upsampled copy of de.
        from_de = self.qx(de)[:, :, None, :, None]  # (B, H, 1, W, 1, E)
        g = torch.sigmoid(self.gate(de_normed))[:, :, None, :, None]  # (B, H, 1, W, 1, 1)
        # g * from_en + (1 - g) * from_de with one full-resolution result: the second term is low-resolution
        # and added in place through the broadcast (mul's backward needs its inputs, not its output).
        q = g * from_en.view(b, sh // s, s, sw // s, s, e)
        return q.add_((1 - g) * from_de).view(b, sh, sw, e)
