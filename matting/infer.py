"""Alpha mattes for your own images: ``python -m matting.infer --image I --trimap T --out O [--foreground] [--cutout]``.

``--image`` and ``--trimap`` are two files, or two folders whose images are paired by file name without suffix
(``photo.jpg`` with ``photo.png``). Outputs, all 8-bit PNG:

- ``--out`` a folder (the default, and always for folder inputs): ``OUT/alpha/<stem>.png``, and on request
  ``OUT/foreground/<stem>.png`` (RGB foreground colours) and ``OUT/cutout/<stem>.png`` (RGBA);
- ``--out`` a file name ending in ``.png`` (file inputs only): the alpha there, the others next to it as
  ``<out stem>_foreground.png`` and ``<out stem>_cutout.png``.

Images may be RGB, grayscale (repeated to 3 channels), RGBA (the alpha channel is ignored) or 16-bit; trimaps
are single-channel with 0 = background, 128 = unknown, 255 = foreground (near values are mapped with a warning).
The prediction is the same code as evaluation (:class:`matting.engine.predictor.Predictor`): full resolution,
reflect padding to the output stride, known regions forced. Foreground colours are estimated with pymatting's
``estimate_foreground_ml`` (Germer et al. 2020); the cut-out uses them, so hair and soft edges do not carry the
old background's colour.

Python API::

    from matting.engine.predictor import Predictor
    alpha = Predictor.from_checkpoint("runs/demo/checkpoints/latest.pth").predict(image, trimap)  # (H, W) in [0, 1]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from matting.data.io import (
    IMAGE_SUFFIXES,
    check_not_inputs,
    check_output_file,
    check_same_size,
    check_writable_dir,
    find_by_stem,
    list_images,
    read_rgb,
    read_trimap,
    write_png,
)
from matting.engine.checkpoint import DEMO_CHECKPOINT, existing_checkpoint
from matting.engine.predictor import AMP_MODES, Predictor
from matting.engine.runtime import flush_denormals
from matting.errors import MattingError, OutputError, cli

DEFAULT_OUT = "runs/infer"

__all__ = ["Job", "cutout", "estimate_foreground", "main", "plan_jobs", "run_job"]


@dataclass(frozen=True)
class Job:
    """One image to matte and where its outputs go (``foreground``/``cutout`` None when not requested)."""

    image: Path
    trimap: Path
    alpha_out: Path
    foreground_out: Path | None = None
    cutout_out: Path | None = None


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours behind a matte (pymatting's multi-level ``estimate_foreground_ml``).

    Args:
        image: (H, W, 3) uint8 RGB composite.
        alpha: (H, W) uint8 alpha in [0, 255].
    Returns:
        (H, W, 3) uint8 RGB foreground, rounded.
    """
    from pymatting import estimate_foreground_ml  # local: pymatting (numba) loads only when asked for

    fg = estimate_foreground_ml(image.astype(np.float64) / 255.0, alpha.astype(np.float64) / 255.0)
    return np.round(np.clip(fg, 0.0, 1.0) * 255.0).astype(np.uint8)


