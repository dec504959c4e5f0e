"""SAPA-B, SAPA-G and DySample: explicit constructions from their definitions, borders, official names and
initialisation, mixed precision, the scope-bias converter, MAC counts."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from matting.config import load_config
from matting.errors import MattingError
from matting.models import build_model, make_input
from matting.upsamplers import (
    SAPA,
    SAPAG,
    UPSAMPLERS,
    DySample,
    build_upsampler,
    convert_dysample_state_dict,
    sapa_similarity,
    sapa_similarity_reference,
)
from matting.upsamplers import sapa as sapa_module
from matting.upsamplers.reassembly import plain_ops
from matting.utils.flops import count_macs

from helpers import trained_head

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _randomise(module, seed=0, std=0.5):
    """Random values for every parameter (zero-initialised biases and LayerNorm affines included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _grads(out, inputs, seed=1):
    """Gradients of <out, a fixed random tensor> w.r.t. ``inputs``."""
    weight = _randn(*out.shape, seed=seed).to(out.dtype)  # the same numbers whatever the dtype
    return torch.autograd.grad(out, inputs, weight)


def _assert_same_values_and_grads(fn, reference, inputs, rtol=1e-10, atol=1e-12):
    xs = [t.clone().requires_grad_() for t in inputs]
    ys = [t.clone().requires_grad_() for t in inputs]
    out, expected = fn(*xs), reference(*ys)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    for got, want in zip(_grads(out, xs), _grads(expected, ys)):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


# --- SAPA: the definition, pixel by pixel ----------------------------------------------------------------


def _layer_norm(v, norm):
    return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + norm.eps) * norm.weight + norm.bias


def _linear(v, layer):
    return layer.weight @ v + layer.bias


def _sapa_by_loops(up, en, de):
    """Every output pixel (Y, X) from its K x K low-resolution window around (Y//s, X//s): logit = plain dot
    product of query and key (0 for a neighbour outside the map), softmax, weighted sum of the RAW decoder
    vectors (zero outside)."""
    b, c, h, w = de.shape
    s, kk = up.scale, up.up_kernel_size
    r = kk // 2
    out = []
    for i in range(b):
        keys = {(y, x): _linear(_layer_norm(de[i, :, y, x], up.norm_x), up.k) for y in range(h) for x in range(w)}
        rows = []
        for yy in range(s * h):
            row = []
            for xx in range(s * w):
                y_src, x_src = yy // s, xx // s
                en_normed = _layer_norm(en[i, :, yy, xx], up.norm_y)
                if isinstance(up, SAPAG):
                    de_vec = de[i, :, y_src, x_src]  # nearest upsampling of the raw decoder feature
                    g = torch.sigmoid(_linear(_layer_norm(de_vec, up.norm_x), up.gate))
                    q = g * _linear(en_normed, up.qy) + (1 - g) * _linear(de_vec, up.qx)
                else:
                    q = _linear(en_normed, up.q)
                logits, values = [], []
                for a in range(kk):
                    for bb in range(kk):
                        y, x = y_src + a - r, x_src + bb - r
                        inside = 0 <= y < h and 0 <= x < w
                        logits.append(q @ keys[y, x] if inside else q.new_zeros(()))
                        values.append(de[i, :, y, x] if inside else de.new_zeros(c))
                weights = torch.softmax(torch.stack(logits), dim=0)
                row.append((weights[:, None] * torch.stack(values)).sum(0))
            rows.append(torch.stack(row, dim=-1))
        out.append(torch.stack(rows, dim=-2))
    return torch.stack(out)


@pytest.mark.parametrize(
    "cls,options",
    [
        (SAPA, {}),
        (SAPAG, {}),
        (SAPA, {"encoder_channels": 6, "up_kernel_size": 3}),
        (SAPAG, {"encoder_channels": 3, "scale": 3}),
    ],
)
def test_sapa_equals_the_loop_construction(cls, options):
    s = options.get("scale", 2)
    ce = options.get("encoder_channels", 5)
    up = _randomise(cls(5, embedding_dim=3, **options).double())
    en, de = _randn(2, ce, 3 * s, 5 * s, seed=1), _randn(2, 5, 3, 5, seed=2)
    _assert_same_values_and_grads(up, lambda e, d: _sapa_by_loops(up, e, d), [en, de])


