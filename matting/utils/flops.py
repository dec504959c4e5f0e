"""Multiply-accumulate (MAC) counting with forward hooks, per submodule.

    macs = count_macs(model, x)            # {"total": n, "encoder": n1, "encoder.conv1": n2, ...}

What is counted: Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear (one MAC per weight tap per output element;
bias additions, normalisation, activations and element-wise products are not counted), plus whatever custom
ops report through :func:`add_macs` (the CARAFE/FADE reassembly reports K*K MACs per output element). Other
module types can be taught through ``MAC_RULES``. Totals are inclusive: a module's count contains the counts
of everything that ran inside its forward, and a module called twice is counted twice.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["MAC_RULES", "add_macs", "count_macs", "format_macs"]


def _conv_macs(m: nn.modules.conv._ConvNd, inputs: tuple, output: torch.Tensor) -> int:
    taps = 1
    for k in m.kernel_size:
        taps *= k
    if m.transposed:  # every input element is scattered through a (C_out/groups, k...) filter
        return inputs[0].numel() * (m.out_channels // m.groups) * taps
    return output.numel() * (m.in_channels // m.groups) * taps


def _linear_macs(m: nn.Linear, inputs: tuple, output: torch.Tensor) -> int:
    return output.numel() * m.in_features


#: Module type -> function(module, inputs, output) -> MACs of that module's own computation.
MAC_RULES: dict[type[nn.Module], Callable[[nn.Module, tuple, torch.Tensor], int]] = {
    nn.modules.conv._ConvNd: _conv_macs,
    nn.Linear: _linear_macs,
}


class _Counter:
    def __init__(self, root: nn.Module) -> None:
        self.names = {id(m): name for name, m in root.named_modules(remove_duplicate=False)}
        self.totals: dict[str, int] = {name: 0 for name, _ in root.named_modules()}
        self.stack: list[nn.Module] = []

    def add(self, n: int) -> None:
        # Inclusive totals: charge every module on the call stack once, even if it appears twice (recursion).
        for m in {id(m): m for m in self.stack}.values():
            name = self.names.get(id(m))
            if name is not None:
                self.totals[name] = self.totals.get(name, 0) + int(n)


_ACTIVE: list[_Counter] = []


def add_macs(n: int) -> None:
    """Reports ``n`` MACs done by a custom op to the running :func:`count_macs`, if any (no-op otherwise)."""
    if not _ACTIVE or torch.compiler.is_compiling():
        return
    _ACTIVE[-1].add(n)


def _rule_for(m: nn.Module):
    for cls in type(m).__mro__:
        if cls in MAC_RULES:
            return MAC_RULES[cls]
    return None


def count_macs(module: nn.Module, *inputs, **kwargs) -> dict[str, int]:
    """Runs ``module(*inputs, **kwargs)`` once without gradients and returns its MACs.

    Returns:
        ``{"total": MACs of the whole call, "<qualified submodule name>": inclusive MACs, ...}`` with one
        entry per submodule (0 for those that did not run).
    """
    counter = _Counter(module)

    def pre_hook(m, args):
        counter.stack.append(m)

    def post_hook(m, args, output):
        rule = _rule_for(m)
        if rule is not None:
            counter.add(rule(m, args, output))
        if counter.stack and counter.stack[-1] is m:
            counter.stack.pop()

    handles = []
    for m in module.modules():
        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(post_hook, always_call=True))
    _ACTIVE.append(counter)
    try:
        with torch.no_grad():
            module(*inputs, **kwargs)
    finally:
        _ACTIVE.remove(counter)
        for h in handles:
            h.remove()
    totals = dict(counter.totals)
    result = {"total": totals.pop("", 0)}
    result.update(totals)
    return result


def format_macs(n: float) -> str:
    """Human-readable MAC count: 1.23G, 45.6M, 789K."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"
