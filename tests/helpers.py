"""Small helpers shared by several test modules."""

from __future__ import annotations

import torch
from torch import nn


def random_batch(b: int = 2, h: int = 48, w: int = 56, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of random values, as the losses and the training step take it.

    Returns ``alpha`` (b,1,h,w) float in [0,1]; ``fg``, ``bg`` (b,3,h,w) float in [0,1]; ``image`` their
    composite ``alpha * fg + (1 - alpha) * bg``; ``trimap`` (b,1,h,w) uint8 drawn uniformly from {0, 128, 255}.
    The same ``seed`` gives the same batch on every machine.
    """
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(b, 1, h, w, generator=g)
    fg, bg = torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)
    codes = torch.tensor([0, 128, 255], dtype=torch.uint8)
    trimap = codes[torch.randint(0, 3, (b, 1, h, w), generator=g)]
    return {"alpha": alpha, "fg": fg, "bg": bg, "image": alpha * fg + (1 - alpha) * bg, "trimap": trimap}


def trained_head(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives a new network's head random weights, as if it had been trained, and returns the model.

    A new network's head is all zeros (``MattingHead``): it predicts alpha = 0 everywhere, and nothing before
    the head gets a gradient at the first backward. Tests that compare predictions, or check gradients of
    the whole network, need a head that passes signal on.

    The random head is then calibrated on a fixed random input (eval mode, no gradients) so that the raw
    output has mean 0.5 and std 0.2: an uncalibrated random head can put the whole output above 1 or below 0,
    and then every clamped prediction is a constant and a comparison of two predictions proves nothing.
    """
    g = torch.Generator().manual_seed(seed)
    conv = model.head[0]
    was_training = model.training
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
        conv.bias.zero_()
        model.eval()
        raw = model(torch.randn(1, 4, 64, 64, generator=g))
        scale = 0.2 / raw.std().clamp_min(1e-6)
        conv.weight.mul_(scale)
        conv.bias.fill_(0.5 - float(raw.mean() * scale))
    return model.train(was_training)


#: A very small network (mobilenetv2 + FADE, 8 channels) for tests that need a real checkpoint.
TINY_MODEL = {
    "encoder": "mobilenetv2",
    "upsampler": "fade",
    "width_mult": 0.25,
    "stem_channels": 4,
    "context_channels": 8,
    "aspp_channels": 8,
    "decoder_channels": [8, 8, 8, 8, 8],
}


def save_tiny_checkpoint(path, step: int = 1):
    """Writes a checkpoint of ``TINY_MODEL`` (random weights, a trained-looking head) to ``path``; returns it."""
    from matting.engine.checkpoint import atomic_torch_save
    from matting.models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(step)  # the same weights on every machine and run
        model = trained_head(build_model(**TINY_MODEL)).eval()
    payload = {"format": 1, "model": model.state_dict(), "config": {"model": TINY_MODEL}, "step": step}
    atomic_torch_save(payload, path)
    return path


# --- the reassembly op: random inputs of each entry point, outputs and gradients ---------------------------

#: Entry points of matting.upsamplers.reassembly and the inputs each takes (after features).
REASSEMBLY_MODES = ("carafe", "gated", "fade")


def reassembly_inputs(mode, b, c, h, w, k, s, gate_channels=1, dtype=torch.float64, seed=0):
    """Random inputs of one entry point: "carafe" (features, kernels), "gated" (+ skip, gate in [0, 1]) or
    "fade" (features, logits, logits_lo, skip, gate logits at the input resolution). Logits are unnormalised."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    features, kernels = randn(b, c, h, w), randn(b, k * k, s * h, s * w)
    if mode == "carafe":
        return [features, kernels]
    skip = randn(b, c, s * h, s * w)
    if mode == "gated":
        return [features, kernels, skip, torch.rand(b, gate_channels, s * h, s * w, generator=g).to(dtype)]
    return [features, kernels, randn(b, k * k, h, w), skip, randn(b, gate_channels, h, w)]


def call_reassembly(mode, inputs, k, s, impl, logits=True):
    """The entry point of ``mode`` on ``inputs`` (see reassembly_inputs)."""
    from matting.upsamplers.reassembly import carafe, fade_carafe, gated_carafe

    if mode == "carafe":
        return carafe(*inputs, k, s, impl=impl, logits=logits)
    if mode == "gated":
        features, kernels, skip, gate = inputs
        return gated_carafe(features, kernels, k, s, skip, gate, impl=impl, logits=logits)
    return fade_carafe(*inputs, k, s, impl=impl)


def reassembly_results(mode, inputs, k, s, impl, grad, logits=True):
    """[output, gradient of each input] for the output gradient ``grad``."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = call_reassembly(mode, leaves, k, s, impl, logits)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def reassembly_op_args(mode, inputs, k, s, impl, logits=True):
    """Positional arguments of matting::reassemble for the entry point ``mode`` (all tensors one dtype)."""
    features, kernels, *rest = inputs
    if mode == "carafe":
        return (features, kernels, None, None, None, k, s, logits, False, impl)
    if mode == "gated":
        return (features, kernels, None, *rest, k, s, logits, False, impl)
    return (features, kernels, *rest, k, s, True, True, impl)
