"""The CARAFE reassembly: definition, lean vs reference (values and gradients), dtypes, errors, compile.

The Triton implementation has its own module (test_reassembly_triton.py).
"""

import contextlib
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from matting.upsamplers import banded, reassembly
from matting.upsamplers.reassembly import carafe, fade_carafe, gated_carafe, plain_ops, resolve_impl
from matting.utils.flops import count_macs

from helpers import REASSEMBLY_MODES, reassembly_inputs, reassembly_op_args, reassembly_results


def _random_inputs(b, c, h, w, k, s, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    kernels = torch.randn(b, k * k, s * h, s * w, generator=g, dtype=dtype).softmax(dim=1)
    return features, kernels


def _by_definition(features, kernels, k, s):
    """out[b, c, y, x] = sum_ij kernels[b, (i+r)*K + (j+r), y, x] * features[b, c, y//s + i, x//s + j]."""
    b, c, h, w = features.shape
    r = k // 2
    out = torch.zeros(b, c, s * h, s * w, dtype=features.dtype)
    for y in range(s * h):
        for x in range(s * w):
            for i in range(-r, r + 1):
                for j in range(-r, r + 1):
                    yy, xx = y // s + i, x // s + j
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, :, y, x] += kernels[:, (i + r) * k + (j + r), y, x, None] * features[:, :, yy, xx]
    return out


@pytest.mark.parametrize("impl", ["lean", "reference"])
@pytest.mark.parametrize("shape", [(2, 3, 3, 4, 5, 2), (1, 2, 2, 3, 3, 3), (1, 1, 1, 1, 5, 2)])
def test_matches_the_definition(impl, shape):
    b, c, h, w, k, s = shape
    features, kernels = _random_inputs(b, c, h, w, k, s)
    expected = _by_definition(features, kernels, k, s)
    torch.testing.assert_close(carafe(features, kernels, k, s, impl=impl), expected, rtol=0, atol=1e-12)


