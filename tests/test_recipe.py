"""The official recipe, one test per fact (docs/recipe.md): the paper configs' settings, the learning rate of
every parameter against the official name filter, BN modes, SyncBN conversion, the official head and
initialisation, ASPP's pooling BN, and the test-set curve in training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from matting.config import load_config
from matting.engine.checkpoint import load_checkpoint
from matting.engine.logger import TensorBoardWriter
from matting.engine.schedule import assign_lr_multipliers, lr_param_groups, parse_lr_rules
from matting.engine.trainer import Trainer
from matting.errors import MattingError
from matting.models import (
    ASPP,
    FrozenBatchNorm2d,
    OfficialHead,
    build_model,
    convert_sync_batchnorm,
    count_parameters,
    model_from_config,
    official_module_names,
)
from matting.models.layers import OFFICIAL_INIT_GAIN

from test_train import tiny_config, tiny_data  # noqa: F401 - tiny_data is a fixture

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# A2U matting scripts/trainval.py: a parameter whose name contains one of these words trains at
# TRAIN.initial_lr (0.01), every other at initial_lr / TRAIN.mult (0.01 / 100).
OFFICIAL_WORDS = ("dconv", "pred", "short", "bconv", "bilinear")


def official_lr(official_name: str) -> float:
    return 0.01 if any(word in official_name for word in OFFICIAL_WORDS) else 0.01 / 100


def config_model(name: str, overrides: tuple[str, ...] = ()):
    cfg = load_config(CONFIGS / name, list(overrides))
    return cfg, model_from_config(dataclasses.replace(cfg.model, pretrained=None))


def lr_by_name(model: nn.Module, cfg) -> dict[str, float]:
    lr_of = {id(p): g["lr"] for g in lr_param_groups(model, cfg.train) for p in g["params"]}
    return {n: lr_of[id(p)] for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------- configs


def test_paper_config_is_the_official_recipe():
    cfg = load_config(CONFIGS / "comp1k_fade.yaml")
    m, d, t = cfg.model, cfg.data, cfg.train
    assert (m.encoder, m.upsampler, m.pretrained) == ("resnet34", "fade", "imagenet")
    assert (m.freeze_bn, m.head, m.init, t.sync_bn) == (False, "official", "official", True)
    assert (d.preset, d.val_count) == ("a2u", 0)  # all 431 foregrounds, A2U's data pipeline
    assert cfg.seed == 6 and cfg.loss.weights == {"alpha_charbonnier": 0.5, "composition": 0.5}
    assert (t.iterations, t.batch_size, t.optimizer, t.betas, t.weight_decay) == (180000, 16, "adam", [0.9, 0.999], 0)
    assert (t.lr, t.schedule, t.milestones, t.gamma, t.warmup_iters) == (0.01, "step", [120000, 156000], 0.1, 0)
    assert (t.grad_clip, t.amp, t.test_every) == (None, "none", None)


@pytest.mark.parametrize("name", ["fade_lite", "bilinear", "nearest", "carafe", "deconv", "pixelshuffle",
                                  "indexnet", "a2u"])
def test_peer_configs_change_only_the_upsampler(name):
    fade, peer = load_config(CONFIGS / "comp1k_fade.yaml"), load_config(CONFIGS / f"comp1k_{name}.yaml")
    assert peer.model == dataclasses.replace(fade.model, upsampler=name)
    assert peer.data == fade.data and peer.loss == fade.loss
    assert dataclasses.replace(peer.train, lr_groups=fade.train.lr_groups) == fade.train


def test_departure_configs_change_only_what_they_say():
    fade = load_config(CONFIGS / "comp1k_fade.yaml")
    frozen = load_config(CONFIGS / "comp1k_fade_frozenbn.yaml")
    assert frozen.model == dataclasses.replace(fade.model, freeze_bn=True)
    assert (frozen.data, frozen.train) == (fade.data, fade.train)
    val = load_config(CONFIGS / "comp1k_fade_val.yaml")
    assert val.data == dataclasses.replace(fade.data, val_count=20, val_bgs_per_fg=2, val_max_side=1024)
    assert val.train == dataclasses.replace(fade.train, val_every=6000, best_metric="sad")
    assert val.model == fade.model


# ------------------------------------------------------------------------------------------- learning rates


@pytest.mark.parametrize("upsampler", ["fade", "fade_lite", "bilinear"])
def test_lr_groups_reproduce_the_official_name_filter(upsampler):
    """Every parameter's learning rate equals the one the official optimiser gives its official name."""
    cfg, model = config_model(f"comp1k_{upsampler}.yaml")
    ours_to_official = {ours: official for official, ours in official_module_names(upsampler).items()}
    lrs = lr_by_name(model, cfg)
    assert len(lrs) == len(list(model.parameters()))  # nothing frozen, nothing left out
    for name, lr in lrs.items():
        module, _, tensor = name.rpartition(".")
        assert lr == pytest.approx(official_lr(f"{ours_to_official[module]}.{tensor}")), name
    ups = [lr for n, lr in lrs.items() if ".up." in n]
    assert ups == [pytest.approx(1e-4)] * len(ups) and (upsampler == "bilinear") == (not ups)  # FADE at 1e-4
    assert lrs["head.3.weight"] == pytest.approx(1e-2) and lrs["encoder.bn1.weight"] == pytest.approx(1e-4)