@pytest.mark.parametrize("cls", [SAPA, SAPAG])
def test_sapa_reference_formulation_matches(cls):
    up = _randomise(cls(6, embedding_dim=4).double())

    def plain(en, de):
        with plain_ops():  # what export traces: no custom op
            return up(en, de)

    _assert_same_values_and_grads(up, plain, [_randn(2, 6, 10, 6, seed=3), _randn(2, 6, 5, 3, seed=4)])


def test_similarity_op_in_many_bands_matches_the_unfold_reference(monkeypatch):
    monkeypatch.setattr(sapa_module, "_BAND_BYTES", 1)  # one low-resolution row per band
    q, k = _randn(2, 3, 14, 10, seed=5), _randn(2, 3, 7, 5, seed=6)
    for kernel_size in (3, 5):
        _assert_same_values_and_grads(
            lambda a, b: sapa_similarity(a, b, kernel_size, 2),
            lambda a, b: sapa_similarity_reference(a, b, kernel_size, 2),
            [q, k],
        )


def test_out_of_map_logits_are_exactly_zero():
    q, k = _randn(1, 4, 8, 8, seed=7), _randn(1, 4, 4, 4, seed=8)
    logits = sapa_similarity(q, k, 5, 2)  # (1, 25, 8, 8)
    # Output pixel (0, 0) reads window rows/cols -2..2 around (0, 0): offsets with a < 2 or b < 2 are outside.
    window = logits[0, :, 0, 0].view(5, 5)
    assert torch.equal(window[:2], torch.zeros(2, 5, dtype=F64))
    assert torch.equal(window[:, :2], torch.zeros(5, 2, dtype=F64))
    assert (window[2:, 2:] != 0).all()
    torch.testing.assert_close(window[2, 2], (q[0, :, 0, 0] * k[0, :, 0, 0]).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [SAPA, SAPAG])
def test_border_takes_zero_logits_into_the_softmax(cls):
    # q = k = 0: every logit is 0, the 25 weights are 1/25, and only the in-map neighbours carry de = 1.
    up = cls(4, embedding_dim=4).double()
    with torch.no_grad():
        for name in ("q", "qy", "qx", "k"):
            if hasattr(up, name):
                getattr(up, name).weight.zero_()
    out = up(_randn(1, 4, 8, 8), torch.ones(1, 4, 4, 4, dtype=F64))
    inside = torch.tensor([3.0, 4.0, 4.0, 3.0], dtype=F64).repeat_interleave(2)  # in-map rows of each window
    expected = torch.outer(inside, inside) / 25
    assert expected[0, 0] == 9 / 25
    torch.testing.assert_close(out[0], expected.expand(4, 8, 8), rtol=0, atol=1e-15)


# --- SAPA: names, initialisation, precision, layouts -----------------------------------------------------


def test_sapa_official_state_dict_keys_load_strictly():
    ce, c, e = 6, 10, 32
    official = {
        "norm_y.weight": (ce,), "norm_y.bias": (ce,), "norm_x.weight": (c,), "norm_x.bias": (c,),
        "q.weight": (e, ce), "q.bias": (e,), "k.weight": (e, c), "k.bias": (e,),
    }
    official_gate = {
        "norm_y.weight": (ce,), "norm_y.bias": (ce,), "norm_x.weight": (c,), "norm_x.bias": (c,),
        "qy.weight": (e, ce), "qy.bias": (e,), "qx.weight": (e, c), "qx.bias": (e,),
        "gate.weight": (1, c), "gate.bias": (1,), "k.weight": (e, c), "k.bias": (e,),
    }
    for cls, keys in ((SAPA, official), (SAPAG, official_gate)):
        up = cls(c, embedding_dim=e, encoder_channels=ce)
        assert {k: tuple(v.shape) for k, v in up.state_dict().items()} == keys
        state = {k: _randn(*shape, seed=i, dtype=torch.float32) for i, (k, shape) in enumerate(keys.items())}
        up.load_state_dict(state, strict=True)
        assert all(torch.equal(up.state_dict()[k], v) for k, v in state.items())
    unbiased = SAPA(c, embedding_dim=e, encoder_channels=ce, qkv_bias=False)
    assert set(unbiased.state_dict()) == set(official) - {"q.bias", "k.bias"}


def test_sapa_parameter_count_of_the_paper():
    # SAPA-B at C = 256: 4*256 (two LayerNorms) + 2*(256*E + E); the matting table's +0.04M over the four
    # decoder stages (256, 128, 64, 64) is E = 32.
    assert sum(p.numel() for p in SAPA(256).parameters()) == 33_920
    assert sum(p.numel() for p in SAPA(256, embedding_dim=32).parameters()) == 17_472
    total = sum(sum(p.numel() for p in SAPA(c, embedding_dim=32).parameters()) for c in (256, 128, 64, 64))
    assert round(total / 1e6, 2) == 0.04