# Odd and even sizes, batch > 1, several channel counts, kernel sizes and scales.
SHAPES = [
    (2, 3, 5, 7, 5, 2),
    (1, 4, 4, 4, 5, 2),
    (3, 1, 7, 3, 3, 2),
    (2, 2, 3, 6, 5, 3),
    (1, 5, 1, 9, 5, 2),
    (2, 6, 9, 2, 1, 2),
]


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("band_bytes", [reassembly._BAND_BYTES, 1])  # 1 byte: one row per band
@pytest.mark.parametrize("shape", SHAPES)
def test_lean_equals_reference_in_values_and_gradients(shape, band_bytes, softmax, monkeypatch):
    monkeypatch.setattr(reassembly, "_BAND_BYTES", band_bytes)
    b, c, h, w, k, s = shape
    features, kernels = _random_inputs(b, c, h, w, k, s, seed=sum(shape))
    grad = torch.randn(b, c, s * h, s * w, dtype=torch.float64)
    results = []
    for impl in ("lean", "reference"):
        f, kk = features.clone().requires_grad_(), kernels.clone().requires_grad_()
        out = carafe(f, kk, k, s, impl=impl, logits=softmax)
        out.backward(grad)
        results.append((out, f.grad, kk.grad))
    for lean, ref in zip(*results):
        torch.testing.assert_close(lean, ref, rtol=0, atol=1e-6)
        assert (lean - ref).abs().max() < 1e-12  # in practice they agree to rounding


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("band_bytes", [reassembly._BAND_BYTES, 1])
@pytest.mark.parametrize("gate_channels", [1, 3])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 5, 2), (1, 3, 2, 3, 3, 3)])
def test_gated_lean_equals_reference(shape, gate_channels, band_bytes, softmax, monkeypatch):
    monkeypatch.setattr(reassembly, "_BAND_BYTES", band_bytes)
    b, c, h, w, k, s = shape
    features, kernels = _random_inputs(b, c, h, w, k, s, seed=7)
    skip = torch.randn(b, c, s * h, s * w, dtype=torch.float64)
    gate = torch.rand(b, gate_channels, s * h, s * w, dtype=torch.float64)
    grad = torch.randn(b, c, s * h, s * w, dtype=torch.float64)
    results = []
    for impl in ("lean", "reference"):
        inputs = [t.clone().requires_grad_() for t in (features, kernels, skip, gate)]
        out = gated_carafe(inputs[0], inputs[1], k, s, inputs[2], inputs[3], impl=impl, logits=softmax)
        out.backward(grad)
        results.append([out] + [t.grad for t in inputs])
    for lean, ref in zip(*results):
        torch.testing.assert_close(lean, ref, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_gated_lean_gradcheck_and_exact_ends():
    features, kernels = _random_inputs(2, 3, 3, 4, 3, 2)
    skip = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    gate = torch.rand(2, 1, 6, 8, dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_() for t in (features, kernels, skip, gate))
    assert torch.autograd.gradcheck(lambda f, k, sk, g: gated_carafe(f, k, 3, 2, sk, g), inputs)
    assert torch.autograd.gradcheck(lambda f, k, sk, g: gated_carafe(f, k, 3, 2, sk, g, logits=True), inputs)
    assert torch.equal(gated_carafe(features, kernels, 3, 2, skip, torch.ones_like(gate)), skip)
    reassembled = carafe(features, kernels, 3, 2)
    assert torch.equal(gated_carafe(features, kernels, 3, 2, skip, torch.zeros_like(gate)), reassembled)


def test_gated_shape_errors():
    features, kernels = _random_inputs(1, 2, 4, 4, 5, 2)
    skip, gate = torch.zeros(1, 2, 8, 8, dtype=torch.float64), torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"skip \(1, 2, 8, 7\)"):
        gated_carafe(features, kernels, 5, 2, skip[..., :7], gate)
    with pytest.raises(ValueError, match=r"gate \(1, 2, 8, 8\)|gate \(1, 3, 8, 8\)"):
        gated_carafe(features, kernels, 5, 2, skip, torch.zeros(1, 3, 8, 8, dtype=torch.float64))
    # One without the other: an error, not an AttributeError or a silently ungated result.
    with pytest.raises(ValueError, match=r"skip and gate go together, got skip \(1, 2, 8, 8\) and gate None"):
        gated_carafe(features, kernels, 5, 2, skip, None)
    with pytest.raises(ValueError, match=r"skip and gate go together, got skip None and gate \(1, 1, 8, 8\)"):
        gated_carafe(features, kernels, 5, 2, None, gate)


@pytest.mark.slow
def test_lean_gradcheck():
    features, kernels = _random_inputs(2, 3, 3, 4, 3, 2)
    # Unnormalised kernels too: the op itself does not assume they sum to one.
    kernels = kernels + 0.1 * torch.randn_like(kernels)
    assert torch.autograd.gradcheck(
        lambda f, k: carafe(f, k, 3, 2), (features.requires_grad_(), kernels.requires_grad_())
    )


@pytest.mark.parametrize("which", ["features", "kernels"])
def test_gradient_of_one_input_only(which):
    features, kernels = _random_inputs(2, 3, 4, 5, 5, 2)
    target = features if which == "features" else kernels
    target.requires_grad_()
    carafe(features, kernels, 5, 2).sum().backward()
    ref = target.detach().clone().requires_grad_()
    args = (ref, kernels) if which == "features" else (features, ref)
    carafe(*args, 5, 2, impl="reference").sum().backward()
    torch.testing.assert_close(target.grad, ref.grad, rtol=0, atol=1e-12)


