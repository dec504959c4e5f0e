"""Training losses, each restricted to the unknown region of the training trimap and normalised per sample.

Every loss takes the raw prediction ``pred`` (B, 1, H, W) (the network output, not clamped), the ground truth
and the uint8 trimap (B, 1, H, W) with values {0, 128, 255}; the unknown region is ``trimap == 128``. For each
sample the loss is the sum of its per-pixel terms over that sample's unknown pixels divided by the number of
those pixels (one channel: a 3-channel term is summed over RGB, not averaged), then the mean over the batch.
A sample without unknown pixels contributes 0 (and no NaN) to that mean. Pixels outside the unknown region
never influence a loss, not even through a filter's neighbourhood: the gradient and Laplacian losses filter
``(pred - target) * mask``.

Terms (names as used in the config's ``loss.weights`` and by :class:`MattingLoss`):

- ``alpha_charbonnier``: ``sqrt((pred - alpha)^2 + eps^2)`` with eps = 1e-6, as IndexNet/A2U
  (``weighted_loss(..., epsilon=1e-6)`` in IndexNet's ``hltrainval.py``).
- ``alpha_l1``: ``|pred - alpha|`` (GCA).
- ``composition``: Charbonnier (eps = 1e-6) between ``pred * fg + (1 - pred) * bg`` and ``image``, summed over
  RGB and divided by the 1-channel unknown count, as IndexNet/A2U.
- ``gradient``: ``|Sobel_x(d)| + |Sobel_y(d)|`` of ``d = (pred - alpha) * mask``, with the unnormalised 3x3 Sobel
  kernels ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` and its transpose (as ViTMatte's gradient loss), replicate
  padding (no fake edge at the crop border), evaluated at the unknown pixels.
- ``laplacian``: the 5-level Laplacian pyramid loss of MatteFormer/ViTMatte, ``sum_i 2^i * |L_i(d)|`` with
  ``d = (pred - alpha) * mask`` (the same as MatteFormer's pyramid of ``pred * mask`` minus that of
  ``alpha * mask``, as the pyramid is linear). The 5x5 binomial Gaussian ([1, 4, 6, 4, 1] / 16, outer product)
  with reflect padding; level i = d_i - up(down(d_i)) on the (H / 2^i) grid, five band-pass levels and no
  low-pass residual (inputs under 48 px a side get fewer levels: the blur needs 3 px). The mask is
  downsampled with the image: level i is normalised by the unknown count / 4^i (the number of unknown pixels
  that grid holds), so a fully unknown image reproduces MatteFormer's per-level mean.

Default weights (:data:`DEFAULT_WEIGHTS`) are the IndexNet/A2U/FADE recipe: 0.5 alpha Charbonnier + 0.5
composition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matting.errors import MattingError
from matting.utils.tensors import device_tensor

__all__ = [
    "CHARBONNIER_EPS",
    "DEFAULT_WEIGHTS",
    "LOSSES",
    "MattingLoss",
    "alpha_charbonnier_loss",
    "alpha_l1_loss",
    "composition_loss",
    "gradient_loss",
    "laplacian_loss",
    "laplacian_pyramid",
    "unknown_mask",
]

#: Charbonnier epsilon of IndexNet and A2U.
CHARBONNIER_EPS = 1e-6

#: The IndexNet/A2U/FADE recipe.
DEFAULT_WEIGHTS: dict[str, float] = {"alpha_charbonnier": 0.5, "composition": 0.5}

UNKNOWN = 128


def unknown_mask(trimap: Tensor) -> Tensor:
    """(B, 1, H, W) bool mask of the unknown region, ``trimap == 128``, for a uint8 trimap."""
    if trimap.dtype != torch.uint8 or trimap.dim() != 4 or trimap.shape[1] != 1:
        raise ValueError(
            f"trimap must be a (B, 1, H, W) uint8 tensor with values 0/128/255, "
            f"got {tuple(trimap.shape)} {trimap.dtype}"
        )
    return trimap == UNKNOWN


def _check_pair(pred: Tensor, target: Tensor, mask: Tensor) -> None:
    if pred.dim() != 4 or pred.shape[1] != 1 or pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and trimap {tuple(mask.shape)} must all be "
            f"(B, 1, H, W) of the same size"
        )


def _per_sample_mean(values: Tensor, mask: Tensor, count_scale: float = 1.0) -> Tensor:
    """Sum of ``values`` (B, C, h, w) over each sample / (its unknown count * ``count_scale``), batch mean.

    The count is that of the full-resolution 1-channel ``mask`` (B, 1, H, W); a sample with no unknown pixel
    has a zero sum (its values are masked) and a count clamped to 1, so it adds exactly 0.
    """
    count = mask.flatten(1).sum(dim=1).clamp_min(1).to(values.dtype) * count_scale
    return (values.flatten(1).sum(dim=1) / count).mean()


def _where(mask: Tensor, values: Tensor) -> Tensor:
    """``values`` where ``mask``, else exactly 0; no NaN or gradient leaks from outside the mask."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _charbonnier(diff: Tensor, eps: float) -> Tensor:
    return torch.sqrt(diff * diff + eps * eps)


