"""The Triton implementation of the reassembly op: equal to the reference in the output and in the gradients of
every input, for every entry point, dtype and layout; the custom op passes opcheck.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1
before they are defined), with tile sizes shrunk so that tiny tensors still span several pixel and channel
blocks. Marked ``triton``: ``pytest -m "not triton"`` skips them.
"""

import os
import subprocess
import sys

import pytest
import torch

from matting.upsamplers import reassembly

from helpers import reassembly_inputs, reassembly_op_args, reassembly_results

pytestmark = [pytest.mark.triton, pytest.mark.slow]  # the interpreter: about a minute in all

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (entry point, (B, C, H, W, K, s), gate channels): odd sizes, batch > 1, channel counts that are not a
# multiple of the channel block (4 on CPU), several pixel tiles (32 pixels on CPU), K 3 and 5, scale 2 and 3,
# one-channel and per-channel gates.
CASES = [
    ("carafe", (2, 5, 3, 5, 5, 2), 1),
    ("gated", (1, 6, 4, 3, 3, 3), 6),
    ("fade", (2, 6, 3, 3, 5, 2), 1),
    ("fade", (1, 3, 2, 7, 5, 2), 3),
]


@pytest.fixture(autouse=True)
def kernels(request, monkeypatch):
    """The kernels module, with small tiles (except in tests marked cuda, which use the default ones). Skips
    where triton cannot run here."""
    module = reassembly._triton_module()
    if module is None:
        pytest.skip(f"triton is not importable: {reassembly._TRITON['error']}")
    if DEVICE.type == "cpu" and not module.interpreting():
        pytest.skip("no CUDA, and the kernels were defined without TRITON_INTERPRET=1")
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setitem(module.BLOCKS, "pixels", 32)
        monkeypatch.setitem(module.BLOCKS, "channels", 4)
        monkeypatch.setitem(module.BLOCKS, "warps", 1 if DEVICE.type == "cpu" else 4)
    return module