@pytest.mark.slow
def test_a2u_trains_at_the_decoder_rate_and_other_upsamplers_at_the_encoder_rate():
    cfg, model = config_model("comp1k_a2u.yaml")  # A2U's official modules are named bilinear*: 1e-2
    assert {round(lr, 12) for n, lr in lr_by_name(model, cfg).items() if ".up." in n} == {1e-2}
    for name in ("carafe", "indexnet", "pixelshuffle", "deconv"):  # at decoder_layerN.up, like FADE
        cfg, model = config_model(f"comp1k_{name}.yaml")
        assert {round(lr, 12) for n, lr in lr_by_name(model, cfg).items() if ".up." in n} == {1e-4}, name


def test_lr_rules_first_match_wins_and_cover_everything():
    model = build_model("mobilenetv2", "fade", width_mult=0.25, stem_channels=4, context_channels=8,
                        aspp_channels=8, decoder_channels=[8, 8, 8, 8, 8])
    rules = parse_lr_rules([["decoder.stages.4.up.gate.*", 3], ["decoder.stages.*.up", 0.5], ["encoder.stem", 2],
                            ["*", 1]])
    got = {name: (mult, pattern) for name, _, mult, pattern in assign_lr_multipliers(model, rules)}
    assert got["decoder.stages.4.up.gate.weight"] == (3.0, "decoder.stages.4.up.gate.*")
    assert got["decoder.stages.0.up.kernel_conv.bias"] == (0.5, "decoder.stages.*.up")
    assert got["encoder.stem.0.weight"] == (2.0, "encoder.stem")  # a module path takes everything below it
    assert got["encoder.features.0.0.weight"] == (1.0, "*") and len(got) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="no rule matches parameter encoder"):
        assign_lr_multipliers(model, parse_lr_rules([["decoder", 1], ["context", 1], ["head", 1]]))
    with pytest.raises(ValueError, match="rule 'decoder.stages.*.up' takes no parameter"):
        assign_lr_multipliers(model, parse_lr_rules([["*", 1], ["decoder.stages.*.up", 0.01]]))
    for bad, message in (([["encoder", -1]], "lr multiplier >= 0"), ([["encoder"]], "each rule"),
                         ([["a", 1], ["a", 2]], "given twice"), ([], "non-empty list")):
        with pytest.raises(ValueError, match=message):
            parse_lr_rules(bad)


