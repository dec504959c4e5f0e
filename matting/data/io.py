"""Image files in and out, with one-line errors that name the file.

Every reader returns numpy ``uint8`` arrays in RGB order (never OpenCV's BGR), so nothing downstream has to
remember which library read the file:

- ``read_rgb(path)``: (H, W, 3) uint8 in [0, 255]. Grayscale is repeated to 3 channels; an alpha channel is
  dropped (composited images carry no useful alpha); 16-bit is rejected unless ``allow_16bit``.
- ``read_gray(path)``: (H, W) uint8. A 3/4-channel file uses channel 0, as the Composition-1k
  alphas require (some test alphas are saved with 3 identical channels).
- ``read_trimap(path)``: (H, W) uint8 with values exactly {0, 128, 255}; near values (127, 129, JPEG noise) are
  mapped by thresholds (< 85 -> 0, > 170 -> 255, else 128) with a warning.
- ``write_png(path, array)``: atomic (temporary file + rename), so an interrupted run never leaves a truncated PNG.

Every reader goes through ``read_image_bytes``, which refuses a truncated JPEG or PNG (an interrupted copy or
download): libjpeg decodes a cut-off JPEG with its missing part grey and only prints a line on stderr, so the
file is checked for its end (JPEG: whole segments up to the first scan, then an end-of-image marker; PNG: whole
chunks up to IEND).

16-bit and palette PNGs are rejected by default because they silently change values: a 16-bit alpha read as
8-bit by a careless reader is off by 256x, a palette PNG's indices are not grey levels.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from matting.errors import MattingError, MattingWarning, OutputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# PNG colour types (IHDR byte 25): 3 = indexed (palette).
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3


def png_header(path: str | os.PathLike) -> tuple[int, int] | None:
    """Returns (bit_depth, colour_type) of a PNG file, or None if the file is not a PNG."""
    with open(path, "rb") as f:
        return _png_header(f.read(26))


def _png_header(head: bytes) -> tuple[int, int] | None:
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE):
        return None
    bit_depth, colour_type = struct.unpack(">BB", head[24:26])
    return bit_depth, colour_type


# A JPEG marker: 0xFF (plus fill bytes 0xFF), then a code that is neither 0x00 (a stuffed data byte) nor 0xFF.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
_JPEG_EOI, _JPEG_SOS = 0xD9, 0xDA
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and restart markers carry no length


def _jpeg_complete(data: bytes) -> bool:
    """True if a JPEG's segments are all inside ``data`` and an end-of-image marker follows its first scan.

    The segments before the first scan (metadata, tables) are walked by their lengths, so an end marker inside
    them (an embedded thumbnail's) does not count. After that, entropy-coded data never holds the bytes FF D9
    (a data byte FF is always followed by 00), so the end marker is simply searched for, from the end of the
    file (where it is, unless bytes follow it): a full scan of the data would cost a large part of a decode.
    """
    pos, n = 2, len(data)
    while True:
        match = _JPEG_MARKER.search(data, pos)  # also skips stray bytes between segments, as libjpeg does
        if match is None:
            return False
        code, pos = match.group(1)[0], match.end()
        if code == _JPEG_EOI:
            return False  # an image without a scan
        if code in _JPEG_STANDALONE:
            continue
        if pos + 2 > n:
            return False
        pos += int.from_bytes(data[pos : pos + 2], "big")
        if pos > n:
            return False
        if code == _JPEG_SOS:
            return data.rfind(b"\xff\xd9", pos) >= 0


def _png_complete(data: bytes) -> bool:
    """True if a PNG's chunks, each of the length it declares, run up to an IEND chunk inside ``data``."""
    pos, n = len(_PNG_SIGNATURE), len(data)
    while pos + 8 <= n:
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        pos += 12 + length  # length, type, data, CRC
        if pos > n:
            return False
        if kind == b"IEND":
            return True
    return False


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, for a decoder; a truncated JPEG or PNG is a MattingError naming the file.

    Other formats are left to the decoders, which reject a truncated file themselves.
    """
    p = Path(path)
    if not p.is_file():
        raise MattingError(f"{p}: file not found")
    data = p.read_bytes()
    if data.startswith(b"\xff\xd8\xff") and not _jpeg_complete(data):
        raise MattingError(f"{p}: not a readable image, truncated JPEG (the file ends before its image data "
                           "does: an interrupted copy or download?); replace it with a complete copy")
    if data.startswith(_PNG_SIGNATURE) and not _png_complete(data):
        raise MattingError(f"{p}: not a readable image, truncated PNG (the file ends before its image data "
                           "does: an interrupted copy or download?); replace it with a complete copy")
    return data


def _imread(path: str | os.PathLike, *, allow_palette: bool) -> np.ndarray:
    p = Path(path)
    data = read_image_bytes(p)
    header = _png_header(data[:26])
    if header is not None and header[1] == _PNG_PALETTE and not allow_palette:
        raise MattingError(f"{p}: palette (indexed-colour) PNG; save it as 8-bit grayscale or RGB")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise MattingError(f"{p}: not a readable image (corrupt or unsupported format)")
    return img


def _to_uint8(img: np.ndarray, path: str | os.PathLike, allow_16bit: bool) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        if not allow_16bit:
            raise MattingError(f"{path}: 16-bit image; 8-bit (0..255) is required here")
        # 65535 / 257 = 255 exactly, so full-range values map to full range.
        return np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    raise MattingError(f"{path}: unsupported pixel type {img.dtype}; 8-bit (0..255) is required")


def read_rgb(path: str | os.PathLike, *, allow_16bit: bool = False) -> np.ndarray:
    """Reads a colour image. Returns (H, W, 3) uint8 RGB in [0, 255].

    Grayscale inputs are repeated to three channels; a 4th (alpha) channel is dropped.
    """
    img = _to_uint8(_imread(path, allow_palette=True), path, allow_16bit)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    # cvtColor, not img[:, :, ::-1]: the negative-stride copy is many times slower on large images.
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_gray(path: str | os.PathLike, *, allow_16bit: bool = False, allow_palette: bool = False) -> np.ndarray:
    """Reads a single-channel 8-bit image such as an alpha matte. Returns (H, W) uint8 in [0, 255].

    Multi-channel files use channel 0 (OpenCV's B = the file's first channel for RGB-saved grey mattes, whose
    channels are identical), which is what the official Composition-1k tools do.
    """
    img = _to_uint8(_imread(path, allow_palette=allow_palette), path, allow_16bit)
    if img.ndim == 3:
        # OpenCV returns BGR(A); the file's channel 0 (R) is the last of the three colour channels.
        img = img[:, :, 2] if img.shape[2] >= 3 else img[:, :, 0]
    return np.ascontiguousarray(img)


def normalize_trimap(trimap: np.ndarray, name: str | os.PathLike = "trimap") -> np.ndarray:
    """Maps a trimap to exactly {0, 128, 255}: < 85 -> 0, > 170 -> 255, else 128.

    Args:
        trimap: (H, W) uint8.
        name: the file name used in the warning when values had to be mapped.
    Returns:
        (H, W) uint8 with values in {0, 128, 255}.
    """
    if trimap.ndim != 2:
        raise MattingError(f"{name}: trimap must be single-channel, got shape {trimap.shape}")
    out = np.full_like(trimap, 128)
    out[trimap < 85] = 0
    out[trimap > 170] = 255
    odd = (trimap != out).sum()
    if odd:
        warnings.warn(
            f"{name}: {int(odd)} trimap pixels are not 0/128/255; mapped them by thresholds <85 / >170",
            MattingWarning,
            stacklevel=2,
        )
    return out


def read_trimap(path: str | os.PathLike, *, allow_16bit: bool = False) -> np.ndarray:
    """Reads a trimap. Returns (H, W) uint8 with values exactly in {0, 128, 255} (see ``normalize_trimap``)."""
    return normalize_trimap(read_gray(path, allow_16bit=allow_16bit), path)


def check_same_size(path_a: str | os.PathLike, a: np.ndarray, path_b: str | os.PathLike, b: np.ndarray) -> None:
    """Raises a MattingError naming both files if the two images differ in height or width."""
    if a.shape[:2] != b.shape[:2]:
        raise MattingError(
            f"{path_b}: size {b.shape[1]}x{b.shape[0]} does not match {path_a} ({a.shape[1]}x{a.shape[0]})"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yields a temporary path next to ``path``; on success it is renamed over ``path``, on failure removed.

    ``suffix`` keeps the extension that encoders such as ``cv2.imwrite`` choose the format by. An interrupted
    run therefore never leaves a truncated file under the final name. An ``OSError`` (full disk, no permission)
    becomes an :class:`OutputError` naming ``path``; the previous file there, if any, is unchanged.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}{suffix}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, p)
    except OSError as exc:
        raise OutputError(f"{p}: could not write ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _imwrite(path: str | os.PathLike, image: np.ndarray, suffix: str, params: list[int]) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"writing {path}: expected uint8, got {image.dtype}")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    with atomic_path(path, suffix) as tmp:
        if not cv2.imwrite(str(tmp), image, params):
            raise OutputError(f"{path}: could not write the image (full disk or no permission?)")


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes an 8-bit PNG atomically.

    Args:
        image: (H, W) uint8 grey, (H, W, 3) uint8 RGB or (H, W, 4) uint8 RGBA.
    """
    _imwrite(path, image, ".png", [])


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name. Raises if the folder is missing or empty.

    Hidden files (``.DS_Store``, macOS ``._x.png``) and files of other types are skipped with a MattingWarning
    that names them, so a folder that is not what it seems does not go unnoticed.
    """
    files = _image_files(folder)
    if not files:
        raise MattingError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def _image_files(folder: str | os.PathLike) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise MattingError(f"{d}: folder not found")
    files, skipped = [], []
    for p in sorted(d.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            files.append(p)
        elif p.is_file():
            skipped.append(p.name)
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{d}: skipped {len(skipped)} files that are hidden or not images ({', '.join(IMAGE_SUFFIXES)})"
                      f": {shown}", MattingWarning, stacklevel=3)
    return files


def images_by_stem(folder: str | os.PathLike, allow_empty: bool = False) -> dict[str, Path]:
    """``list_images(folder)`` keyed by file name without suffix; several files of one stem (``a.png`` and
    ``a.jpg``) are an error listing them, since whatever pairs or writes by name would mix them up."""
    by_stem: dict[str, list[Path]] = {}
    for p in _image_files(folder) if allow_empty else list_images(folder):
        by_stem.setdefault(p.stem, []).append(p)
    repeated = [" and ".join(p.name for p in paths) for paths in by_stem.values() if len(paths) > 1]
    if repeated:
        shown = "; ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        raise MattingError(f"{folder}: {len(repeated)} names used by several files (keep one of each): {shown}")
    return {stem: paths[0] for stem, paths in by_stem.items()}


def find_by_stem(folder: str | os.PathLike, stem: str) -> Path | None:
    """The image in ``folder`` whose name without suffix is ``stem`` (any image suffix), or None."""
    for suffix in IMAGE_SUFFIXES:
        for cand in (Path(folder) / f"{stem}{suffix}", Path(folder) / f"{stem}{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None


def split_composite_stem(stem: str) -> str:
    """``"cat_7"`` -> ``"cat"``: the foreground stem of a composite named ``<fgstem>_<k>``; other stems unchanged."""
    head, sep, tail = stem.rpartition("_")
    return head if sep and head and tail.isdigit() else stem


def find_alpha(alpha_dir: str | os.PathLike, image_stem: str) -> Path | None:
    """The ground-truth alpha for a composite: ``<stem>.*`` if present (GCA's alpha_copy layout), else the
    foreground's ``<fgstem>.*`` for a composite named ``<fgstem>_<k>`` (Adobe's layout, no copies needed)."""
    exact = find_by_stem(alpha_dir, image_stem)
    if exact is not None:
        return exact
    fg_stem = split_composite_stem(image_stem)
    return find_by_stem(alpha_dir, fg_stem) if fg_stem != image_stem else None


# Pillow modes that hold more than 8 bits per channel; converting them to RGB would silently drop bits.
_PIL_WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def read_rgb_pil(path: str | os.PathLike) -> Image.Image:
    """Opens a colour image with Pillow and returns it fully loaded in mode ``"RGB"`` (8 bits per channel).

    For code that must reproduce a reference script pixel for pixel: Adobe's Composition-1k composer decodes
    and resizes with Pillow, and a JPEG decoded by OpenCV can differ from Pillow's by a grey level. Everything
    else should use ``read_rgb``. 16-bit and float images are rejected like ``read_rgb`` does.
    """
    p = Path(path)
    data = read_image_bytes(p)
    header = _png_header(data[:26])
    if header is not None and header[0] == 16:
        raise MattingError(f"{p}: 16-bit image; 8-bit (0..255) is required here")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in _PIL_WIDE_MODES:
                raise MattingError(f"{p}: {im.mode} image with more than 8 bits per channel; 8-bit is required")
            im.load()
            return im if im.mode == "RGB" else im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MattingError(f"{p}: not a readable image ({type(exc).__name__})") from None


def write_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Writes an 8-bit JPEG atomically.

    Args:
        image: (H, W) uint8 grey or (H, W, 3) uint8 RGB.
        quality: libjpeg quality, 0..100.
    """
    _imwrite(path, image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Output locations, checked before the work that fills them


def check_writable_dir(path: str | os.PathLike, what: str = "outputs") -> None:
    """Raises a MattingError naming ``path`` unless it is a folder that can be written to, or can be created.

    Creates nothing that is not there (a failed start leaves no empty folder): a missing folder is judged by
    its nearest existing parent, where a temporary file is created and removed.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MattingError(f"{p}: exists and is not a folder; {what} need a folder here")
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise MattingError(f"{p}: cannot be created, {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MattingError(f"{p}: cannot write here ({exc.strerror or exc})") from None


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if ``a`` and ``b`` name the same file or folder (through links; on case-insensitive file systems too,
    when both exist)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # also through links and case-insensitive file systems
    return os.path.realpath(a) == os.path.realpath(b)


def check_not_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """Raises a MattingError if an output path is one of the input files (writing would destroy it)."""
    sources = [Path(i) for i in inputs]
    for out in map(Path, outputs):
        for source in sources:
            if same_path(out, source):
                raise MattingError(f"{out}: is an input ({source}); refusing to write there, choose another --out")


def check_output_file(path: str | os.PathLike, what: str, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Checks before any work that ``path`` can be written as a file: not a folder, not one of ``inputs``, in a
    folder that is writable or can be created. Raises a MattingError naming the problem."""
    p = Path(path)
    if p.is_dir():
        raise MattingError(f"{p}: is a folder; give a file name for {what}")
    check_not_inputs([p], inputs)
    check_writable_dir(p.parent, what)