@pytest.mark.parametrize("cls", [SAPA, SAPAG])
def test_sapa_official_initialisation(cls):
    torch.manual_seed(0)
    up = cls(256)
    linears = [m for m in up.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == (2 if cls is SAPA else 4)
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert abs(weights.std().item() - 0.02) < 0.001 and weights.abs().max() < 0.2  # N(0, 0.02^2), cut at 2
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    for norm in (up.norm_y, up.norm_x):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and norm.eps == 1e-5
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


@pytest.mark.parametrize("cls", [SAPA, SAPAG])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sapa_half_precision_values_and_gradients(cls, dtype):
    up = _randomise(cls(8, embedding_dim=8), std=0.3)
    en, de = _randn(2, 8, 6, 10, seed=9, dtype=torch.float32), _randn(2, 8, 3, 5, seed=10, dtype=torch.float32)
    ref_inputs = [en.double().requires_grad_(), de.double().requires_grad_()]
    ref = up.double()(*ref_inputs)
    ref_grads = _grads(ref, ref_inputs)
    half_inputs = [en.to(dtype).requires_grad_(), de.to(dtype).requires_grad_()]
    out = up.to(dtype)(*half_inputs)
    assert out.dtype == dtype
    tol = 0.03 if dtype == torch.float16 else 0.15
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for got, want in zip(_grads(out, half_inputs), ref_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_sapa_under_autocast_keeps_float32_logits_and_the_decoder_dtype():
    up = _randomise(SAPAG(8, embedding_dim=8), std=0.3)
    en, de = _randn(2, 8, 6, 10, seed=11, dtype=torch.float32), _randn(2, 8, 3, 5, seed=12, dtype=torch.float32)
    ref = up(en, de)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = up.kernel_logits(en, de)
        out = up(en, de)
    assert logits.dtype == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.1, atol=0.1)


def test_sapa_encoder_channels_option_and_shape_errors():
    up = SAPA(4, encoder_channels=6)
    assert up(_randn(1, 6, 4, 4, dtype=torch.float32), _randn(1, 4, 2, 2, dtype=torch.float32)).shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"expected en of shape \(1, 6, 4, 4\) \(same batch and 6 channels"):
        up(_randn(1, 4, 4, 4, dtype=torch.float32), _randn(1, 4, 2, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="embedding_dim"):
        build_upsampler("sapa", 4, embedding_dim=0)
    with pytest.raises(ValueError, match="qkv_bias"):
        build_upsampler("sapa_g", 4, qkv_bias="yes")


def test_sapa_inside_torch_compile():
    up = _randomise(SAPAG(4, embedding_dim=4))
    en, de = _randn(1, 4, 6, 4, seed=13, dtype=torch.float32), _randn(1, 4, 3, 2, seed=14, dtype=torch.float32)
    compiled = torch.compile(up, backend="aot_eager", fullgraph=True)
    _assert_same_values_and_grads(compiled, up, [en, de], rtol=1e-5, atol=1e-6)


# --- DySample: the definition, sample by sample -----------------------------------------------------------


def _bilinear_border(plane, x, y):
    """plane (C, H, W) at (x, y) in index units, coordinates clamped to the border (grid_sample's 'border')."""
    h, w = plane.shape[-2:]
    x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)
    x0, y0 = int(torch.floor(x)), int(torch.floor(y))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = (1 - fx) * plane[:, y0, x0] + fx * plane[:, y0, x1]
    bottom = (1 - fx) * plane[:, y1, x0] + fx * plane[:, y1, x1]
    return (1 - fy) * top + fy * bottom


