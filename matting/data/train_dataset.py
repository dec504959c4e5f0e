"""Training data: composites made on the fly from foregrounds, alphas and backgrounds, and a fixed validation split.

- ``CompositionDataset``: sample i uses foreground i % n_fg, a random background and a random augmentation
  (``matting.data.augment``), all drawn from a generator seeded by (seed, epoch, i): a sample depends on
  nothing else, so it is the same with any number of workers, any batch size and after resuming.
- ``ValidationDataset``: deterministic full-resolution composites of held-out training foregrounds, in the
  test-set item format, so the test evaluation code scores them unchanged.
- ``worker_init_fn``: for ``DataLoader(num_workers > 0)``; ``pack_batch`` / ``unpack_batch``: the batches as they
  travel to the training device (8-bit where that is exact) and as the losses see them.

Both datasets take plain lists of paths, or a release object via ``from_release`` (anything with ``fg_paths``,
``alpha_paths`` and ``bg_paths``, e.g. ``matting.data.release.TrainingRelease``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from matting.data import io
from matting.data.a2u import enlarge_to_cover
from matting.data.augment import A2UConfig, AugmentConfig, build_augment
from matting.data.release import load_fg_alpha
from matting.data.trimap import trimap_from_alpha_dt
from matting.errors import MattingError

DEFAULT_BGS_PER_FG = 100
"""Samples per foreground in one epoch by default: Composition-1k's 43,100 = 431 foregrounds x 100 backgrounds."""

_MAX_LISTED = 50