def _compare(mode, shape, gate_channels, dtype, rtol, atol, softmax=True, layout=torch.contiguous_format):
    b, c, h, w, k, s = shape
    inputs = reassembly_inputs(mode, b, c, h, w, k, s, gate_channels, seed=sum(shape))
    grad = torch.randn(b, c, s * h, s * w, dtype=torch.float64)
    want = reassembly_results(mode, inputs, k, s, "reference", grad, softmax)
    device_inputs = [t.to(DEVICE, dtype).contiguous(memory_format=layout) for t in inputs]
    got = reassembly_results(mode, device_inputs, k, s, "triton", grad.to(DEVICE, dtype), softmax)
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1:])
    for g, t in zip(got[1:], device_inputs):
        assert g.stride() == t.stride()  # each gradient in its input's layout
    for name, a, e in zip(["output", "features", "kernels", "3rd", "4th", "5th"], got, want):
        torch.testing.assert_close(a.double().cpu(), e, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    return got


@pytest.mark.parametrize("mode,shape,gate_channels", CASES)
def test_triton_equals_reference_in_float64(mode, shape, gate_channels):
    _compare(mode, shape, gate_channels, torch.float64, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,shape,gate_channels", CASES)
def test_triton_equals_reference_in_float32(mode, shape, gate_channels):
    _compare(mode, shape, gate_channels, torch.float32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision_accumulates_in_float32(dtype):
    # Inputs and outputs in half precision, sums in float32: errors of a few input roundings, not of 25 sums.
    tol = 1e-2 if dtype == torch.float16 else 6e-2
    _compare("fade", (1, 6, 3, 3, 5, 2), 1, dtype, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["carafe", "gated"])
def test_triton_unnormalised_kernels(mode):
    _compare(mode, (2, 5, 3, 4, 5, 2), 1, torch.float64, rtol=1e-12, atol=1e-12, softmax=False)


@pytest.mark.parametrize("mode,shape,gate_channels", [CASES[1], CASES[2]])
def test_triton_channels_last(mode, shape, gate_channels):
    got = _compare(mode, shape, gate_channels, torch.float64, rtol=1e-12, atol=1e-12, layout=torch.channels_last)
    assert got[0].is_contiguous(memory_format=torch.channels_last)  # the output follows skip


@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_triton_default_tiles_on_cuda(dtype, tol, layout):
    # Sizes that leave partial pixel tiles and channel blocks with the default tiles.
    _compare("fade", (2, 70, 37, 29, 5, 2), 1, dtype, rtol=tol, atol=tol, layout=layout)


def test_triton_gradient_of_some_inputs_only_and_broadcast_output_gradient():
    inputs = [t.to(DEVICE) for t in reassembly_inputs("fade", 1, 5, 2, 3, 5, 2)]
    features, logits, logits_lo, skip, gate_lo = inputs
    ref = [t.detach().clone().requires_grad_() for t in inputs]
    reassembly.fade_carafe(*ref, 5, 2, impl="reference").sum().backward()
    for wanted in ([0], [1, 2], [4], [3]):
        leaves = [t.detach().clone().requires_grad_(i in wanted) for i, t in enumerate(inputs)]
        # .sum(): the output gradient is an expanded (stride-0) tensor.
        reassembly.fade_carafe(*leaves, 5, 2, impl="triton").sum().backward()
        for i, leaf in enumerate(leaves):
            if i in wanted:
                torch.testing.assert_close(leaf.grad, ref[i].grad, rtol=1e-12, atol=1e-12)
            else:
                assert leaf.grad is None


@pytest.mark.parametrize("mode", ["carafe", "fade"])
def test_triton_op_passes_opcheck(mode):
    inputs = [t.to(DEVICE).requires_grad_() for t in reassembly_inputs(mode, 2, 3, 3, 2, 3, 2)]
    torch.library.opcheck(reassembly._reassemble_op, reassembly_op_args(mode, inputs, 3, 2, "triton"))
    grad = torch.randn(2, 3, 6, 4, dtype=torch.float64, device=DEVICE)
    args = reassembly_op_args(mode, [t.detach() for t in inputs], 3, 2, "triton")
    needs = [t is not None for t in args[:5]]
    torch.library.opcheck(reassembly._reassemble_backward_op, (grad, *args, needs))


def test_triton_inside_torch_compile():
    inputs = [t.to(DEVICE) for t in reassembly_inputs("fade", 1, 3, 3, 4, 5, 2)]
    compiled = torch.compile(lambda *a: reassembly.fade_carafe(*a, 5, 2, impl="triton") * 2, backend="aot_eager",
                             fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = compiled(*leaves)
    out.sum().backward()
    ref = [t.clone().requires_grad_() for t in inputs]
    expected = reassembly.fade_carafe(*ref, 5, 2, impl="reference") * 2
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for a, e in zip(leaves, ref):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-12, atol=1e-12)


_COMPILE = r"""
import torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from matting.upsamplers import reassembly_triton as rt

assert not rt.interpreting()
sizes = {"C", "H", "W", "OW", "NP"}
flags = dict(K=5, S=2, SOFTMAX=True, HAS_LO=True, GATED=True, GATE_LO=True, GATE_C=False, BLOCK_C=32, BLOCK_P=64,
             NEED_L=True, NEED_SK=True, NEED_G=True, NEED_LSE=True, KK_PAD=32)
for dtype, acc in (("fp32", tl.float32), ("bf16", tl.float32)):
    for fn in (rt._forward_kernel, rt._backward_pixel_kernel, rt._backward_features_kernel):
        constexprs = {p.name: flags.get(p.name, acc) for p in fn.params if p.is_constexpr}
        signature = {p.name: "constexpr" if p.is_constexpr else "i32" if p.name in sizes or p.name.islower()
                     else "*" + dtype for p in fn.params}
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        assert kernel.asm["cubin"], fn.__name__
print("compiled")
"""


def test_kernels_compile_for_a_gpu_target(kernels, tmp_path):
    # The interpreter runs the kernels' Python, not Triton's compiler: compile them for sm_90 (through PTX to a
    # cubin with the ptxas that ships with triton; no GPU needed), in a process where they are not interpreted.
    if not os.path.exists(os.path.join(os.path.dirname(kernels.triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("triton's NVIDIA backend (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a cold compile, every time
    proc = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("compiled"), proc.stderr[-3000:]