def test_lr_group_errors_name_the_file_at_load(tmp_path):
    base = CONFIGS / "comp1k_fade.yaml"
    cases = [
        ("model: {upsampler: bilinear}\n", "for the resnet34+bilinear network: rule 'decoder.stages.*.up' takes"),
        ("train: {lr_groups: [[encoder, 0.01], [decodr, 1], [context, 1], [head, 1], [decoder, 1]]}\n",
         "rule 'decodr' takes no parameter"),
        ("train: {lr_groups: [[encoder, 0.01], [decoder, 1]]}\n", "no rule matches parameter context.branch1x1"),
        ("train: {lr_groups: both}\n", "'train.lr_groups' must be encoder_decoder or a list of rules"),
    ]
    for i, (text, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(f"base: {base}\n{text}")
        with pytest.raises(MattingError) as err:
            load_config(path)
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_encoder_decoder_is_the_imagenet_split():
    cfg, model = config_model("comp1k_mobilenetv2_fade.yaml")
    groups = lr_param_groups(model, cfg.train)
    assert [(g["name"], g["lr"]) for g in groups] == [("encoder", pytest.approx(1e-4)), ("decoder", 0.01)]
    encoder = {id(p) for p in model.encoder.features.parameters()}
    assert {id(p) for p in groups[0]["params"]} == encoder


# ------------------------------------------------------------------------------------------------ batch norm


@pytest.mark.slow
def test_bn_trains_in_the_paper_network_and_stays_frozen_in_the_departure():
    _, model = config_model("comp1k_fade.yaml")
    model.eval()
    model.train()  # what every training step calls
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.training and m.weight.requires_grad for m in bns)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    before = model.encoder.bn1.running_mean.clone()
    model(torch.randn(2, 4, 32, 32))
    assert not torch.equal(before, model.encoder.bn1.running_mean)  # batch statistics, updated

    _, frozen = config_model("comp1k_fade_frozenbn.yaml")
    frozen.train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.encoder.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.encoder.modules()) == 25  # 1 + 3*2 + (4*2 + 1) * 2
    before = frozen.encoder.bn1.running_mean.clone()
    frozen(torch.randn(2, 4, 32, 32))
    assert torch.equal(before, frozen.encoder.bn1.running_mean)
    assert frozen.head[1].training and isinstance(frozen.head[1], nn.BatchNorm2d)


@pytest.mark.slow
def test_sync_batchnorm_converts_every_bn_of_the_paper_network():
    _, model = config_model("comp1k_fade.yaml")
    model.eval()
    x = torch.randn(1, 4, 32, 48)
    with torch.no_grad():
        expected = model(x)
    keys = list(model.state_dict())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    synced = convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn == 58  # as InPlaceABNSync layers
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert list(synced.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(synced.eval()(x), expected, rtol=0, atol=0)


def test_aspp_pooling_bn_normalises_the_1x1_map_as_the_official_code():
    """Its running variance gets the unbiased factor of B values (B / (B - 1)), not of B*H*W broadcast copies."""
    torch.manual_seed(0)
    aspp = ASPP(8, 8, dilations=(1, 2, 3), inner_channels=4, dropout=0.0).train()
    x = torch.randn(4, 8, 6, 10)
    pooled = aspp.pool_conv(x.mean(dim=(2, 3), keepdim=True)).detach().flatten(1)  # (4, 4)
    aspp(x)
    torch.testing.assert_close(aspp.pool_bn.running_var, 0.9 + 0.1 * pooled.var(dim=0, unbiased=True))
    aspp(x[:1]).sum().backward()  # a batch of one still trains (normalised after broadcasting)


# ------------------------------------------------------------------------------------------ head and init


def test_official_head_layers():
    model = build_model("resnet34", "bilinear", head="official")
    head = model.head
    assert isinstance(head, OfficialHead) and len(head) == 4
    conv1, bn, act, conv2 = head
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.padding, conv1.bias) == (
        32, 1, (3, 3), (1, 1), None)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 1 and bn.eps == 1e-5 and bn.momentum == 0.1
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.padding, conv2.bias) == (
        1, 1, (3, 3), (1, 1), None)
    assert count_parameters(model) == 8_049_003  # the official resnet34 + bilinear network, parameter for parameter
    assert head(torch.randn(2, 32, 8, 8)).shape == (2, 1, 8, 8)
    assert build_model("resnet34", "bilinear").head[0].bias is not None  # one_conv stays the default


def xavier_std(conv: nn.Conv2d) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    return OFFICIAL_INIT_GAIN * (2.0 / (fan_in + fan_out)) ** 0.5


