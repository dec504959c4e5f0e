"""Optimiser and learning-rate schedule built from the ``train`` section of the config."""

from __future__ import annotations

import math

import torch
from torch import nn

from matting.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups as in the IndexNet/A2U recipes: the (pretrained) encoder at ``lr * encoder_lr_mult``,
    everything else (context module, skips, decoder, upsamplers, head) at ``lr``.

    Frozen parameters (e.g. frozen BatchNorm) are left out, so weight decay never touches them.
    """
    groups = model.parameter_groups()
    param_groups = []
    for name, mult in (("encoder", cfg.encoder_lr_mult), ("decoder", 1.0)):
        params = [p for p in groups[name] if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": cfg.lr * mult, "name": name})
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
