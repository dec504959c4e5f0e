"""Experiment configuration: plain YAML files validated against one documented schema.

This module is the single place where every config key is defined, typed and documented. A YAML file may start
with ``base: other.yaml`` (a path relative to the file) whose keys it overrides, recursively; command-line
overrides ``section.key=value`` (YAML-parsed values) come last. An unknown or mistyped key, a value of the wrong
type or outside its choices is a one-line :class:`~matting.errors.MattingError` that names the key and the file.

``python -m matting.config`` prints the reference table that docs/config.md carries; ``python -m matting.config
--show configs/demo.yaml [overrides]`` prints a resolved config.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from matting.data.augment import make_augment_config
from matting.errors import MattingError, cli
from matting.losses import LOSSES
from matting.models import ENCODER_OPTIONS, EncoderOptions, OptionError, encoder_options, model_from_config
from matting.models.options import option_names
from matting.models.param_rules import LR_GROUP_CHOICES, match_lr_rules, parse_lr_rules
from matting.upsamplers import available_upsamplers
from matting.utils.fields import doc_field


@dataclass
class ModelConfig:
    encoder: str = doc_field("resnet34", "encoder network", ("resnet34", "mobilenetv2"))
    upsampler: str = doc_field("fade", "upsampler used at every decoder stage (any name of matting.upsamplers)")
    upsampler_options: dict = doc_field({}, "extra keyword arguments of the upsampler, e.g. {up_kernel_size: 5}")
    pretrained: str | None = doc_field(
        None, "null (from scratch), 'imagenet' (torchvision weights) or a local .pth file"
    )
    freeze_bn: bool = doc_field(False, "keep the encoder's BatchNorm layers in eval mode with frozen parameters")
    head: str = doc_field("one_conv", "prediction head (docs/network.md)", ("one_conv", "official"))
    init: str = doc_field("per_module", "initialisation (docs/network.md)", ("per_module", "official"))
    # In the YAML a mapping; once loaded, the encoder's typed options (matting.models.options), {} = defaults.
    options: EncoderOptions | dict = doc_field(
        {}, "other keyword arguments of matting.models.build_model (e.g. width_mult)"
    )

    def __post_init__(self) -> None:
        self.options = encoder_options(self.encoder, self.options)


@dataclass
class DataConfig:
    dataset_dir: str = doc_field(
        "data/demo/Combined_Dataset", "Adobe's Combined_Dataset/ folder (training foregrounds)"
    )
    train_bg_dir: str = doc_field("data/demo/train_bg", "training backgrounds (COCO train2014 for the real set)")
    use_bg_list: bool = doc_field(
        True, "take backgrounds from training_bg_names.txt; false: every image in train_bg_dir"
    )
    preset: str = doc_field("indexnet", "augmentation recipe", ("indexnet", "gca", "a2u"))
    augment: dict = doc_field(
        {}, "overrides of the preset's fields (docs/data.md; AugmentConfig, or A2UConfig for a2u), e.g. "
        "{crop_size: 160}"
    )
    samples_per_epoch: int | None = doc_field(
        None, "samples in one data epoch; null: 100 per foreground as in the paper"
    )
    cache: bool = doc_field(False, "keep decoded training images in memory (small sets only)")
    num_workers: int = doc_field(2, "data-loader worker processes per training process")
    val_count: int = doc_field(0, "foregrounds carved out of training for the validation split (0: no validation)")
    val_bgs_per_fg: int = doc_field(2, "validation composites per validation foreground")
    val_max_side: int | None = doc_field(None, "downscale validation composites so the long side is at most this")
    test_dir: str = doc_field("data/demo/test", "prepared test folder (merged/ alpha/ trimaps/), used by evaluation")


@dataclass
class LossConfig:
    weights: dict = doc_field(
        {"alpha_charbonnier": 0.5, "composition": 0.5},
        "loss term -> weight (names of matting.losses.MattingLoss); IndexNet/A2U recipe by default",
    )


@dataclass
class TrainConfig:
    iterations: int = doc_field(180000, "optimisation steps in total")
    batch_size: int = doc_field(16, "samples per step, summed over all processes")
    optimizer: str = doc_field("adam", "optimiser", ("adam", "adamw", "sgd"))
    lr: float = doc_field(
        0.01, "base learning rate: of the decoder, context, upsamplers and head with encoder_decoder; with a list "
        "of rules, what each rule's factor multiplies"
    )
    encoder_lr_mult: float = doc_field(
        0.01, "with lr_groups encoder_decoder: encoder learning rate = lr x this (the recipes: 1e-4)"
    )
    lr_groups: str | list = doc_field(
        "encoder_decoder",
        "learning rate per parameter: 'encoder_decoder' (ImageNet encoder at lr x encoder_lr_mult, the rest at "
        "lr) or a list of [name pattern, lr multiplier], first match wins (docs/recipe.md)",
    )
    betas: list = doc_field([0.9, 0.999], "Adam/AdamW betas")
    momentum: float = doc_field(0.9, "SGD momentum")
    weight_decay: float = doc_field(0.0, "weight decay")
    schedule: str = doc_field("step", "learning-rate schedule", ("step", "poly", "cosine", "constant"))
    milestones: list = doc_field([120000, 156000], "step schedule: iterations at which lr is multiplied by gamma")
    gamma: float = doc_field(0.1, "step schedule factor")
    poly_power: float = doc_field(0.9, "poly schedule power")
    warmup_iters: int = doc_field(0, "linear warm-up iterations (any schedule)")
    grad_clip: float | None = doc_field(None, "clip the gradient norm to this value; null: no clipping")
    amp: str = doc_field("none", "mixed precision (CUDA only; ignored on CPU with a warning)", ("none", "bf16", "fp16"))
    channels_last: bool = doc_field(False, "channels-last memory format for the model and inputs")
    sync_bn: bool = doc_field(False, "convert BatchNorm to SyncBatchNorm in distributed runs")
    log_every: int = doc_field(20, "iterations between scalar logs")
    image_every: int = doc_field(500, "iterations between TensorBoard image grids")
    val_every: int = doc_field(1000, "iterations between validation runs (needs data.val_count > 0)")
    test_every: int | None = doc_field(
        None, "iterations between evaluations ON THE TEST SET (data.test_dir), logged as test_set/*, never used "
        "to pick best.pth; null: never (the official run: after each 6000-iteration epoch)"
    )
    ckpt_every: int = doc_field(1000, "iterations between checkpoints (latest.pth)")
    best_metric: str = doc_field(
        "sad", "validation metric that selects best.pth (lower is better)", ("sad", "mse", "grad", "conn")
    )


@dataclass
class EvalConfig:
    device: str = doc_field("auto", "evaluation device: auto, cpu, cuda, cuda:N")
    workers: int = doc_field(2, "processes for metrics and image loading during evaluation")


@dataclass
class Config:
    name: str = doc_field("experiment", "experiment name (shown in logs)")
    output_dir: str = doc_field("runs/experiment", "checkpoints/, logs (train.log, TensorBoard) and eval/ go here")
    seed: int = doc_field(6, "seed of every random choice (data, init); a run is reproducible from it on CPU")
    device: str = doc_field("auto", "training device: auto, cpu, cuda, cuda:N (torchrun sets cuda:LOCAL_RANK)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "the network"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "data"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"doc": "losses"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "optimisation"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"doc": "evaluation"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        raise MattingError(f"{path}: circular 'base:' include ({' -> '.join(str(p) for p in chain + (path,))})")
    if not path.is_file():
        raise MattingError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise MattingError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise MattingError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base).resolve()
    return _merge(_read_yaml(base_path, chain + (path,)), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge for config sections; dict-typed *values* (e.g. loss weights) are replaced, not merged,
    so a variant can drop a term. A section is recognised by being a dataclass field of that type."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key in _SECTIONS:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_SECTIONS = {name for name, hint in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(hint)}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.001"`` -> (["train", "lr"], 0.001). The value is parsed as YAML (``null``, lists, ...)."""
    if "=" not in text:
        raise MattingError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise MattingError(f"override '{text}': value is not valid YAML") from None
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise MattingError(f"override '{'.'.join(keys)}': '{k}' is not a section")
    node[keys[-1]] = value


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def _build(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    """``cls(**data)`` with every key checked (known, type, choices), errors naming ``where`` and the key path."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if cls is ModelConfig and key == "options":
            continue  # built below, with the class of the encoder (known once "encoder" is read)
        path = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else f" (valid: {', '.join(fields)})"
            raise MattingError(f"{where}: unknown config key '{path}'{hint}")
        f = fields[key]
        hints = typing.get_type_hints(cls)
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise MattingError(f"{where}: '{path}' must be a section (mapping), got {value!r}")
            kwargs[key] = _build(hints[key], value, where, f"{path}.")
            continue
        if hints[key] in (float, float | None):
            value = _as_float(value)
        if not _type_ok(value, hints[key]):
            raise MattingError(f"{where}: '{path}' must be {_type_name(hints[key])}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise MattingError(f"{where}: '{path}' must be one of {', '.join(choices)}, got {value!r}")
        kwargs[key] = value
    if cls is ModelConfig:
        kwargs["options"] = _build_options(kwargs.get("encoder", ModelConfig.encoder), data, where, prefix)
    try:
        return cls(**kwargs)
    except OptionError as exc:
        raise MattingError(f"{where}: '{prefix}{exc.key}' {exc.problem}") from None


def _build_options(encoder: str, model: dict[str, Any], where: str, prefix: str) -> EncoderOptions:
    """The ``model.options`` section as the typed options of ``encoder``."""
    options = model.get("options", {})
    if options is None:
        options = {}
    if isinstance(options, EncoderOptions):
        return encoder_options(encoder, options)
    if not isinstance(options, dict):
        raise MattingError(f"{where}: '{prefix}options' must be a section (mapping), got {options!r}")
    return _build(ENCODER_OPTIONS[encoder], options, where, f"{prefix}options.")


def _as_float(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; accept it, and ints, for float keys."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML config (following ``base:`` includes), applies ``key.sub=value`` overrides, validates.

    Args:
        path: the YAML file; None starts from the schema defaults.
        overrides: e.g. ``["train.lr=0.001", "model.upsampler=bilinear"]``.
    Returns:
        The validated :class:`Config`.
    """
    where = str(path) if path is not None else "defaults"
    data = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    if overrides:
        where = f"{where} (with overrides)"
    cfg = _build(Config, data, where)
    _check_consistency(cfg, where)
    return cfg


def model_config_from_dict(data: dict[str, Any], where: str = "checkpoint config") -> ModelConfig:
    """Validates a stored ``model`` section (a checkpoint's) into a :class:`ModelConfig`.

    Sections written by earlier versions load too: keys added since take their defaults (``head``, ``init``),
    and encoder options given at the section's top level (as ``build_model``'s keyword arguments) count as
    ``options``.
    """
    data = dict(data)
    encoder = data.get("encoder", ModelConfig.encoder)
    if encoder in ENCODER_OPTIONS:
        loose = {key: data.pop(key) for key in option_names(encoder) if key in data}
        if loose:
            data["options"] = {**loose, **(data.get("options") or {})}
    return _build(ModelConfig, data, where, "model.")


# Ranges of numeric keys: key -> (lowest, lowest allowed?, highest or None, highest allowed?). A null value of a
# nullable key is always allowed. Checked at load time so a value of the right type that would crash later (a
# ZeroDivisionError at the first log, a DataLoader ValueError) or train nonsense (a negative lr) names its key.
_RANGES: dict[str, tuple[float, bool, float | None, bool]] = {
    "seed": (0, True, None, False),
    "data.samples_per_epoch": (1, True, None, False),
    "data.num_workers": (0, True, None, False),
    "data.val_count": (0, True, None, False),
    "data.val_bgs_per_fg": (1, True, None, False),
    "data.val_max_side": (8, True, None, False),
    "train.lr": (0, False, None, False),
    "train.encoder_lr_mult": (0, True, None, False),
    "train.momentum": (0, True, 1, False),
    "train.weight_decay": (0, True, None, False),
    "train.gamma": (0, False, None, False),
    "train.poly_power": (0, True, None, False),
    "train.warmup_iters": (0, True, None, False),
    "train.grad_clip": (0, False, None, False),
    "train.log_every": (1, True, None, False),
    "train.image_every": (1, True, None, False),
    "train.val_every": (1, True, None, False),
    "train.ckpt_every": (1, True, None, False),
    "eval.workers": (0, True, None, False),
}


def _range_text(low: float, low_ok: bool, high: float | None, high_ok: bool) -> str:
    text = f"{'>=' if low_ok else '>'} {low}"
    return text if high is None else f"{text} and {'<=' if high_ok else '<'} {high}"


def _in_range(value: float, low: float, low_ok: bool, high: float | None, high_ok: bool) -> bool:
    above = value >= low if low_ok else value > low
    below = high is None or (value <= high if high_ok else value < high)
    return above and below


def _check_ranges(cfg: Config, where: str) -> None:
    data = cfg.to_dict()
    for key, bounds in _RANGES.items():
        section, _, name = key.rpartition(".")
        value = (data[section] if section else data)[name]
        if value is None or _in_range(value, *bounds):
            continue
        nullable = " (or null)" if typing.get_origin(_annotation(key)) in (typing.Union, types.UnionType) else ""
        raise MattingError(f"{where}: '{key}' must be {_range_text(*bounds)}{nullable}, got {value!r}")
    betas = cfg.train.betas
    if not all(_type_ok(b, float) and _in_range(b, 0, True, 1, False) for b in betas):
        raise MattingError(f"{where}: 'train.betas' must be two numbers >= 0 and < 1, got {betas}")


def _annotation(key: str) -> Any:
    cls: Any = Config
    *sections, name = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return typing.get_type_hints(cls)[name]


def _check_consistency(cfg: Config, where: str) -> None:
    t = cfg.train
    if t.iterations <= 0 or t.batch_size <= 0:
        raise MattingError(f"{where}: 'train.iterations' and 'train.batch_size' must be positive")
    if any(not isinstance(m, int) or isinstance(m, bool) or m <= 0 for m in t.milestones):
        raise MattingError(f"{where}: 'train.milestones' must be positive iteration numbers, got {t.milestones}")
    if len(t.betas) != 2:
        raise MattingError(f"{where}: 'train.betas' must be two numbers, got {t.betas}")
    _check_ranges(cfg, where)
    for name, weight in cfg.loss.weights.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise MattingError(f"{where}: 'loss.weights.{name}' must be a number, got {weight!r}")
    # Names that live in registries are checked here too, so a typo fails at load time, not after data set-up.
    unknown = sorted(set(cfg.loss.weights) - set(LOSSES))
    if unknown:
        raise MattingError(f"{where}: unknown loss 'loss.weights.{unknown[0]}' (known: {', '.join(LOSSES)})")
    if cfg.model.upsampler not in available_upsamplers():
        raise MattingError(
            f"{where}: unknown 'model.upsampler' {cfg.model.upsampler!r} (known: {', '.join(available_upsamplers())})"
        )
    if t.test_every is not None and t.test_every <= 0:
        raise MattingError(f"{where}: 'train.test_every' must be a positive number of iterations or null")
    for key, name in (("device", cfg.device), ("eval.device", cfg.eval.device)):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
            raise MattingError(f"{where}: '{key}' must be auto, cpu, cuda or cuda:N, got {name!r}")
    try:
        make_augment_config(cfg.data.preset, **cfg.data.augment)
    except MattingError as exc:
        raise MattingError(f"{where}: 'data': {exc}") from None
    # The network is built (on the meta device) for every config, so that a bad encoder or upsampler option
    # fails here, not after the data set-up.
    try:
        names = _trainable_names(json.dumps(cfg.to_dict()["model"], sort_keys=True))
    except MattingError as exc:
        raise MattingError(f"{where}: 'model': {exc}") from None
    _check_lr_groups(cfg, names, where)


def _check_lr_groups(cfg: Config, names: tuple[str, ...], where: str) -> None:
    """``train.lr_groups``: a known name, or rules that between them take every trainable parameter (``names``)
    of the configured network, each rule at least one."""
    value = cfg.train.lr_groups
    if isinstance(value, str):
        if value not in LR_GROUP_CHOICES:
            raise MattingError(
                f"{where}: 'train.lr_groups' must be {' or '.join(LR_GROUP_CHOICES)} or a list of rules, got {value!r}"
            )
        return
    try:
        rules = parse_lr_rules(value)
    except ValueError as exc:
        raise MattingError(f"{where}: 'train.lr_groups' {exc}") from None
    try:
        match_lr_rules(list(names), rules)
    except ValueError as exc:
        name = f"{cfg.model.encoder}+{cfg.model.upsampler}"
        raise MattingError(f"{where}: 'train.lr_groups' for the {name} network: {exc}") from None


@functools.lru_cache(maxsize=32)
def _trainable_names(model_section: str) -> tuple[str, ...]:
    """Names of the trainable parameters of the network a (JSON) ``model`` section builds. Built on the meta
    device (no memory, no weights) and cached: the same network is checked for every config that uses it."""
    model_cfg = _build(ModelConfig, {**json.loads(model_section), "pretrained": None}, "model section", "model.")
    with torch.device("meta"):
        model = model_from_config(model_cfg)
    return tuple(n for n, p in model.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------------
# Reference documentation


def reference_markdown() -> str:
    """The config reference as a markdown table (docs/config.md carries this output)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = f.metadata.get("doc", "")
            if f.metadata.get("choices"):
                doc += f" ({' / '.join(f.metadata['choices'])})"
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"| `{prefix}{f.name}` | `{shown}` | {doc} |")

    walk(Config, "")
    return "\n".join(lines)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matting.config", description=__doc__.split("\n")[0])
    parser.add_argument("--show", metavar="CONFIG", help="print this config, resolved and validated, as YAML")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (with --show)")
    args = parser.parse_args(argv)
    if args.show:
        print(yaml.safe_dump(load_config(args.show, args.overrides).to_dict(), sort_keys=False), end="")
    else:
        print(reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