def _check_inputs(fg_paths: Sequence[Path], alpha_paths: Sequence[Path], bg_paths: Sequence[Path]) -> None:
    """Raises one MattingError for empty or unequal lists, or for missing files: all of them counted, the first
    ``_MAX_LISTED`` named (a forgotten COCO folder would otherwise print 43,100 paths on one line)."""
    if not fg_paths:
        raise MattingError("no training foregrounds given (the foreground list is empty)")
    if len(fg_paths) != len(alpha_paths):
        raise MattingError(f"{len(fg_paths)} foregrounds but {len(alpha_paths)} alphas: they must pair one to one")
    if not bg_paths:
        raise MattingError("no backgrounds given (the background list is empty)")
    missing = [str(p) for p in (*fg_paths, *alpha_paths, *bg_paths) if not os.path.isfile(p)]
    if missing:
        more = f" ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise MattingError(f"{len(missing)} input files not found: {', '.join(missing[:_MAX_LISTED])}{more}")


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class CompositionDataset(Dataset):
    """Online composition of training crops.

    Args:
        fg_paths, alpha_paths: foregrounds and their alphas, paired by position.
        bg_paths: backgrounds; each sample draws one uniformly (the last one included).
        augment: the recipe (``matting.data.augment.make_augment_config``). Its ``second_fg_may_be_itself``
            says whether a second foreground is drawn among all foregrounds (A2U) or among the others.
        seed: >= 0; with the epoch (``set_epoch``) and the index it determines every sample.
        length: samples per epoch; default ``len(fg_paths) * 100``, the paper's 43,100 for 431 foregrounds.
            Sample i uses foreground ``i % len(fg_paths)``, so every foreground appears equally often.
        cache: decode every image once, up front, and keep it in memory (for small sets such as the demo one;
            forked DataLoader workers share it copy-on-write). Also checks every fg/alpha pair's size up front.

    Each item is a dict, S = ``augment.crop_size``: ``image``, ``fg``, ``bg``: (3, S, S) float32 RGB in [0, 1]
    (not ImageNet-normalised); ``alpha``: (1, S, S) float32 in [0, 1]; ``trimap``: (1, S, S) uint8 in
    {0, 128, 255}; ``name``: the foreground's file stem. image == alpha * fg + (1 - alpha) * bg up to float32
    rounding (the ``a2u`` preset does not clip it, so it can exceed 1 by ~1e-7).

    Missing files (all counted, the first 50 named, in one line), empty lists and unequal fg/alpha counts raise
    MattingError up front; a fg/alpha size mismatch, a 16-bit or an unreadable file raises MattingError naming
    the file(s) when it is read (up front with ``cache=True``).
    """

    def __init__(
        self,
        fg_paths: Sequence[str | os.PathLike],
        alpha_paths: Sequence[str | os.PathLike],
        bg_paths: Sequence[str | os.PathLike],
        augment: AugmentConfig | A2UConfig,
        seed: int,
        length: int | None = None,
        cache: bool = False,
    ):
        self.fg_paths = [Path(p) for p in fg_paths]
        self.alpha_paths = [Path(p) for p in alpha_paths]
        self.bg_paths = [Path(p) for p in bg_paths]
        _check_inputs(self.fg_paths, self.alpha_paths, self.bg_paths)
        if int(seed) != seed or seed < 0:
            raise MattingError(f"seed must be an integer >= 0, got {seed!r}")
        if length is not None and (int(length) != length or length < 1):
            raise MattingError(f"samples per epoch must be a positive integer, got {length!r}")
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.length = len(self.fg_paths) * DEFAULT_BGS_PER_FG if length is None else int(length)
        self._compose = build_augment(augment)
        self._pairs: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._bgs: list[np.ndarray] | None = None
        if cache:
            self._pairs = [load_fg_alpha(f, a) for f, a in zip(self.fg_paths, self.alpha_paths)]
            self._bgs = [io.read_rgb(p) for p in self.bg_paths]

    @classmethod
    def from_release(
        cls, release, augment: AugmentConfig | A2UConfig, seed: int, length: int | None = None, cache: bool = False
    ) -> "CompositionDataset":
        """From any object with ``fg_paths``, ``alpha_paths`` and ``bg_paths`` (e.g. a ``TrainingRelease``)."""
        return cls(release.fg_paths, release.alpha_paths, release.bg_paths, augment, seed, length, cache)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose samples ``dataset[index]`` returns. DataLoader workers copy the dataset when
        they start (and keep it with ``persistent_workers``): there, index with ``(epoch, index)`` instead."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def sample_rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator that drives sample ``index`` of ``epoch`` (default: the current epoch)."""
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch, index])

    def _pair(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pairs is not None:
            return self._pairs[f]
        return load_fg_alpha(self.fg_paths[f], self.alpha_paths[f])

    def _bg(self, b: int) -> np.ndarray:
        return self._bgs[b] if self._bgs is not None else io.read_rgb(self.bg_paths[b])

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        """Sample ``index`` of the current epoch, or of ``epoch`` for ``index = (epoch, i)`` (what
        :class:`~matting.engine.trainer.EpochSampler` yields, so persistent loader workers follow the epochs)."""
        epoch, index = index if isinstance(index, tuple) else (None, index)
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} out of range for an epoch of {self.length}")
        rng = self.sample_rng(index, epoch)
        n_fg = len(self.fg_paths)
        f = index % n_fg
        fg, alpha = self._pair(f)
        bg = self._bg(int(rng.integers(len(self.bg_paths))))

        def second() -> tuple[np.ndarray, np.ndarray]:
            if self.augment.second_fg_may_be_itself:
                return self._pair((f + int(rng.integers(n_fg))) % n_fg)
            other = (f + 1 + int(rng.integers(n_fg - 1))) % n_fg if n_fg > 1 else f
            return self._pair(other)

        out = self._compose(fg, alpha, bg, rng, second=second)
        return {
            "image": _chw(out["image"]),
            "fg": _chw(out["fg"]),
            "bg": _chw(out["bg"]),
            "alpha": torch.from_numpy(out["alpha"][None]),
            "trimap": torch.from_numpy(out["trimap"][None]),
            "name": self.fg_paths[f].stem,
        }


