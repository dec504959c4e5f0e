"""Upsamplers: registry, the shared interface, FADE's exact semantics, peers, weight conversion, MAC counts."""

import contextlib
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from matting.errors import MattingError
from matting.upsamplers import (
    A2U,
    CARAFE,
    FADE,
    FADELite,
    UPSAMPLERS,
    IndexNetUpsampler,
    Upsampler,
    available_upsamplers,
    build_upsampler,
    convert_official_fade_state_dict,
    register_upsampler,
    semi_shift_logits,
)
from matting.upsamplers.reassembly import carafe, plain_ops
from matting.utils.flops import add_macs, count_macs

NAMES = [
    "nearest", "bilinear", "deconv", "pixelshuffle", "carafe", "fade", "fade_lite", "a2u", "indexnet",
    "sapa", "sapa_g", "dysample",
]


def _pair(b=2, c=8, h=3, w=5, s=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    en = torch.randn(b, c, s * h, s * w, generator=g, dtype=dtype)
    de = torch.randn(b, c, h, w, generator=g, dtype=dtype)
    return en, de


def _fade(channels, fold):
    """A FADE with its compressors folded or not (an internal choice by cost; both forms must agree)."""
    fade = FADE(channels)
    fade.fold_compressors = fold
    return fade


def _randomise(module, seed=0):
    """Gives every parameter (including zero-initialised biases) a random value so no term is invisible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# --- registry and interface --------------------------------------------------------------------------------


def test_registry_lists_every_upsampler():
    assert set(NAMES) <= set(available_upsamplers())
    assert available_upsamplers() == sorted(UPSAMPLERS)
    for name in NAMES:
        assert issubclass(UPSAMPLERS[name], Upsampler)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown upsampler 'nope'.*bilinear.*fade.*nearest") as info:
        build_upsampler("nope", 8)
    assert isinstance(info.value, MattingError)  # a one-line user error on the command line


@pytest.mark.parametrize("name", ["nearest", "fade"])
def test_unknown_option_is_named(name):
    with pytest.raises(ValueError, match="unknown option 'kernel'"):
        build_upsampler(name, 8, kernel=3)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("fade", {"reassembly": "fast"}, "reassembly"),
        ("fade", {"up_kernel_size": 4}, "up_kernel_size"),
        ("fade_lite", {"up_kernel_size": 0}, "up_kernel_size"),
        ("carafe", {"encoder_kernel_size": 2}, "encoder_kernel_size"),
        ("indexnet", {"mode": "x"}, "mode"),
        ("a2u", {"scale": 3}, "scale"),
        ("nearest", {"scale": 1}, "scale"),
        ("sapa", {"up_kernel_size": 4}, "up_kernel_size"),
        ("sapa_g", {"embedding_dim": 0}, "embedding_dim"),
        ("dysample", {"style": "x"}, "style"),
        ("dysample", {"groups": 3}, "divisible by groups"),
        ("dysample", {"style": "pl", "scale": 3}, "divisible by scale"),
    ],
)
def test_bad_option_values(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_upsampler(name, 8, **options)


def test_register_rejects_a_taken_name():
    with pytest.raises(ValueError, match="already taken"):

        @register_upsampler("fade")
        class Other(Upsampler):
            pass


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(3, 5), (4, 4), (1, 1)])
def test_interface_shapes_dtype_and_gradients(name, size):
    torch.manual_seed(0)
    up = build_upsampler(name, 8).double()
    if name == "indexnet":
        up.eval()  # BatchNorm on a 1x1 training batch has no variance
    en, de = _pair(h=size[0], w=size[1])
    en.requires_grad_()
    de.requires_grad_()
    out = up(en, de)
    assert out.shape == en.shape and out.dtype == de.dtype
    out.square().sum().backward()
    assert de.grad is not None and de.grad.abs().sum() > 0
    assert (en.grad is not None and en.grad.abs().sum() > 0) == up.uses_encoder
    assert type(up).uses_encoder == up.uses_encoder


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_inputs_give_the_same_values_and_stay_channels_last(name):
    torch.manual_seed(0)
    up = build_upsampler(name, 8).double()
    en, de = _pair(h=7, w=5)
    grad = torch.randn_like(en)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = [t.clone(memory_format=fmt).requires_grad_() for t in (en, de)]
        out = up(*x)
        out.backward(grad.contiguous(memory_format=fmt))
        results.append((out, *[t.grad for t in x]))
    (out, en_grad, de_grad), (out_cl, en_grad_cl, de_grad_cl) = results
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    torch.testing.assert_close(out_cl, out, rtol=0, atol=1e-12)
    torch.testing.assert_close(de_grad_cl, de_grad, rtol=0, atol=1e-12)
    if up.uses_encoder:
        torch.testing.assert_close(en_grad_cl, en_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_names_both_shapes(name):
    up = build_upsampler(name, 8)
    en, de = _pair(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"en \(2, 8, 6, 9\).*de \(2, 8, 3, 5\)"):
        up(en[..., :9], de)
    with pytest.raises(ValueError, match=r"en \(1, 8, 6, 10\).*de \(2, 8, 3, 5\)"):
        up(en[:1], de)
    with pytest.raises(ValueError, match=r"de has 4 channels, expected 8"):
        up(en[:, :4], de[:, :4])


def test_encoder_free_upsamplers_accept_en_none():
    en, de = _pair()
    for name in NAMES:
        up = build_upsampler(name, 8).double()
        if up.uses_encoder:
            with pytest.raises(ValueError, match="needs the encoder feature"):
                up(None, de)
        else:
            assert torch.equal(up(None, de), up(en, de))


def test_fixed_upsamplers():
    en, de = _pair()
    assert torch.equal(build_upsampler("nearest", 8)(en, de), de.repeat_interleave(2, 2).repeat_interleave(2, 3))
    torch.testing.assert_close(
        build_upsampler("bilinear", 8)(en, de), F.interpolate(de, scale_factor=2, mode="bilinear")
    )


def test_deconv_bilinear_init_interpolates_in_the_interior():
    en, de = _pair(h=6, w=7)
    up = build_upsampler("deconv", 8, bilinear_init=True).double()
    expected = F.interpolate(de, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(en, de)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])


def test_pixelshuffle_icnr_init_is_free_of_checkerboard():
    en, de = _pair()
    out = build_upsampler("pixelshuffle", 8).double()(en, de)
    torch.testing.assert_close(out[..., 0::2, 0::2], out[..., 1::2, 1::2], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[..., 0::2, 0::2], out[..., 0::2, 1::2], rtol=0, atol=1e-12)
    assert (out[..., 0::2, 0::2] - out[..., 0::2, 1::2]).abs().max() < 1e-12 < out.abs().max()


# --- FADE ------------------------------------------------------------------------------------------------


def test_fade_parameter_names_shapes_and_count():
    fade = FADE(256)
    shapes = {k: tuple(v.shape) for k, v in fade.state_dict().items()}
    assert shapes == {
        "gate.weight": (1, 256, 1, 1),
        "gate.bias": (1,),
        "compress_en.weight": (64, 256, 1, 1),
        "compress_en.bias": (64,),
        "compress_de.weight": (64, 256, 1, 1),
        "kernel_conv.weight": (25, 64, 3, 3),
        "kernel_conv.bias": (25,),
    }
    # The doc's count: gate 257, compressors 256*64*2 + 64, kernel conv 64*25*9 + 25.
    assert sum(p.numel() for p in fade.parameters()) == 257 + 256 * 64 * 2 + 64 + 64 * 25 * 9 + 25
    assert all(type(getattr(fade, n)) is nn.Conv2d for n in ("gate", "compress_en", "compress_de", "kernel_conv"))


def test_fade_lite_parameters():
    lite = FADELite(32)
    assert lite.compress_en.out_channels == lite.compress_de.out_channels == 25
    assert lite.compress_de.bias is None
    assert lite.kernel_conv.groups == 25 and tuple(lite.kernel_conv.weight.shape) == (25, 1, 3, 3)
    assert lite.kernel_conv.bias is not None


@pytest.mark.parametrize("cls", [FADE, FADELite])
def test_official_initialisation(cls):
    torch.manual_seed(0)
    up = cls(256)
    for conv in (up.gate, up.compress_en, up.compress_de, up.kernel_conv):
        fan_in = conv.weight[0].numel()
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = conv.weight.abs()
        assert w.max() <= bound and w.max() > 0.9 * bound, conv  # Xavier-uniform, not PyTorch's default
        if conv.bias is not None:
            assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def _semi_shift_by_definition(en, de, fade):
    """Per output pixel: one 3x3 window over the compressed encoder at stride 1 plus the same window over the
    compressed decoder at stride 1/2, each through kernel_conv (its bias therefore counted twice)."""
    e, d = fade.compress_en(en), fade.compress_de(de)
    weight, bias, groups = fade.kernel_conv.weight, fade.kernel_conv.bias, fade.kernel_conv.groups
    k2, per_group = weight.shape[0], weight.shape[1]
    b, _, h2, w2 = en.shape
    out = torch.zeros(b, k2, h2, w2, dtype=en.dtype)
    for o in range(k2):
        g = o // (k2 // groups)
        chans = slice(g * per_group, (g + 1) * per_group)
        for y in range(h2):
            for x in range(w2):
                total = 2 * bias[o]
                for i in range(3):
                    for j in range(3):
                        ye, xe = y + i - 1, x + j - 1
                        if 0 <= ye < h2 and 0 <= xe < w2:
                            total = total + (weight[o, :, i, j] * e[:, chans, ye, xe]).sum(1)
                        yd, xd = y // 2 + i - 1, x // 2 + j - 1
                        if 0 <= yd < h2 // 2 and 0 <= xd < w2 // 2:
                            total = total + (weight[o, :, i, j] * d[:, chans, yd, xd]).sum(1)
                out[:, o, y, x] = total
    return out


@pytest.mark.parametrize(
    "make", [lambda: _fade(6, True), lambda: _fade(6, False), lambda: FADELite(6)]
)
def test_semi_shift_generator_equals_explicit_construction(make):
    fade = _randomise(make().double())
    en, de = _pair(c=6, h=3, w=4, seed=1)
    with torch.no_grad():
        expected = _semi_shift_by_definition(en, de, fade)
        torch.testing.assert_close(fade.kernel_logits(en, de), expected, rtol=0, atol=1e-10)
        plain = semi_shift_logits(en, de, fade.compress_en, fade.compress_de, fade.kernel_conv, 2)
        torch.testing.assert_close(plain, expected, rtol=0, atol=1e-10)


def test_folding_compress_en_is_exact_in_values_and_gradients():
    en, de = _pair(c=5, h=3, w=4, seed=2)
    outs = []
    for fold in (True, False):
        fade = _randomise(_fade(5, fold).double())
        e, d = en.clone().requires_grad_(), de.clone().requires_grad_()
        out = fade(e, d)
        out.sin().sum().backward()
        outs.append([out, e.grad, d.grad] + [p.grad for p in fade.parameters()])
    for folded, plain in zip(*outs):
        torch.testing.assert_close(folded, plain, rtol=0, atol=1e-10)


def test_fold_is_chosen_by_cost():
    assert FADE(32).fold_compressors and FADE(64).fold_compressors
    assert not FADE(128).fold_compressors and not FADELite(32).fold_compressors


@pytest.mark.parametrize(
    "name,options",
    [
        ("fade", {"reassembly": "lean", "fold_compressors": False}),
        ("fade_lite", {"reassembly": "reference"}),
        ("carafe", {"reassembly": "lean"}),
        ("a2u", {"reassembly": "reference"}),
    ],
)
def test_obsolete_options_of_old_configs_are_accepted_with_a_warning(name, options):
    with pytest.warns(FutureWarning, match="obsolete and ignored"):
        up = build_upsampler(name, 8, **options)
    reference = build_upsampler(name, 8)
    assert up.state_dict().keys() == reference.state_dict().keys()  # old checkpoints load unchanged
    with pytest.raises(ValueError, match="fold_compressors"):
        build_upsampler("fade", 8, fold_compressors="yes")
    with pytest.raises(ValueError, match="unknown option 'fold_compressors'"):  # FADE-Lite never had it
        build_upsampler("fade_lite", 8, fold_compressors=False)


@pytest.mark.parametrize("cls", [FADE, FADELite])
def test_kernels_are_softmax_normalised(cls):
    fade = _randomise(cls(6).double())
    en, de = _pair(c=6)
    kernels = fade.kernels(en, de)
    assert kernels.shape == (2, 25, 6, 10)
    assert (kernels >= 0).all()
    torch.testing.assert_close(kernels.sum(1), torch.ones(2, 6, 10, dtype=torch.float64))


@pytest.mark.parametrize("cls", [FADE, FADELite])
def test_fade_forward_equals_the_formula(cls):
    fade = _randomise(cls(6).double())
    en, de = _pair(c=6, h=4, w=3, seed=3)
    gate = torch.sigmoid(F.interpolate(fade.gate(de), scale_factor=2, mode="nearest"))
    logits = semi_shift_logits(en, de, fade.compress_en, fade.compress_de, fade.kernel_conv, 2)
    up = carafe(de, torch.softmax(logits, 1), 5, 2, impl="reference")
    expected = gate * en + (1 - gate) * up
    torch.testing.assert_close(fade(en, de), expected, rtol=0, atol=1e-12)


def _pin(fade, gate_logit):
    """Gate forced to sigmoid(gate_logit); kernels forced one-hot on the centre offset."""
    with torch.no_grad():
        fade.gate.weight.zero_()
        fade.gate.bias.fill_(gate_logit)
        fade.kernel_conv.weight.zero_()
        fade.kernel_conv.bias.zero_()
        fade.kernel_conv.bias[fade.up_kernel_size**2 // 2] = 1e4  # exp(-1e4) underflows: exactly one-hot
    return fade


@pytest.mark.parametrize("cls", [FADE, FADELite])
def test_gate_zero_and_one_hot_kernel_is_nearest_upsampling(cls):
    fade = _pin(_randomise(cls(6).double()), -1e4)
    en, de = _pair(c=6)
    assert torch.equal(fade(en, de), F.interpolate(de, scale_factor=2, mode="nearest"))


@pytest.mark.parametrize("cls", [FADE, FADELite])
def test_gate_one_returns_en(cls):
    fade = _pin(_randomise(cls(6).double()), 1e4)
    en, de = _pair(c=6)
    assert torch.equal(fade(en, de), en)


@pytest.mark.parametrize(
    "make", [lambda: _fade(3, True), lambda: _fade(3, False), lambda: FADELite(3)]
)
@pytest.mark.slow
def test_gradcheck(make):
    fade = _randomise(make().double())
    en, de = _pair(b=2, c=3, h=2, w=3, seed=4)
    assert torch.autograd.gradcheck(fade, (en.requires_grad_(), de.requires_grad_()))
    # Parameters too; fast_mode checks random projections of the Jacobian, a fraction of the evaluations.
    params = tuple(fade.parameters())
    assert torch.autograd.gradcheck(
        lambda *p: torch.func.functional_call(fade, dict(zip(dict(fade.named_parameters()), p)), (en, de)),
        params,
        fast_mode=True,
    )


@pytest.mark.parametrize("cls", [FADE, FADELite])
def test_plain_ops_fade_agrees_in_values_and_gradients(cls):
    # plain_ops() (export's form: unfolded compressors, unfold reassembly) against the default custom ops.
    fade = _randomise(cls(6).double())
    en, de = _pair(c=6, h=5, w=3)
    grad = torch.randn_like(en)
    results = []
    for plain in (False, True):
        e, d = en.clone().requires_grad_(), de.clone().requires_grad_()
        fade.zero_grad()
        with plain_ops() if plain else contextlib.nullcontext():
            out = fade(e, d)
        out.backward(grad)
        results.append([out, e.grad, d.grad] + [p.grad.clone() for p in fade.parameters()])
    for lean, ref in zip(*results):
        torch.testing.assert_close(lean, ref, rtol=0, atol=1e-12)


def test_odd_scale():
    fade = _randomise(FADE(4, scale=3).double())
    en, de = _pair(c=4, h=2, w=3, s=3)
    assert fade(en, de).shape == en.shape
    pinned = _pin(fade, -1e4)
    assert torch.equal(pinned(en, de), F.interpolate(de, scale_factor=3, mode="nearest"))


def test_fade_bfloat16_runs_close_to_float32():
    fade = FADE(8)
    en, de = _pair(dtype=torch.float32)
    ref = fade(en, de)
    out = fade.to(torch.bfloat16)(en.bfloat16(), de.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_fade_inside_torch_compile():
    fade = FADE(4)
    en, de = _pair(c=4, dtype=torch.float32)
    compiled = torch.compile(fade, backend="aot_eager", fullgraph=True)
    e1, d1 = en.clone().requires_grad_(), de.clone().requires_grad_()
    out = compiled(e1, d1)
    out.sum().backward()
    e2, d2 = en.clone().requires_grad_(), de.clone().requires_grad_()
    fade(e2, d2).sum().backward()
    torch.testing.assert_close(out, fade(en, de))
    torch.testing.assert_close(e1.grad, e2.grad)
    torch.testing.assert_close(d1.grad, d2.grad)


@pytest.mark.skipif(
    os.environ.get("MATTING_TEST_INDUCTOR") != "1",
    reason="inductor's C++ build takes ~20 s cold on 2 shared cores; set MATTING_TEST_INDUCTOR=1 to run",
)
@pytest.mark.slow
def test_fade_inside_torch_compile_inductor():
    fade = FADE(4)
    en, de = _pair(c=4, dtype=torch.float32)
    e1 = en.clone().requires_grad_()
    out = torch.compile(fade, fullgraph=True)(e1, de)
    out.sum().backward()
    e2 = en.clone().requires_grad_()
    fade(e2, de).sum().backward()
    torch.testing.assert_close(out, fade(en, de))
    torch.testing.assert_close(e1.grad, e2.grad)


# --- official weights ------------------------------------------------------------------------------------

OFFICIAL_TO_OURS = {
    "gate_generator.conv.weight": "gate.weight",
    "gate_generator.conv.bias": "gate.bias",
    "ker_generator.compressor_en.weight": "compress_en.weight",
    "ker_generator.compressor_en.bias": "compress_en.bias",
    "ker_generator.compressor_de.weight": "compress_de.weight",
    "ker_generator.content_encoder.weight": "kernel_conv.weight",
    "ker_generator.content_encoder.bias": "kernel_conv.bias",
}


@pytest.mark.parametrize("cls", [FADE, FADELite])
def test_official_state_dict_loads_after_renaming(cls):
    source = _randomise(cls(8))
    official = {old: source.state_dict()[new].clone() for old, new in OFFICIAL_TO_OURS.items()}
    target = cls(8)
    target.load_state_dict(convert_official_fade_state_dict(official))  # strict
    en, de = _pair(dtype=torch.float32)
    assert torch.equal(target(en, de), source(en, de))


def test_official_renaming_inside_a_larger_model():
    state = {
        "decoder.layer1.up.gate_generator.conv.weight": torch.zeros(1),
        "decoder.layer1.up.ker_generator.content_encoder.bias": torch.zeros(1),
        "decoder.layer1.dconv.0.weight": torch.zeros(1),
        "my_gate_generator.conv.weight": torch.zeros(1),  # not a whole segment: untouched
    }
    assert list(convert_official_fade_state_dict(state)) == [
        "decoder.layer1.up.gate.weight",
        "decoder.layer1.up.kernel_conv.bias",
        "decoder.layer1.dconv.0.weight",
        "my_gate_generator.conv.weight",
    ]


# --- peers -----------------------------------------------------------------------------------------------


def test_carafe_module_matches_its_definition():
    assert CARAFE(6).content_encoder.weight.std() < 0.002  # mmcv's N(0, 0.001) start
    up = _randomise(CARAFE(6).double())
    en, de = _pair(c=6)
    logits = up.content_encoder(up.channel_compressor(de))  # (B, 25*4, H, W), channel = k*4 + phase
    b, _, h, w = logits.shape
    kernels = logits.view(b, 25, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, 25, 2 * h, 2 * w)
    expected = carafe(de, torch.softmax(kernels, 1), 5, 2, impl="reference")
    torch.testing.assert_close(up(en, de), expected, rtol=0, atol=1e-12)


def test_a2u_matches_a_per_image_construction():
    torch.manual_seed(0)
    up = _randomise(A2U(8, rank=2, norm_groups=4).double())
    en, de = _pair(c=8)
    k = up.encoder_kernel_size
    expected = []
    for i in range(en.shape[0]):
        x = en[i : i + 1]
        u_f = up.filter_u(up.pool_u(x))[0]  # (rank, k, k)
        v_f = up.filter_v(up.pool_v(x))[0]
        proj = up.projection(x.mean((2, 3), keepdim=True)).view(-1, up.rank)
        logits = 0
        for r in range(up.rank):
            u = F.conv2d(x.transpose(0, 1), u_f[r].view(1, 1, k, k), stride=2, padding=2).transpose(0, 1)
            v = F.conv2d(x.transpose(0, 1), v_f[r].view(1, 1, k, k), stride=2, padding=2).transpose(0, 1)
            u = F.leaky_relu(up.norm_u(u), 0.01)
            v = F.leaky_relu(up.norm_v(v), 0.01)
            affinity = (u * v).sum(1, keepdim=True) / math.sqrt(8)
            logits = logits + proj[:, r].view(1, -1, 1, 1) * affinity
        kernels = torch.softmax(torch.sigmoid(F.pixel_shuffle(logits, 2)), 1)
        expected.append(carafe(de[i : i + 1], kernels, 3, 2, impl="reference"))
    torch.testing.assert_close(up(en, de), torch.cat(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,index_channels", [("holistic", 1), ("o2o", 8), ("m2o", 8)])
def test_indexnet_is_index_times_nearest(mode, index_channels):
    up = IndexNetUpsampler(8, mode=mode).double().eval()
    en, de = _pair()
    index = up.index(en)
    assert index.shape == (2, index_channels, 6, 10)
    assert ((index > 0) & (index < 1)).all()
    torch.testing.assert_close(up(en, de), index * F.interpolate(de, scale_factor=2, mode="nearest"))


def test_indexnet_phase_order():
    # Block p produces the index of output phase p = (y % 2) * 2 + (x % 2), as IndexNet's pixel shuffle does.
    up = IndexNetUpsampler(2, mode="o2o", nonlinear=False, context=False).double()
    with torch.no_grad():
        for p, block in enumerate(up.index_blocks):
            block[0].weight.zero_()
            block[0].weight[:, :, 0, 0] = p  # logit p at every pixel
    index = up.index(torch.ones(1, 2, 4, 4, dtype=torch.float64))
    expected = torch.sigmoid(torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)).repeat(2, 2)
    torch.testing.assert_close(index[0, 0], expected)


# --- multiply-adds ---------------------------------------------------------------------------------------


def test_count_macs_convs_and_per_submodule_totals():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 2, 1, groups=2), nn.ReLU()))
    macs = count_macs(model, torch.randn(2, 3, 5, 6))
    assert macs["0"] == 2 * 4 * 5 * 6 * 3 * 9
    assert macs["1"] == macs["1.0"] == 2 * 2 * 5 * 6 * 2
    assert macs["1.1"] == 0
    assert macs["total"] == macs["0"] + macs["1"]


def test_count_macs_transposed_conv_and_linear():
    deconv = nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1)
    assert count_macs(deconv, torch.randn(1, 3, 4, 4))["total"] == 3 * 4 * 4 * 5 * 16
    assert count_macs(nn.Linear(7, 3), torch.randn(4, 7))["total"] == 4 * 3 * 7


def test_custom_ops_report_through_add_macs():
    class Custom(nn.Module):
        def forward(self, x):
            add_macs(123)
            return x

    model = nn.Sequential(Custom(), Custom())
    assert count_macs(model, torch.zeros(1)) == {"total": 246, "0": 123, "1": 123}
    add_macs(5)  # no counter running: a no-op


@pytest.mark.parametrize("fold", [True, False])
def test_fade_macs(fold):
    c, b, h, w = 16, 2, 3, 4
    fade = _fade(c, fold)
    macs = count_macs(fade, *_pair(b=b, c=c, h=h, w=w, dtype=torch.float32))
    hi, lo = b * 4 * h * w, b * h * w
    gate, de_branch = lo * c, lo * (c * 64 + 9 * 64 * 25)
    reassembly = hi * c * 25
    if fold:
        en_branch = hi * 9 * 25 * c + 4 * h * w * 25 * 3
        de_branch = lo * 9 * 25 * c
    else:
        en_branch = hi * (c * 64 + 9 * 64 * 25)
        assert macs["compress_en"] == hi * c * 64
    assert macs["gate"] == gate
    assert macs["total"] == gate + de_branch + en_branch + reassembly