def test_strided_inputs_and_expanded_gradient():
    features, kernels = _random_inputs(2, 3, 4, 6, 5, 2)
    f_t = features.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()  # non-contiguous
    k_t = kernels.clone().requires_grad_()
    out = carafe(f_t, k_t, 5, 2)
    out.sum().backward()  # the incoming gradient is an expanded (stride-0) tensor
    f_r, k_r = features.clone().requires_grad_(), kernels.clone().requires_grad_()
    carafe(f_r, k_r, 5, 2, impl="reference").sum().backward()
    torch.testing.assert_close(out, carafe(features, kernels, 5, 2, impl="reference"), rtol=0, atol=1e-12)
    torch.testing.assert_close(f_t.grad, f_r.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(k_t.grad, k_r.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
def test_low_precision_dtypes(dtype, tol, softmax):
    features, kernels = _random_inputs(2, 4, 5, 6, 5, 2)
    expected = carafe(features, kernels, 5, 2, impl="reference", logits=softmax)
    f, k = features.to(dtype).requires_grad_(), kernels.to(dtype).requires_grad_()
    out = carafe(f, k, 5, 2, logits=softmax)
    out.sum().backward()
    assert out.dtype == f.grad.dtype == k.grad.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_one_hot_centre_kernel_is_nearest_upsampling():
    features, _ = _random_inputs(2, 3, 5, 4, 5, 2)
    kernels = torch.zeros(2, 25, 10, 8, dtype=torch.float64)
    kernels[:, 12] = 1  # offset (0, 0)
    expected = F.interpolate(features, scale_factor=2, mode="nearest")
    assert torch.equal(carafe(features, kernels, 5, 2), expected)


def test_input_errors_name_the_shapes():
    features, kernels = _random_inputs(1, 2, 4, 4, 5, 2)
    with pytest.raises(ValueError, match=r"\(1, 25, 8, 6\).*\(1, 2, 4, 4\)"):
        carafe(features, kernels[..., :6], 5, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        carafe(features, kernels, 4, 2)
    with pytest.raises(ValueError, match="impl"):
        carafe(features, kernels, 5, 2, impl="fast")
    with pytest.raises(ValueError, match="kernels must be a 4-D floating tensor"):
        carafe(features, kernels.long(), 5, 2)
    with pytest.raises(ValueError, match="one device"):
        carafe(features, kernels.to("meta"), 5, 2)
    skip, gate_lo = torch.zeros(1, 2, 8, 8, dtype=torch.float64), torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"gate \(1, 1, 8, 8\).*expected skip \(1, 2, 8, 8\) and gate \(1, 1, 4, 4\)"):
        fade_carafe(features, kernels, None, skip, gate_lo, 5, 2)
    with pytest.raises(ValueError, match=r"kernels_lo \(1, 25, 8, 8\)"):
        fade_carafe(features, kernels, kernels, skip, gate_lo[..., :4, :4], 5, 2)


def test_reports_its_multiply_adds():
    class Wrap(torch.nn.Module):
        def forward(self, f, k):
            return carafe(f, k, 5, 2)

    features, kernels = _random_inputs(2, 3, 4, 5, 5, 2)
    assert count_macs(Wrap(), features, kernels)["total"] == 2 * 3 * 8 * 10 * 25


@pytest.mark.slow
def test_inside_torch_compile():
    # aot_eager runs Dynamo and AOT autograd (fake tensors, the registered backward) without a C++ build.
    features, kernels = _random_inputs(2, 3, 5, 4, 5, 2)
    f1, k1 = features.clone().requires_grad_(), kernels.clone().requires_grad_()
    f2, k2 = features.clone().requires_grad_(), kernels.clone().requires_grad_()
    compiled = torch.compile(lambda f, k: carafe(f, k, 5, 2) * 2, backend="aot_eager", fullgraph=True)
    out = compiled(f1, k1)
    out.sum().backward()
    expected = carafe(f2, k2, 5, 2, impl="reference") * 2
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(f1.grad, f2.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(k1.grad, k2.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", REASSEMBLY_MODES)
def test_custom_ops_pass_opcheck(mode):
    # Schema, fake (meta) kernels including output strides, autograd registration, AOT dispatch.
    inputs = [t.requires_grad_() for t in reassembly_inputs(mode, 2, 3, 3, 5, 5, 2)]
    torch.library.opcheck(reassembly._reassemble_op, reassembly_op_args(mode, inputs, 5, 2, "lean"))
    grad = torch.randn(2, 3, 6, 10, dtype=torch.float64)
    args = reassembly_op_args(mode, [t.detach() for t in inputs], 5, 2, "lean")
    needs = [t is not None for t in args[:5]]
    torch.library.opcheck(reassembly._reassemble_backward_op, (grad, *args, needs))


def test_banded_conv_equals_conv2d(monkeypatch):
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(x, weight, bias, padding=1)
    grads = torch.autograd.grad(expected.sin().sum(), (x, weight, bias))
    for band_bytes in (banded._BAND_BYTES, 1):  # one output row per band: every band has halo rows
        monkeypatch.setattr(banded, "_BAND_BYTES", band_bytes)
        out = banded.conv2d_banded(x, weight, bias)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        for got, want in zip(torch.autograd.grad(out.sin().sum(), (x, weight, bias)), grads):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.library.opcheck(banded._conv2d_banded_op, (x, weight, bias))
    grad = torch.randn_like(expected)
    torch.library.opcheck(banded._conv2d_banded_backward_op, (grad, x.detach(), weight.detach(), True, True))


@pytest.mark.cuda
@pytest.mark.parametrize("mode", REASSEMBLY_MODES)
def test_lean_on_cuda_equals_reference(mode):
    inputs = reassembly_inputs(mode, 2, 3, 5, 7, 5, 2)
    grad = torch.randn(2, 3, 10, 14, dtype=torch.float64)
    got = reassembly_results(mode, [t.cuda() for t in inputs], 5, 2, "lean", grad.cuda())
    for a, e in zip(got, reassembly_results(mode, inputs, 5, 2, "reference", grad)):
        torch.testing.assert_close(a.cpu(), e, rtol=0, atol=1e-12)


@pytest.mark.cuda
def test_auto_is_triton_on_cuda():
    assert resolve_impl("auto", torch.device("cuda")) == "triton"


# --- FADE's entry point (input-resolution logits and gate), layouts, dtypes, the choice of implementation ---


@pytest.mark.parametrize("band_bytes", [reassembly._BAND_BYTES, 1])
@pytest.mark.parametrize("gate_channels", [1, 3])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 5, 2), (1, 3, 2, 3, 3, 3)])
def test_fade_carafe_lean_equals_reference(shape, gate_channels, band_bytes, monkeypatch):
    monkeypatch.setattr(reassembly, "_BAND_BYTES", band_bytes)
    b, c, h, w, k, s = shape
    inputs = reassembly_inputs("fade", b, c, h, w, k, s, gate_channels, seed=11)
    grad = torch.randn(b, c, s * h, s * w, dtype=torch.float64)
    lean = reassembly_results("fade", inputs, k, s, "lean", grad)
    ref = reassembly_results("fade", inputs, k, s, "reference", grad)
    for got, want in zip(lean, ref):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_fade_carafe_is_the_formula_and_gradchecks():
    features, logits, logits_lo, skip, gate_lo = reassembly_inputs("fade", 2, 3, 3, 4, 3, 2, seed=5)
    gate = torch.sigmoid(F.interpolate(gate_lo, scale_factor=2, mode="nearest"))
    kernels = torch.softmax(logits + F.interpolate(logits_lo, scale_factor=2, mode="nearest"), dim=1)
    expected = gate * skip + (1 - gate) * _by_definition(features, kernels, 3, 2)
    torch.testing.assert_close(fade_carafe(features, logits, logits_lo, skip, gate_lo, 3, 2), expected, rtol=0,
                               atol=1e-12)
    inputs = tuple(t.clone().requires_grad_() for t in (features, logits, logits_lo, skip, gate_lo))
    assert torch.autograd.gradcheck(lambda *a: fade_carafe(*a, 3, 2), inputs)
    # Gate logits of -1e4 / +1e4: sigmoid is exactly 0 / 1, and the op gives the reassembly / skip exactly.
    reassembled = carafe(features, logits + F.interpolate(logits_lo, scale_factor=2), 3, 2, logits=True)
    assert torch.equal(fade_carafe(features, logits, logits_lo, skip, torch.full_like(gate_lo, -1e4), 3, 2),
                       reassembled)
    assert torch.equal(fade_carafe(features, logits, logits_lo, skip, torch.full_like(gate_lo, 1e4), 3, 2), skip)


@pytest.mark.parametrize("mode", REASSEMBLY_MODES)
def test_channels_last_and_contiguous_inputs_agree(mode):
    inputs = reassembly_inputs(mode, 2, 3, 5, 4, 5, 2, seed=3)
    grad = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    nchw = reassembly_results(mode, inputs, 5, 2, "lean", grad)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in inputs]
    got = reassembly_results(mode, cl, 5, 2, "lean", grad.contiguous(memory_format=torch.channels_last))
    # The output follows the features' layout, as torch's upsampling ops do; each gradient its input's.
    assert got[0].is_contiguous(memory_format=torch.channels_last) and not got[0].is_contiguous()
    for g, t in zip(got[1:], cl):
        assert g.stride() == t.stride()
    for a, b in zip(got, nchw):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # Features in one layout, full-resolution operands (skip, kernels) in the other: the output follows the
    # features, for the reference (plain_ops, export) as for the op.
    for impl in ("lean", "reference"):
        got = reassembly_results(mode, [inputs[0], *cl[1:]], 5, 2, impl, grad)
        assert got[0].is_contiguous(), impl
        for a, b in zip(got, nchw):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        got = reassembly_results(mode, [cl[0], *inputs[1:]], 5, 2, impl, grad)
        assert got[0].is_contiguous(memory_format=torch.channels_last) and not got[0].is_contiguous(), impl


