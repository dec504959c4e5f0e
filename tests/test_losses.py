"""Losses: hand-computed values, per-sample normalisation, unknown-region masking, empty samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from matting.errors import MattingError
from matting.losses import (
    CHARBONNIER_EPS,
    DEFAULT_WEIGHTS,
    LOSSES,
    MattingLoss,
    alpha_charbonnier_loss,
    alpha_l1_loss,
    composition_loss,
    gradient_loss,
    laplacian_loss,
    laplacian_pyramid,
)

from helpers import random_batch

ALPHA_LOSSES = {
    "alpha_charbonnier": alpha_charbonnier_loss,
    "alpha_l1": alpha_l1_loss,
    "gradient": gradient_loss,
    "laplacian": laplacian_loss,
}


def trimap_of(values) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.uint8)
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def full_unknown(b: int, h: int, w: int) -> torch.Tensor:
    return torch.full((b, 1, h, w), 128, dtype=torch.uint8)


# ------------------------------------------------------------------------------------------- known values


def test_alpha_losses_hand_values():
    # 1 x 1 x 2 x 2: two unknown pixels with errors 0.3 and -0.1, two known pixels with large errors.
    trimap = trimap_of([[128, 0], [255, 128]])
    pred = torch.tensor([[[[0.8, 0.9], [0.0, 0.1]]]])
    alpha = torch.tensor([[[[0.5, 0.0], [1.0, 0.2]]]])
    assert alpha_l1_loss(pred, alpha, trimap).item() == pytest.approx((0.3 + 0.1) / 2, abs=1e-7)
    expected = (np.sqrt(0.3**2 + CHARBONNIER_EPS**2) + np.sqrt(0.1**2 + CHARBONNIER_EPS**2)) / 2
    assert alpha_charbonnier_loss(pred, alpha, trimap).item() == pytest.approx(expected, abs=1e-7)


def test_composition_loss_sums_rgb_over_one_channel_count():
    # fg white, bg black, image grey 0.5 everywhere; pred 0.7 -> composite 0.7: error 0.2 in each of 3 channels.
    b, h, w = 1, 2, 3
    fg, bg = torch.ones(b, 3, h, w), torch.zeros(b, 3, h, w)
    image = torch.full((b, 3, h, w), 0.5)
    pred = torch.full((b, 1, h, w), 0.7)
    trimap = trimap_of([[128, 128, 0], [255, 128, 0]])  # 3 unknown pixels
    value = composition_loss(pred, fg, bg, image, trimap).item()
    assert value == pytest.approx(3 * 0.2, abs=1e-6)  # summed over RGB, divided by the 1-channel count


def test_gradient_loss_of_a_ramp():
    # d = 0.1 * column index; Sobel_x (unnormalised) is 4 * (d[j+1] - d[j-1]) = 0.8 inside, 0.4 at the two
    # replicate-padded border columns; Sobel_y is 0. All unknown: mean = 0.8 * (W - 1) / W.
    h, w = 5, 4
    pred = (0.1 * torch.arange(w, dtype=torch.float32)).expand(h, w).reshape(1, 1, h, w)
    value = gradient_loss(pred, torch.zeros_like(pred), full_unknown(1, h, w)).item()
    assert value == pytest.approx(0.8 * (w - 1) / w, abs=1e-6)
    # The transposed ramp (now along the rows) gives the same through Sobel_y.
    value_t = gradient_loss(pred.transpose(2, 3), torch.zeros(1, 1, w, h), full_unknown(1, w, h)).item()
    assert value_t == pytest.approx(0.8 * (w - 1) / w, abs=1e-6)


@pytest.mark.parametrize("size", [(48, 48), (50, 63)])
def test_laplacian_loss_known_values(size):
    h, w = size
    trimap = full_unknown(1, h, w)
    target = torch.full((1, 1, h, w), 0.5)
    i, j = torch.arange(h).view(-1, 1), torch.arange(w).view(1, -1)
    checker = ((-1.0) ** (i + j)).view(1, 1, h, w)
    # A checkerboard is removed entirely by the binomial blur: it all lands in level 0 (weight 1).
    assert laplacian_loss(target + 0.1 * checker, target, trimap).item() == pytest.approx(0.1, abs=1e-6)
    # Band-pass levels only (no low-pass residual): a constant offset costs nothing.
    assert laplacian_loss(target + 0.1, target, trimap).item() == pytest.approx(0.0, abs=1e-6)
    assert len(laplacian_pyramid(target)) == 5


def _reference_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """Independent implementation: scipy's 'mirror' mode is torch's 'reflect' padding."""
    k1 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    k2 = np.outer(k1, k1)
    bands = []
    for _ in range(levels):
        down = ndimage.convolve(x, k2, mode="mirror")[::2, ::2]
        up = np.zeros_like(x)
        up[::2, ::2] = down
        bands.append(x - ndimage.convolve(up, 4 * k2, mode="mirror"))
        x = down
    return bands


def test_laplacian_pyramid_matches_reference_and_loss_weights():
    h, w = 50, 63
    d = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = laplacian_pyramid(d, 5)
    ref = _reference_pyramid(d[0, 0].numpy(), 5)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a[0, 0].numpy(), b, atol=1e-12)
    expected = sum(2**i * np.abs(b).sum() / (h * w / 4**i) for i, b in enumerate(ref))
    value = laplacian_loss(d, torch.zeros_like(d), full_unknown(1, h, w)).item()
    assert value == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------------- masking and batching


def test_per_sample_normalisation():
    # Sample 0: 1 unknown pixel with error 1. Sample 1: 4 unknown pixels with error 0.5 each.
    # Per sample: (1/1 + 2/4) / 2 = 0.75 (a global count would give 3/5 = 0.6).
    trimap = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    trimap[0, 0, 0, 0] = 128
    trimap[1] = 128
    alpha = torch.zeros(2, 1, 2, 2)
    pred = torch.tensor([1.0, 0.5]).view(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    pred[0, 0, 1, 1] = 9.0  # a known pixel: ignored
    assert alpha_l1_loss(pred, alpha, trimap).item() == pytest.approx(0.75, abs=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_when_prediction_equals_target(name):
    batch = random_batch()
    total, terms = MattingLoss({name: 1.0})(batch["alpha"].clone(), batch)
    # Charbonnier terms bottom out at eps per channel, not 0.
    floor = 3 * CHARBONNIER_EPS if name == "composition" else CHARBONNIER_EPS if name == "alpha_charbonnier" else 0
    assert 0 <= terms[name].item() <= floor + 1e-7
    assert total.item() == pytest.approx(terms[name].item())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_known_pixels_are_excluded(name):
    batch = random_batch(seed=1)
    known = batch["trimap"] != 128
    pred = (batch["alpha"] + 0.2 * torch.randn_like(batch["alpha"])).requires_grad_()
    loss = MattingLoss({name: 1.0})
    base, _ = loss(pred, batch)
    base.backward()
    # No gradient reaches a known pixel ...
    assert pred.grad[known].abs().max().item() == 0.0
    assert pred.grad[~known].abs().max().item() > 0.0
    # ... and changing the prediction (or even the target) there does not change the value.
    other = dict(batch, alpha=torch.where(known, 1 - batch["alpha"], batch["alpha"]))
    moved = torch.where(known, pred.detach() + 5.0, pred.detach())
    assert loss(moved, other)[0].item() == base.item()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sample_without_unknown_pixels(name):
    batch = random_batch(b=2, seed=2)
    batch["trimap"][1] = 255  # sample 1: no unknown pixel at all
    pred = (batch["alpha"] + 0.1).requires_grad_()
    loss = MattingLoss({name: 1.0})
    total, _ = loss(pred, batch)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().max().item() == 0.0
    first = {k: v[:1] for k, v in batch.items()}
    alone, _ = loss(pred.detach()[:1], first)
    assert total.item() == pytest.approx(alone.item() / 2, rel=1e-6)  # sample 1 contributes exactly 0


def test_all_known_batch_gives_zero_not_nan():
    batch = random_batch(b=2)
    batch["trimap"][:] = 0
    pred = batch["alpha"].clone().requires_grad_()
    total, terms = MattingLoss({name: 1.0 for name in LOSSES})(pred, batch)
    total.backward()
    assert total.item() == 0.0 and all(v.item() == 0.0 for v in terms.values())
    assert pred.grad.abs().max().item() == 0.0


# ------------------------------------------------------------------------------------------- MattingLoss


def test_matting_loss_combines_by_weight():
    batch = random_batch(seed=4)
    pred = batch["alpha"] + 0.1 * torch.randn_like(batch["alpha"])
    total, terms = MattingLoss()(pred, batch)
    assert set(terms) == set(DEFAULT_WEIGHTS) == {"alpha_charbonnier", "composition"}
    a = alpha_charbonnier_loss(pred, batch["alpha"], batch["trimap"])
    c = composition_loss(pred, batch["fg"], batch["bg"], batch["image"], batch["trimap"])
    assert total.item() == pytest.approx(0.5 * a.item() + 0.5 * c.item(), rel=1e-6)
    assert not terms["composition"].requires_grad

    total2, terms2 = MattingLoss({"laplacian": 2.0, "gradient": 0.0, "alpha_l1": 1.0})(pred, batch)
    assert set(terms2) == {"laplacian", "alpha_l1"}  # zero-weight terms are not computed
    assert total2.item() == pytest.approx(2 * terms2["laplacian"].item() + terms2["alpha_l1"].item(), rel=1e-6)


def test_matting_loss_config_errors():
    with pytest.raises(MattingError, match="unknown loss 'charbonnier'.*alpha_charbonnier, alpha_l1, composition"):
        MattingLoss({"charbonnier": 1.0})
    with pytest.raises(MattingError, match="finite number >= 0"):
        MattingLoss({"alpha_l1": -1.0})
    with pytest.raises(MattingError, match="no term"):
        MattingLoss({"alpha_l1": 0.0})
    batch = random_batch()
    del batch["fg"]
    with pytest.raises(KeyError, match="needs batch\\['fg'\\]"):
        MattingLoss({"composition": 1.0})(batch["alpha"], batch)


def test_trimap_must_be_uint8():
    pred = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="uint8"):
        alpha_l1_loss(pred, pred, torch.full((1, 1, 4, 4), 0.5))
