"""Config loading: includes, overrides, validation errors that name the key and the file."""

import dataclasses
from pathlib import Path

import pytest

from matting.config import Config, load_config, model_config_from_dict, reference_markdown
from matting.errors import MattingError
from matting.models import MobileNetV2Options, ResNet34Options

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_every_shipped_config_loads():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        cfg = load_config(path)
        assert isinstance(cfg, Config)


def test_base_include_and_overrides(tmp_path):
    write(
        tmp_path / "base.yaml",
        "name: a\ntrain: {lr: 0.5, batch_size: 4}\nloss: {weights: {alpha_l1: 1.0, composition: 2}}\n",
    )
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain: {batch_size: 8}\nloss: {weights: {alpha_l1: 3}}\n")
    cfg = load_config(child, ["train.lr=1e-3", "model.upsampler=bilinear", "train.grad_clip=null"])
    assert cfg.name == "a"
    assert cfg.train.batch_size == 8  # child overrides base
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; accepted for float keys
    assert cfg.model.upsampler == "bilinear"
    assert cfg.train.grad_clip is None
    # A dict-valued key is replaced as a whole so a variant can drop a loss term.
    assert cfg.loss.weights == {"alpha_l1": 3}


def test_paper_variants_inherit_the_recipe():
    fade = load_config(REPO / "configs/comp1k_fade.yaml")
    bilinear = load_config(REPO / "configs/comp1k_bilinear.yaml")
    assert bilinear.model.upsampler == "bilinear"
    assert fade.model.upsampler == "fade"
    # bilinear has no upsampler parameters, so its learning-rate rules lack FADE's line (tests/test_recipe.py)
    assert dataclasses.replace(bilinear.train, lr_groups=fade.train.lr_groups) == fade.train
    assert bilinear.data == fade.data
    assert fade.train.iterations == 180000 and fade.train.milestones == [120000, 156000]
    assert fade.train.lr == pytest.approx(0.01) and ["encoder", 0.01] in fade.train.lr_groups


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {lrr: 0.1}\n", "unknown config key 'train.lrr' (did you mean lr?)"),
        ("modle: {}\n", "unknown config key 'modle'"),
        ("train: {lr: fast}\n", "'train.lr' must be float"),
        ("train: {batch_size: 2.5}\n", "'train.batch_size' must be int"),
        ("model: {encoder: vgg16}\n", "'model.encoder' must be one of resnet34, mobilenetv2"),
        ("model: 3\n", "'model' must be a section"),
        ("train: {betas: [0.9]}\n", "'train.betas' must be two numbers"),
        ("loss: {weights: {alpha_l1: big}}\n", "'loss.weights.alpha_l1' must be a number"),
        ("loss: {weights: {alpha_l2: 1}}\n", "unknown loss 'loss.weights.alpha_l2'"),
        ("model: {upsampler: fadee}\n", "unknown 'model.upsampler' 'fadee' (known: "),
        ("train: [1, 2\n", "invalid YAML"),
        ("model: {head: big}\n", "'model.head' must be one of one_conv, official"),
        ("model: {init: xavier}\n", "'model.init' must be one of per_module, official"),
        ("train: {test_every: 0}\n", "'train.test_every' must be a positive number of iterations or null"),
        ("model: {options: {width_mult: 0.5}}\n", "unknown config key 'model.options.width_mult'"),
        ("model: {encoder: mobilenetv2, options: {width_mult: -1}}\n",
         "'model.options.width_mult' must be a positive number, got -1.0"),
        ("model: {options: {decoder_channels: [8, 8]}}\n",
         "'model.options.decoder_channels' must be a list of 4 positive ints, got [8, 8]"),
        ("model: {options: {layer3_blocks: two}}\n", "'model.options.layer3_blocks' must be int, got 'two'"),
        ("model: {options: [1]}\n", "'model.options' must be a section"),
    ],
)
def test_bad_configs_name_the_key_and_file(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(MattingError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_circular_files(tmp_path):
    with pytest.raises(MattingError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(MattingError, match="circular"):
        load_config(tmp_path / "a.yaml")


def test_bad_override_is_an_error():
    with pytest.raises(MattingError, match="expected key.sub=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(MattingError, match="unknown config key 'train.nope'"):
        load_config(None, ["train.nope=1"])


def test_reference_documents_every_key():
    table = reference_markdown()
    for key in ("model.upsampler", "data.preset", "train.encoder_lr_mult", "train.amp", "loss.weights", "seed"):
        assert f"`{key}`" in table


def test_docs_carry_the_current_reference():
    """docs/config.md's table is this schema's output, so the docs cannot drift from the code."""
    assert reference_markdown() in (REPO / "docs" / "config.md").read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.log_every=0", "'train.log_every' must be >= 1, got 0"),
        ("train.ckpt_every=0", "'train.ckpt_every' must be >= 1, got 0"),
        ("train.image_every=0", "'train.image_every' must be >= 1, got 0"),
        ("train.val_every=-2", "'train.val_every' must be >= 1, got -2"),
        ("train.lr=-1", "'train.lr' must be > 0, got -1.0"),
        ("train.lr=0", "'train.lr' must be > 0, got 0.0"),
        ("train.encoder_lr_mult=-0.5", "'train.encoder_lr_mult' must be >= 0, got -0.5"),
        ("train.weight_decay=-1", "'train.weight_decay' must be >= 0"),
        ("train.momentum=1.5", "'train.momentum' must be >= 0 and < 1, got 1.5"),
        ("train.betas=[0.9, 1.0]", "'train.betas' must be two numbers >= 0 and < 1, got [0.9, 1.0]"),
        ("train.gamma=0", "'train.gamma' must be > 0"),
        ("train.warmup_iters=-1", "'train.warmup_iters' must be >= 0"),
        ("train.grad_clip=0", "'train.grad_clip' must be > 0 (or null), got 0.0"),
        ("data.num_workers=-3", "'data.num_workers' must be >= 0, got -3"),
        ("data.val_count=-1", "'data.val_count' must be >= 0"),
        ("data.val_bgs_per_fg=0", "'data.val_bgs_per_fg' must be >= 1"),
        ("data.val_max_side=4", "'data.val_max_side' must be >= 8 (or null), got 4"),
        ("data.samples_per_epoch=0", "'data.samples_per_epoch' must be >= 1 (or null), got 0"),
        ("eval.workers=-1", "'eval.workers' must be >= 0"),
        ("seed=-1", "'seed' must be >= 0, got -1"),
    ],
)
def test_out_of_range_values_name_the_key_and_file(tmp_path, override, message):
    """Values of the right type that would crash later (ZeroDivisionError, a DataLoader ValueError) or train
    nonsense are refused when the config is loaded."""
    path = write(tmp_path / "cfg.yaml", "name: x\n")
    with pytest.raises(MattingError) as err:
        load_config(path, [override])
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    key, value = override.split("=")
    section, _, name = key.rpartition(".")
    text = f"{section}: {{{name}: {value}}}\n" if section else f"{name}: {value}\n"
    with pytest.raises(MattingError, match="must be"):  # the same check for a value written in the file
        load_config(write(tmp_path / "in_file.yaml", text))


def test_boundary_values_are_accepted():
    cfg = load_config(None, ["train.log_every=1", "train.lr=1e-9", "data.num_workers=0", "train.encoder_lr_mult=0",
                             "train.grad_clip=null", "data.val_max_side=8", "train.momentum=0"])
    assert cfg.train.log_every == 1 and cfg.data.num_workers == 0


def test_model_options_become_the_encoders_typed_options():
    """model.options is checked once, at load, into the encoder's dataclass; a checkpoint's stored section (old
    layouts too: no head/init, options at the top level) reads back to the same typed config."""
    cfg = load_config(None, ["model.encoder=mobilenetv2", "model.options={width_mult: 0.5, stem_channels: 8}"])
    assert cfg.model.options == MobileNetV2Options(width_mult=0.5, stem_channels=8)
    assert load_config(None).model.options == ResNet34Options()
    stored = cfg.to_dict()["model"]
    assert stored["options"]["width_mult"] == 0.5 and model_config_from_dict(stored) == cfg.model
    old = {"encoder": "mobilenetv2", "upsampler": "fade", "width_mult": 0.5, "options": {"stem_channels": 8}}
    assert model_config_from_dict(old) == cfg.model
    with pytest.raises(MattingError, match="ckpt.pth: its config: 'model.options.width_mult' must be"):
        model_config_from_dict({**old, "width_mult": 0}, "ckpt.pth: its config")


@pytest.mark.parametrize(
    "config, override, message",
    [
        ("demo.yaml", "data.augment={bogus: 1}", "'data': augment.bogus: unknown option"),
        ("demo.yaml", "data.augment={crop_size: 4}", "'data': augment.crop_size: must be an integer >= 8"),
        ("comp1k_fade.yaml", "data.augment={crop_scales: [1, 2]}", "'data': augment.crop_scales: unknown option"),
        ("demo.yaml", "model.upsampler_options={bogus: 1}", "'model': upsampler 'fade': unknown option 'bogus'"),
        ("comp1k_fade.yaml", "model.upsampler_options={scale: 4}", "'scale' is not an option here"),
        ("comp1k_fade.yaml", "model.upsampler_options={channels: 4}", "unknown option 'channels'"),
        ("demo.yaml", "train.milestones=[true]", "'train.milestones' must be positive iteration numbers"),
        ("demo.yaml", "device=gpu", "'device' must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("demo.yaml", "eval.device=cuda:x", "'eval.device' must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    ],
)
def test_nested_options_are_checked_at_load(config, override, message):
    """data.augment and model.upsampler_options fail when the config loads, whatever train.lr_groups is, not
    after the data set-up (demo.yaml's lr_groups is encoder_decoder, comp1k_fade.yaml's a list of rules)."""
    with pytest.raises(MattingError) as err:
        load_config(REPO / "configs" / config, [override])
    assert message in str(err.value) and config in str(err.value)
