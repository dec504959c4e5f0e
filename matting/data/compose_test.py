"""Composes the Composition-1k test set with the exact semantics of Adobe's script.

    python -m matting.data.compose_test --dataset DIR/Combined_Dataset --bg-dir VOC_IMAGES --out OUT

writes ``OUT/merged/<fgstem>_<k>.png``, ``OUT/alpha/<fgstem>.png``, ``OUT/trimaps/<fgstem>_<k>.png`` and
``OUT/manifest.json``. Published numbers depend on these pixels (a different composer moved GCA's SAD from
35.28 to 37.8), so every step follows Adobe's public compose script:

- fg number ``i`` of ``test_fg_names.txt`` gets backgrounds ``n*i .. n*i+n-1`` of ``test_bg_names.txt`` in
  order, ``n = len(bg names) / len(fg names)`` (20 for the real set);
- images are decoded with Pillow and converted to RGB; a background smaller than the fg in either side is
  upscaled with Pillow's BICUBIC, then its top-left fg-sized corner is used;
- alpha ``a = channel 0 / 255`` in float64 (Python floats in the script); ``a >= 1`` takes the fg pixel,
  ``a > 0`` takes ``int(a*fg + (1-a)*bg)`` (truncation), ``a == 0`` keeps the background.

A run is skipped when ``OUT/manifest.json`` is complete and records the same inputs (names, sizes and
modification times of every input file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from matting.data.io import (
    check_same_size,
    find_by_stem,
    read_gray,
    read_rgb_pil,
    read_trimap,
    write_png,
    write_text_atomic,
)
from matting.data.release import (
    MANIFEST,
    MANIFEST_TOOL,
    TEST_BG_LIST,
    TEST_DIR,
    TEST_FG_LIST,
    check_release_dir,
    format_list,
    is_test_folder,
    locate_backgrounds,
    locate_foregrounds,
    missing_error,
    read_manifest,
    read_names,
)
from matting.errors import MattingError, cli

# Bump when the composed pixels or the layout change, so older outputs are recomposed.
FORMAT_VERSION = 1


def fit_background(bg: Image.Image, width: int, height: int) -> Image.Image:
    """Adobe's background fitting: upscale only if needed, then take the top-left ``width x height`` corner.

    Args:
        bg: a Pillow RGB image of any size.
    Returns:
        a Pillow RGB image of exactly ``width x height``.
    """
    bw, bh = bg.size
    wratio = width / bw
    hratio = height / bh
    ratio = wratio if wratio > hratio else hratio
    if ratio > 1:
        # Adobe's script: bg.resize((math.ceil(bw*ratio), math.ceil(bh*ratio)), Image.BICUBIC), with the
        # ratios as Python floats. The ceil can make the new size one pixel larger than the fg; the crop
        # below takes care of it, and matching it keeps the bicubic sampling positions identical.
        bg = bg.resize((math.ceil(bw * ratio), math.ceil(bh * ratio)), Image.Resampling.BICUBIC)
    return bg.crop((0, 0, width, height))


def composite_adobe(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Adobe's per-pixel composite, vectorised with bit-identical arithmetic.

    Args:
        fg: (H, W, 3) uint8 RGB.
        alpha: (H, W) uint8 in [0, 255].
        bg: (H, W, 3) uint8 RGB, already fitted to the fg.
    Returns:
        (H, W, 3) uint8: fg where alpha == 255, bg where alpha == 0, else ``int(a*fg + (1-a)*bg)`` with
        ``a = alpha / 255`` in float64 (the script's Python floats: same operations, same order, so the same
        rounding; truncation, not rounding, to uint8).
    """
    if fg.shape != bg.shape or fg.shape[:2] != alpha.shape:
        raise ValueError(f"shape mismatch: fg {fg.shape}, alpha {alpha.shape}, bg {bg.shape}")
    out = bg.copy()
    opaque = alpha == 255
    out[opaque] = fg[opaque]
    partial = (alpha > 0) & ~opaque
    a = (alpha[partial].astype(np.float64) / 255)[:, None]
    mixed = a * fg[partial] + (1 - a) * bg[partial]
    out[partial] = mixed.astype(np.uint8)  # values lie in [0, 255]: the cast truncates like int()
    return out