def _dysample_by_loops(up, de):
    """Output pixel (Y, X) = (h*s + i, w*s + j) of group g: the offset of (g, i, j) from the 1x1 convs (on de
    at (h, w) for 'lp'; on pixel_shuffle(de) at (Y, X) for 'pl'), plus ((j - (s-1)/2)/s, (i - (s-1)/2)/s),
    added to the pixel centre (w + 0.5, h + 0.5); group g's channels sampled bilinearly there."""
    b, c, h, w = de.shape
    s, groups = up.scale, up.groups
    cg = c // groups
    factor = 0.5 if up.dyscope else 0.25
    result = []
    for n in range(b):
        rows = []
        for yy in range(s * h):
            cols = []
            for xx in range(s * w):
                i, j, y_src, x_src = yy % s, xx % s, yy // s, xx // s
                if up.style == "lp":  # 2*G*s*s outputs, channel ((d*G + g)*s + i)*s + j
                    src, first, step = de[n, :, y_src, x_src], i * s + j, s * s
                else:  # channel c' of pixel_shuffle(de) at (Y, X) is de channel c'*s*s + i*s + j at (h, w)
                    src, first, step = de[n, i * s + j :: s * s, y_src, x_src], 0, 1
                offset = up.offset.weight[:, :, 0, 0] @ src + up.offset.bias
                if up.dyscope:
                    scope = up.scope.weight[:, :, 0, 0] @ src
                    offset = offset * torch.sigmoid(scope + (up.scope.bias if up.scope_bias else 0))
                offset = offset[first::step].view(2, groups)  # [d, g] for this sub-pixel (i, j)
                pixel = []
                for g in range(groups):
                    ox = offset[0, g] * factor + (j - (s - 1) / 2) / s
                    oy = offset[1, g] * factor + (i - (s - 1) / 2) / s
                    # pixel-edge units -> index units: the centre of pixel w is at w + 0.5
                    x, y = x_src + 0.5 + ox - 0.5, y_src + 0.5 + oy - 0.5
                    pixel.append(_bilinear_border(de[n, g * cg : (g + 1) * cg], x, y))
                cols.append(torch.cat(pixel))
            rows.append(torch.stack(cols, dim=-1))
        result.append(torch.stack(rows, dim=-2))
    return torch.stack(result)


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
def test_dysample_equals_the_loop_construction(style, dyscope):
    up = _randomise(DySample(8, style=style, groups=2, dyscope=dyscope).double(), std=1.0)  # offsets of pixels
    de = _randn(2, 8, 3, 5, seed=15)
    _assert_same_values_and_grads(lambda d: up(None, d), lambda d: _dysample_by_loops(up, d), [de])


def test_dysample_scale_3_and_biased_scope_equal_the_loop_construction():
    up = _randomise(DySample(9, scale=3, style="pl", groups=1, dyscope=True, scope_bias=True).double(), std=1.0)
    # init_pos is made in float32, as the official buffer: -1/3 and 1/3 are off by ~1e-8 there.
    third = torch.tensor([-1 / 3, 0, 1 / 3], dtype=F64)
    exact = torch.stack([third.expand(3, 3), third[:, None].expand(3, 3)]).reshape(1, 18, 1, 1)
    torch.testing.assert_close(up.init_pos, exact, rtol=0, atol=3e-8)
    up.init_pos.copy_(exact)
    _assert_same_values_and_grads(lambda d: up(None, d), lambda d: _dysample_by_loops(up, d), [_randn(2, 9, 3, 2)])


@pytest.mark.parametrize("style", ["lp", "pl"])
@pytest.mark.parametrize("dyscope", [False, True])
@pytest.mark.parametrize("scale,groups", [(2, 4), (4, 2)])  # init_pos is exact in binary for these scales
def test_dysample_with_zero_offsets_is_bilinear_upsampling(style, dyscope, scale, groups):
    up = DySample(32, scale=scale, style=style, groups=groups, dyscope=dyscope).double()
    torch.nn.init.zeros_(up.offset.weight)
    de = _randn(2, 32, 5, 7, seed=16)
    expected = F.interpolate(de, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(None, de), expected, rtol=0, atol=1e-14)


def test_dysample_initial_positions_and_official_names():
    assert DySample(4, groups=1).init_pos.flatten().tolist() == [-0.25, 0.25, -0.25, 0.25, -0.25, -0.25, 0.25, 0.25]
    shapes = {
        ("lp", False): {"offset.weight": (32, 16, 1, 1), "offset.bias": (32,), "init_pos": (1, 32, 1, 1)},
        ("lp", True): {"offset.weight": (32, 16, 1, 1), "offset.bias": (32,), "scope.weight": (32, 16, 1, 1),
                       "init_pos": (1, 32, 1, 1)},
        ("pl", False): {"offset.weight": (8, 4, 1, 1), "offset.bias": (8,), "init_pos": (1, 32, 1, 1)},
        ("pl", True): {"offset.weight": (8, 4, 1, 1), "offset.bias": (8,), "scope.weight": (8, 4, 1, 1),
                       "init_pos": (1, 32, 1, 1)},
    }
    for (style, dyscope), keys in shapes.items():
        up = DySample(16, style=style, dyscope=dyscope)
        assert {k: tuple(v.shape) for k, v in up.state_dict().items()} == keys
        state = {k: _randn(*shape, seed=i, dtype=torch.float32) for i, (k, shape) in enumerate(keys.items())}
        up.load_state_dict(state, strict=True)
        assert torch.equal(up.init_pos, state["init_pos"])  # persistent buffer


