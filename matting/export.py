"""Export a trained network: ``python -m matting.export --checkpoint C --format onnx|torchscript [--out FILE]``.

The exported graph takes what users have, not the network's internal input, so nobody re-implements the
normalisation:

- ``image``: (B, 3, H, W) float32 RGB in [0, 1];
- ``trimap``: (B, 1, H, W) uint8 with values {0, 128, 255};
- output ``alpha``: (B, 1, H, W) float32 in [0, 1], exactly 0 where trimap == 0 and 1 where trimap == 255.

H and W are dynamic but must be multiples of the network's output stride (16 for resnet34, 32 for
mobilenetv2): pad the bottom/right by reflection and crop the result back, as :class:`Predictor` does (the
exported graph does not pad; the stride is stored in the ONNX metadata as ``output_stride``).

ONNX goes by default through the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` (opset 17): fast,
and batch, height and width stay dynamic. ``--exporter dynamo`` uses the torch.export-based exporter
(onnxscript, opset 18) instead: height and width dynamic, batch fixed to 1, and much slower even for a tiny
network (symbolic-shape reasoning). Both are offline. TorchScript is
``torch.jit.trace`` of the same module (deprecated upstream, still loadable from C++ without Python).
FADE is exported with its plain-op formulations (the unfold reassembly, unfolded compressors: what
:func:`matting.upsamplers.reassembly.plain_ops` gives while tracing) instead of the memory-lean custom ops that
ONNX runtimes do not have: same values, more memory at high resolution.
After writing, the export is run once on a small input and compared with PyTorch (``--no-verify`` skips it).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from matting.data.io import check_output_file
from matting.engine.checkpoint import DEMO_CHECKPOINT, existing_checkpoint, model_from_checkpoint, unwrap
from matting.engine.runtime import flush_denormals
from matting.errors import MattingError, OutputError, cli
from matting.models import make_input
from matting.upsamplers.reassembly import plain_ops

__all__ = ["FORMATS", "MattingExport", "export_model", "main", "run_exported", "verify_export"]

#: Format -> default file suffix.
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class MattingExport(nn.Module):
    """``(image, trimap) -> alpha``: make_input, the network, clamp to [0, 1], force the known regions.

    Shapes as in the module docstring. Inputs must already be padded to a multiple of ``output_stride``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(unwrap(model)).eval()  # the caller's model keeps its mode
        self.output_stride = int(self.model.output_stride)
        self.eval()

    def forward(self, image: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        alpha = self.model(make_input(image, trimap)).clamp(0.0, 1.0)
        alpha = torch.where(trimap == 0, torch.zeros_like(alpha), alpha)
        return torch.where(trimap == 255, torch.ones_like(alpha), alpha)


def _example(stride: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic (image, trimap) pair of side ``size`` rounded up to the stride, with all three classes."""
    side = max(stride, -(-size // stride) * stride)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, side, side + stride, generator=g)
    trimap = torch.full((1, 1, side, side + stride), 128, dtype=torch.uint8)
    trimap[..., : side // 4, :] = 0
    trimap[..., -side // 4 :, :] = 255
    return image, trimap


def export_model(
    model: nn.Module, fmt: str, path: str | os.PathLike, *, opset: int | None = None, exporter: str = "torchscript"
) -> Path:
    """Writes ``MattingExport(model)`` to ``path`` as ONNX or TorchScript. Returns the path.

    Args:
        fmt: "onnx" or "torchscript".
        opset: ONNX opset; default 17 (torchscript exporter) or 18 (dynamo exporter).
        exporter: for ONNX, "torchscript" (``torch.onnx.export(dynamo=False)``: batch, height and width dynamic;
            fast) or "dynamo" (the torch.export-based exporter: height and width dynamic, batch 1; much slower
            even for a tiny network, in symbolic-shape reasoning).
    The model is exported on the CPU in float32; the caller's model is not modified. The file is written under
    a temporary name and renamed: a failed write (OutputError) leaves nothing at ``path``.
    """
    if exporter not in ("torchscript", "dynamo"):
        raise MattingError(f"exporter '{exporter}' is not one of torchscript, dynamo")
    if fmt not in FORMATS:
        raise MattingError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    path = Path(path)
    check_output_file(path, "the export")
    module = MattingExport(copy.deepcopy(unwrap(model)).cpu().float())
    stride = module.output_stride
    example = _example(stride)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "onnx":
            _export_onnx(module, example, tmp, opset, exporter)
        else:
            # plain_ops: the traced graph gets standard operators instead of this package's custom ops.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), plain_ops():
                # The network's Python-level size checks become constants in the trace: expected, harmless.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                traced = torch.jit.trace(module, example, check_trace=False)
            # Through a Python file: torch's own file writer aborts the process on a full disk instead of raising.
            with open(tmp, "wb") as f:
                torch.jit.save(traced, f)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: could not write ({exc.strerror or exc}); nothing was written there") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_onnx(
    module: MattingExport, example: tuple[torch.Tensor, torch.Tensor], path: Path, opset: int | None, exporter: str
) -> None:
    import onnx  # optional (the test extra): only ONNX export needs it

    names = {"input_names": ["image", "trimap"], "output_names": ["alpha"]}
    with torch.no_grad(), warnings.catch_warnings(), plain_ops():  # standard operators only, as above
        # The network's Python-level size checks become constants in the trace (expected, harmless), and the
        # exporters are chatty about their own deprecations and internals.
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(
                module, example, str(path), dynamo=False, opset_version=opset or 17,
                dynamic_axes={"image": axes, "trimap": axes, "alpha": axes}, **names,
            )
        else:
            stride = module.output_stride
            # H = stride * h, W = stride * w: the exporter then knows every size is a multiple of the stride.
            dims = {
                2: stride * torch.export.Dim("h", min=1, max=16384 // stride),
                3: stride * torch.export.Dim("w", min=1, max=16384 // stride),
            }
            program = torch.onnx.export(
                module, example, dynamo=True, opset_version=opset or 18, external_data=False,
                dynamic_shapes={"image": dims, "trimap": dims}, **names,
            )
            program.save(str(path))
    proto = onnx.load(str(path))
    for key, value in (("output_stride", str(module.output_stride)), ("producer", "matting.export")):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def run_exported(path: str | os.PathLike, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """Runs an exported file on one batch. ``image`` (B, 3, H, W) float32, ``trimap`` (B, 1, H, W) uint8.

    Returns (B, 1, H, W) float32 alpha. ONNX runs with onnxruntime on the CPU, TorchScript with torch.jit.load.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort  # optional (the test extra): only checking an ONNX export needs it

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["alpha"], {"image": image, "trimap": trimap})[0]
    module = torch.jit.load(str(path), map_location="cpu")
    # No profiling-executor optimisation: for a run or two it costs more than it saves.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return module(torch.from_numpy(image), torch.from_numpy(trimap)).numpy()


def verify_export(model: nn.Module, path: str | os.PathLike, size: int = 64) -> float:
    """Runs the export and PyTorch on deterministic inputs at two sizes (so dynamic height/width are exercised).

    Returns the largest |exported - PyTorch| alpha difference.
    """
    module = MattingExport(unwrap(model).cpu().float())
    worst = 0.0
    for s in (size, size + 2 * module.output_stride):
        image, trimap = _example(module.output_stride, s)
        with torch.no_grad():
            expected = module(image, trimap).numpy()
        got = run_exported(path, image.numpy(), trimap.numpy())
        if got.shape != expected.shape:
            raise RuntimeError(f"{path}: output {got.shape} for input {tuple(image.shape)}, expected {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m matting.export", description="Export a checkpoint to ONNX or TorchScript."
    )
    p.add_argument("--checkpoint", default=DEMO_CHECKPOINT, help=f"default {DEMO_CHECKPOINT}")
    p.add_argument("--format", required=True, choices=list(FORMATS))
    p.add_argument(
        "--out", default=None, help="output file (default: next to the checkpoint, <stem>.onnx / .torchscript.pt)"
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17, or 18 with --exporter dynamo)")
    p.add_argument(
        "--exporter", default="torchscript", choices=["torchscript", "dynamo"],
        help="ONNX exporter: torchscript (default; fast, dynamic batch) or dynamo (torch.export; slow, batch 1)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch after export")
    return p


def _check_optional_packages(fmt: str, exporter: str, verify: bool) -> None:
    """ONNX export needs onnx (the dynamo exporter onnxscript too), its check onnxruntime: optional packages,
    named if absent."""
    if fmt != "onnx":
        return
    needed = ["onnx"] + (["onnxscript"] if exporter == "dynamo" else []) + (["onnxruntime"] if verify else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise MattingError(f"ONNX export needs {', '.join(missing)}: pip install {' '.join(missing)} "
                           "(or pip install -r requirements-dev.txt)")


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flush_denormals()
    checkpoint = existing_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.with_name(checkpoint.stem + FORMATS[args.format])
    check_output_file(out, "the export", inputs=[checkpoint])  # before loading anything
    _check_optional_packages(args.format, args.exporter, verify=not args.no_verify)
    model, _ = model_from_checkpoint(checkpoint, "cpu")
    export_model(model, args.format, out, opset=args.opset, exporter=args.exporter)
    if not args.no_verify:
        diff = verify_export(model, out)
        print(f"max |{args.format} - pytorch| alpha difference: {diff:.2e}")
        if diff > 1e-4:
            print(f"warning: {out} differs from PyTorch by more than 1e-4", flush=True)
            return 1
    print(f"input: image (B,3,H,W) float32 RGB in [0,1], trimap (B,1,H,W) uint8 0/128/255; H, W multiples of "
          f"{model.output_stride}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
