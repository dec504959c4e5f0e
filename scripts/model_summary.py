"""Parameters and multiply-adds of the matting networks, for every encoder x upsampler choice (markdown).

    python scripts/model_summary.py                       # one row per encoder x upsampler, at 512x512
    python scripts/model_summary.py --size 1024 --detail  # plus the per-part table of each network
    python scripts/model_summary.py --encoders resnet34 --upsamplers fade bilinear

MACs: convolutions and the CARAFE/FADE reassembly (matting.utils.flops); parameters include frozen ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from matting.errors import MattingError, cli  # noqa: E402
from matting.models import MODELS, build_model, model_costs, summary  # noqa: E402
from matting.upsamplers import available_upsamplers  # noqa: E402
from matting.utils.flops import format_macs  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", default=list(MODELS), help="encoders (default: all)")
    p.add_argument("--upsamplers", nargs="+", default=None, help="upsamplers (default: every registered one)")
    p.add_argument("--size", type=int, nargs="+", default=[512], help="input size: S or H W (default 512)")
    p.add_argument("--detail", action="store_true", help="also print the per-part table of each network")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.size) not in (1, 2):
        raise MattingError(f"--size takes S or H W, got {args.size}")
    h, w = (args.size * 2)[:2]
    upsamplers = args.upsamplers or available_upsamplers()
    torch.manual_seed(0)
    rows, details = [], []
    for encoder in args.encoders:
        for upsampler in upsamplers:
            model = build_model(encoder, upsampler)
            costs = model_costs(model, (1, 4, h, w))
            ups = [c for c in costs if c.name.startswith("stages[")]
            total = costs[-1]
            rows.append(
                f"| {encoder} | {upsampler} | {total.params / 1e6:.3f}M | {sum(c.params for c in ups):,} "
                f"| {format_macs(total.macs)} | {format_macs(sum(c.macs for c in ups))} |"
            )
            if args.detail:
                details.append(f"\n{encoder} + {upsampler}, input {h}x{w}:\n\n{summary(model, (1, 4, h, w))}")
    print(f"Input 1x4x{h}x{w}; MACs = multiply-accumulates (convolutions + reassembly).\n")
    print("| encoder | upsampler | parameters | of which upsamplers | MACs | of which upsamplers |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    for d in details:
        print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
