"""GPU benchmark: the reassembly op's implementations, and training steps of the paper network. Markdown tables.

    python scripts/bench_gpu.py                      # on a CUDA machine (scripts/gpu_check.sh calls this)
    python scripts/bench_gpu.py --cpu-smoke          # tiny sizes on the CPU: checks the script, not the GPU

(a) The reassembly op in FADE's form (:func:`matting.upsamplers.reassembly.fade_carafe`: features ``de``, full-
resolution logits, input-resolution logits and gate logits, skip ``en``), for each implementation (reference =
the official unfold formulation, lean, triton): forward (no grad) and forward+backward time, peak memory above
the inputs, and the effective bandwidth = the bytes the op must move / time, beside the device's peak
bandwidth. Must-move bytes: forward reads every input once and writes the output; the backward reads the
output gradient and the inputs and writes a gradient of each input. Cases: C = 32, 64, 256 at a 1024x1024
output (batch 1), and the paper network's four decoder stages at batch 16, crop 512 (see
``matting/models/resnet_encoder.py``: FADE at /8, /4, /2, /1 with C = 256, 128, 64, 64).

(b) Training steps of ``build_model("resnet34", upsampler=...)``: batch 16, crop 512, random data, Adam, the
default loss, fp32 or bf16 autocast; iterations per second over ``--steps`` steps after 3 warm-up steps, and
the peak memory allocated.

Reference cases predicted to exceed the free device memory are skipped; a case that runs out of memory anyway
is reported as such. ``--budget-s`` stops starting new cases once spent.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matting.errors import MattingError, cli  # noqa: E402
from matting.losses import MattingLoss  # noqa: E402
from matting.models import build_model, make_input  # noqa: E402
from matting.upsamplers import reassembly  # noqa: E402

K = 5  # FADE's reassembly kernel
#: Peak DRAM bandwidth in GB/s by a fragment of torch.cuda.get_device_name() (vendor data sheets); the first
#: fragment found in the name wins, so the more specific ones come first.
PEAK_BANDWIDTH_GBPS = {
    "GH200": 4900, "H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "H800": 3350,
    "B200": 8000, "B100": 8000, "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-PCIE-40GB": 1555,
    "A100-SXM4-40GB": 1555, "A100": 1555, "A800": 2039, "L40S": 864, "L40": 864, "L4": 300, "A40": 696,
    "A30": 933, "A10G": 600, "A10": 600, "RTX 6000 Ada": 960, "RTX A6000": 768, "RTX 4090": 1008,
    "RTX 3090": 936, "V100": 900, "T4": 320,
}
# Peak extra memory of the unfold reference, in units of its output (measured on CPU, fwd+bwd): cases beyond
# the free memory are skipped instead of run out of memory.
_REFERENCE_OUTPUTS_OF_MEMORY = 60


def peak_bandwidth(name: str) -> float | None:
    """GB/s for a device name, None when unknown."""
    for fragment, gbps in PEAK_BANDWIDTH_GBPS.items():
        if fragment.lower() in name.lower():
            return gbps
    return None


class Clock:
    """Wall time of a callable on a device (synchronised), and its peak memory above what was allocated."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.cuda = device, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn, repeats: int) -> float:
        """Minimum seconds over ``repeats`` calls, after one untimed call (Triton compiles, cuDNN tunes)."""
        fn()
        best = float("inf")
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def peak(self, fn) -> int | None:
        """Bytes allocated at the peak of one call above those allocated before it (None on the CPU)."""
        if not self.cuda:
            fn()
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        fn()
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) - base


# --- (a) the reassembly op -------------------------------------------------------------------------------


def op_cases(smoke: bool) -> list[tuple[str, int, int, int]]:
    """(label, batch, C, output side)."""
    if smoke:
        return [("C=4", 1, 4, 16), ("stage /1, C=8", 2, 8, 16)]
    # The paper network's stages first: they matter most if the time budget runs out.
    stages = [("/8", 256, 64), ("/4", 128, 128), ("/2", 64, 256), ("/1", 64, 512)]
    return [(f"stage {name}, C={c}", 16, c, side) for name, c, side in stages] + [
        (f"C={c}", 1, c, 1024) for c in (32, 64, 256)
    ]


def op_shapes(b: int, c: int, side: int) -> list[tuple[int, ...]]:
    """FADE's op inputs: de (B, C, S/2, S/2), logits (B, 25, S, S), logits_lo (B, 25, S/2, S/2), en (B, C, S, S),
    gate logits (B, 1, S/2, S/2)."""
    h = side // 2
    return [(b, c, h, h), (b, K * K, side, side), (b, K * K, h, h), (b, c, side, side), (b, 1, h, h)]