# Batch transport: what the loader hands to the training device. Images, fg, bg and alpha built from 8-bit
# pixels hold exact multiples of 1/255; they travel as uint8 (4x fewer bytes through shared memory, pinned
# memory and the host-to-device copy) and become float on the device, bit for bit the values the dataset made.
# The composite image travels not at all when it equals alpha * fg + (1 - alpha) * bg as the device computes it.
# Anything else (a jittered or blended foreground, the a2u preset's composite) travels as float32, unchanged.
_BYTE_KEYS = ("fg", "bg", "alpha")


def pack_batch(samples: list[dict]) -> dict:
    """``DataLoader`` ``collate_fn`` (runs in the loader's workers): ``default_collate``, then each of ``fg``,
    ``bg``, ``alpha`` as uint8 where that is exact, and no ``image`` where :func:`unpack_batch` recomputes it
    exactly. :func:`unpack_batch` (on the device) gives back exactly ``default_collate(samples)``."""
    batch = default_collate(samples)
    for key in _BYTE_KEYS:
        batch[key] = _as_bytes_if_exact(batch[key])
    if all(batch[k].dtype == torch.uint8 for k in _BYTE_KEYS) and torch.equal(_composite(batch), batch["image"]):
        del batch["image"]
    return batch


def unpack_batch(batch: dict) -> dict:
    """The float batch the losses and the network expect, from :func:`pack_batch`'s (already on its device):
    ``image``, ``fg``, ``bg`` (B, 3, S, S) and ``alpha`` (B, 1, S, S) float32 in [0, 1]; ``trimap`` unchanged."""
    out = dict(batch)
    for key in _BYTE_KEYS:
        if out[key].dtype == torch.uint8:
            out[key] = _from_bytes(out[key])
    if "image" not in out:
        out["image"] = _composite(out)
    return out


def _from_bytes(x: torch.Tensor) -> torch.Tensor:
    # A divisor on the tensor's device: CUDA turns division by a host scalar into multiplication by its
    # reciprocal, which can differ from the dataset's value (numpy's division) in the last bit.
    return x.float() / torch.full((), 255.0, device=x.device)


