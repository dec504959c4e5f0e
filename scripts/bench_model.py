"""Inference time and peak memory per image, and training throughput, of the matting networks (markdown tables).

    python scripts/bench_model.py --sizes 1024                          # resnet34, fade vs bilinear, CPU
    python scripts/bench_model.py --encoders resnet34 mobilenetv2 --megapixels 1 2 4 8
    python scripts/bench_model.py --train --crop 320 --batch 4          # training iterations per second
    python scripts/bench_model.py --sizes 1024 --profile                # + the top ops of each case
    python scripts/bench_model.py --config configs/demo.yaml --train --crop 128 --batch 8   # a config's network
    python scripts/bench_model.py --sizes 1024 --write-docs             # also into docs/benchmarks.md

Every case runs in a fresh subprocess, so one case's allocations cannot hide another's peak. Peak memory on
CPU is the subprocess's peak resident set size (``ru_maxrss``) minus that of an idle subprocess that only
imports torch and this package: weights, input, activations and allocator workspace of the run. On CUDA it is
``torch.cuda.max_memory_allocated()`` (tensors only, excluding the CUDA context). Inference runs under
``torch.inference_mode()`` with batch 1 in eval mode; the time is per image, after ``--warmup`` untimed runs,
median (and minimum) of ``--repeats`` runs. On a shared machine the minimum is the steadier number.

``--write-docs`` writes the table into the ``model-inference`` section of docs/benchmarks.md (``model-training``
with ``--train``; ``-<config name>`` is appended with ``--config``, ``-cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from matting.utils import bench_docs  # noqa: E402


# ------------------------------------------------------------------------------------------------ worker


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_cpu_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_case(case: dict) -> dict:
    """Runs one measurement in this process and returns its numbers (called in a fresh subprocess)."""
    import torch

    from matting.engine.runtime import flush_denormals

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    flush_denormals()  # as the training and inference command lines do
    import matting.models  # noqa: F401 - the idle baseline imports the package too

    if case["kind"] == "idle":
        return {"peak_mib": _peak_cpu_mib()}

    from matting.losses import MattingLoss
    from matting.models import build_model, count_parameters, make_input
    from matting.utils.flops import count_macs

    device = torch.device(case["device"])
    torch.manual_seed(0)
    model = build_model(
        case["encoder"], case["upsampler"], upsampler_options=case.get("upsampler_options"),
        **(case.get("options") or {}),
    ).to(device)
    layout = torch.channels_last if case["channels_last"] else torch.contiguous_format
    model.to(memory_format=layout)
    params = count_parameters(model)
    h, w = case["height"], case["width"]
    result: dict = {"params": params, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if case["kind"] == "infer":
        model.eval()
        x = torch.randn(1, 4, h, w, device=device).contiguous(memory_format=layout)

        def step():
            with torch.inference_mode():
                model(x)
    else:
        model.train()
        b = case["batch"]
        image, alpha = torch.rand(b, 3, h, w, device=device), torch.rand(b, 1, h, w, device=device)
        trimap = torch.full((b, 1, h, w), 128, dtype=torch.uint8, device=device)
        batch = {"image": image, "alpha": alpha, "trimap": trimap, "fg": image, "bg": torch.rand_like(image)}
        x = make_input(image, trimap).contiguous(memory_format=layout)
        criterion = MattingLoss()
        groups = model.parameter_groups()
        opt = torch.optim.Adam(
            [{"params": groups["encoder"], "lr": 1e-4}, {"params": groups["decoder"], "lr": 1e-2}]
        )

        def step():
            total, _ = criterion(model(x), batch)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

    for _ in range(case["warmup"]):
        step()
    _sync(device)
    times = []
    for _ in range(case["repeats"]):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    result["times"] = times
    result["peak_mib"] = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_cpu_mib()
    )
    if case["profile"]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities, with_stack=False) as prof:
            step()
            _sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        result["profile"] = prof.key_averages(group_by_input_shape=False).table(sort_by=key, row_limit=15)
        # Per decoder stage: time of each upsampler vs the rest, from forward hooks (inference only).
        if case["kind"] == "infer":
            result["stage_times"] = _stage_times(model, x, device)
    # After the peak is read: counting MACs runs the network once more.
    model.eval()
    result["macs"] = count_macs(model, torch.zeros(1, 4, h, w, device=device))["total"]
    return result


def _stage_times(model, x, device) -> dict[str, float]:
    """Seconds spent in each part of one inference (encoder, context, each stage's up / rest, head)."""
    import torch

    spans: dict[str, float] = {}
    starts: dict[str, float] = {}
    parts = {"encoder": model.encoder, "context": model.context, "head": model.head}
    for i, s in enumerate(model.decoder.stages):
        parts[f"stages[{i}]"] = s
        parts[f"stages[{i}].up"] = s.up
    handles = []
    for name, m in parts.items():
        def pre(mod, args, name=name):
            _sync(device)
            starts[name] = time.perf_counter()

        def post(mod, args, out, name=name):
            _sync(device)
            spans[name] = spans.get(name, 0.0) + time.perf_counter() - starts[name]

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return spans


# ------------------------------------------------------------------------------------------------ parent


def spawn(case: dict) -> dict:
    """Runs ``case`` in a fresh interpreter and returns its JSON result (raises with its stderr on failure)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def side_for_megapixels(mp: float, stride: int) -> int:
    """Square side (a multiple of ``stride``) closest to ``mp`` x 2^20 pixels: 1 -> 1024, 4 -> 2048."""
    return max(stride, stride * round(math.sqrt(mp * 2**20) / stride))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="take the network (model.encoder, .upsampler, .options) from this config")
    p.add_argument("--encoders", nargs="+", default=None, help="default: resnet34, or the config's encoder")
    p.add_argument("--upsamplers", nargs="+", default=None,
                   help="default: fade and bilinear, or the config's upsampler and bilinear")
    p.add_argument("--sizes", type=int, nargs="*", default=None, help="square input sides (default 1024)")
    p.add_argument("--megapixels", type=float, nargs="*", default=[], help="square inputs of about N x 2^20 px")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--train", action="store_true", help="measure training iterations per second instead")
    p.add_argument("--crop", type=int, default=320, help="training crop (with --train)")
    p.add_argument("--batch", type=int, default=4, help="training batch (with --train)")
    p.add_argument("--profile", action="store_true", help="print torch profiler top ops and per-stage times")
    p.add_argument("--layout", choices=["auto", "nchw", "channels_last"], default="auto",
                   help="memory layout; auto: channels-last for CPU inference (as Predictor runs it), else NCHW")
    bench_docs.add_argument(p)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return 0
    import torch

    from matting.models import MODELS
    from matting.upsamplers import available_upsamplers

    model_cfg = None
    if args.config:
        from matting.config import load_config
        from matting.errors import MattingError

        try:
            model_cfg = load_config(args.config).model
        except MattingError as exc:
            sys.exit(f"error: {exc}")
    if args.encoders is None:
        args.encoders = [model_cfg.encoder] if model_cfg else ["resnet34"]
    if args.upsamplers is None:
        args.upsamplers = list(dict.fromkeys([model_cfg.upsampler, "bilinear"])) if model_cfg else ["fade", "bilinear"]
    for e in args.encoders:
        if e not in MODELS:
            sys.exit(f"error: unknown encoder {e!r}; known: {', '.join(MODELS)}")
    for u in args.upsamplers:
        if u not in available_upsamplers():
            sys.exit(f"error: unknown upsampler {u!r}; known: {', '.join(available_upsamplers())}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    section = "model-training" if args.train else "model-inference"
    section += (f"-{Path(args.config).stem}" if args.config else "") + ("-cuda" if device.startswith("cuda") else "")
    try:
        bench_docs.measure_and_write(args.write_docs, section, "python scripts/bench_model.py",
                                     sys.argv[1:] if argv is None else argv, lambda: measure(args, model_cfg, device))
    except bench_docs.DocsSectionError as exc:
        sys.exit(f"error: {exc}")
    return 0


def measure(args: argparse.Namespace, model_cfg, device: str) -> str:
    """Runs every (encoder, size, upsampler) case in its own process; prints the table and returns it."""
    stride = {"resnet34": 16, "mobilenetv2": 32}
    channels_last = args.layout == "channels_last" or (args.layout == "auto" and device == "cpu" and not args.train)
    base = {"device": device, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
            "profile": args.profile, "channels_last": channels_last}
    idle = spawn({**base, "kind": "idle"})["peak_mib"] if device == "cpu" else 0.0

    cases = []
    for enc in args.encoders:
        if args.train:
            cases.append((enc, args.crop))
            continue
        sides = list(args.sizes if args.sizes is not None else ([] if args.megapixels else [1024]))
        sides += [side_for_megapixels(mp, stride[enc]) for mp in args.megapixels]
        cases += [(enc, s) for s in sides]

    rows = []
    for enc, side in cases:
        for up in args.upsamplers:
            case = {**base, "kind": "train" if args.train else "infer", "encoder": enc, "upsampler": up,
                    "height": side, "width": side, "batch": args.batch}
            if model_cfg is not None:
                case["options"] = model_cfg.options
                if up == model_cfg.upsampler:
                    case["upsampler_options"] = model_cfg.upsampler_options
            r = spawn(case)
            rows.append((enc, up, side, r, statistics.median(r["times"]), min(r["times"]), r["peak_mib"] - idle))
            if args.profile:
                print(f"\n### {enc} + {up} at {side}x{side}\n\n```\n{r['profile']}```")
                for name, t in r.get("stage_times", {}).items():
                    print(f"- {name}: {t * 1000:.1f} ms")
            sys.stdout.flush()
    table = format_table(args, model_cfg, device, channels_last, idle, rows)
    print(table)
    return table


def format_table(args: argparse.Namespace, model_cfg, device: str, channels_last: bool, idle: float,
                 rows: list[tuple]) -> str:
    """The markdown table of ``measure``'s rows, under lines saying the setting."""
    threads = rows[0][3]["threads"] if rows else 0
    layout = "channels-last" if channels_last else "NCHW"
    mem_note = (f"peak RSS minus an idle process's ({idle:.0f} MiB)" if device == "cpu"
                else "torch.cuda.max_memory_allocated")
    lines = [f"device {device}, {threads} threads, {layout}; memory: {mem_note}"]
    if model_cfg is not None:
        lines.append(f"network of {args.config}: model.options {model_cfg.options}")
    if args.train:
        lines += [f"training: batch {args.batch}, crop {args.crop}, Adam, 0.5 Charbonnier + 0.5 composition", "",
                  "| encoder | upsampler | parameters | MACs / sample | it/s (median) | it/s (best) | peak MiB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
    else:
        lines += ["inference, batch 1, torch.inference_mode", "",
                  "| encoder | upsampler | input | parameters | MACs | s / image (median) | s / image (best) "
                  "| x bilinear (best) | peak MiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    reference = {(enc, side): best for enc, up, side, _, _, best, _ in rows if up == "bilinear"}
    for enc, up, side, r, med, best, peak in rows:
        macs = f"{r['macs'] / 1e9:.1f}G"
        if args.train:
            lines.append(f"| {enc} | {up} | {r['params'] / 1e6:.2f}M | {macs} | {1 / med:.2f} | {1 / best:.2f} "
                         f"| {peak:.0f} |")
        else:
            ref = reference.get((enc, side))
            ratio = f"{best / ref:.2f}" if ref else "-"
            lines.append(f"| {enc} | {up} | {side}x{side} | {r['params'] / 1e6:.2f}M | {macs} | {med:.3f} "
                         f"| {best:.3f} | {ratio} | {peak:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