def alpha_charbonnier_loss(pred: Tensor, alpha: Tensor, trimap: Tensor, eps: float = CHARBONNIER_EPS) -> Tensor:
    """Charbonnier ``sqrt((pred - alpha)^2 + eps^2)`` over the unknown region, per-sample mean. Scalar."""
    mask = unknown_mask(trimap)
    _check_pair(pred, alpha, mask)
    values = _where(mask, _charbonnier(pred - alpha, eps))
    return _per_sample_mean(values, mask)


def alpha_l1_loss(pred: Tensor, alpha: Tensor, trimap: Tensor) -> Tensor:
    """``|pred - alpha|`` over the unknown region, per-sample mean. Scalar."""
    mask = unknown_mask(trimap)
    _check_pair(pred, alpha, mask)
    values = _where(mask, (pred - alpha).abs())
    return _per_sample_mean(values, mask)


def composition_loss(
    pred: Tensor, fg: Tensor, bg: Tensor, image: Tensor, trimap: Tensor, eps: float = CHARBONNIER_EPS
) -> Tensor:
    """Charbonnier between ``pred * fg + (1 - pred) * bg`` and ``image`` (all RGB in [0, 1], (B, 3, H, W)).

    Summed over RGB and divided by the 1-channel unknown count (IndexNet's normalisation), per-sample mean.
    """
    mask = unknown_mask(trimap)
    if pred.dim() != 4 or pred.shape[1] != 1 or pred.shape != mask.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and trimap {tuple(mask.shape)} must be (B, 1, H, W) alike")
    b, _, h, w = pred.shape
    for name, t in (("fg", fg), ("bg", bg), ("image", image)):
        if tuple(t.shape) != (b, 3, h, w):
            raise ValueError(f"composition_loss: {name} must be {(b, 3, h, w)}, got {tuple(t.shape)}")
    composite = pred * fg + (1 - pred) * bg
    values = _where(mask, _charbonnier(composite - image, eps))
    return _per_sample_mean(values, mask)


_SOBEL_X = [-1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0]  # 3x3, row by row


def gradient_loss(pred: Tensor, alpha: Tensor, trimap: Tensor) -> Tensor:
    """``|Sobel_x(d)| + |Sobel_y(d)|`` at the unknown pixels, ``d = (pred - alpha) * mask``; per-sample mean."""
    mask = unknown_mask(trimap)
    _check_pair(pred, alpha, mask)
    d = _where(mask, pred - alpha)
    kx = device_tensor(_SOBEL_X, d).view(3, 3)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3): x then y
    grads = F.conv2d(F.pad(d, (1, 1, 1, 1), mode="replicate"), kernels)  # (B, 2, H, W)
    values = _where(mask, grads.abs().sum(dim=1, keepdim=True))
    return _per_sample_mean(values, mask)