@dataclass(frozen=True)
class ForegroundJob:
    """One test foreground and its ``n`` backgrounds and trimaps (``k = 0 .. n-1``)."""

    stem: str
    fg_name: str
    fg_path: Path
    alpha_path: Path
    bg_paths: tuple[Path, ...]
    trimap_paths: tuple[Path, ...]


def plan_test_set(dataset_dir: str | os.PathLike, bg_dir: str | os.PathLike) -> list[ForegroundJob]:
    """Reads the test lists and finds every input file; opens no image.

    Raises:
        MattingError: missing lists or files (all listed at once), empty lists, repeated fg names, a bg list
        whose length is not a multiple of the fg list's, or fg stems that collide with composite names.
    """
    part = check_release_dir(dataset_dir, TEST_DIR)
    fg_list, bg_list = part / TEST_FG_LIST, part / TEST_BG_LIST
    fg_names, bg_names = read_names(fg_list), read_names(bg_list)
    if len(bg_names) % len(fg_names):
        raise MattingError(
            f"{bg_list}: {len(bg_names)} backgrounds for {len(fg_names)} foregrounds in {fg_list}; "
            "each foreground needs the same number of backgrounds"
        )
    n = len(bg_names) // len(fg_names)
    fg_paths, alpha_paths = locate_foregrounds(fg_names, part, fg_list)
    bg_paths = locate_backgrounds(bg_names, bg_dir, bg_list)

    stems = [Path(name).stem for name in fg_names]
    # "<stem>_<k>" of one fg must not be another fg's stem, or its alpha file would be taken for the other.
    composite_names = {f"{s}_{k}" for s in stems for k in range(n)}
    clashes = sorted(composite_names.intersection(stems))
    if clashes:
        raise MattingError(f"{fg_list}: foreground names clash with composite names <stem>_<k>: "
                           f"{format_list(clashes)}")

    jobs, missing = [], []
    for i, (stem, name) in enumerate(zip(stems, fg_names)):
        trimap_dir = fg_paths[i].parent.parent / "trimaps"
        trimaps = []
        for k in range(n):
            t = find_by_stem(trimap_dir, f"{stem}_{k}")
            if t is None:
                missing.append(trimap_dir / f"{stem}_{k}.png")
            trimaps.append(t)
        jobs.append(ForegroundJob(stem, name, fg_paths[i], alpha_paths[i], tuple(bg_paths[n * i:n * i + n]),
                                  tuple(trimaps)))
    if missing:
        raise missing_error("test trimaps are", missing)
    return jobs