def must_move_bytes(shapes: list[tuple[int, ...]], dtype: torch.dtype, backward: bool) -> int:
    """Bytes the op cannot avoid moving: read every input, write the output (the skip's size); the backward
    also reads the output gradient and the inputs again and writes one gradient per input."""
    size = torch.finfo(dtype).bits // 8
    inputs = sum(math.prod(s) for s in shapes) * size
    out = math.prod(shapes[3]) * size
    return inputs + out + (out + 2 * inputs if backward else 0)


def bench_op(impl, inputs, clock: Clock, repeats: int) -> dict:
    leaves = [t.detach().requires_grad_() for t in inputs]
    grad = torch.randn_like(inputs[3])

    def forward():
        with torch.no_grad():
            reassembly.fade_carafe(*inputs, K, 2, impl=impl)

    def train():
        for t in leaves:
            t.grad = None
        reassembly.fade_carafe(*leaves, K, 2, impl=impl).backward(grad)

    return {
        "fwd": clock.time(forward, repeats), "train": clock.time(train, repeats),
        "mem_fwd": clock.peak(forward), "mem_train": clock.peak(train),
    }


def op_table(device: torch.device, smoke: bool, repeats: int, deadline: float) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    peak = peak_bandwidth(name) if device.type == "cuda" else None
    triton_ok = reassembly._triton_module() is not None and (
        device.type == "cuda" or reassembly._triton_module().interpreting()
    )
    impls = (["triton"] if triton_ok else []) + ["lean", "reference"]  # the slowest last
    peak_note = f"{peak:.0f} GB/s" if peak else "unknown"
    lines = [
        f"### (a) FADE's reassembly op on {name} (peak bandwidth {peak_note}), K=5, s=2, min of {repeats} runs "
        f"(reference: {min(repeats, 2)})",
        "",
        "| case | B | C | output | dtype | impl | fwd | fwd+bwd | peak mem fwd | peak mem fwd+bwd "
        "| bandwidth fwd | bandwidth fwd+bwd | % of peak (fwd+bwd) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for label, b, c, side in op_cases(smoke):
        for dtype in (torch.float32, torch.bfloat16):
            for impl in impls:
                if dtype != torch.float32 and impl == "reference":
                    continue
                head = f"| {label} | {b} | {c} | {side}x{side} | {_dtype_name(dtype)} | {impl} |"
                lines.append(head + _op_row(impl, b, c, side, dtype, device, repeats, deadline, peak))
                print(lines[-1], flush=True)
    if not triton_ok:
        lines.append("\n(triton rows absent: triton is not importable, or it cannot run on this device)")
        print(lines[-1])
    return lines


def _op_row(impl, b, c, side, dtype, device, repeats, deadline, peak) -> str:
    if time.monotonic() > deadline:
        return " skipped: time budget | | | | | | |"
    out_bytes = b * c * side * side * torch.finfo(dtype).bits // 8
    if impl == "reference" and device.type == "cuda":
        need = _REFERENCE_OUTPUTS_OF_MEMORY * out_bytes
        free = torch.cuda.mem_get_info(device)[0]
        if need > 0.9 * free:
            return f" skipped: needs ~{need / 2**30:.0f} GB, {free / 2**30:.0f} GB free | | | | | | |"
    shapes = op_shapes(b, c, side)
    try:
        g = torch.Generator(device=device).manual_seed(0)
        inputs = [torch.randn(s, generator=g, device=device, dtype=dtype) for s in shapes]
        r = bench_op(impl, inputs, Clock(device), min(repeats, 2) if impl == "reference" else repeats)
    except torch.OutOfMemoryError:
        return " out of memory | | | | | | |"
    finally:
        inputs = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bw_fwd = must_move_bytes(shapes, dtype, False) / r["fwd"] / 1e9
    bw_train = must_move_bytes(shapes, dtype, True) / r["train"] / 1e9
    share = f"{100 * bw_train / peak:.0f}%" if peak else "-"
    return (
        f" {_fmt_time(r['fwd'])} | {_fmt_time(r['train'])} | {_fmt_mem(r['mem_fwd'])} | {_fmt_mem(r['mem_train'])} "
        f"| {bw_fwd:.3g} GB/s | {bw_train:.3g} GB/s | {share} |"
    )


# --- (b) training steps ----------------------------------------------------------------------------------


def random_batch(b: int, side: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch as the data loader gives it: image, fg, bg (B, 3, S, S) in [0, 1], alpha, uint8 trimap."""
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=device)

    trimap = torch.full((b, 1, side, side), 128, dtype=torch.uint8, device=device)
    trimap[..., : side // 4, :] = 0
    trimap[..., -side // 4 :, :] = 255
    return {"image": rand(b, 3, side, side), "fg": rand(b, 3, side, side), "bg": rand(b, 3, side, side),
            "alpha": rand(b, 1, side, side), "trimap": trimap}


def train_steps(upsampler: str, amp: torch.dtype | None, b: int, side: int, steps: int, device) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet34", upsampler=upsampler).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    criterion = MattingLoss()
    batch = random_batch(b, side, device)
    x = make_input(batch["image"], batch["trimap"])
    clock = Clock(device)

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            pred = model(x)
        total, _ = criterion(pred.float(), batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    for _ in range(3):
        step()
    clock.sync()
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    clock.sync()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if clock.cuda else None
    return {"it_s": steps / seconds, "step_s": seconds / steps, "peak": peak}


def train_table(device, smoke: bool, steps: int, deadline: float) -> list[str]:
    b, side = (2, 32) if smoke else (16, 512)
    lines = [
        f"### (b) Training steps of the paper network (resnet34), batch {b}, crop {side}, Adam, {steps} steps",
        "",
        "| upsampler | precision | it/s | s/step | peak memory | step vs bilinear |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    # bf16 autocast needs a GPU that has it; the CPU smoke run uses CPU autocast.
    for amp in (None, torch.bfloat16):
        bilinear_step = None
        for upsampler in ("bilinear", "fade"):
            head = f"| {upsampler} | {'fp32' if amp is None else 'bf16 autocast'} |"
            if time.monotonic() > deadline:
                lines.append(f"{head} skipped: time budget | | | |")
                print(lines[-1], flush=True)
                continue
            try:
                r = train_steps(upsampler, amp, b, side, steps, device)
            except torch.OutOfMemoryError:
                lines.append(f"{head} out of memory | | | |")
                print(lines[-1], flush=True)
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if upsampler == "bilinear":
                bilinear_step = r["step_s"]
            ratio = f"{r['step_s'] / bilinear_step:.2f}x" if bilinear_step else "-"
            lines.append(f"{head} {r['it_s']:.2f} | {r['step_s']:.3f} | {_fmt_mem(r['peak'])} | {ratio} |")
            print(lines[-1], flush=True)
    return lines


# --- output ----------------------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_mem(b: int | None) -> str:
    if b is None:
        return "-"
    mb = b / 2**20
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def _environment(device: torch.device) -> str:
    import importlib.util

    triton_version = "absent"
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    return (f"Device: {where}; torch {torch.__version__}, triton {triton_version}, CUDA {torch.version.cuda}; "
            f"cudnn.benchmark on, TF32 convolutions {torch.backends.cudnn.allow_tf32}, "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}.")


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="also write the tables to this markdown file "
                   "(default: $OUT/benchmarks_gpu.md when OUT is set)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script end to end")
    p.add_argument("--parts", nargs="+", default=["ops", "train"], choices=["ops", "train"])
    p.add_argument("--steps", type=int, default=20, help="timed training steps per case")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per op case; the minimum is reported "
                   "(the reference: at most 2)")
    p.add_argument("--budget-s", type=float, default=200.0, help="start no new case after this many seconds")
    return p.parse_args(argv)


@cli
def main(argv=None) -> int:
    args = _parse(argv)
    if args.steps < 1 or args.repeats < 1:
        raise MattingError(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise MattingError("no CUDA device: run on a GPU machine, or pass --cpu-smoke to check the script")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    torch.backends.cudnn.benchmark = True  # fixed sizes throughout, as in training
    start = time.monotonic()
    lines = [f"## GPU benchmark ({time.strftime('%Y-%m-%d')})", "", _environment(device), ""]
    print("\n".join(lines), flush=True)
    if "ops" in args.parts:
        # At most half the budget when the training part follows, so that it always gets its turn.
        share = 0.5 if "train" in args.parts else 1.0
        deadline = start + share * args.budget_s
        lines += op_table(device, args.cpu_smoke, 1 if args.cpu_smoke else args.repeats, deadline) + [""]
    if "train" in args.parts:
        deadline = start + args.budget_s
        lines += train_table(device, args.cpu_smoke, 2 if args.cpu_smoke else args.steps, deadline) + [""]
    out = args.out or (os.path.join(os.environ["OUT"], "benchmarks_gpu.md") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_name(f".{Path(out).name}.tmp{os.getpid()}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, out)
        print(f"tables written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