def _gauss_blur(x: Tensor, gain: float = 1.0) -> Tensor:
    """Separable 5x5 binomial blur ([1, 4, 6, 4, 1] / 16 each way) times ``gain``, same size (B, C, h, w)."""
    k = device_tensor([1.0, 4.0, 6.0, 4.0, 1.0], x) / 16.0 * gain**0.5
    c = x.shape[1]
    # Reflect padding keeps the zero/non-zero parity of the zero-inserted upsampled grid, so the pyramid of a
    # constant is exactly zero (replicate or zero padding would add fake edges at the border).
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def laplacian_pyramid(x: Tensor, levels: int = 5) -> list[Tensor]:
    """Band-pass levels ``[x_0 - up(x_1), x_1 - up(x_2), ...]`` (``levels`` of them) of x (B, C, H, W).

    ``x_{i+1} = blur(x_i)[::2, ::2]``; ``up`` zero-inserts into x_i's grid (any size, odd included) and blurs with
    4 x the kernel. Level i has the size of x_i, about (H / 2^i, W / 2^i). The blur reflects 2 pixels, so a level
    needs a grid of at least 3 x 3: the pyramid stops early (fewer levels) for inputs under 3 * 2^(levels-1)
    pixels a side (48 for 5 levels).
    """
    bands = []
    current = x
    for _ in range(levels):
        if min(current.shape[-2:]) < 3:
            break
        down = _gauss_blur(current)[..., ::2, ::2]
        up = torch.zeros_like(current)
        up[..., ::2, ::2] = down
        bands.append(current - _gauss_blur(up, gain=4.0))
        current = down
    return bands


def laplacian_loss(pred: Tensor, alpha: Tensor, trimap: Tensor, levels: int = 5) -> Tensor:
    """``sum_i 2^i * sum |L_i(d)| / (unknown count / 4^i)`` with ``d = (pred - alpha) * mask``; batch mean."""
    mask = unknown_mask(trimap)
    _check_pair(pred, alpha, mask)
    bands = laplacian_pyramid(_where(mask, pred - alpha), levels)
    return sum(2.0**i * _per_sample_mean(band.abs(), mask, 0.25**i) for i, band in enumerate(bands))


def _alpha_term(fn: Callable[..., Tensor]) -> Callable[[Tensor, Mapping[str, Tensor]], Tensor]:
    return lambda pred, batch: fn(pred, batch["alpha"], batch["trimap"])


#: Loss name -> function(pred, batch) -> scalar; batch holds alpha, trimap (and image, fg, bg for composition).
LOSSES: dict[str, Callable[[Tensor, Mapping[str, Tensor]], Tensor]] = {
    "alpha_charbonnier": _alpha_term(alpha_charbonnier_loss),
    "alpha_l1": _alpha_term(alpha_l1_loss),
    "composition": lambda pred, b: composition_loss(pred, b["fg"], b["bg"], b["image"], b["trimap"]),
    "gradient": _alpha_term(gradient_loss),
    "laplacian": _alpha_term(laplacian_loss),
}

#: The batch entries a loss reads (the others: alpha and trimap).
_BATCH_KEYS = {"composition": ("trimap", "fg", "bg", "image")}


class MattingLoss(nn.Module):
    """Weighted sum of named losses: ``total, terms = loss(pred, batch)``.

    Args:
        weights: loss name -> weight (see :data:`LOSSES`); terms with weight 0 are not computed. None: the
            IndexNet/A2U recipe, :data:`DEFAULT_WEIGHTS`.

    ``forward(pred, batch)``: ``pred`` (B, 1, H, W) raw network output; ``batch`` the data loader's dict with
    ``alpha`` (B, 1, H, W) in [0, 1], ``trimap`` (B, 1, H, W) uint8 and, for the composition loss, ``image``,
    ``fg``, ``bg`` (B, 3, H, W) in [0, 1]. Returns ``(total, {name: unweighted value})``: ``total`` carries
    gradients, the per-term values are detached (for logging).
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        weights = DEFAULT_WEIGHTS if weights is None else weights
        if not isinstance(weights, Mapping):
            raise MattingError(f"loss weights must be a mapping name -> weight, got {weights!r}")
        for name, w in weights.items():
            if name not in LOSSES:
                raise MattingError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
                raise MattingError(f"loss weight of {name} must be a finite number >= 0, got {w!r}")
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        if not self.weights:
            raise MattingError(f"loss weights {dict(weights)} leave no term with a positive weight")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.weights.items())

    def forward(self, pred: Tensor, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        total = pred.new_zeros(())
        terms: dict[str, Tensor] = {}
        for name, w in self.weights.items():
            for key in _BATCH_KEYS.get(name, ("alpha", "trimap")):
                if key not in batch:
                    raise KeyError(f"loss {name!r} needs batch[{key!r}]; the batch has {sorted(batch)}")
            value = LOSSES[name](pred, batch)
            total = total + w * value
            terms[name] = value.detach()
        return total, terms
