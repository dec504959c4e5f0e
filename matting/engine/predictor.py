"""The one inference path: full-resolution prediction of an alpha matte from an image and a trimap.

Evaluation (``matting.evaluate``), inference (``matting.infer``), the trainer's validation and the export parity
test all go through :class:`Predictor`, so the Composition-1k test protocol (``docs/protocol.md``) is implemented once:

1. reflect-pad the image and trimap on the bottom/right to a multiple of the network's output stride (numpy's
   ``reflect`` mode, which keeps reflecting back and forth when the pad is larger than the image, so tiny images
   work too; a 1-pixel side is repeated);
2. build the network input with :func:`matting.models.make_input` (the only place that normalises);
3. run the network under ``torch.inference_mode`` at batch 1, optionally in overlapping tiles to bound memory;
4. crop back to the original size, clamp to [0, 1], force the known regions (0 where trimap == 0, 1 where
   trimap == 255);
5. ``predict_uint8`` rounds (never truncates) to 0..255, as the official metrics expect.

Example::

    predictor = Predictor.from_checkpoint("runs/demo/checkpoints/latest.pth")
    alpha = predictor.predict(image, trimap)       # (H, W) float32 in [0, 1]
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from matting.data.io import normalize_trimap
from matting.engine.checkpoint import model_from_checkpoint, unwrap
from matting.engine import runtime
from matting.engine.runtime import resolve_device
from matting.errors import MattingError
from matting.models import make_input

__all__ = ["AMP_MODES", "Matter", "Predictor", "as_rgb_uint8", "pad_to_multiple", "to_uint8_alpha"]

#: ``amp`` choices: autocast dtype per name (``none`` runs in float32).
AMP_MODES: dict[str, torch.dtype | None] = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# Lookup table of valid trimap values: one gather checks a whole trimap without a temporary per value.
_TRIMAP_OK = np.zeros(256, dtype=bool)
_TRIMAP_OK[[0, 128, 255]] = True


def pad_to_multiple(array: np.ndarray, stride: int) -> np.ndarray:
    """Reflect-pads the bottom and right of ``array`` so that height and width are multiples of ``stride``.

    Args:
        array: (H, W) or (H, W, C), any dtype.
        stride: positive int.
    Returns:
        (H', W'[, C]) with H' = ceil(H / stride) * stride (likewise W'); ``array`` itself if nothing is needed.
        Pads wider than the image keep reflecting (numpy's ``reflect`` mode), a 1-pixel side is repeated.
    """
    h, w = array.shape[:2]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return array
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="reflect")


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Brings an in-memory image to (H, W, 3) uint8 RGB, the form :meth:`Predictor.predict` runs on.

    Accepts (H, W) and (H, W, 1) grayscale (repeated to 3 channels), (H, W, 3) RGB and (H, W, 4) RGBA (alpha
    dropped), as uint8 or uint16 (divided by 257 and rounded, so 65535 -> 255). Anything else is a MattingError.
    """
    if not isinstance(image, np.ndarray):
        raise MattingError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise MattingError(f"{name}: expected uint8 (or uint16) pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise MattingError(f"{name}: expected shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    # Contiguous copies only where needed: views such as bgr[:, :, ::-1] have negative strides torch rejects.
    return np.ascontiguousarray(image[:, :, :3])


def _as_trimap(trimap: np.ndarray, name: str = "trimap") -> np.ndarray:
    """(H, W) uint8 with values exactly {0, 128, 255}; other values are mapped (with a warning) by thresholds."""
    if not isinstance(trimap, np.ndarray) or trimap.dtype != np.uint8:
        got = trimap.dtype if isinstance(trimap, np.ndarray) else type(trimap).__name__
        raise MattingError(f"{name}: expected a uint8 numpy array, got {got}")
    if trimap.ndim == 3 and trimap.shape[2] == 1:
        trimap = trimap[:, :, 0]
    if trimap.ndim != 2:
        raise MattingError(f"{name}: expected shape (H, W), got {trimap.shape}")
    if not _TRIMAP_OK[trimap].all():
        trimap = normalize_trimap(trimap, name)
    return np.ascontiguousarray(trimap)


def to_uint8_alpha(alpha: np.ndarray) -> np.ndarray:
    """(H, W) float alpha in [0, 1] -> (H, W) uint8, ROUNDED (0.998 -> 255, not 254), as docs/metrics.md requires."""
    return np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)


def _tile_starts(size: int, core: int) -> range:
    return range(0, size, core)


class Predictor:
    """Predicts alpha mattes with a matting network, following the Composition-1k test protocol.

    Cheap to construct (the trainer builds one per validation run around its in-memory model). The model is
    put in eval mode for each prediction and its previous mode is restored afterwards.

    Args:
        model: maps (1, 4, H, W) network input (from ``make_input``) to raw alpha (1, 1, H, W); H and W must be
            multiples of ``model.output_stride``. DDP / ``torch.compile`` wrappers are unwrapped.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... or a torch.device; the model is moved there.
        amp: ``"none"`` (float32), ``"fp16"`` or ``"bf16"`` autocast for the forward pass.
        stride: the multiple to pad to; defaults to ``model.output_stride``.
        tile: if set, the network runs on tiles whose kept centre is ``tile`` x ``tile`` pixels (rounded up to
            the stride), each seen with ``tile_margin`` extra pixels of context on every side. This bounds peak
            memory for very large images; results differ slightly from a whole-image pass (the network sees less
            context and its zero padding at tile borders), and are identical for networks whose receptive field
            radius is at most ``tile_margin``.
        tile_margin: context pixels around each tile (rounded up to the stride).
        channels_last: run the network in the channels-last memory layout (the model's weights are converted in
            place; values are the same up to float rounding). None (default): on CPU, where oneDNN's
            convolutions run faster in that layout at about the same peak memory; not elsewhere.
        flush_denormals: set the process-wide flag that flushes denormal floats to zero on CPU
            (:func:`matting.engine.runtime.flush_denormals`; much faster CPU inference, values below 1e-38 become
            0). Off by default: a library does not change a process-wide flag unless asked; the command lines
            set it themselves.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        amp: str = "none",
        *,
        stride: int | None = None,
        tile: int | None = None,
        tile_margin: int = 128,
        channels_last: bool | None = None,
        flush_denormals: bool = False,
    ) -> None:
        if amp not in AMP_MODES:
            raise MattingError(f"amp '{amp}' is not one of {', '.join(AMP_MODES)}")
        if flush_denormals:
            runtime.flush_denormals()
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.model = unwrap(model).to(self.device)
        self.channels_last = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp = amp
        if stride is None:
            stride = getattr(self.model, "output_stride", None)
            if stride is None:
                raise ValueError(f"{type(self.model).__name__} has no output_stride; pass stride= explicitly")
        self.stride = int(stride)
        if tile is not None and tile <= 0:
            raise MattingError(f"tile must be a positive number of pixels, got {tile}")
        if tile_margin < 0:
            raise MattingError(f"tile margin must be >= 0 pixels, got {tile_margin}")
        self.tile = None if tile is None else self._round_up(tile)
        self.tile_margin = self._round_up(tile_margin)
        # Provenance, filled by from_checkpoint; evaluation writes it into summary.json.
        self.checkpoint: str | None = None
        self.config: dict[str, Any] | None = None
        self.step: int | None = None

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "auto", amp: str = "none", **options: Any
    ) -> "Predictor":
        """Rebuilds the checkpoint's network (``model_from_checkpoint``) and wraps it. ``options`` go to __init__."""
        dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
        model, info = model_from_checkpoint(path, dev)
        predictor = cls(model, dev, amp, **options)
        predictor.checkpoint = str(path)
        predictor.config = info["config"]
        predictor.step = info["step"]
        return predictor

    def _round_up(self, n: int) -> int:
        return int(math.ceil(n / self.stride) * self.stride)

    def __repr__(self) -> str:
        tiling = f", tile={self.tile}, tile_margin={self.tile_margin}" if self.tile else ""
        name = type(self.model).__name__
        return f"Predictor({name}, device={self.device}, amp={self.amp}, stride={self.stride}{tiling})"

    # ----------------------------------------------------------------------------------------------------------
    def predict(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """Predicts the alpha matte of one image at full resolution.

        Args:
            image: (H, W, 3) uint8 RGB in [0, 255] (also (H, W) grey, (H, W, 4) RGBA, uint16: see ``as_rgb_uint8``).
            trimap: (H, W) uint8 with values {0, 128, 255} (other values are mapped with a warning).
        Returns:
            (H, W) float32 alpha in [0, 1]; exactly 0 where trimap == 0 and 1 where trimap == 255.
        """
        image = as_rgb_uint8(image)
        trimap = _as_trimap(trimap)
        if image.shape[:2] != trimap.shape:
            h, w = image.shape[:2]
            raise MattingError(f"trimap: size {trimap.shape[1]}x{trimap.shape[0]} does not match image ({w}x{h})")
        h, w = trimap.shape
        raw = self._run_network(pad_to_multiple(image, self.stride), pad_to_multiple(trimap, self.stride))
        alpha = raw[:h, :w].clip(0.0, 1.0)
        alpha[trimap == 0] = 0.0
        alpha[trimap == 255] = 1.0
        return alpha

    def predict_uint8(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """Like :meth:`predict`, rounded to (H, W) uint8 in [0, 255]: the form the metrics and PNGs use."""
        return to_uint8_alpha(self.predict(image, trimap))

    # ----------------------------------------------------------------------------------------------------------
    def _run_network(self, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 and (H, W) uint8, H and W multiples of the stride -> (H, W) float32 raw alpha."""
        img_t = torch.from_numpy(image).to(self.device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        tri_t = torch.from_numpy(trimap).to(self.device)[None, None]
        with torch.inference_mode(), self._eval_mode():
            x = make_input(img_t, tri_t)
            del img_t, tri_t  # the network input is all we need; free the copies before the forward pass
            if self.tile is None or (x.shape[-2] <= self.tile and x.shape[-1] <= self.tile):
                out = self._forward(x)
            else:
                out = self._forward_tiled(x)
        return out[0, 0].float().cpu().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = AMP_MODES[self.amp]
        ctx = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            out = self.model(x)
        if out.shape[-2:] != x.shape[-2:] or out.shape[1] != 1:
            raise RuntimeError(f"model returned {tuple(out.shape)} for input {tuple(x.shape)}; expected (B, 1, H, W)")
        return out.float()

    def _forward_tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the network on windows = tile centre + margin, keeping only each centre.

        All coordinates are multiples of the stride (the padded size is one too), so every window is a valid
        network input without further padding.
        """
        _, _, h, w = x.shape
        core, margin = self.tile, self.tile_margin
        out = torch.empty((1, 1, h, w), dtype=torch.float32, device=x.device)
        for y0 in _tile_starts(h, core):
            for x0 in _tile_starts(w, core):
                y1, x1 = min(y0 + core, h), min(x0 + core, w)
                wy0, wx0 = max(y0 - margin, 0), max(x0 - margin, 0)
                wy1, wx1 = min(y1 + margin, h), min(x1 + margin, w)
                pred = self._forward(x[:, :, wy0:wy1, wx0:wx1])
                out[:, :, y0:y1, x0:x1] = pred[:, :, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
        return out

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode for the duration of a prediction; restores train mode for the trainer's in-memory model."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


#: Former name of :class:`Predictor`, kept for one release (``Matter.from_checkpoint(...)`` still works).
Matter = Predictor