def test_the_former_softmax_keyword_still_works_with_a_warning():
    features, logits = reassembly_inputs("carafe", 1, 2, 3, 4, 3, 2, seed=5)
    want = carafe(features, logits, 3, 2, logits=True)
    with pytest.warns(FutureWarning, match="now logits"):
        got = carafe(features, logits, 3, 2, softmax=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(carafe(features, logits, 3, 2), want)  # logits=False: the kernels as they are


@pytest.mark.parametrize("impl", ["lean", "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_dtypes_are_cast_to_the_features_dtype(dtype, impl):
    # As under CUDA autocast: half-precision features and logits, float32 gate (and skip).
    inputs = reassembly_inputs("fade", 2, 3, 4, 5, 5, 2, seed=9)
    mixed = [inputs[0].to(dtype), inputs[1].to(dtype), inputs[2].float(), inputs[3].float(), inputs[4].float()]
    grad = torch.randn(2, 3, 8, 10, dtype=torch.float64)
    got = reassembly_results("fade", mixed, 5, 2, impl, grad.to(dtype))
    want = reassembly_results("fade", inputs, 5, 2, "reference", grad)
    assert got[0].dtype == dtype
    for g, t in zip(got[1:], mixed):
        assert g.dtype == t.dtype  # each gradient in its input's own dtype
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=0.05, atol=0.05)


def test_auto_is_lean_on_cpu_and_reference_inside_plain_ops():
    cpu = torch.device("cpu")
    assert resolve_impl("auto", cpu) == "lean"
    assert resolve_impl("lean", cpu) == "lean" and resolve_impl("reference", cpu) == "reference"
    with plain_ops():
        assert resolve_impl("auto", cpu) == "reference"
        assert resolve_impl("lean", cpu) == "lean"  # an explicit choice is kept
    assert not reassembly.plain_ops_enabled()


def test_plain_ops_graph_has_no_custom_op():
    inputs = tuple(reassembly_inputs("fade", 1, 2, 3, 3, 5, 2))
    kinds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and shape-check TracerWarnings
        for plain in (True, False):
            with plain_ops() if plain else contextlib.nullcontext():
                graph = torch.jit.trace(lambda *a: fade_carafe(*a, 5, 2), inputs).graph
            kinds.append({node.kind() for node in graph.nodes()})
    assert not any(kind.startswith("matting::") for kind in kinds[0])
    assert "matting::reassemble" in kinds[1]


def test_without_triton_auto_falls_back_to_lean_with_one_warning(monkeypatch):
    # Simulates an install without triton: importing it (and so the kernels module) fails.
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, "matting.upsamplers.reassembly_triton", raising=False)
    monkeypatch.delattr(sys.modules["matting.upsamplers"], "reassembly_triton", raising=False)  # if imported
    monkeypatch.setattr(reassembly, "_TRITON", {})
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="triton is unavailable") as record:
        assert resolve_impl("auto", cuda) == "lean"
    assert len(record) == 1 and "\n" not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_impl("auto", cuda) == "lean"  # warned once
    with pytest.raises(RuntimeError, match="needs the triton package"):
        resolve_impl("triton", cuda)
    assert resolve_impl("auto", torch.device("cpu")) == "lean"
