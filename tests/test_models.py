"""Matting networks: shapes for every encoder x upsampler, the paper's structure, gradients, frozen BN,
pretrained loading (offline, from the hub cache, from a file), summary and parameter counts."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import matting.models.pretrained as pretrained_mod
from matting.errors import MattingError
from matting.losses import MattingLoss
from matting.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenBatchNorm2d,
    InputSizeError,
    MobileNetV2Options,
    ResNet34Options,
    build_model,
    convert_sync_batchnorm,
    count_parameters,
    make_input,
    model_costs,
    predict_alpha,
    summary,
)
from matting.upsamplers import UPSAMPLERS, available_upsamplers

from helpers import random_batch, trained_head

REPO = Path(__file__).resolve().parents[1]

# Odd multiples of the output stride: 3 x 5 at the deepest level.
ODD_SIZE = {"resnet34": (48, 80), "mobilenetv2": (96, 160)}
STRIDE = {"resnet34": 16, "mobilenetv2": 32}

# The numbers of docs/network.md's parameter table (default options, every stage on the named upsampler).
PARAMETERS = {
    ("resnet34", "bilinear"): 8_048_993,  # the official network's 8,049,003 less its head's 10 (see MattingHead)
    ("resnet34", "fade"): 8_173_001,
    ("resnet34", "fade_lite"): 8_076_209,
    ("mobilenetv2", "bilinear"): 2_572_625,
    ("mobilenetv2", "fade"): 2_668_811,
    ("mobilenetv2", "fade_lite"): 2_583_389,
}


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.slow
@pytest.mark.parametrize("upsampler", available_upsamplers())
@pytest.mark.parametrize("encoder", ["resnet34", "mobilenetv2"])
def test_every_encoder_upsampler_pair_on_odd_sizes(encoder, upsampler):
    torch.manual_seed(0)
    model = build_model(encoder, upsampler).eval()
    assert model.output_stride == STRIDE[encoder]
    h, w = ODD_SIZE[encoder]
    with torch.no_grad():
        out = model(torch.randn(1, 4, h, w))
    assert out.shape == (1, 1, h, w) and torch.isfinite(out).all()
    assert [type(s.up) for s in model.decoder.stages] == [UPSAMPLERS[upsampler]] * len(model.decoder.stages)


@pytest.mark.parametrize("encoder", ["resnet34", "mobilenetv2"])
def test_sizes_off_the_stride_raise(encoder):
    model = build_model(encoder, "bilinear").eval()
    s = STRIDE[encoder]
    message = f"input size {3 * s}x{5 * s - 8} is not a multiple of the output stride {s}"
    with pytest.raises(InputSizeError, match=message):
        model(torch.zeros(1, 4, 3 * s, 5 * s - 8))
    with pytest.raises(ValueError, match="pad it to"):  # InputSizeError is a ValueError (and a MattingError)
        model(torch.zeros(1, 4, s + 1, s))
    with pytest.raises(MattingError, match=r"\(B, 4, H, W\)"):
        model(torch.zeros(1, 3, s, s))


# ----------------------------------------------------------------------------------- the paper's network


def test_resnet34_is_the_paper_network():
    model = build_model("resnet34", "fade")
    enc = model.encoder
    assert (enc.conv1.in_channels, enc.conv1.out_channels, enc.conv1.kernel_size, enc.conv1.stride) == (
        4, 64, (7, 7), (1, 1)
    )
    assert [len(enc.layer1), len(enc.layer2), len(enc.layer3)] == [3, 4, 4]  # the official [3, 4, 4, 2]
    full = build_model("resnet34", "bilinear", layer3_blocks=6)
    assert len(full.encoder.layer3) == 6
    assert count_parameters(full) - PARAMETERS["resnet34", "bilinear"] == 2 * 1_180_672
    for bad in (0, 7, 2.5):
        with pytest.raises(MattingError, match="layer3_blocks"):
            build_model("resnet34", "bilinear", layer3_blocks=bad)
    assert enc.layer2[0].conv1.stride == (1, 1) and enc.layer3[0].conv1.stride == (1, 1)
    assert not hasattr(enc, "layer4") and not hasattr(enc, "fc")
    # Decoder table of docs/network.md: (FADE width, skip conv in -> out, convs) per stage.
    table = [(256, 128, (256, 128, 128)), (128, 64, (128, 64, 64)), (64, 64, (64, 64, 64)), (64, 4, (64, 32, 32))]
    for stage, (c, skip_in, (cin, cmid, cout)) in zip(model.decoder.stages, table):
        assert stage.up.channels == c and stage.en_proj is None
        skip = stage.skip[0]
        assert (skip.in_channels, skip.out_channels, skip.kernel_size) == (skip_in, c, (3, 3))
        assert isinstance(stage.skip[1], nn.BatchNorm2d)
        b0, b1 = stage.blocks
        assert (b0.conv1[0].in_channels, b0.conv1[0].out_channels, b1.conv2[0].out_channels) == (cin, cmid, cout)
    assert (model.head[0].in_channels, model.head[0].out_channels, model.head[0].kernel_size) == (32, 1, (3, 3))
    assert model.context.project[0].out_channels == 256
    assert [b[0][0].dilation for b in model.context.branches3x3] == [(6, 6), (12, 12), (18, 18)]
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01} and not any(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.slow
def test_resnet34_fade_gets_the_pre_downsampling_encoder_features():
    model = build_model("resnet34", "fade").eval()
    seen, pre = [], {}
    for i, stage in enumerate(model.decoder.stages):
        stage.up.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.encoder.layer2[0].register_forward_hook(lambda m, a, out: pre.__setitem__("l10", out[1]))
    model.encoder.layer3[0].register_forward_hook(lambda m, a, out: pre.__setitem__("l20", out[1]))
    model.encoder.bn1.register_forward_hook(lambda m, a, out: pre.__setitem__("l0", out))
    with torch.no_grad():
        model(torch.randn(1, 4, 64, 48))
    assert [tuple(e.shape) for e in seen] == [(1, 256, 8, 6), (1, 128, 16, 12), (1, 64, 32, 24), (1, 64, 64, 48)]
    assert seen[0] is pre["l20"] and seen[1] is pre["l10"]  # the same tensors, before max-pooling
    assert seen[3] is pre["l0"]  # full-resolution stem (activated in place)
    torch.testing.assert_close(seen[2], torch.nn.functional.max_pool2d(pre["l0"], 2))


@pytest.mark.slow
def test_mobilenetv2_layout_and_projection_when_widths_differ():
    model = build_model("mobilenetv2", "fade")
    assert [s.up.channels for s in model.decoder.stages] == [96, 32, 24, 16, 16]
    assert all(s.en_proj is None for s in model.decoder.stages)  # default widths follow the encoder
    assert model.encoder.features[0][0].in_channels == 4 and len(model.encoder.features) == 18
    custom = build_model("mobilenetv2", "fade", decoder_channels=[48, 32, 24, 16, 16], width_mult=0.5)
    assert custom.decoder.stages[1].en_proj is not None  # de 48 vs en 16 at /8: en is projected to 48
    trained_head(custom)
    out = custom(torch.randn(2, 4, 64, 96))
    out.mean().backward()
    assert custom.decoder.stages[1].en_proj[0].weight.grad.abs().sum() > 0
    # Upsamplers that ignore the encoder get no projection (it would be a dead branch).
    plain = build_model("mobilenetv2", "bilinear", decoder_channels=[48, 32, 24, 16, 16])
    assert all(s.en_proj is None for s in plain.decoder.stages)


# ------------------------------------------------------------------------------------ training behaviour


@pytest.mark.parametrize(
    "encoder,upsampler", [("resnet34", "fade"), ("mobilenetv2", "fade"), ("mobilenetv2", "bilinear")]
)
@pytest.mark.slow
def test_gradients_reach_every_parameter(encoder, upsampler):
    torch.manual_seed(0)
    model = trained_head(build_model(encoder, upsampler).train())
    h, w = ODD_SIZE[encoder]
    batch = random_batch(2, h, w)
    total, _ = MattingLoss({"alpha_l1": 1.0, "composition": 1.0})(
        model(make_input(batch["image"], batch["trimap"])), batch
    )
    total.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


@pytest.mark.slow
def test_head_starts_at_zero_then_passes_gradients_on():
    torch.manual_seed(0)
    model = build_model("mobilenetv2", "bilinear", width_mult=0.5).train()
    batch = random_batch(2, 64, 64, seed=1)
    x = make_input(batch["image"], batch["trimap"])
    assert torch.count_nonzero(model(x)) == 0  # the untrained network predicts alpha = 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stem = model.encoder.stem[0].weight
    for step in range(2):
        opt.zero_grad()
        MattingLoss()(model(x), batch)[0].backward()
        if step == 0:  # only the head learns at the first step ...
            assert model.head[0].weight.grad.abs().sum() > 0 and stem.grad.abs().sum() == 0
        opt.step()
    assert stem.grad.abs().sum() > 0  # ... and from the second on the whole network does


@pytest.mark.slow
def test_one_step_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model("mobilenetv2", "fade").train()
    batch = random_batch(2, 64, 64, seed=1)
    x = make_input(batch["image"], batch["trimap"])
    criterion = MattingLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout mask both times
        return criterion(model(x), batch)[0]

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()


@pytest.mark.slow
def test_aspp_options():
    model = build_model("resnet34", "bilinear", aspp_dilations=[1, 2, 3], aspp_pooling=False)
    assert [b[0][0].dilation for b in model.context.branches3x3] == [(1, 1), (2, 2), (3, 3)]
    assert not hasattr(model.context, "pool_conv")
    assert model.context.project[0].in_channels == 4 * 256  # 1x1 + three dilated branches, no pooling
    assert model(torch.randn(1, 4, 32, 48)).shape == (1, 1, 32, 48)
    default = build_model("resnet34", "bilinear")
    params = count_parameters(default) - count_parameters(model)
    assert params == 256 * 256 + 2 * 256 + 256 * 256  # the pooling conv and BN, and the wider projection
    with pytest.raises(MattingError, match="aspp_dilations must be a list of 3"):
        build_model("resnet34", "bilinear", aspp_dilations=[1, 2])
    with pytest.raises(MattingError, match="aspp_pooling must be true or false"):
        build_model("resnet34", "bilinear", aspp_pooling="no")


@pytest.mark.slow
def test_batch_of_one_trains():
    model = build_model("mobilenetv2", "bilinear").train()
    model(torch.randn(1, 4, 64, 64)).mean().backward()  # ASPP's pooling branch must not need B > 1


@pytest.mark.slow
def test_predict_alpha_clamps():
    model = trained_head(build_model("mobilenetv2", "bilinear")).eval()
    with torch.no_grad():
        model.head[0].weight.mul_(100.0)  # push the raw output far outside [0, 1], both ways
    x = torch.randn(1, 4, 64, 64)
    raw = model(x)
    alpha = predict_alpha(model, x)
    assert raw.min() < 0 and raw.max() > 1
    assert alpha.min() >= 0 and alpha.max() <= 1 and not alpha.requires_grad
    torch.testing.assert_close(alpha, raw.detach().clamp(0, 1))


def test_parameter_groups_partition_the_trainable_parameters():
    model = build_model("mobilenetv2", "fade", freeze_bn=True)
    groups = model.parameter_groups()
    enc, dec = {id(p) for p in groups["encoder"]}, {id(p) for p in groups["decoder"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert enc.isdisjoint(dec) and enc | dec == trainable
    assert enc == {id(p) for p in model.encoder.features.parameters() if p.requires_grad}
    for part in (model.encoder.stem, model.context, model.decoder.stages[4].up, model.head):
        assert {id(p) for p in part.parameters()} <= dec


# --------------------------------------------------------------------------------------- batch norm


def _encoder_bn_stats(model):
    return {n: b.clone() for n, b in model.encoder.named_buffers() if "running" in n}


@pytest.mark.slow
def test_frozen_bn_stays_frozen_across_train_calls():
    torch.manual_seed(0)
    model = build_model("resnet34", "bilinear", freeze_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.encoder.modules())
    assert all(not p.requires_grad for m in model.encoder.modules() if isinstance(m, FrozenBatchNorm2d)
               for p in m.parameters())
    stats = _encoder_bn_stats(model)
    decoder_bn = model.decoder.stages[0].skip[1]
    decoder_mean = decoder_bn.running_mean.clone()
    x = torch.randn(2, 4, 32, 32)
    for _ in range(2):
        model.train()  # the anchors' freeze (bn.eval() once) is undone here
        model(x)
        after = _encoder_bn_stats(model)
        assert all(torch.equal(stats[n], after[n]) for n in stats)
    assert not torch.equal(decoder_mean, decoder_bn.running_mean)  # the decoder's BN still trains
    # Without freezing, the same forward does move the encoder statistics.
    plain = build_model("resnet34", "bilinear").train()
    before = _encoder_bn_stats(plain)
    plain(x)
    assert not torch.equal(before["bn1.running_mean"], _encoder_bn_stats(plain)["bn1.running_mean"])


@pytest.mark.slow
def test_frozen_bn_equals_eval_bn_and_checkpoints_interchange():
    torch.manual_seed(0)
    plain = build_model("mobilenetv2", "bilinear")
    plain.train()(torch.randn(2, 4, 64, 64))  # non-trivial running statistics
    frozen = build_model("mobilenetv2", "bilinear", freeze_bn=True)
    frozen.load_state_dict(plain.state_dict())  # strict: same keys, num_batches_tracked included
    plain.load_state_dict(frozen.state_dict())
    x = torch.randn(1, 4, 64, 64)
    plain.eval()
    frozen.train()
    frozen.decoder.eval()
    frozen.context.eval()
    frozen.head.eval()
    frozen.encoder.stem.eval()
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), plain(x))


def test_sync_batchnorm_conversion_keeps_frozen_layers():
    model = build_model("mobilenetv2", "fade", freeze_bn=True)
    n_frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model = convert_sync_batchnorm(model)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == n_frozen > 0
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == n_bn > 0
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.encoder.features.modules())


# --------------------------------------------------------------------------------------------- input


def test_make_input_encoding():
    image = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 5).clone()
    image[1] += torch.tensor(IMAGENET_STD).view(3, 1, 1)
    trimap = torch.tensor([0, 128, 255], dtype=torch.uint8)[torch.arange(20) % 3].view(1, 1, 4, 5).repeat(2, 1, 1, 1)
    x = make_input(image, trimap)
    assert x.shape == (2, 4, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, :3], torch.zeros(3, 4, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[1, :3], torch.ones(3, 4, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(x[:, 3].unique(), torch.tensor([0.0, 128 / 255, 1.0]))
    with pytest.raises(ValueError, match="uint8"):
        make_input(image, trimap.float())
    with pytest.raises(ValueError, match="differ in size"):
        make_input(image, trimap[..., :4])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_make_input_is_scriptable():
    scripted = torch.jit.script(make_input)
    image, trimap = torch.rand(1, 3, 6, 7), torch.randint(0, 256, (1, 1, 6, 7), dtype=torch.uint8)
    torch.testing.assert_close(scripted(image, trimap), make_input(image, trimap), rtol=0, atol=0)


# ----------------------------------------------------------------------------------- builder errors


def test_build_model_errors_list_the_valid_choices():
    with pytest.raises(MattingError, match="unknown encoder 'resnet50'; known encoders: resnet34, mobilenetv2"):
        build_model("resnet50")
    with pytest.raises(MattingError, match="unknown upsampler 'bicubic'.*bilinear"):
        build_model("resnet34", "bicubic")
    with pytest.raises(MattingError, match="unknown option 'width_mult' for encoder 'resnet34'; options: context"):
        build_model("resnet34", width_mult=0.5)
    with pytest.raises(MattingError, match="decoder_channels must be a list of 5"):
        build_model("mobilenetv2", decoder_channels=[16, 16])
    with pytest.raises(MattingError, match="freeze_bn"):
        build_model("mobilenetv2", freeze_bn="all")
    with pytest.raises(MattingError):
        build_model("mobilenetv2", "fade", upsampler_options={"no_such_option": 1})
    with pytest.raises(MattingError, match="width_mult 1.0"):
        build_model("mobilenetv2", pretrained="imagenet", width_mult=0.5)
    # Typed options, as the config's model.options section becomes when it is loaded.
    model = build_model("mobilenetv2", "bilinear", options=MobileNetV2Options(width_mult=0.5, stem_channels=8))
    assert model.encoder.stem[0].out_channels == 8
    with pytest.raises(MattingError, match="ResNet34Options given for encoder 'mobilenetv2'"):
        build_model("mobilenetv2", options=ResNet34Options())
    with pytest.raises(MattingError, match="not both"):
        build_model("mobilenetv2", options=MobileNetV2Options(), width_mult=0.5)
    with pytest.raises(MattingError, match="options= takes an encoder's options object"):
        build_model("mobilenetv2", options={"width_mult": 0.5})


# --------------------------------------------------------------------------------------- pretrained


@pytest.fixture
def hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_imagenet_from_the_hub_cache(hub_dir, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("the cached file must be used")

    monkeypatch.setattr(pretrained_mod, "_download", no_download)
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v2().state_dict()
    path = pretrained_mod.imagenet_cache_path("mobilenetv2")
    assert path.name == "mobilenet_v2-b0353104.pth" and path.parent == hub_dir / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(reference, path)
    model = build_model("mobilenetv2", "fade", pretrained="imagenet", freeze_bn=True)
    own = model.encoder.state_dict()
    w = own["features.0.0.weight"]
    assert w.shape == (32, 4, 3, 3)
    torch.testing.assert_close(w[:, :3], reference["features.0.0.weight"], rtol=0, atol=0)
    assert w[:, 3].abs().sum() == 0  # the trimap channel starts at zero
    for key in ("features.17.conv.2.weight", "features.9.conv.1.1.running_var", "features.3.conv.0.1.bias"):
        torch.testing.assert_close(own[key], reference[key], rtol=0, atol=0)


def test_imagenet_offline_without_cache_is_a_clear_error(hub_dir, monkeypatch):
    def offline(url, dst, timeout):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(pretrained_mod, "_download", offline)
    with pytest.raises(MattingError) as info:
        build_model("resnet34", "fade", pretrained="imagenet")
    message = str(info.value)
    assert "\n" not in message and "offline" in message and "resnet34-b627a593.pth" in message
    assert "local .pth file" in message


def test_download_gives_up_on_a_hanging_name_lookup(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(30))
    start = time.monotonic()
    with pytest.raises(OSError, match="cannot resolve download.pytorch.org"):
        pretrained_mod._download("https://download.pytorch.org/models/x-0123abcd.pth", tmp_path / "x.pth", 0.2)
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_local_weights_file(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.resnet34().state_dict()
    wrapped = tmp_path / "resnet34_wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.items()}}, wrapped)
    model = build_model("resnet34", "bilinear", pretrained=str(wrapped))
    own = model.encoder.state_dict()
    torch.testing.assert_close(own["conv1.weight"][:, :3], reference["conv1.weight"], rtol=0, atol=0)
    assert own["conv1.weight"][:, 3].abs().sum() == 0
    for key in ("layer2.0.conv1.weight", "layer2.0.downsample.0.weight", "layer3.3.bn2.running_mean"):
        torch.testing.assert_close(own[key], reference[key], rtol=0, atol=0)
    assert "layer3.4.conv1.weight" not in own  # the official network keeps 4 of layer3's 6 blocks
    full = build_model("resnet34", "bilinear", pretrained=str(wrapped), layer3_blocks=6).encoder.state_dict()
    torch.testing.assert_close(full["layer3.5.bn2.running_mean"], reference["layer3.5.bn2.running_mean"])

    missing = tmp_path / "nope.pth"
    with pytest.raises(MattingError, match=f"pretrained weights file {missing} does not exist"):
        build_model("resnet34", pretrained=missing)
    with pytest.raises(MattingError, match=f"{wrapped}: not mobilenetv2 weights"):
        build_model("mobilenetv2", pretrained=wrapped)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(MattingError, match=f"pretrained weights file {garbage} cannot be read"):
        build_model("resnet34", pretrained=garbage)


# -------------------------------------------------------------------------------- summary and counts


def test_the_docs_parameter_table_carries_these_counts():
    table = (REPO / "docs" / "network.md").read_text()
    for (encoder, upsampler), n in PARAMETERS.items():
        assert f"| {encoder} | {upsampler} | {n / 1e6:.3f}M |" in table, (encoder, upsampler)


@pytest.mark.slow
@pytest.mark.parametrize("encoder,upsampler", sorted(PARAMETERS))
def test_parameter_counts_are_the_documented_ones(encoder, upsampler):
    model = build_model(encoder, upsampler)
    assert count_parameters(model) == PARAMETERS[encoder, upsampler]
    # Freezing BN turns parameters into frozen ones; the count does not change.
    frozen = build_model(encoder, upsampler, freeze_bn=True)
    assert count_parameters(frozen) == PARAMETERS[encoder, upsampler]


@pytest.mark.slow
def test_summary_parts_add_up():
    model = build_model("mobilenetv2", "fade")
    rows = model_costs(model, (1, 4, 64, 96))
    parts, total = rows[:-1], rows[-1]
    assert [r.name.split(":")[0] for r in parts] == [
        "encoder", "context", "decoder convs", *[f"stages[{i}].up" for i in range(5)], "head"
    ]
    assert sum(r.params for r in parts) == total.params == sum(p.numel() for p in model.parameters())
    assert sum(r.macs for r in parts) == total.macs > 0
    assert all(r.macs > 0 for r in parts)
    bilinear = model_costs(build_model("mobilenetv2", "bilinear"), (1, 4, 64, 96))
    assert [r.macs for r in bilinear if r.name.startswith("stages")] == [0] * 5
    table = summary(model, (1, 4, 64, 96))
    assert table.splitlines()[0] == "| part | parameters | MACs at 64x96 |"
    assert "| stages[4].up: FADE, C=16, /2->/1 |" in table and "**total**" in table
    assert model.training  # the mode is restored


def test_network_doc_carries_the_current_encoder_options():
    """docs/network.md's option table is the dataclasses' output, so it cannot drift from the code."""
    from pathlib import Path

    from matting.models.options import options_markdown

    assert options_markdown() in (Path(__file__).resolve().parents[1] / "docs" / "network.md").read_text()
