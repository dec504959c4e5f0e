"""Triton kernels of the reassembly op (``impl="triton"`` of :mod:`.reassembly`); see that module for the maths.

Imported only when the op first needs it, never at package import (triton is optional). Three kernels, each
reading every operand in its own dtype and strides (NCHW, channels-last, or broadcast stride-0 gradients) and
summing in float32 (float64 for float64 tensors):

- ``_forward_kernel``, one program per (tile of output pixels, block of channels, image): the kernel logits of
  each pixel (plus its block's input-resolution logits) are normalised by an online softmax over K*K, the K*K
  source pixels are gathered and summed, and the sum is blended with ``skip`` by the gate (a value, or
  ``sigmoid`` of an input-resolution logit) as ``torch.lerp`` does.
- ``_backward_pixel_kernel``, one program per (tile of output pixels, image), looping over all channels:
  gradients of the kernels (through the softmax), of ``skip`` and of the gate (the pre-sigmoid gate at full
  resolution with ``gate_lo``: its s*s blocks are summed afterwards, as are the kernels' for ``kernels_lo``),
  and the log-sum-exp of each pixel's logits for the next kernel.
- ``_backward_features_kernel``, one program per (tile of INPUT pixels, block of channels, image): the
  features' gradient as a gather over the K*K*s*s output pixels that read each input pixel, so no atomics
  and a deterministic result.

Tile sizes are in ``BLOCKS`` (tests shrink them to exercise several blocks on tiny tensors). The defaults are
untuned guesses that keep the registers per thread moderate and free of spills (docs/gpu.md). The loops over
the K*K offsets are not unrolled: unrolled, the features' kernel (K*K*s*s gathers) compiles very slowly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reassembly_common import block_sums, new_grads

__all__ = ["forward", "backward", "interpreting", "BLOCKS"]

#: Output (or input) pixels per program, channels per block, warps per program.
BLOCKS = {"pixels": 64, "channels": 32, "warps": 8}


def interpreting() -> bool:
    """True when these kernels run in Triton's interpreter (on CPU tensors): TRITON_INTERPRET=1 was set when
    this module was imported (triton reads it as each kernel is defined)."""
    return type(_forward_kernel).__name__ == "InterpretedFunction"


@triton.jit
def _logit(L, LO, l_off, lo_off, k, slk, slok, mask, HAS_LO: tl.constexpr, ACC: tl.constexpr):
    """Logit k at the given pixel offsets (plus the input-resolution logit of the pixel's block)."""
    v = tl.load(L + l_off + k * slk, mask=mask, other=0.0).to(ACC)
    if HAS_LO:
        v += tl.load(LO + lo_off + k * slok, mask=mask, other=0.0).to(ACC)
    return v


@triton.jit
def _softmax_stats(L, LO, l_off, lo_off, slk, slok, mask, KK: tl.constexpr, HAS_LO: tl.constexpr, ACC: tl.constexpr):
    """Online max and sum of exp over the KK logits of each pixel: (m, sum_k exp(l_k - m))."""
    m = tl.full(l_off.shape, float("-inf"), ACC)
    total = tl.zeros(l_off.shape, ACC)
    for k in range(KK):
        v = _logit(L, LO, l_off, lo_off, k, slk, slok, mask, HAS_LO, ACC)
        m_new = tl.maximum(m, v)
        total = total * tl.exp(m - m_new) + tl.exp(v - m_new)
        m = m_new
    return m, total


@triton.jit
def _lerp(start, end, weight):
    """torch.lerp's formula: exact at weight 0 (start) and weight 1 (end)."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1 - weight))


@triton.jit
def _forward_kernel(
    FT, L, LO, SK, G, OUT,
    C, H, W, OW, NP,
    sfb, sfc, sfh, sfw, slb, slk, slh, slw, slob, slok, sloh, slow,
    sskb, sskc, sskh, sskw, sgb, sgc, sgh, sgw, sob, soc, soh, sow,
    K: tl.constexpr, S: tl.constexpr, SOFTMAX: tl.constexpr, HAS_LO: tl.constexpr, GATED: tl.constexpr,
    GATE_LO: tl.constexpr, GATE_C: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < NP
    y = (p // OW).to(tl.int64)
    x = (p % OW).to(tl.int64)
    yi, xi = y // S, x // S
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    cmask = c < C
    mask2 = cmask[:, None] & pmask[None, :]
    l_off = b * slb + y * slh + x * slw
    lo_off = b * slob + yi * sloh + xi * slow
    if SOFTMAX:
        m, total = _softmax_stats(L, LO, l_off, lo_off, slk, slok, pmask, K * K, HAS_LO, ACC)
        inv = 1.0 / total
    f_base = FT + b * sfb + c[:, None] * sfc
    acc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for k in range(K * K):
        wk = _logit(L, LO, l_off, lo_off, k, slk, slok, pmask, HAS_LO, ACC)
        if SOFTMAX:
            wk = tl.exp(wk - m) * inv
        ys = yi + (k // K - K // 2)
        xs = xi + (k % K - K // 2)
        valid = pmask & (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        f = tl.load(f_base + (ys * sfh + xs * sfw)[None, :], mask=cmask[:, None] & valid[None, :], other=0.0)
        acc += f.to(ACC) * wk[None, :]
    if GATED:
        g = _gate(G, b, c, y, x, yi, xi, sgb, sgc, sgh, sgw, mask2, pmask, GATE_LO, GATE_C, ACC)
        sk = tl.load(SK + b * sskb + c[:, None] * sskc + (y * sskh + x * sskw)[None, :], mask=mask2, other=0.0)
        acc = _lerp(acc, sk.to(ACC), g)
    tl.store(OUT + b * sob + c[:, None] * soc + (y * soh + x * sow)[None, :], acc.to(OUT.dtype.element_ty), mask=mask2)


@triton.jit
def _gate(G, b, c, y, x, yi, xi, sgb, sgc, sgh, sgw, mask2, pmask, GATE_LO: tl.constexpr, GATE_C: tl.constexpr,
          ACC: tl.constexpr):
    """The gate at output pixels (y, x): (BLOCK_C, BLOCK_P) per channel, else (1, BLOCK_P)."""
    if GATE_LO:
        off = b * sgb + yi * sgh + xi * sgw
    else:
        off = b * sgb + y * sgh + x * sgw
    if GATE_C:
        g = tl.load(G + c[:, None] * sgc + off[None, :], mask=mask2, other=0.0).to(ACC)
    else:
        g = tl.load(G + off, mask=pmask, other=0.0).to(ACC)[None, :]
    if GATE_LO:
        g = tl.sigmoid(g)
    return g


@triton.jit
def _backward_pixel_kernel(
    GO, FT, L, LO, SK, G, DL, DSK, DG, LSE,
    C, H, W, OW, NP,
    sgob, sgoc, sgoh, sgow, sfb, sfc, sfh, sfw, slb, slk, slh, slw, slob, slok, sloh, slow,
    sskb, sskc, sskh, sskw, sgb, sgc, sgh, sgw,
    sdlb, sdlk, sdlh, sdlw, sdskb, sdskc, sdskh, sdskw, sdgb, sdgc, sdgh, sdgw,
    K: tl.constexpr, S: tl.constexpr, SOFTMAX: tl.constexpr, HAS_LO: tl.constexpr, GATED: tl.constexpr,
    GATE_LO: tl.constexpr, GATE_C: tl.constexpr, NEED_L: tl.constexpr, NEED_SK: tl.constexpr,
    NEED_G: tl.constexpr, NEED_LSE: tl.constexpr, ACC: tl.constexpr, KK_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < NP
    y = (p // OW).to(tl.int64)
    x = (p % OW).to(tl.int64)
    yi, xi = y // S, x // S
    l_off = b * slb + y * slh + x * slw
    lo_off = b * slob + yi * sloh + xi * slow
    if SOFTMAX:
        m, total = _softmax_stats(L, LO, l_off, lo_off, slk, slok, pmask, K * K, HAS_LO, ACC)
        inv = 1.0 / total
        if NEED_LSE:
            tl.store(LSE + b * NP + p, m + tl.log(total), mask=pmask)
    kidx = tl.arange(0, KK_PAD)
    dw = tl.zeros((KK_PAD, BLOCK_P), ACC)  # gradient of the normalised kernels
    dg = tl.zeros((BLOCK_P,), ACC)  # gradient of a one-channel gate
    if GATED and not GATE_C:
        g1 = _gate(G, b, pmask, y, x, yi, xi, sgb, sgc, sgh, sgw, pmask, pmask, GATE_LO, False, ACC)
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        cmask = c < C
        mask2 = cmask[:, None] & pmask[None, :]
        go = tl.load(GO + b * sgob + c[:, None] * sgoc + (y * sgoh + x * sgow)[None, :], mask=mask2, other=0.0)
        go = go.to(ACC)
        gup = go
        if GATED:
            if GATE_C:
                g = _gate(G, b, c, y, x, yi, xi, sgb, sgc, sgh, sgw, mask2, pmask, GATE_LO, True, ACC)
            else:
                g = g1
            if NEED_SK:
                dsk = DSK + b * sdskb + c[:, None] * sdskc + (y * sdskh + x * sdskw)[None, :]
                tl.store(dsk, (go * g).to(DSK.dtype.element_ty), mask=mask2)
            gup = go * (1 - g)
        up = tl.zeros((BLOCK_C, BLOCK_P), ACC)
        f_base = FT + b * sfb + c[:, None] * sfc
        for k in range(K * K):
            ys = yi + (k // K - K // 2)
            xs = xi + (k % K - K // 2)
            valid = pmask & (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
            f = tl.load(f_base + (ys * sfh + xs * sfw)[None, :], mask=cmask[:, None] & valid[None, :], other=0.0)
            f = f.to(ACC)
            if NEED_G:
                wk = _logit(L, LO, l_off, lo_off, k, slk, slok, pmask, HAS_LO, ACC)
                if SOFTMAX:
                    wk = tl.exp(wk - m) * inv
                up += f * wk[None, :]
            if NEED_L:
                part = tl.sum(gup * f, axis=0)
                dw = tl.where(kidx[:, None] == k, dw + part[None, :], dw)
        if NEED_G:
            sk = tl.load(SK + b * sskb + c[:, None] * sskc + (y * sskh + x * sskw)[None, :], mask=mask2, other=0.0)
            diff = go * (sk.to(ACC) - up)
            if GATE_C:
                if GATE_LO:
                    diff = diff * g * (1 - g)
                dgp = DG + b * sdgb + c[:, None] * sdgc + (y * sdgh + x * sdgw)[None, :]
                tl.store(dgp, diff.to(DG.dtype.element_ty), mask=mask2)
            else:
                dg += tl.sum(diff, axis=0)
    if NEED_G and not GATE_C:
        if GATE_LO:
            gv = tl.sum(g1, axis=0)  # (1, BLOCK_P) -> (BLOCK_P,)
            dg = dg * gv * (1 - gv)
        tl.store(DG + b * sdgb + y * sdgh + x * sdgw, dg.to(DG.dtype.element_ty), mask=pmask)
    if NEED_L:
        kmask = kidx < K * K
        mask_k = kmask[:, None] & pmask[None, :]
        if SOFTMAX:
            lk = tl.load(L + l_off[None, :] + kidx[:, None] * slk, mask=mask_k, other=0.0).to(ACC)
            if HAS_LO:
                lk += tl.load(LO + lo_off[None, :] + kidx[:, None] * slok, mask=mask_k, other=0.0).to(ACC)
            wt = tl.where(mask_k, tl.exp(lk - m[None, :]) * inv[None, :], 0.0)
            dot = tl.sum(wt * dw, axis=0)
            dw = wt * (dw - dot[None, :])
        dlp = DL + b * sdlb + kidx[:, None] * sdlk + (y * sdlh + x * sdlw)[None, :]
        tl.store(dlp, dw.to(DL.dtype.element_ty), mask=mask_k)


@triton.jit
def _backward_features_kernel(
    GO, L, LO, G, LSE, DF,
    C, H, W, OW, NP,
    sgob, sgoc, sgoh, sgow, slb, slk, slh, slw, slob, slok, sloh, slow, sgb, sgc, sgh, sgw,
    sdfb, sdfc, sdfh, sdfw,
    K: tl.constexpr, S: tl.constexpr, SOFTMAX: tl.constexpr, HAS_LO: tl.constexpr, GATED: tl.constexpr,
    GATE_LO: tl.constexpr, GATE_C: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(2).to(tl.int64)
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    qmask = q < H * W
    yi = (q // W).to(tl.int64)
    xi = (q % W).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    cmask = c < C
    go_base = GO + b * sgob + c[:, None] * sgoc
    acc = tl.zeros((BLOCK_C, BLOCK_P), ACC)
    for k in range(K * K):
        # Input pixel (yi, xi) is offset k of every output pixel of the s x s block at (yi - di, xi - dj).
        ys = yi - (k // K - K // 2)
        xs = xi - (k % K - K // 2)
        valid = qmask & (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        mask2 = cmask[:, None] & valid[None, :]
        # The block's input-resolution operands, shared by its s*s output pixels.
        if HAS_LO:
            lo_k = tl.load(LO + b * slob + ys * sloh + xs * slow + k * slok, mask=valid, other=0.0).to(ACC)
        if GATED and GATE_LO:
            keep = 1 - _gate(G, b, c, ys, xs, ys, xs, sgb, sgc, sgh, sgw, mask2, valid, True, GATE_C, ACC)
        for py in range(S):
            for px in range(S):
                y = ys * S + py
                x = xs * S + px
                wk = tl.load(L + b * slb + y * slh + x * slw + k * slk, mask=valid, other=0.0).to(ACC)
                if HAS_LO:
                    wk += lo_k
                if SOFTMAX:
                    wk = tl.exp(wk - tl.load(LSE + b * NP + y * OW + x, mask=valid, other=0.0))
                coef = wk[None, :]
                if GATED:
                    if GATE_LO:
                        coef = coef * keep
                    else:
                        coef = coef * (1 - _gate(G, b, c, y, x, ys, xs, sgb, sgc, sgh, sgw, mask2, valid, False,
                                                 GATE_C, ACC))
                go = tl.load(go_base + (y * sgoh + x * sgow)[None, :], mask=mask2, other=0.0)
                acc += go.to(ACC) * coef
    dfp = DF + b * sdfb + c[:, None] * sdfc + (yi * sdfh + xi * sdfw)[None, :]
    tl.store(dfp, acc.to(DF.dtype.element_ty), mask=cmask[:, None] & qmask[None, :])


# --- host side ---------------------------------------------------------------------------------------------


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _strides(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Strides of a 4-D operand; zeros for an absent one (its loads are compiled out)."""
    return tuple(t.stride()) if t is not None and t.numel() > 0 else (0, 0, 0, 0)


def _block_c(c: int) -> int:
    return min(BLOCKS["channels"], triton.next_power_of_2(c))


def forward(out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo) -> None:
    """Writes the reassembly into ``out`` (B, C, sH, sW); arguments as ``matting::reassemble``."""
    b, c, h, w = features.shape
    n_pixels = out.shape[2] * out.shape[3]
    block_c, block_p = _block_c(c), BLOCKS["pixels"]
    gated = skip is not None
    grid = (triton.cdiv(n_pixels, block_p), triton.cdiv(c, block_c), b)
    _forward_kernel[grid](
        features, kernels, _or(kernels_lo, kernels), _or(skip, features), _or(gate, features), out,
        c, h, w, out.shape[3], n_pixels,
        *features.stride(), *kernels.stride(), *_strides(kernels_lo), *_strides(skip), *_strides(gate),
        *out.stride(),
        K=kernel_size, S=scale, SOFTMAX=softmax, HAS_LO=kernels_lo is not None, GATED=gated,
        GATE_LO=gate_lo, GATE_C=gated and gate.shape[1] > 1, ACC=_acc(features.dtype),
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=BLOCKS["warps"],
    )


def _or(t: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """A pointer for an absent operand (never dereferenced)."""
    return fallback if t is None else t


def backward(needs_grad, grad_out, features, kernels, kernels_lo, skip, gate, kernel_size, scale, softmax, gate_lo):
    """Gradients of (features, kernels, kernels_lo, skip, gate); an empty tensor where ``needs_grad`` is False."""
    need_features, need_kernels, need_lo, need_skip, need_gate = needs_grad
    b, c, h, w = features.shape
    oh, ow = scale * h, scale * w
    n_pixels = oh * ow
    gated = skip is not None
    gate_c = gated and gate.shape[1] > 1
    grads = new_grads(features, kernels, kernels_lo, skip, gate, needs_grad)
    grad_features, grad_kernels, grad_lo, grad_skip, grad_gate = grads
    need_l = need_kernels or need_lo
    need_g = gated and need_gate
    wide = torch.float64 if features.dtype == torch.float64 else torch.float32
    # Full-resolution gradients of the input-resolution operands, summed over s x s blocks afterwards (in
    # float32 when the op's dtype is half precision, so that the sum is rounded once).
    dl = grad_kernels
    if need_lo and not (need_kernels and kernels.dtype == wide):
        dl = torch.empty(kernels.shape, dtype=wide, device=kernels.device)
    dg = features.new_empty((b, gate.shape[1], oh, ow), dtype=wide) if need_g and gate_lo else grad_gate
    need_lse = softmax and need_features
    lse = features.new_empty((b, n_pixels), dtype=wide) if need_lse else features
    acc = _acc(features.dtype)
    common = dict(K=kernel_size, S=scale, SOFTMAX=softmax, HAS_LO=kernels_lo is not None, GATED=gated,
                  GATE_LO=gate_lo, GATE_C=gate_c, ACC=acc, num_warps=BLOCKS["warps"])
    block_p = BLOCKS["pixels"]
    if need_l or (gated and (need_skip or need_gate)) or need_lse:
        _backward_pixel_kernel[(triton.cdiv(n_pixels, block_p), b)](
            grad_out, features, kernels, _or(kernels_lo, kernels), _or(skip, features), _or(gate, features),
            dl if need_l else kernels, grad_skip if need_skip else features, dg if need_g else features, lse,
            c, h, w, ow, n_pixels,
            *grad_out.stride(), *features.stride(), *kernels.stride(), *_strides(kernels_lo), *_strides(skip),
            *_strides(gate), *_strides(dl if need_l else None), *_strides(grad_skip if need_skip else None),
            *_strides(dg if need_g else None),
            NEED_L=need_l, NEED_SK=gated and need_skip, NEED_G=need_g, NEED_LSE=need_lse,
            KK_PAD=triton.next_power_of_2(kernel_size * kernel_size), BLOCK_C=_block_c(c), BLOCK_P=block_p,
            **common,
        )
    if need_features:
        block_c = _block_c(c)
        _backward_features_kernel[(triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), b)](
            grad_out, kernels, _or(kernels_lo, kernels), _or(gate, features), lse, grad_features,
            c, h, w, ow, n_pixels,
            *grad_out.stride(), *kernels.stride(), *_strides(kernels_lo), *_strides(gate), *grad_features.stride(),
            BLOCK_C=block_c, BLOCK_P=block_p, **common,
        )
    if need_lo:
        grad_lo.copy_(block_sums(dl, scale))
        if need_kernels and dl is not grad_kernels:
            grad_kernels.copy_(dl)
    if need_g and gate_lo:
        grad_gate.copy_(block_sums(dg, scale))
    return grads