def test_dysample_official_initialisation():
    torch.manual_seed(0)
    up = DySample(256, dyscope=True)
    assert abs(up.offset.weight.std().item() - 0.001) < 1e-4
    assert torch.equal(up.offset.bias, torch.zeros(32)) and torch.equal(up.scope.weight, torch.zeros(32, 256, 1, 1))
    assert up.scope.bias is None
    assert sum(p.numel() for p in DySample(256).parameters()) == 8_224
    assert sum(p.numel() for p in DySample(256, style="pl").parameters()) == 520


def test_network_wide_official_init_keeps_dysample_its_own():
    """model.init: official re-initialises every conv (FADE's too, as the official code did), but not DySample's
    offsets, which must start near zero so that DySample starts as bilinear upsampling."""
    torch.manual_seed(0)
    model = build_model("resnet34", "dysample", init="official", decoder_channels=(64, 32, 32, 16))
    for stage in model.decoder.stages:
        assert stage.up.offset.weight.std().item() < 2e-3
        assert torch.count_nonzero(stage.up.offset.bias) == 0
    # ...while the rest of the network, the FADE convs included, got the official Xavier weights.
    assert model.decoder.stages[0].blocks[0].conv1[0].weight.std().item() > 0.02
    fade = build_model("resnet34", "fade", init="official", decoder_channels=(64, 32, 32, 16))
    assert fade.decoder.stages[0].up.compress_en.weight.std().item() > 0.05


def test_dysample_grid_stays_right_in_half_precision_at_large_widths():
    w = 1100
    # Official fp16 arithmetic: the pixel centres w + 0.5 are not representable from 1024 on (they round to
    # an even integer), so official positions are off by half a pixel there.
    centres = (torch.arange(1024, w) + 0.5).half().double()
    assert torch.equal(centres, centres.round())
    up = DySample(4, groups=1)
    torch.nn.init.zeros_(up.offset.weight)
    de = torch.ones(1, 4, 2, w)
    de[..., 1::2] = -1  # alternating columns: a sample half a pixel off changes the value by 0.5 or more
    expected = F.interpolate(de.double(), scale_factor=2, mode="bilinear", align_corners=False)
    for dtype in (torch.float16, torch.bfloat16):
        up = up.to(dtype)
        offsets = up.offsets(de.to(dtype))
        assert offsets.dtype == torch.float32 and up.sampling_grid(offsets).dtype == torch.float32
        out = up(None, de.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)  # +-0.5 and +-1 are exact


# --- the scope-bias variant --------------------------------------------------------------------------------


def test_scope_bias_checkpoint_needs_scope_bias_and_says_so():
    biased = _randomise(DySample(8, dyscope=True, scope_bias=True))
    state = biased.state_dict()
    assert "scope.bias" in state
    with pytest.raises(RuntimeError, match=r"scope\.bias: the checkpoint has a scope bias .* scope_bias=True"):
        DySample(8, dyscope=True).load_state_dict(state)
    with pytest.raises(MattingError, match=r"scope\.bias is not zero.*scope_bias=True"):
        convert_dysample_state_dict(state, scope_bias=False)
    with pytest.raises(ValueError, match="scope_bias needs dyscope"):
        DySample(8, scope_bias=True)


def test_convert_dysample_state_dict_is_exact_both_ways():
    plain = _randomise(DySample(8, style="pl", dyscope=True))
    de = _randn(2, 8, 3, 4, dtype=torch.float32)
    biased = DySample(8, style="pl", dyscope=True, scope_bias=True)
    converted = convert_dysample_state_dict(plain.state_dict(), scope_bias=True)
    assert torch.equal(converted["scope.bias"], torch.zeros(8))
    biased.load_state_dict(converted, strict=True)
    assert torch.equal(biased(None, de), plain(None, de))
    back = DySample(8, style="pl", dyscope=True)
    back.load_state_dict(convert_dysample_state_dict(biased.state_dict(), scope_bias=False), strict=True)
    assert torch.equal(back(None, de), plain(None, de))


