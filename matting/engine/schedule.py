"""Optimiser and learning-rate schedule built from the ``train`` section of the config."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from matting.config import TrainConfig


#: Named ``train.lr_groups`` choices (the other form is an explicit list of rules).
LR_GROUP_CHOICES = {
    "encoder_decoder": "the encoder's ImageNet-initialised parameters at lr x encoder_lr_mult, all others at lr",
}


def parse_lr_rules(value: Any) -> list[tuple[str, float]]:
    """``train.lr_groups`` as a list of ``[pattern, lr_multiplier]`` pairs -> [(pattern, multiplier), ...].

    Raises ValueError (a one-line message without the file name) for any other shape, a multiplier that is
    not a number >= 0, or a pattern given twice.
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be {' or '.join(LR_GROUP_CHOICES)} or a non-empty list of [pattern, lr multiplier]")
    rules: list[tuple[str, float]] = []
    for item in value:
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[0]
        mult = item[1] if ok else None
        if not ok or isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult >= 0:
            raise ValueError(f"each rule must be [pattern, lr multiplier >= 0], got {item!r}")
        if item[0] in [p for p, _ in rules]:
            raise ValueError(f"pattern {item[0]!r} is given twice")
        rules.append((item[0], float(mult)))
    return rules


def rule_matches(pattern: str, name: str) -> bool:
    """Whether a ``train.lr_groups`` pattern takes parameter ``name``: a glob over the whole dotted name
    (``*`` also crosses dots), or a module path and everything below it (``encoder`` takes ``encoder.conv1.weight``).
    """
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def match_lr_rules(names: list[str], rules: list[tuple[str, float]]) -> list[tuple[float, str]]:
    """``(multiplier, pattern)`` of the first rule that matches each parameter name, in the order of ``names``.

    Raises ValueError naming the parameters no rule matches, and the rules that take no parameter (a typo, a
    module this network does not have, or a rule hidden by earlier ones).
    """
    out, unmatched = [], []
    used = {pattern: 0 for pattern, _ in rules}
    for name in names:
        hit = next(((pat, mult) for pat, mult in rules if rule_matches(pat, name)), None)
        if hit is None:
            unmatched.append(name)
            continue
        used[hit[0]] += 1
        out.append((hit[1], hit[0]))
    if unmatched:
        more = f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else ""
        raise ValueError(f"no rule matches parameter {', '.join(unmatched[:3])}{more}")
    idle = [pat for pat, n in used.items() if n == 0]
    if idle:
        raise ValueError(f"rule {idle[0]!r} takes no parameter (no such module, or earlier rules take them all)")
    return out


def assign_lr_multipliers(
    model: nn.Module, rules: list[tuple[str, float]]
) -> list[tuple[str, nn.Parameter, float, str]]:
    """``(name, parameter, multiplier, pattern)`` for every trainable parameter of ``model`` (frozen ones are
    left out), by :func:`match_lr_rules`, whose errors it raises."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hits = match_lr_rules([n for n, _ in named], rules)
    return [(n, p, mult, pattern) for (n, p), (mult, pattern) in zip(named, hits)]


def lr_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups, ``[{"params", "lr", "name"}, ...]``, as ``cfg.lr_groups`` says.

    ``"encoder_decoder"``: "encoder" (``model.parameter_groups()``, the ImageNet part) at ``lr *
    encoder_lr_mult`` and "decoder" (everything else) at ``lr``. A list of rules: one group per distinct
    multiplier, named ``x<multiplier>``, in the order the rules first give it. Frozen parameters are left out.
    """
    if cfg.lr_groups == "encoder_decoder":
        groups, out = model.parameter_groups(), []
        for name, mult in (("encoder", cfg.encoder_lr_mult), ("decoder", 1.0)):
            params = [p for p in groups[name] if p.requires_grad]
            if params:
                out.append({"params": params, "lr": cfg.lr * mult, "name": name})
        return out
    by_mult: dict[float, list[nn.Parameter]] = {}
    for _, p, mult, _ in assign_lr_multipliers(model, parse_lr_rules(cfg.lr_groups)):
        by_mult.setdefault(mult, []).append(p)
    return [{"params": ps, "lr": cfg.lr * mult, "name": f"x{mult:g}"} for mult, ps in by_mult.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser over :func:`lr_param_groups` (IndexNet/A2U recipes: Adam, two learning rates)."""
    param_groups = lr_param_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based): warm-up, then the schedule.

    step: x ``gamma`` at each milestone passed; poly: (1 - t)^power; cosine: half cosine to 0; constant: 1.
    The schedules other than step run over the iterations after warm-up.
    """
    if cfg.warmup_iters > 0 and step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.iterations - cfg.warmup_iters)
    t = min(1.0, (step - cfg.warmup_iters) / span)
    if cfg.schedule == "poly":
        return (1.0 - t) ** cfg.poly_power
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
