"""One process of a multi-process training run for tests/test_train.py (not a test itself).

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT [--nan RANK STEP]
        [--term RANK STEP] -- <matting.train arguments>

Runs ``matting.train``'s command line in this process, then writes this rank's parameters to
``OUT/rank<r>.pt``. ``--nan R S``: rank R's loss is NaN at step S; ``--term R S``: rank R gets SIGTERM during
step S (as from a scheduler that stops one process). Exits with the command line's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from matting.engine.checkpoint import unwrap  # noqa: E402
from matting.engine.trainer import Trainer  # noqa: E402
from matting.losses import MattingLoss  # noqa: E402
from matting.train import main  # noqa: E402


def on_step(rank: int, step: int, action) -> None:
    """Calls ``action(total) -> total`` on the loss of ``rank`` at ``step`` (1-based)."""
    if int(os.environ["RANK"]) != rank:
        return
    forward, calls = MattingLoss.forward, [0]

    def patched(self, pred, batch):
        total, terms = forward(self, pred, batch)
        calls[0] += 1
        return (action(total) if calls[0] == step else total), terms

    MattingLoss.forward = patched


def terminate(total: torch.Tensor) -> torch.Tensor:
    os.kill(os.getpid(), signal.SIGTERM)
    return total


def save_weights_after_fit(out: Path) -> None:
    fit = Trainer.fit

    def patched(self, *args, **kwargs):
        state = fit(self, *args, **kwargs)
        params = {k: v.detach().cpu() for k, v in unwrap(self.model).named_parameters()}
        torch.save(params, out / f"rank{self.dist.rank}.pt")
        return state

    Trainer.fit = patched


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--nan", nargs=2, type=int, metavar=("RANK", "STEP"))
    parser.add_argument("--term", nargs=2, type=int, metavar=("RANK", "STEP"))
    split = sys.argv.index("--")
    args = parser.parse_args(sys.argv[1:split])
    if args.nan:
        on_step(*args.nan, lambda total: total * float("nan"))
    if args.term:
        on_step(*args.term, terminate)
    save_weights_after_fit(args.out)
    sys.exit(main(sys.argv[split + 1:]))