def test_convert_dysample_state_dict_inside_a_network_checkpoint():
    state = {
        "decoder.stages.0.up.offset.weight": torch.zeros(32, 16, 1, 1),
        "decoder.stages.0.up.offset.bias": torch.zeros(32),
        "decoder.stages.0.up.scope.weight": torch.zeros(32, 16, 1, 1),
        "decoder.stages.0.up.init_pos": torch.zeros(1, 32, 1, 1),
        "decoder.stages.0.scope.weight": torch.ones(3),  # not a DySample: left alone
        "head.0.weight": torch.ones(2),
    }
    out = convert_dysample_state_dict(state, scope_bias=True)
    assert set(out) - set(state) == {"decoder.stages.0.up.scope.bias"}
    assert out["decoder.stages.0.up.scope.bias"].shape == (32,)
    assert convert_dysample_state_dict(out, scope_bias=False).keys() == state.keys()


# --- configs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config,upsampler,options",
    [("comp1k_sapa", "sapa", {"embedding_dim": 32}), ("comp1k_sapa_g", "sapa_g", {"embedding_dim": 32}),
     ("comp1k_dysample", "dysample", {})],
)
def test_configs_swap_only_the_upsampler_of_the_paper_recipe(config, upsampler, options):
    fade = load_config(REPO / "configs/comp1k_fade.yaml")
    cfg = load_config(REPO / f"configs/{config}.yaml")
    assert (cfg.model.upsampler, cfg.model.upsampler_options) == (upsampler, options)
    assert cfg.train == fade.train and cfg.data == fade.data and cfg.loss == fade.loss
    assert dataclasses.replace(cfg.model, upsampler="fade", upsampler_options=fade.model.upsampler_options) == (
        fade.model
    )
    assert cfg.output_dir != fade.output_dir
    up = build_upsampler(upsampler, 256, **options)
    assert up.uses_encoder == (upsampler != "dysample")


@pytest.mark.parametrize(
    "upsampler,options", [("sapa", {}), ("sapa_g", {}), ("dysample", {"dyscope": True}), ("dysample", {"style": "pl"})]
)
def test_matting_network_trains_every_parameter_of_the_new_upsamplers(upsampler, options):
    model = trained_head(build_model("resnet34", upsampler, upsampler_options=options).train())
    g = torch.Generator().manual_seed(0)
    image, alpha = torch.rand(2, 3, 48, 80, generator=g), torch.rand(2, 1, 48, 80, generator=g)
    trimap = torch.tensor([0, 128, 255], dtype=torch.uint8)[torch.randint(0, 3, (2, 1, 48, 80), generator=g)]
    out = model(make_input(image, trimap))
    assert out.shape == (2, 1, 48, 80)
    torch.nn.functional.l1_loss(out, alpha).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []
    assert all(type(s.up) is UPSAMPLERS[upsampler] and s.en_proj is None for s in model.decoder.stages)


# --- multiply-adds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SAPA, SAPAG])
def test_sapa_macs(cls):
    c, ce, e, b, h, w = 8, 6, 4, 2, 3, 5
    up = cls(c, embedding_dim=e, encoder_channels=ce)
    macs = count_macs(up, _randn(b, ce, 2 * h, 2 * w, dtype=torch.float32), _randn(b, c, h, w, dtype=torch.float32))
    hi, lo = b * 4 * h * w, b * h * w
    similarity, reassembly = hi * 25 * e, hi * 25 * c
    if cls is SAPA:
        query = macs["q"]
        assert query == hi * ce * e
    else:
        query = macs["qy"] + macs["qx"] + macs["gate"]
        assert (macs["qy"], macs["qx"], macs["gate"]) == (hi * ce * e, lo * c * e, lo * c)
    assert macs["k"] == lo * c * e
    assert macs["total"] == query + macs["k"] + similarity + reassembly


@pytest.mark.parametrize("style", ["lp", "pl"])
def test_dysample_macs(style):
    c, b, h, w = 16, 2, 3, 5
    up = DySample(c, style=style, dyscope=True)
    macs = count_macs(up, None, _randn(b, c, h, w, dtype=torch.float32))
    hi, lo = b * 4 * h * w, b * h * w
    conv = lo * c * 32 if style == "lp" else hi * (c // 4) * 8
    assert macs["offset"] == macs["scope"] == conv
    assert macs["total"] == 2 * conv + hi * c * 4  # bilinear sampling: 4 taps per output element
