"""Which parameters a name pattern takes: the rules of the config's ``train.lr_groups``.

A rule is ``[pattern, lr multiplier]``; the first rule whose pattern matches a parameter's dotted name takes it.
The config loader checks the rules against the configured network (every trainable parameter taken, every rule
used), and the optimiser groups parameters by them (``matting.engine.schedule``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from torch import nn

__all__ = ["LR_GROUP_CHOICES", "assign_lr_multipliers", "match_lr_rules", "parse_lr_rules", "rule_matches"]

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