@pytest.mark.slow
def test_official_init_statistics(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet34().state_dict()
    torch.save(reference, tmp_path / "imagenet.pth")
    model = build_model("resnet34", "fade", init="official", head="official", pretrained=tmp_path / "imagenet.pth")
    assert OFFICIAL_INIT_GAIN == pytest.approx((2 / (1 + 0.01**2)) ** 0.5)
    stage = model.decoder.stages[0]
    for conv, tol in ((stage.blocks[0].conv1[0], 0.01), (model.context.project[0], 0.01),
                      (stage.up.compress_en, 0.03), (stage.up.kernel_conv, 0.03), (model.head[0], 0.2)):
        w = conv.weight.detach()
        assert w.std().item() == pytest.approx(xavier_std(conv), rel=tol), conv
        assert abs(w.mean().item()) < 4 * xavier_std(conv) / w.numel() ** 0.5  # zero mean, within 4 sigma
    big = stage.blocks[0].conv1[0].weight.detach()  # normal, not uniform: ~4.55% beyond 2 std
    assert (big.abs() > 2 * xavier_std(stage.blocks[0].conv1[0])).float().mean().item() == pytest.approx(0.0455,
                                                                                                        abs=0.002)
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert len(biases) == 4 * 3 and all(torch.count_nonzero(b) == 0 for b in biases)  # FADE's gate, en, kernel
    outside = [m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not n.startswith("encoder")]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in outside)
    # Then the ImageNet encoder over it, the trimap channel of the stem at zero.
    own = model.encoder.state_dict()
    torch.testing.assert_close(own["conv1.weight"][:, :3], reference["conv1.weight"], rtol=0, atol=0)
    assert torch.count_nonzero(own["conv1.weight"][:, 3]) == 0
    torch.testing.assert_close(own["layer3.3.bn2.running_var"], reference["layer3.3.bn2.running_var"], rtol=0, atol=0)

    plain = build_model("resnet34", "fade")  # per_module: Kaiming-normal decoder, FADE's Xavier-uniform
    conv = plain.decoder.stages[0].blocks[0].conv1[0]
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.01)
    assert plain.decoder.stages[0].up.compress_en.weight.std().item() == pytest.approx(
        xavier_std(plain.decoder.stages[0].up.compress_en) / OFFICIAL_INIT_GAIN, rel=0.03)


# ------------------------------------------------------------------------------------------------- trainer


@pytest.mark.slow
def test_test_set_curve_is_labelled_and_never_selects(tmp_path, tiny_data, monkeypatch):  # noqa: F811 - fixture
    rules = "[[decoder.stages.*.up, 0.01], [encoder, 0.01], [context, 1], [decoder, 1], [head, 1]]"
    cfg = load_config(tiny_config(tmp_path, tiny_data, iterations=2),
                      ["data.val_count=0", "train.test_every=1", f"train.lr_groups={rules}", "model.head=official",
                       "model.init=official"])
    trainer = Trainer(cfg, progress=False)
    assert [(g["name"], g["lr"]) for g in trainer.optimizer.param_groups] == [
        ("x0.01", pytest.approx(1e-5)), ("x1", pytest.approx(1e-3))]
    written = []
    real = TensorBoardWriter.scalars  # the run's writer is created when fit() starts: record through the class
    monkeypatch.setattr(TensorBoardWriter, "scalars", lambda self, values, step: (
        written.append((step, sorted(values))), real(self, values, step)))
    trainer.fit()
    tests = [(step, keys) for step, keys in written if any(k.startswith("test_set/") for k in keys)]
    assert [step for step, _ in tests] == [1, 2]
    assert tests[0][1] == ["test_set/conn", "test_set/grad", "test_set/mse", "test_set/sad"]
    log = (Path(cfg.output_dir) / "train.log").read_text()
    assert log.count("TEST SET") == 2 and "never used to pick best.pth" in log
    assert "learning rates (train.lr_groups): x0.01 1e-05" in log
    assert not (Path(cfg.output_dir) / "checkpoints" / "best.pth").exists()
    with pytest.raises(MattingError, match="test folder not found"):
        Trainer(load_config(tiny_config(tmp_path / "b", tiny_data), ["train.test_every=1", "data.test_dir=nope"]))


@pytest.mark.slow
def test_checkpoints_from_before_head_and_init_resume(tmp_path, tiny_data):  # noqa: F811 - fixture
    cfg = load_config(tiny_config(tmp_path, tiny_data, iterations=2), ["data.val_count=0"])
    Trainer(cfg, progress=False).fit(until=1)
    latest = Path(cfg.output_dir) / "checkpoints" / "latest.pth"
    ckpt = load_checkpoint(latest)
    del ckpt["config"]["model"]["head"], ckpt["config"]["model"]["init"]  # as written before they existed
    torch.save(ckpt, latest)
    Trainer(cfg, resume=latest, progress=False).fit()
    with pytest.raises(MattingError, match="differs from this config"):
        Trainer(load_config(tiny_config(tmp_path, tiny_data), ["model.head=official"]), resume=latest)
