"""Official A2U/FADE matting checkpoints: load_official_a2u, matting.convert_official, and the converted
checkpoint through evaluation, inference and export; inplace_abn's ImageNet ResNet-34 as pretrained weights.

The official-format files here are made from this project's own networks with the inverse of the name table
(official_module_names) and of the InPlace-ABN scale (w_official = +-(w - 1e-5)); that the table and the scale
match the authors' network is checked outside the test suite against their code (docs/network.md).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from matting.config import ModelConfig
from matting.convert_official import main as convert_main
from matting.engine.checkpoint import load_checkpoint, model_from_checkpoint
from matting.engine.predictor import Predictor
from matting.errors import MattingError
from matting.models import build_model, load_official_a2u, official_model_config, official_module_names
from matting.models.official import INPLACE_ABN_EPS

from test_evaluate import make_test_folder


def random_official_network(upsampler: str, dtype=torch.float64, seed: int = 0) -> nn.Module:
    """The official network (this project's copy) with random weights and BN statistics, eval mode."""
    torch.manual_seed(seed)
    model = build_model(**official_model_config(upsampler)).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", ".bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.is_floating_point() and t.dim() == 1:  # BN scales, all >= 1e-5
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        # A head whose output spreads over [0, 1] (mean 0.5, std 0.2), so that clamped predictions differ.
        model.eval()
        pre = []
        handle = model.head[0].register_forward_hook(lambda m, a, out: pre.append(out))
        model(torch.randn(1, 4, 64, 64, generator=g, dtype=dtype))
        handle.remove()
        bn = model.head[1]
        bn.running_mean.fill_(pre[0].mean())
        bn.running_var.fill_(pre[0].var())
        bn.weight.fill_(0.2)
        bn.bias.fill_(0.5)
        model.head[3].weight.zero_()[0, 0, 1, 1] = 1.0
    return model


def to_official(model: nn.Module, upsampler: str, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """The state dict the official trainer would have saved for ``model``: official names, ``module.`` prefix,
    InPlace-ABN weights (either sign: InPlace-ABN uses |w| + eps)."""
    names = {ours: official for official, ours in official_module_names(upsampler).items()}
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    out = {}
    for i, (key, value) in enumerate(model.state_dict().items()):
        module, _, tensor = key.rpartition(".")
        if module in bns and tensor == "weight":
            value = (value - INPLACE_ABN_EPS) * (1 if i % 2 else -1)
        out[f"{prefix}{names[module]}.{tensor}"] = value.clone()
    return out


def trainer_file(path, state_dict):
    """Saved as the official trainer saves it (numpy scalars in the metric lists, optimizer state)."""
    params = [nn.Parameter(torch.ones(2))]
    torch.save({"state_dict": state_dict, "optimizer": torch.optim.Adam(params, lr=0.01).state_dict(),
                "epoch": 27, "train_loss": {"running_loss": [0.1], "epoch_loss": [0.1]},
                "val_loss": {"running_loss": [], "epoch_loss": [np.float64(31.1)]},
                "measure": {"sad": [np.float64(31.1)], "mse": [np.float64("nan")], "grad": [np.float64(14.5)],
                            "conn": [np.float64("nan")]}}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("upsampler", ["fade", "fade_lite", "bilinear"])
def test_official_weights_load_exactly(tmp_path, upsampler):
    source = random_official_network(upsampler)
    path = trainer_file(tmp_path / "model_ckpt.pth", to_official(source, upsampler))
    model = load_official_a2u(path, upsampler)
    assert not model.training and next(model.parameters()).dtype == torch.float64  # the file's dtype
    theirs = source.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=1e-12, atol=1e-15, msg=key)
    x = torch.randn(1, 4, 32, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_official_formats_accepted(tmp_path):
    source = random_official_network("fade", torch.float32)
    plain = to_official(source, "fade", prefix="")
    expected = load_official_a2u({"state_dict": to_official(source, "fade")}).state_dict()
    for variant in (plain, {"state_dict": plain}):  # no module. prefix; a bare state dict
        got = load_official_a2u(variant, "fade").state_dict()
        assert all(torch.equal(got[k], v) for k, v in expected.items())
    # InPlace-ABN before 1.0.x stored no num_batches_tracked; clean_model.py keeps only the state dict.
    old = {k: v for k, v in plain.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": old}, tmp_path / "clean.pth")
    got = load_official_a2u(tmp_path / "clean.pth").state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items() if not k.endswith("num_batches_tracked"))


@pytest.mark.slow
def test_official_errors_are_one_line_and_name_the_keys(tmp_path):
    state = to_official(random_official_network("fade", torch.float32), "fade")
    cases = [
        ({**state, "module.decoder_layer4.extra.weight": torch.zeros(1)}, "fade",
         "1 keys do not map to the official resnet34+fade network: decoder_layer4.extra.weight"),
        ({k: v for k, v in state.items() if not k.startswith("module.pred.1")}, "fade",
         "lacks 1 tensors of the resnet34+fade network: head.3.weight"),
        (state, "bilinear", "holds an official resnet34+fade network, not bilinear: use fade"),
        ({**state, "module.pred.1.weight": torch.zeros(1, 1, 5, 5)}, "fade", "head.3.weight (1, 1, 5, 5)"),
        ({"epoch": 3}, "fade", "no state dict of tensors"),
    ]
    for i, (content, upsampler, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.pth"
        torch.save(content, path)
        with pytest.raises(MattingError) as err:
            load_official_a2u(path, upsampler)
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MattingError, match="official checkpoint not found"):
        load_official_a2u(tmp_path / "nope.pth")
    with pytest.raises(MattingError, match="official checkpoints exist for fade, fade_lite, bilinear"):
        load_official_a2u(tmp_path / "bad0.pth", "carafe")


def test_code_in_an_official_file_is_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (tmp_path.joinpath("pwned").touch, ())

    torch.save({"state_dict": {"a": torch.zeros(1)}, "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(MattingError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        load_official_a2u(tmp_path / "evil.pth")
    assert not tmp_path.joinpath("pwned").exists()


@pytest.mark.slow
def test_converted_checkpoint_evaluates_infers_and_exports(tmp_path, capsys):
    from matting.evaluate import main as evaluate_main
    from matting.export import main as export_main
    from matting.infer import main as infer_main

    source = random_official_network("fade", torch.float32)
    official = trainer_file(tmp_path / "model_best.pth", to_official(source, "fade"))
    out = tmp_path / "runs" / "official" / "checkpoints" / "official.pth"
    assert convert_main(["--checkpoint", str(official), "--upsampler", "fade", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert set(ckpt) == {"format", "model", "config", "step", "epoch", "best"}
    assert ckpt["config"]["model"] == dataclasses.asdict(ModelConfig(**official_model_config("fade")))
    assert ckpt["config"]["output_dir"] == str(tmp_path / "runs" / "official")
    model, _ = model_from_checkpoint(out)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=2e-7, atol=1e-7)

    make_test_folder(tmp_path / "test")
    args = ["--checkpoint", str(out), "--device", "cpu", "--no-progress"]
    assert evaluate_main([*args, "--data", str(tmp_path / "test"), "--out", str(tmp_path / "eval"),
                          "--workers", "0"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["count"] == 4 and summary["failed"] == 0
    image = np.asarray(np.random.default_rng(0).integers(0, 256, (36, 45, 3)), dtype=np.uint8)
    trimap = np.full((36, 45), 128, np.uint8)
    expected = Predictor(source, "cpu").predict(image, trimap)
    assert ((expected > 0.05) & (expected < 0.95)).mean() > 0.5
    np.testing.assert_allclose(Predictor.from_checkpoint(out, "cpu").predict(image, trimap), expected, atol=1e-5)
    assert infer_main([*args, "--image", str(tmp_path / "test/merged/fg0_0.png"),
                       "--trimap", str(tmp_path / "test/trimaps/fg0_0.png"), "--out", str(tmp_path / "infer")]) == 0
    assert (tmp_path / "infer" / "alpha" / "fg0_0.png").is_file()
    assert export_main(["--checkpoint", str(out), "--format", "torchscript"]) == 0
    assert out.with_name("official.torchscript.pt").is_file()
    capsys.readouterr()

    before = out.read_bytes()
    assert convert_main(["--checkpoint", str(official), "--out", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert convert_main(["--checkpoint", str(official), "--upsampler", "bilinear", "--out",
                         str(tmp_path / "b.pth")]) == 2
    assert "not bilinear: use fade" in capsys.readouterr().err and not (tmp_path / "b.pth").exists()


@pytest.mark.slow
def test_inplace_abn_imagenet_weights_as_pretrained(tmp_path):
    """The official code's ImageNet start (inplace_abn's ResNet-34) loads into the encoder by name."""
    import torchvision

    reference = torchvision.models.resnet34(weights=None).state_dict()
    for key, value in reference.items():  # non-trivial BN statistics
        if value.is_floating_point() and value.dim() == 1:
            value.copy_(torch.rand(value.shape) + 0.5)
    blocks = {1: 3, 2: 4, 3: 6, 4: 3}
    renamed = {}
    for key, value in reference.items():
        module, _, tensor = key.rpartition(".")
        if module in ("conv1", "bn1"):
            target = f"mod1.{module}"
        elif module.startswith("layer"):
            layer, block, part = module.split(".", 2)
            assert int(block) < blocks[int(layer[-1])]
            part = {"downsample.0": "proj_conv", "downsample.1": "proj_bn"}.get(part, f"convs.{part}")
            target = f"mod{int(layer[-1]) + 1}.block{int(block) + 1}.{part}"
        else:
            target = "classifier.fc"
        if tensor == "weight" and value.dim() == 1:
            value = -(value - INPLACE_ABN_EPS)
        renamed[f"module.{target}.{tensor}"] = value
    torch.save({"state_dict": renamed}, tmp_path / "resnet34_ipabn.pth.tar")
    model = build_model("resnet34", "fade", pretrained=tmp_path / "resnet34_ipabn.pth.tar", init="official")
    own = model.encoder.state_dict()
    for key in ("bn1.weight", "layer1.2.bn2.running_var", "layer2.0.downsample.1.weight", "layer3.3.conv2.weight"):
        torch.testing.assert_close(own[key], reference[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(own["conv1.weight"][:, :3], reference["conv1.weight"], rtol=0, atol=0)
    assert torch.count_nonzero(own["conv1.weight"][:, 3]) == 0