def cutout(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB + (H, W) uint8 alpha -> (H, W, 4) uint8 RGBA (straight, not premultiplied)."""
    return np.concatenate([foreground, alpha[:, :, None]], axis=2)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding, or None if PIL cannot tell (the reader will)."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - the real reader reports unreadable files with a clear message
        return None


def plan_jobs(image: str | Path, trimap: str | Path, out: str | Path, foreground: bool, cut: bool) -> list[Job]:
    """Pairs inputs with trimaps and output paths; checks up front that every pair exists and sizes agree.

    Raises:
        MattingError naming the files: a missing input, a file paired with a folder, an image without trimap,
        an image and trimap of different sizes, an output that would overwrite an input, an output folder that
        is a file or cannot be written.
    """
    image, trimap, out = Path(image), Path(trimap), Path(out)
    for p in (image, trimap):
        if not p.exists():
            raise MattingError(f"{p}: not found")
    if image.is_dir() != trimap.is_dir():
        raise MattingError(f"{image} and {trimap}: give two files or two folders")

    if image.is_file():
        if out.suffix.lower() in IMAGE_SUFFIXES:
            if out.suffix.lower() != ".png":
                raise MattingError(f"{out}: outputs are PNG; name the file .png or give a folder")
            stem = out.with_suffix("")
            jobs = [
                Job(
                    image,
                    trimap,
                    out,
                    stem.with_name(f"{stem.name}_foreground.png") if foreground else None,
                    stem.with_name(f"{stem.name}_cutout.png") if cut else None,
                )
            ]
        else:
            jobs = [_folder_job(image, trimap, out, foreground, cut)]
    else:
        if out.suffix.lower() in IMAGE_SUFFIXES:
            raise MattingError(f"{out}: folder inputs need an output folder, not a file name")
        jobs, missing = [], []
        for img in list_images(image):
            tri = find_by_stem(trimap, img.stem)
            if tri is None:
                missing.append(img.name)
            else:
                jobs.append(_folder_job(img, tri, out, foreground, cut))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise MattingError(f"{trimap}: no trimap named like {len(missing)} image(s) of {image}: {shown}")
        stems = [j.image.stem for j in jobs]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated:
            raise MattingError(f"{image}: several images share the name {repeated[0]!r} (outputs would collide)")

    for job in jobs:  # header-only size check, so a mismatch is reported before hours of work
        a, b = _image_size(job.image), _image_size(job.trimap)
        if a is not None and b is not None and a != b:
            raise MattingError(f"{job.trimap}: size {b[0]}x{b[1]} does not match {job.image} ({a[0]}x{a[1]})")
    _check_outputs(jobs, out)
    return jobs


def _check_outputs(jobs: list[Job], out: Path) -> None:
    """Before any work: no output replaces an input, and the outputs can be written where they go."""
    outputs = [p for job in jobs for p in (job.alpha_out, job.foreground_out, job.cutout_out) if p is not None]
    check_not_inputs(outputs, [p for job in jobs for p in (job.image, job.trimap)])
    if out.suffix.lower() == ".png":
        for path in outputs:
            check_output_file(path, "the matte")
    else:
        check_writable_dir(out, "the outputs")


def _folder_job(image: Path, trimap: Path, out: Path, foreground: bool, cut: bool) -> Job:
    name = f"{image.stem}.png"
    return Job(
        image,
        trimap,
        out / "alpha" / name,
        out / "foreground" / name if foreground else None,
        out / "cutout" / name if cut else None,
    )


def run_job(predictor: Predictor, job: Job) -> np.ndarray:
    """Reads the pair, predicts, writes the requested outputs. Returns the (H, W) uint8 alpha."""
    image = read_rgb(job.image, allow_16bit=True)
    trimap = read_trimap(job.trimap, allow_16bit=True)
    check_same_size(job.image, image, job.trimap, trimap)
    alpha = predictor.predict_uint8(image, trimap)
    write_png(job.alpha_out, alpha)
    if job.foreground_out is not None or job.cutout_out is not None:
        fg = estimate_foreground(image, alpha)
        if job.foreground_out is not None:
            write_png(job.foreground_out, fg)
        if job.cutout_out is not None:
            write_png(job.cutout_out, cutout(fg, alpha))
    return alpha


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m matting.infer", description="Predict alpha mattes (and foregrounds, cut-outs) for images."
    )
    p.add_argument("--checkpoint", default=DEMO_CHECKPOINT, help=f"default {DEMO_CHECKPOINT}")
    p.add_argument("--image", required=True, help="an image file or a folder of images")
    p.add_argument("--trimap", required=True, help="its trimap, or a folder of trimaps named like the images")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder, or a .png file for one image ({DEFAULT_OUT})")
    p.add_argument("--foreground", action="store_true", help="also write the estimated foreground colours")
    p.add_argument("--cutout", action="store_true", help="also write an RGBA cut-out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--amp", default="none", choices=list(AMP_MODES), help="autocast for the network (default none)")
    p.add_argument("--tile", type=int, default=None, help="run the network in tiles of this many pixels")
    p.add_argument("--tile-margin", type=int, default=128, help="context pixels around each tile (default 128)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flush_denormals()
    jobs = plan_jobs(args.image, args.trimap, args.out, args.foreground, args.cutout)
    predictor = Predictor.from_checkpoint(
        existing_checkpoint(args.checkpoint), args.device, args.amp, tile=args.tile, tile_margin=args.tile_margin
    )
    if len(jobs) == 1:
        run_job(predictor, jobs[0])
        for path in (jobs[0].alpha_out, jobs[0].foreground_out, jobs[0].cutout_out):
            if path is not None:
                print(path)
        return 0

    failed: list[str] = []
    for done, job in enumerate(tqdm(jobs, desc="infer", unit="img", disable=args.no_progress, file=sys.stderr)):
        try:
            run_job(predictor, job)
        except OutputError as exc:  # the next write would fail too: stop, saying what is there
            raise OutputError(f"{exc}; stopped: {done - len(failed)} of {len(jobs)} images were written to "
                              f"{args.out}") from None
        except MattingError as exc:  # one bad file does not stop the folder; all are listed at the end
            failed.append(job.image.name)
            tqdm.write(f"error: {exc}", file=sys.stderr)
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise MattingError(f"{len(failed)} of {len(jobs)} images failed: {shown} (the others are in {args.out})")
    print(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
