"""Parameters and multiply-adds of a :class:`MattingNet`, per part, as a markdown table."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from matting.utils.flops import count_macs, format_macs

__all__ = ["PartCost", "count_parameters", "model_costs", "summary"]


@dataclass(frozen=True)
class PartCost:
    """One row of the summary: ``params`` (all parameters, frozen ones included) and ``macs`` at one input."""

    name: str
    params: int
    macs: int


def count_parameters(module: nn.Module) -> int:
    """All parameters of ``module`` (trainable or frozen), each shared tensor once."""
    return sum(p.numel() for p in module.parameters())


def model_costs(model: nn.Module, input_size: tuple[int, int, int, int] = (1, 4, 512, 512)) -> list[PartCost]:
    """Per-part costs of a MattingNet at ``input_size``: encoder, context, decoder convs (skips, projections,
    residual blocks), the upsampler of each stage, head, and the total (last row).

    MACs are counted by :func:`matting.utils.flops.count_macs` (convolutions, plus the reassembly MACs that
    CARAFE/FADE report); the model runs once, in eval mode, without gradients, then gets its mode back.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(input_size, device=next(model.parameters()).device)
        macs = count_macs(model, x)
    finally:
        model.train(was_training)
    stages = model.decoder.stages
    rows = [
        PartCost("encoder", count_parameters(model.encoder), macs["encoder"]),
        PartCost("context", count_parameters(model.context), macs["context"]),
    ]
    up_params = sum(count_parameters(s.up) for s in stages)
    up_macs = sum(macs[f"decoder.stages.{i}.up"] for i in range(len(stages)))
    rows.append(
        PartCost("decoder convs", count_parameters(model.decoder) - up_params, macs["decoder"] - up_macs)
    )
    scale = model.output_stride
    for i, s in enumerate(stages):
        name = f"stages[{i}].up: {type(s.up).__name__}, C={s.up.channels}, /{scale}->/{scale // 2}"
        rows.append(PartCost(name, count_parameters(s.up), macs[f"decoder.stages.{i}.up"]))
        scale //= 2
    rows.append(PartCost("head", count_parameters(model.head), macs["head"]))
    rows.append(PartCost("total", count_parameters(model), macs["total"]))
    return rows


def summary(model: nn.Module, input_size: tuple[int, int, int, int] = (1, 4, 512, 512)) -> str:
    """Markdown table: parameters and multiply-adds per part (see :func:`model_costs`) at ``input_size``."""
    rows = model_costs(model, input_size)
    _, _, h, w = input_size
    lines = [
        f"| part | parameters | MACs at {h}x{w} |",
        "|---|---:|---:|",
    ]
    for r in rows:
        name = f"**{r.name}**" if r.name == "total" else r.name
        lines.append(f"| {name} | {r.params:,} | {format_macs(r.macs)} |")
    return "\n".join(lines)
