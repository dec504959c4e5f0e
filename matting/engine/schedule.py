"""Optimiser and learning-rate schedule built from the ``train`` section of the config."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from matting.config import TrainConfig
from matting.models.param_rules import (  # noqa: F401 - LR_GROUP_CHOICES, match_lr_rules: public names here too
    LR_GROUP_CHOICES,
    assign_lr_multipliers,
    match_lr_rules,
    parse_lr_rules,
    rule_matches,
)


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
    """The optimiser over :func:`lr_param_groups` (IndexNet/A2U recipes: Adam, two learning rates).

    Adam and AdamW run fused (one kernel launch for all parameters) when every parameter is a floating-point
    CUDA tensor; elsewhere PyTorch's default implementation (on CPU: the same arithmetic as always).
    """
    param_groups = lr_param_groups(model, cfg)
    if cfg.optimizer in ("adam", "adamw"):
        params = [p for group in param_groups for p in group["params"]]
        fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
        adam = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return adam(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                    **({"fused": True} if fused else {}))
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
