"""CUDA mixed precision, checked on any machine: the network's forward under the CUDA autocast policy with fake
CUDA tensors (``FakeTensorMode``: shapes, dtypes and devices are propagated, nothing is computed, no GPU is
needed). ``torch.autocast("cuda")`` refuses to start without a GPU, so the policy is switched on directly.

The dtype contract (docs/upsamplers.md): under autocast every upsampler returns ``de``'s dtype, and the
network returns the autocast dtype (its head is a convolution).
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import functional_call

from matting.models import build_model
from matting.upsamplers import Upsampler, available_upsamplers

from helpers import TINY_MODEL, trained_head

NETWORKS = {"resnet34": {}, "mobilenetv2": {k: v for k, v in TINY_MODEL.items() if k not in ("encoder", "upsampler")}}


def _fake_cuda_forward(model, x_shape, dtype):
    """Runs model on fake CUDA tensors under the CUDA autocast policy for ``dtype``; returns the output and,
    per upsampler call, (de dtype, output dtype)."""
    calls = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: calls.append((args[1].dtype, out.dtype)))
        for m in model.modules()
        if isinstance(m, Upsampler)
    ]
    previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    try:
        with FakeTensorMode() as mode:
            # functional_call: Module.to("cuda") cannot swap real parameters for fake ones.
            state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
            state = {k: mode.from_tensor(v).to("cuda") for k, v in state.items()}
            x = torch.randn(*x_shape, device="cuda")
            torch.set_autocast_enabled("cuda", True)
            torch.set_autocast_dtype("cuda", dtype)
            out = functional_call(model, state, (x,))
    finally:
        torch.set_autocast_enabled("cuda", previous[0])
        torch.set_autocast_dtype("cuda", previous[1])
        for h in hooks:
            h.remove()
    return out, calls


@pytest.mark.parametrize("upsampler", available_upsamplers())  # upsamplers registered later are covered too
@pytest.mark.parametrize("encoder", list(NETWORKS))
def test_network_forward_under_cuda_autocast(encoder, upsampler):
    model = build_model(encoder, upsampler=upsampler, **NETWORKS[encoder])
    for dtype in (torch.float16, torch.bfloat16):
        out, calls = _fake_cuda_forward(model, (2, 4, 64, 64), dtype)
        assert out.shape == (2, 1, 64, 64) and out.device.type == "cuda"
        assert out.dtype == dtype
        assert len(calls) == len(model.decoder.stages)
        assert all(out_dtype == de_dtype for de_dtype, out_dtype in calls), calls
    assert not torch.is_autocast_enabled("cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("upsampler", ["fade", "fade_lite", "bilinear"])
def test_training_step_under_real_cuda_autocast(upsampler):
    model = trained_head(build_model("resnet34", upsampler=upsampler)).cuda()  # gradients reach every layer
    x = torch.randn(2, 4, 64, 64, device="cuda")
    for dtype in (torch.float16, torch.bfloat16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            out = model(x)
        assert out.dtype == dtype
        out.float().square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert all(p.grad.dtype == p.dtype for p in model.parameters() if p.grad is not None)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.stages[0].up.parameters())
