"""Benchmark every upsampler: parameters, multiply-adds, forward and forward+backward time, peak extra memory.

    python scripts/bench_upsamplers.py                                   # the full grid (slow on 2 cores)
    python scripts/bench_upsamplers.py --sizes 256 1024 --channels 32 --upsamplers fade "fade (unfold reference)"

Each case runs in a fresh subprocess, so that one case's memory cannot leak into the next. Batch 1; ``de`` is
(1, C, S/2, S/2), ``en`` and the output (1, C, S, S). Rows besides the registered upsamplers:

- ``fade (unfold reference)``: FADE as the official pure-PyTorch code computes it (unfolded compressors, unfold
  reassembly), i.e. run inside :func:`matting.upsamplers.reassembly.plain_ops`; ``sapa (unfold reference)``:
  SAPA-B likewise (the unfold similarity and reassembly of the authors' pure-PyTorch check);
- ``sapa (E=32)``, ``sapa_g (E=32)``: SAPA-B/G with the embedding width of the configs (the registered rows
  use the official default, 64); ``dysample+ (dyscope)``: DySample with dynamic scope;
- ``reassembly op: lean`` / ``reassembly op: triton`` / ``reassembly op: unfold reference``: the bare
  :func:`carafe` op on random normalised kernels, the last being what the official pure-PyTorch code costs
  (the triton row runs on CUDA only).

Peak extra memory is what a case allocates on top of its inputs (``en``, ``de``, the output gradient and the
module), outputs and gradients included. CPU: peak resident set size (``ru_maxrss``) of the worker minus its
resident size just before the first full-size call (after a small warm-up call that loads the kernels' code),
so it includes allocator slack. CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes at the same
point. "fwd" runs under ``torch.no_grad()``; "fwd+bwd" runs with gradients and calls ``backward`` with a
random output gradient. Times are the minimum over ``--repeats`` runs, after one untimed full-size forward
(the multiply-add count).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matting.errors import MattingError, cli  # noqa: E402
from matting.utils import bench_docs  # noqa: E402

FADE_REFERENCE = "fade (unfold reference)"
SAPA_REFERENCE = "sapa (unfold reference)"
OP_LEAN = "reassembly op: lean"
OP_TRITON = "reassembly op: triton"
OP_REFERENCE = "reassembly op: unfold reference"
#: Rows that are a registered upsampler with options: row name -> (registry name, options).
VARIANTS = {
    "sapa (E=32)": ("sapa", {"embedding_dim": 32}),
    "sapa_g (E=32)": ("sapa_g", {"embedding_dim": 32}),
    "dysample+ (dyscope)": ("dysample", {"dyscope": True}),
}
#: Rows that run a registered upsampler inside plain_ops(): row name -> registry name.
PLAIN_ROWS = {FADE_REFERENCE: "fade", SAPA_REFERENCE: "sapa"}
EXTRA_ROWS = (*PLAIN_ROWS, *VARIANTS, OP_LEAN, OP_TRITON, OP_REFERENCE)
OP_ROWS = {OP_LEAN: "lean", OP_TRITON: "triton", OP_REFERENCE: "reference"}

# Measured peak extra memory of the unfold-based rows, in units of the output tensor (C=32, 1024^2, CPU):
# used to skip the cases that cannot fit in --memory-budget-gb instead of letting them take the machine down.
_REFERENCE_OUTPUTS_OF_MEMORY = 60


def _row_names() -> list[str]:
    from matting.upsamplers import available_upsamplers

    return available_upsamplers() + list(EXTRA_ROWS)


def _build(name: str, channels: int):
    import torch

    from matting.upsamplers import build_upsampler
    from matting.upsamplers.reassembly import carafe, plain_ops

    class ReassemblyOp(torch.nn.Module):
        """The bare op: forward(features, kernels)."""

        def __init__(self, impl: str) -> None:
            super().__init__()
            self.impl = impl

        def forward(self, features, kernels):
            return carafe(features, kernels, 5, 2, impl=self.impl)

    class PlainOps(torch.nn.Module):
        """A module run inside plain_ops(): its plain-op (official) formulation."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            with plain_ops():
                return self.inner(*args)

    if name in PLAIN_ROWS:
        return PlainOps(build_upsampler(PLAIN_ROWS[name], channels))
    if name in VARIANTS:
        base, options = VARIANTS[name]
        return build_upsampler(base, channels, **options)
    if name in OP_ROWS:
        return ReassemblyOp(OP_ROWS[name])
    return build_upsampler(name, channels)