def inputs_hash(jobs: list[ForegroundJob]) -> str:
    """SHA-256 over the plan and every input file's name, size and modification time (no file is read)."""
    h = hashlib.sha256(f"compose_test v{FORMAT_VERSION}\n".encode())
    for job in jobs:
        for p in (job.fg_path, job.alpha_path, *job.bg_paths, *job.trimap_paths):
            st = p.stat()
            h.update(f"{job.stem}\t{p.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _outputs(jobs: list[ForegroundJob]) -> list[str]:
    """Paths (relative to the output folder) that a plan writes."""
    files = []
    for job in jobs:
        files.append(f"alpha/{job.stem}.png")
        for k in range(len(job.bg_paths)):
            files += [f"merged/{job.stem}_{k}.png", f"trimaps/{job.stem}_{k}.png"]
    return files


def compose_foreground(job: ForegroundJob, out_dir: Path) -> list[dict]:
    """Writes the ``n`` composites, their trimaps and the alpha of one foreground.

    Returns:
        one manifest entry per composite.
    """
    fg_img = read_rgb_pil(job.fg_path)
    fg = np.asarray(fg_img)
    alpha = read_gray(job.alpha_path)
    check_same_size(job.fg_path, fg, job.alpha_path, alpha)
    width, height = fg_img.size
    write_png(out_dir / "alpha" / f"{job.stem}.png", alpha)
    entries = []
    for k, (bg_path, trimap_path) in enumerate(zip(job.bg_paths, job.trimap_paths)):
        trimap = read_trimap(trimap_path)
        check_same_size(job.fg_path, fg, trimap_path, trimap)
        bg_img = read_rgb_pil(bg_path)
        fitted = fit_background(bg_img, width, height)
        merged = composite_adobe(fg, alpha, np.asarray(fitted))
        name = f"{job.stem}_{k}"
        write_png(out_dir / "merged" / f"{name}.png", merged)
        write_png(out_dir / "trimaps" / f"{name}.png", trimap)
        entries.append({
            "name": name,
            "fg": job.fg_name,
            "bg": bg_path.name,
            "k": k,
            "fg_size": [width, height],
            "bg_size": list(bg_img.size),
            "bg_upscaled": bg_img.size[0] < width or bg_img.size[1] < height,
        })
    return entries


def _try_compose(job: ForegroundJob, out_dir: Path) -> tuple[list[dict], str | None]:
    try:
        return compose_foreground(job, out_dir), None
    except MattingError as exc:
        return [], str(exc)


def _is_current(manifest: dict | None, digest: str, out_dir: Path, outputs: list[str]) -> bool:
    return (manifest is not None and manifest.get("complete") is True and manifest.get("inputs_hash") == digest
            and all((out_dir / f).is_file() for f in outputs))


def _manifest(jobs: list[ForegroundJob], digest: str, dataset_dir: str | os.PathLike, bg_dir: str | os.PathLike,
              outputs: list[str], entries: list[dict], complete: bool) -> str:
    """The manifest as JSON text, one list item per line so it stays readable with 1,000 composites."""
    head = {
        "tool": MANIFEST_TOOL,
        "format": FORMAT_VERSION,
        "complete": complete,
        "inputs_hash": digest,
        "dataset": str(Path(dataset_dir).resolve()),
        "bg_dir": str(Path(bg_dir).resolve()),
        "foregrounds": len(jobs),
        "bgs_per_fg": len(jobs[0].bg_paths),
    }
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    for key, items in (("outputs", outputs), ("composites", entries)):
        body = ",\n".join(f"  {json.dumps(item)}" for item in items)
        lines.append(f" {json.dumps(key)}: [\n{body}\n ]," if items else f" {json.dumps(key)}: [],")
    lines[-1] = lines[-1].rstrip(",")
    return "{\n" + "\n".join(lines) + "\n}\n"


def is_test_set_current(dataset_dir: str | os.PathLike, bg_dir: str | os.PathLike, out_dir: str | os.PathLike) -> bool:
    """True if ``out_dir`` holds a complete composition of exactly these inputs (nothing to do)."""
    jobs = plan_test_set(dataset_dir, bg_dir)
    out = Path(out_dir)
    return _is_current(read_manifest(out), inputs_hash(jobs), out, _outputs(jobs))


def compose_test_set(
    dataset_dir: str | os.PathLike,
    bg_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int = 2,
    progress: bool = True,
    *,
    force: bool = False,
) -> Path:
    """Composes the test set of ``dataset_dir`` (Adobe's ``Combined_Dataset/``) with backgrounds from ``bg_dir``.

    Args:
        workers: processes; ``<= 1`` composes in this process.
        progress: show a progress bar on stderr.
        force: recompose even if ``out_dir/manifest.json`` says the outputs are current.
    Returns:
        the path of ``out_dir/manifest.json``.
    Raises:
        MattingError: bad inputs (all missing files at once), or, after composing everything else, every
        foreground that failed (unreadable, 16-bit, fg/alpha/trimap size mismatch).
    """
    out = Path(out_dir)
    jobs = plan_test_set(dataset_dir, bg_dir)
    digest = inputs_hash(jobs)
    outputs = _outputs(jobs)
    old = read_manifest(out)
    if not force and _is_current(old, digest, out, outputs):
        return out / MANIFEST
    merged_dir = out / "merged"
    if old is None and merged_dir.is_dir() and any(merged_dir.iterdir()):
        raise MattingError(f"{merged_dir}: already holds files not written by this composer; use an empty --out")
    stale = sorted(set(old.get("outputs", [])) - set(outputs)) if old is not None else []

    # An incomplete manifest marks the folder as ours before anything is written, so an interrupted run is
    # recognised (and redone) next time; it still lists the stale files, so they are removed then.
    write_text_atomic(out / MANIFEST, _manifest(jobs, digest, dataset_dir, bg_dir, outputs + stale, [], False))
    total = sum(len(j.bg_paths) for j in jobs)
    entries: list[dict] = []
    errors: list[str] = []
    with tqdm(total=total, unit="img", desc="composing", disable=not progress) as bar:
        if workers <= 1:
            results = (_try_compose(job, out) for job in jobs)
            for (job_entries, error), job in zip(results, jobs):
                entries += job_entries
                errors += [error] if error else []
                bar.update(len(job.bg_paths))
        else:
            with ProcessPoolExecutor(workers) as pool:
                futures = {pool.submit(_try_compose, job, out): job for job in jobs}
                for fut in as_completed(futures):
                    job_entries, error = fut.result()
                    entries += job_entries
                    errors += [error] if error else []
                    bar.update(len(futures[fut].bg_paths))
    if errors:
        raise MattingError(f"{len(errors)} of {len(jobs)} test foregrounds failed: {format_list(errors, 5, '; ')}")
    for rel in stale:
        (out / rel).unlink(missing_ok=True)
    order = {job.fg_name: i for i, job in enumerate(jobs)}
    entries.sort(key=lambda e: (order[e["fg"]], e["k"]))
    write_text_atomic(out / MANIFEST, _manifest(jobs, digest, dataset_dir, bg_dir, outputs, entries, True))
    return out / MANIFEST


def default_test_out(dataset_dir: str | os.PathLike) -> Path:
    """Where ``resolve_test_source`` composes a raw release's test set by default: the folder name GCA and
    MatteFormer use, next to ``Combined_Dataset/``."""
    return Path(dataset_dir).resolve().parent / "Composition-1k-testset"


def resolve_test_source(
    path: str | os.PathLike,
    bg_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """Returns a prepared test folder for ``path``.

    ``path`` is either a prepared folder (returned as is) or Adobe's ``Combined_Dataset/``, whose test set is
    composed from ``bg_dir`` (the VOC images) into ``out`` (default ``default_test_out(path)``). Composition
    is skipped when ``out/manifest.json`` records the same inputs.
    """
    p = Path(path)
    if is_test_folder(p):
        return p
    if (p / TEST_DIR / TEST_FG_LIST).is_file():
        if bg_dir is None:
            raise MattingError(f"{p}: raw release; give the VOC background folder to compose its test set")
        target = Path(out) if out is not None else default_test_out(p)
        compose_test_set(p, bg_dir, target, workers=workers, progress=progress)
        return target
    raise MattingError(
        f"{p}: neither a prepared test folder (merged/, alpha/ or alpha_copy/, trimaps/) nor Adobe's "
        f"Combined_Dataset/ (with {TEST_DIR}/{TEST_FG_LIST})"
    )


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matting.data.compose_test",
        description="Compose the Composition-1k test set exactly like Adobe's script.",
    )
    parser.add_argument("--dataset", required=True, help="Adobe's Combined_Dataset/ folder")
    parser.add_argument("--bg-dir", required=True, help="folder of the VOC images named in test_bg_names.txt")
    parser.add_argument("--out", required=True, help="output folder (merged/, alpha/, trimaps/, manifest.json)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--force", action="store_true", help="recompose even if the manifest is current")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.force and is_test_set_current(args.dataset, args.bg_dir, args.out):
        print(f"{Path(args.out)} is up to date (same inputs as its {MANIFEST}); --force recomposes it")
        return 0
    manifest = compose_test_set(args.dataset, args.bg_dir, args.out, workers=args.workers,
                                progress=not args.no_progress, force=args.force)
    data = read_manifest(Path(args.out))
    print(f"{len(data['composites'])} composites of {data['foregrounds']} foregrounds in {Path(args.out)} "
          f"(manifest {manifest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