def _as_bytes_if_exact(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32:
        return x
    q = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return q if torch.equal(_from_bytes(q), x) else x


def _composite(batch: dict) -> torch.Tensor:
    """alpha * fg + (1 - alpha) * bg in float32, in the order of operations the augmentations use."""
    fg, bg, alpha = (_from_bytes(batch[k]) if batch[k].dtype == torch.uint8 else batch[k] for k in _BYTE_KEYS)
    return alpha * fg + (1.0 - alpha) * bg


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seeds the global numpy/random/torch generators of the worker from the
    per-worker seed the DataLoader chose (so code using global RNGs differs between workers, reproducibly) and
    stops OpenCV from starting its own thread pool in every worker, which would oversubscribe the cores.

    The samples of ``CompositionDataset`` do not depend on it: they use their own per-sample generators.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    cv2.setNumThreads(0)


def composite_truncated(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Adobe's test-set composite: int(alpha * fg + (1 - alpha) * bg), alpha = a / 255, in float64.

    Args:
        fg, bg: (H, W, 3) uint8; alpha: (H, W) uint8.
    Returns:
        (H, W, 3) uint8. Equal to fg where alpha == 255 and to bg where alpha == 0.
    """
    a = alpha.astype(np.float64)[..., None] / 255.0
    return (a * fg + (1.0 - a) * bg).astype(np.uint8)


def background_for(bg: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The background as Adobe's test script uses it: enlarged (bicubic, aspect kept) only when smaller than
    ``size_hw`` in a side, then its top-left ``size_hw`` corner. (H, W, 3) uint8."""
    h, w = size_hw
    return np.ascontiguousarray(enlarge_to_cover(bg, size_hw)[:h, :w])


class ValidationDataset(Dataset):
    """Fixed composites of held-out training foregrounds, scored exactly like the test set.

    Item i is foreground ``i // bgs_per_fg`` composited on background number ``k = i % bgs_per_fg`` of its own
    fixed draw (distinct backgrounds per foreground when there are enough), with the test set's semantics
    (``background_for`` + ``composite_truncated``). Its trimap is the alpha's fractional pixels dilated by
    ``trimap_width`` px (``trimap_from_alpha_dt``). Everything depends only on ``seed`` and the lists.

    Args:
        fg_paths, alpha_paths: the validation foregrounds and alphas, paired by position.
        bg_paths: backgrounds to draw from.
        seed: >= 0.
        bgs_per_fg: composites per foreground.
        max_side: if set, fg and alpha are first downscaled (area interpolation) so the long side is at most this,
            to keep validation cheap.
        trimap_width: unknown band half-width of the fixed trimaps, in pixels of the (downscaled) composite.

    Each item, in the test-set format (numpy arrays): ``image`` (H, W, 3) uint8 RGB, ``trimap`` (H, W) uint8 in
    {0, 128, 255}, ``alpha`` (H, W) uint8 ground truth, ``name`` ``<fgstem>_<k>``.
    """

    split = "validation"
    """Which split scores computed on these items come from, for logs."""

    def __init__(
        self,
        fg_paths: Sequence[str | os.PathLike],
        alpha_paths: Sequence[str | os.PathLike],
        bg_paths: Sequence[str | os.PathLike],
        seed: int,
        bgs_per_fg: int = 2,
        max_side: int | None = None,
        trimap_width: int = 10,
    ):
        self.fg_paths = [Path(p) for p in fg_paths]
        self.alpha_paths = [Path(p) for p in alpha_paths]
        self.bg_paths = [Path(p) for p in bg_paths]
        _check_inputs(self.fg_paths, self.alpha_paths, self.bg_paths)
        if int(seed) != seed or seed < 0:
            raise MattingError(f"seed must be an integer >= 0, got {seed!r}")
        if int(bgs_per_fg) != bgs_per_fg or bgs_per_fg < 1:
            raise MattingError(f"validation backgrounds per foreground must be >= 1, got {bgs_per_fg!r}")
        if max_side is not None and (int(max_side) != max_side or max_side < 8):
            raise MattingError(f"validation max_side must be an integer >= 8 or null, got {max_side!r}")
        self.seed = int(seed)
        self.bgs_per_fg = int(bgs_per_fg)
        self.max_side = None if max_side is None else int(max_side)
        self.trimap_width = trimap_width
        n_bg = len(self.bg_paths)
        self.bg_index: list[list[int]] = [
            np.random.default_rng([self.seed, f])
            .choice(n_bg, size=self.bgs_per_fg, replace=self.bgs_per_fg > n_bg)
            .tolist()
            for f in range(len(self.fg_paths))
        ]

    @classmethod
    def from_release(
        cls, release, seed: int, bgs_per_fg: int = 2, max_side: int | None = None, trimap_width: int = 10
    ) -> "ValidationDataset":
        """From any object with ``fg_paths``, ``alpha_paths`` and ``bg_paths`` (e.g. the validation part of
        ``matting.data.release.split_validation``)."""
        return cls(release.fg_paths, release.alpha_paths, release.bg_paths, seed, bgs_per_fg, max_side, trimap_width)

    def __len__(self) -> int:
        return len(self.fg_paths) * self.bgs_per_fg

    def __getitem__(self, index: int) -> dict[str, np.ndarray | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} validation composites")
        f, k = divmod(index, self.bgs_per_fg)
        fg, alpha = load_fg_alpha(self.fg_paths[f], self.alpha_paths[f])
        h, w = alpha.shape
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            fg = cv2.resize(fg, size, interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
        bg = background_for(io.read_rgb(self.bg_paths[self.bg_index[f][k]]), alpha.shape)
        return {
            "image": composite_truncated(fg, alpha, bg),
            "trimap": trimap_from_alpha_dt(alpha, self.trimap_width),
            "alpha": alpha,
            "name": f"{self.fg_paths[f].stem}_{k}",
        }