def _inputs(name: str, channels: int, size: int, device, requires_grad: bool):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    de = torch.randn(1, channels, size // 2, size // 2, generator=g, device=device)
    if name in OP_ROWS:
        second = torch.randn(1, 25, size, size, generator=g, device=device).softmax(dim=1)
        args = [de, second]
    else:
        en = torch.randn(1, channels, size, size, generator=g, device=device)
        args = [en, de]
    for t in args:
        t.requires_grad_(requires_grad)
    return args


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(case: dict) -> dict:
    """Runs one case in this process and returns its measurements."""
    import torch

    from matting.utils.flops import count_macs

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    name, channels, size, repeats = case["name"], case["channels"], case["size"], case["repeats"]
    torch.manual_seed(0)
    module = _build(name, channels).to(device)
    params = sum(p.numel() for p in module.parameters())

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    # Warm-up at a small size: loads code and sets up thread pools, so they do not count as memory.
    # The same calls as the timed ones: a first backward with an explicit gradient has a one-off cost.
    small = _inputs(name, channels, 32, device, True)
    with torch.no_grad():
        module(*small)
    for _ in range(2):
        out = module(*small)
        out.backward(torch.randn_like(out))
    del small, out
    module.zero_grad(set_to_none=True)

    inputs = _inputs(name, channels, size, device, True)
    grad_out = torch.randn(1, channels, size, size, device=device)
    gc.collect()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_bytes()

    def peak() -> int:
        sync()
        return (torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes()) - base

    macs = count_macs(module, *inputs)["total"]  # also the untimed first full-size forward
    fwd_times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = module(*inputs)
        sync()
        fwd_times.append(time.perf_counter() - t0)
        del out
    peak_fwd = peak()

    train_times = []
    for _ in range(repeats):
        for t in inputs:
            t.grad = None
        module.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        out = module(*inputs)
        out.backward(grad_out)
        sync()
        train_times.append(time.perf_counter() - t0)
        del out
    peak_train = peak()
    return {
        "params": params,
        "macs": macs,
        "fwd_s": min(fwd_times),
        "train_s": min(train_times),
        "peak_fwd_bytes": peak_fwd,
        "peak_train_bytes": peak_train,
    }


def _estimate_bytes(name: str, channels: int, size: int) -> int | None:
    """A predicted peak for the unfold-based rows, None for the others (all of the order of the output)."""
    if name in (FADE_REFERENCE, SAPA_REFERENCE, OP_REFERENCE):
        return _REFERENCE_OUTPUTS_OF_MEMORY * channels * size * size * 4
    return None


def _run_case(case: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        if proc.returncode < 0:
            reason = f"killed by signal {-proc.returncode} (out of memory?)"
        return {"error": reason[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_count(n: float) -> str:
    from matting.utils.flops import format_macs

    return format_macs(n)


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_mem(b: int) -> str:
    mb = b / 2**20
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048], help="output sides S (even)")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    p.add_argument("--upsamplers", nargs="+", default=None, help="row names (default: all, see --list)")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case; the minimum is reported")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per case (0: torch's default)")
    p.add_argument("--memory-budget-gb", type=float, default=10.0,
                   help="skip unfold-reference cases predicted to need more than this")
    p.add_argument("--case-timeout", type=float, default=1800.0, help="seconds before a case is abandoned")
    p.add_argument("--list", action="store_true", help="print the row names and exit")
    bench_docs.add_argument(p, "the table (section 'upsamplers', or 'upsamplers-cuda')")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@cli
def main(argv=None) -> int:
    args = _parse(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    import torch

    names = _row_names()
    if args.list:
        print("\n".join(names))
        return 0
    rows = args.upsamplers or names
    unknown = [r for r in rows if r not in names]
    if unknown:
        raise MattingError(f"--upsamplers: unknown {', '.join(map(repr, unknown))}; known: {', '.join(names)}")
    bad_sizes = [s for s in args.sizes if s < 32 or s % 2]
    if bad_sizes:
        raise MattingError(f"--sizes: sizes must be even and >= 32, got {bad_sizes}")
    if args.repeats < 1:
        raise MattingError(f"--repeats must be >= 1, got {args.repeats}")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for d in devices:
        if d not in ("cpu", "cuda"):
            raise MattingError(f"--devices: unknown device {d!r}; use cpu and/or cuda")
        if d == "cuda" and not torch.cuda.is_available():
            raise MattingError("--devices: cuda requested but torch.cuda.is_available() is False")

    for device in devices:
        section = "upsamplers" if device == "cpu" else "upsamplers-cuda"
        try:
            bench_docs.measure_and_write(args.write_docs, section, "python scripts/bench_upsamplers.py",
                                         sys.argv[1:] if argv is None else argv,
                                         lambda: measure(args, device, rows))
        except bench_docs.DocsSectionError as exc:
            raise MattingError(str(exc)) from None
    return 0


def measure(args: argparse.Namespace, device: str, rows: list[str]) -> str:
    """Runs every (size, channels, row) case on ``device``; prints the table line by line and returns it."""
    import torch

    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    budget = args.memory_budget_gb * 2**30
    threads = args.threads or torch.get_num_threads()
    where = f"CPU, {threads} threads" if device == "cpu" else torch.cuda.get_device_name()
    emit(f"{where}, batch 1, fp32, min of {args.repeats} runs\n")
    emit("| upsampler | C | output | params | MACs (fwd) | fwd | fwd+bwd "
         "| peak extra mem, fwd | peak extra mem, fwd+bwd |")
    emit("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for channels in args.channels:
            for name in rows:
                head = f"| {name} | {channels} | {size}x{size} |"
                if name == OP_TRITON and device != "cuda":
                    emit(f"{head} CUDA only | | | | | | |")
                    continue
                estimate = _estimate_bytes(name, channels, size)
                if estimate is not None and estimate > budget:
                    note = f"skipped: needs ~{_fmt_mem(estimate)} > --memory-budget-gb {args.memory_budget_gb:g}"
                    emit(f"{head} {note} | | | | | | |")
                    continue
                case = dict(name=name, channels=channels, size=size, device=device,
                            repeats=args.repeats, threads=args.threads)
                r = _run_case(case, args.case_timeout)
                if "error" in r:
                    emit(f"{head} failed: {r['error']} | | | | | | |")
                    continue
                emit(f"{head} {_fmt_count(r['params'])} | {_fmt_count(r['macs'])} | {_fmt_time(r['fwd_s'])} | "
                     f"{_fmt_time(r['train_s'])} | {_fmt_mem(r['peak_fwd_bytes'])} | "
                     f"{_fmt_mem(r['peak_train_bytes'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
