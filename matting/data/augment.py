"""Online composition for training: one random geometric + photometric recipe applied to (fg, alpha, bg).

Three named presets (``PRESETS``); ``make_augment_config(preset, **overrides)`` derives a config from one of them
(e.g. a smaller ``crop_size`` for CPU demos) and ``build_augment(config)`` returns the callable for it:

- ``a2u``: A2U matting's pipeline as its code runs it (``A2UConfig`` -> ``A2UAugment``, steps in
  ``matting.data.a2u``): full-resolution nearest-neighbour warps, trimap before the crop, native-size
  background, adaptive HSV jitter;
- ``indexnet`` and ``gca``: this project's single-warp recipe (``AugmentConfig`` -> ``CompositionAugment``) with
  IndexNet's and GCA-Matting's parameters. docs/data.md lists how they depart from the original pipelines.

``CompositionAugment`` is the single place where fg, alpha, bg and trimap are coupled:

1. (p = ``second_fg_p``) a second foreground is resized to the first one's size, follows the first one's
   geometry below, and is merged behind it in the output window in premultiplied form (``blend_foregrounds``);
2. one geometric map from the output crop back to the source foreground is built: optional fixed resize
   (p = ``resize_fg_p``, to ``resize_fg_size`` square), upscaling of sources too small for the window, a random
   affine about the centre (rotation only for images whose long side is >= ``rotation_min_side``, independent x/y
   scale, shear, horizontal/vertical flips), and a square window of side ``crop_size * scale`` (scale drawn from
   ``crop_scales``) resized to ``crop_size``;
3. fg and alpha are sampled through that map with ONE ``cv2.warpAffine`` each (bicubic, no anti-aliasing when
   the map shrinks, like ``cv2.resize``'s bicubic), so nothing is warped at full resolution and the crop costs
   the same whatever the source size;
4. the bg is resized keeping its aspect ratio so it covers the foreground canvas (bicubic), a canvas-sized part
   at a random offset is taken, and the same window is cut out of it (again a single warp; bg is never rotated,
   flipped or colour-jittered);
5. (p = ``hsv_p``) HSV jitter of the fg only (albumentations ``HueSaturationValue``, seeded per sample);
6. the trimap is generated from the FINAL alpha (``matting.data.trimap``), so band widths are in output pixels;
7. the image is composed last, in float, without rounding: ``image = alpha * fg + (1 - alpha) * bg``.

The window is centred on a random fractional pixel (0 < alpha < 1) of the (merged) foreground alpha, and the
map is shifted by a fraction of a pixel so that one output pixel samples this pixel exactly (bicubic weights at
an integer position are (0, 1, 0, 0)). Fractional pixels are unknown in both trimap recipes, so a crop ALWAYS
contains unknown pixels when the alpha has fractional ones. The window is kept inside the foreground canvas
(centres are drawn among the fractional pixels the affine keeps in the canvas; only when it pushes all of them
out does the window follow one outside); the sub-pixel shift can reach at most half an output pixel past the
border. Samples outside the source (those, and the corners an affine rotates in) reflect the image
(``BORDER_REFLECT_101``), where GCA fills them with zeros. Nothing is padded: a source whose short side is
smaller than the drawn window is upscaled so that its short side equals the window
(``AugmentConfig.min_source_size`` is the largest window). An alpha without fractional pixels gets a uniformly
random window.

Deviations from the original code, on purpose: trimaps come from the final alpha rather than being generated
at full resolution and nearest-resized (IndexNet) or generated at 640x640 scale (MatteFormer); the bands are
therefore ``trimap_range`` pixels wide in the network's input whatever the crop scale. Geometry does not use
albumentations' ``Affine``: it would warp the whole image before cropping, and the crop centre must be a known
pixel of the transformed alpha.

All randomness comes from the ``numpy.random.Generator`` passed per call, so a sample is a function of that
generator's seed only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, ClassVar

import albumentations as A
import cv2
import numpy as np

from matting.data import a2u
from matting.data.trimap import TRIMAP_KINDS, trimap_from_alpha_erode
from matting.errors import MattingError

SecondForeground = Callable[[], tuple[np.ndarray, np.ndarray]]
"""Returns a second (fg (h, w, 3) uint8 RGB, alpha (h, w) uint8); only called when the coin says so."""


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _bad(cfg, key: str, what: str) -> MattingError:
    return MattingError(f"augment.{key}: {what} (got {getattr(cfg, key)!r})")


def _tuples_from_lists(cfg) -> None:
    """Lists given for tuple fields (e.g. from YAML) become tuples, so a frozen config stays hashable."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, list):
            object.__setattr__(cfg, f.name, tuple(value))


def _check_fields(cfg, probabilities: tuple[str, ...], non_negative: tuple[str, ...], trimap_lo: int) -> None:
    """The checks both configs share: ``trimap_range``, ``scale_range``, ``rotation_min_side``,
    ``resize_fg_size`` and the named probability / non-negative fields. Raises MattingError naming the key."""
    r = cfg.trimap_range
    if len(r) != 2 or not all(_is_int(v) for v in r) or not trimap_lo <= r[0] <= r[1]:
        raise _bad(cfg, "trimap_range", f"must be two integers [lo, hi] with {trimap_lo} <= lo <= hi")
    for key in probabilities:
        v = getattr(cfg, key)
        if not _is_num(v) or not 0.0 <= v <= 1.0:
            raise _bad(cfg, key, "must be a probability in [0, 1]")
    for key in non_negative:
        v = getattr(cfg, key)
        if not _is_num(v) or v < 0:
            raise _bad(cfg, key, "must be a number >= 0")
    s = cfg.scale_range
    if len(s) != 2 or not all(_is_num(v) for v in s) or not 0 < s[0] <= s[1]:
        raise _bad(cfg, "scale_range", "must be two numbers [lo, hi] with 0 < lo <= hi")
    for key in ("rotation_min_side", "resize_fg_size"):
        v = getattr(cfg, key)
        if not _is_int(v) or v < 1:
            raise _bad(cfg, key, "must be a positive integer")


@dataclass(frozen=True)
class AugmentConfig:
    """One training-composition recipe. Lists given for tuple fields (e.g. from YAML) are turned into tuples.

    Attributes:
        crop_size: side of the square output crop, in pixels.
        crop_scales: the window cut from the (transformed) foreground has side ``round(crop_size * scale)`` for a
            scale drawn uniformly from this tuple, and is resized to ``crop_size``. IndexNet: (1, 1.5, 2), i.e.
            windows 320/480/640 at crop 320 and 160/240/320 at crop 160; GCA: (1,), a plain crop.
        trimap: "dt" (IndexNet distance-transform band) or "erode" (GCA elliptical erosion).
        trimap_range: inclusive range of the band width (dt) or kernel size (erode), in output pixels.
        hflip_p, vflip_p: probabilities of a horizontal / vertical flip of fg and alpha.
        rotation_deg: rotation angle drawn from [-rotation_deg, rotation_deg] ...
        rotation_min_side: ... but only when the foreground's long side is >= this (GCA: 1024).
        scale_range: x and y scale factors of the affine, each drawn independently from this range.
        shear_deg: shear angle drawn from [-shear_deg, shear_deg].
        second_fg_p: probability of merging a second foreground into the first.
        resize_fg_p: probability of resizing the foreground to ``resize_fg_size`` x ``resize_fg_size`` (aspect
            ratio not kept) before the affine.
        resize_fg_size: see ``resize_fg_p``.
        hsv_p: probability of HSV jitter on the foreground.
        hue_shift_deg, sat_shift, val_shift: jitter limits: hue in degrees, saturation and value as fractions of
            their full range (applied by albumentations in 8-bit, so the jittered fg is a multiple of 1/255).
        bg_downscale: True: the background is resized to cover the foreground exactly, shrinking large ones;
            False: it is only enlarged when too small, as Adobe's test-set script does.
    """

    crop_size: int
    crop_scales: tuple[float, ...] = (1.0,)
    trimap: str = "dt"
    trimap_range: tuple[int, int] = (1, 19)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rotation_deg: float = 0.0
    rotation_min_side: int = 1024
    scale_range: tuple[float, float] = (1.0, 1.0)
    shear_deg: float = 0.0
    second_fg_p: float = 0.0
    resize_fg_p: float = 0.0
    resize_fg_size: int = 640
    hsv_p: float = 0.0
    hue_shift_deg: float = 40.0
    sat_shift: float = 0.1
    val_shift: float = 0.1
    bg_downscale: bool = True

    second_fg_may_be_itself: ClassVar[bool] = False
    """The second foreground is drawn among the OTHER foregrounds (by the dataset)."""

    def __post_init__(self) -> None:
        _tuples_from_lists(self)
        if not _is_int(self.crop_size) or self.crop_size < 8:
            raise _bad(self, "crop_size", "must be an integer >= 8")
        if not self.crop_scales or not all(_is_num(s) and s > 0 for s in self.crop_scales):
            raise _bad(self, "crop_scales", "must be a non-empty list of positive numbers")
        if self.trimap not in TRIMAP_KINDS:
            raise _bad(self, "trimap", f"must be one of {', '.join(TRIMAP_KINDS)}")
        _check_fields(
            self,
            probabilities=("hflip_p", "vflip_p", "second_fg_p", "resize_fg_p", "hsv_p"),
            non_negative=("rotation_deg", "shear_deg", "hue_shift_deg", "sat_shift", "val_shift"),
            trimap_lo=0 if self.trimap == "dt" else 1,
        )
        if not isinstance(self.bg_downscale, bool):
            raise _bad(self, "bg_downscale", "must be true or false")

    @property
    def windows(self) -> tuple[int, ...]:
        """The window sides (pixels of the foreground canvas) a crop is cut from, one per ``crop_scales`` entry."""
        return tuple(max(1, round(self.crop_size * s)) for s in self.crop_scales)

    @property
    def min_source_size(self) -> int:
        """Short side a foreground needs to be used at its own scale for every window; smaller ones are upscaled
        (bicubic) so that their short side equals the drawn window. Nothing is padded."""
        return max(self.windows)


@dataclass(frozen=True)
class A2UConfig:
    """A2U matting's training pipeline (``matting.data.a2u``, docs/data.md), step for step. Fields shared with
    ``AugmentConfig`` mean the same; lists given for tuple fields become tuples.

    Attributes:
        crop_size: side of the square crop (A2U: 512). The crop centre keeps crop_size // 2 px from the border
            and sources with a side <= crop_size are enlarged, so both rules scale with it. >= 20.
        trimap_range: inclusive range of the two erosion kernel sizes (A2U: 1..29, drawn independently).
        second_fg_p: probability of merging a second foreground behind the first (drawn among ALL foregrounds,
            the first one included, as A2U does).
        resize_fg_p, resize_fg_size: probability of resizing fg and alpha to resize_fg_size x resize_fg_size
            (nearest, aspect ratio not kept) before the affine.
        rotation_deg, rotation_min_side: rotation angle drawn from [-rotation_deg, rotation_deg] when the long
            side is >= rotation_min_side, else no rotation.
        scale_range: x and y scale factors, drawn independently.
        shear_deg: shear angle drawn from [-shear_deg, shear_deg].
        affine_flip_p: probability of mirroring each axis (x and y, independently) inside the affine.
        hflip_p: probability of the extra horizontal mirror after the affine.
        hue_shift_deg: the hue shift is an integer drawn from [-hue_shift_deg, hue_shift_deg - 1] degrees.
    """

    crop_size: int = 512
    trimap_range: tuple[int, int] = (1, 29)
    second_fg_p: float = 0.5
    resize_fg_p: float = 0.25
    resize_fg_size: int = 640
    rotation_deg: float = 30.0
    rotation_min_side: int = 1024
    scale_range: tuple[float, float] = (0.8, 1.25)
    shear_deg: float = 10.0
    affine_flip_p: float = 0.5
    hflip_p: float = 0.5
    hue_shift_deg: int = 40

    second_fg_may_be_itself: ClassVar[bool] = True
    """The second foreground is drawn among ALL foregrounds, the first one included (by the dataset)."""

    def __post_init__(self) -> None:
        _tuples_from_lists(self)
        if not _is_int(self.crop_size) or self.crop_size < 20:
            raise _bad(self, "crop_size", "must be an integer >= 20")
        if not _is_int(self.hue_shift_deg) or not 0 < self.hue_shift_deg <= 180:
            raise _bad(self, "hue_shift_deg", "must be an integer in 1..180")
        _check_fields(
            self,
            probabilities=("second_fg_p", "resize_fg_p", "affine_flip_p", "hflip_p"),
            non_negative=("rotation_deg", "shear_deg"),
            trimap_lo=1,
        )
        if self.shear_deg >= 90:
            raise _bad(self, "shear_deg", "must be < 90")

    @property
    def windows(self) -> tuple[int, ...]:
        """The window side: a plain crop, nothing resized after it."""
        return (self.crop_size,)


PRESETS: dict[str, AugmentConfig | A2UConfig] = {
    # IndexNet (Lu et al., ICCV 2019): crop 320/480/640 around an unknown pixel, resize to 320, horizontal flip,
    # distance-transform trimap 1..19 px.
    "indexnet": AugmentConfig(
        crop_size=320,
        crop_scales=(1.0, 1.5, 2.0),
        trimap="dt",
        trimap_range=(1, 19),
        hflip_p=0.5,
    ),
    # This project's single-warp recipe with GCA-Matting's (Li & Lu, AAAI 2020) parameters: second-fg merge,
    # resize to 640, affine with flips in both axes, erosion trimap 1..29, 512 crop, HSV jitter of the fg. It is
    # neither GCA's nor A2U's pipeline (bicubic, trimap from the crop, fixed jitter...): docs/data.md lists how.
    "gca": AugmentConfig(
        crop_size=512,
        crop_scales=(1.0,),
        trimap="erode",
        trimap_range=(1, 29),
        hflip_p=0.5,
        vflip_p=0.5,
        rotation_deg=30.0,
        rotation_min_side=1024,
        scale_range=(0.8, 1.25),
        shear_deg=10.0,
        second_fg_p=0.5,
        resize_fg_p=0.25,
        resize_fg_size=640,
        hsv_p=1.0,
        hue_shift_deg=40.0,
        sat_shift=0.1,
        val_shift=0.1,
    ),
    # A2U matting (Dai et al., CVPR 2021), as its code runs it: matting.data.a2u, A2UAugment.
    "a2u": A2UConfig(),
}


def make_augment_config(preset: str, **overrides) -> AugmentConfig | A2UConfig:
    """The named preset with some fields replaced, e.g. ``make_augment_config("indexnet", crop_size=160)``.

    A smaller ``crop_size`` scales the whole window set (IndexNet at 160: windows 160/240/320 resized to 160).
    The fields are those of the preset's class (``AugmentConfig``, or ``A2UConfig`` for ``a2u``).
    Raises MattingError for an unknown preset, an unknown field or a bad value, naming it.
    """
    if preset not in PRESETS:
        raise MattingError(f"augment preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(PRESETS[preset])}
    for key in overrides:
        if key not in known:
            raise MattingError(f"augment.{key}: unknown option; known ones: {', '.join(sorted(known))}")
    return replace(PRESETS[preset], **overrides)


# ------------------------------------------------------------------------------------------------ maths helpers
# Every map is a 3x3 homogeneous matrix on pixel-centre coordinates (pixel (0, 0) is at x = y = 0, as OpenCV's
# warpAffine uses them), written from the DESTINATION to the SOURCE so maps compose by matrix product and go to
# warpAffine with WARP_INVERSE_MAP unchanged.


def _resize_map(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """dst -> src for resizing an image of size src_hw to dst_hw (the convention of cv2.resize)."""
    sy, sx = src_hw[0] / dst_hw[0], src_hw[1] / dst_hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def affine_matrix(
    size_hw: tuple[int, int],
    angle_deg: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    shear_deg: float = 0.0,
    flip: tuple[bool, bool] = (False, False),
) -> np.ndarray:
    """FORWARD affine (source -> transformed) of an image of size ``size_hw`` about its centre: flip, then x/y
    scale, then shear along x, then rotation (counter-clockwise on screen for positive angles). Returns (3, 3)."""
    a, sh = math.radians(angle_deg), math.radians(shear_deg)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # y points down
    shear = np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    diag = np.diag([scale[0] * (-1 if flip[0] else 1), scale[1] * (-1 if flip[1] else 1)])
    lin = np.eye(3)
    lin[:2, :2] = rot @ shear @ diag
    cy, cx = (size_hw[0] - 1) / 2, (size_hw[1] - 1) / 2
    return _translate(cx, cy) @ lin @ _translate(-cx, -cy)


def _window_origin(q: float | None, canvas_len: int, window: int, out: int, rng: np.random.Generator) -> float:
    """Canvas coordinate of the centre of output pixel 0 for a window of side ``window`` sampled at ``out``
    pixels (output pixel j lies at origin + j * window / out), along one axis.

    The window is centred on ``q`` and kept inside the canvas (unless ``q`` itself is outside), then shifted by
    at most half an output pixel so that one output pixel lands exactly on ``q``. ``q = None``: a uniformly random
    window inside the canvas.
    """
    step = window / out
    lo = 0.5 * step - 0.5  # origin of the window whose left edge is the canvas's left edge
    if q is None:
        return lo + int(rng.integers(0, canvas_len - window + 1))
    origin = min(max(q - (out // 2) * step, lo), canvas_len - window + lo)
    # A centre the affine moved outside the canvas still has to be in the window: let the window follow it.
    origin = min(max(origin, q - (out - 1) * step), q)
    j = min(max(round((q - origin) / step), 0), out - 1)
    return q - j * step


def _warp(image: np.ndarray, dst_to_src: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(
        image,
        dst_to_src[:2],
        (size, size),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def blend_foregrounds(
    fg1: np.ndarray, alpha1: np.ndarray, fg2: np.ndarray, alpha2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Puts foreground 1 in front of foreground 2 (the "over" operator, premultiplied form).

    alpha = 1 - (1 - a1)(1 - a2); fg = (fg1 a1 + fg2 (1 - a1) a2) / alpha, and fg = fg1 where alpha == 0 (no
    colour is defined there). Compositing the result over any bg equals compositing fg2 then fg1 over it.

    Args:
        fg1, fg2: (H, W, 3) float32 in [0, 1].
        alpha1, alpha2: (H, W) float32 in [0, 1].
    Returns:
        (fg (H, W, 3) float32 in [0, 1], alpha (H, W) float32 in [0, 1]).
    """
    alpha = 1.0 - (1.0 - alpha1) * (1.0 - alpha2)
    premult = fg1 * alpha1[..., None] + fg2 * ((1.0 - alpha1) * alpha2)[..., None]
    safe = np.where(alpha > 0, alpha, 1.0)[..., None]
    fg = np.where(alpha[..., None] > 0, premult / safe, fg1)
    return np.clip(fg, 0.0, 1.0).astype(np.float32), alpha.astype(np.float32)


def _fractional_mask(alpha: np.ndarray, alpha2: np.ndarray | None) -> np.ndarray:
    """Bool mask, same shape as ``alpha``: pixels whose (merged) alpha is strictly between 0 and 1, from uint8
    alphas of any (equal) shapes."""
    if alpha2 is None:
        return (alpha > 0) & (alpha < 255)
    # 1 - (1 - a1)(1 - a2) is 1 when either is 1, and 0 only when both are 0.
    return (alpha < 255) & (alpha2 < 255) & ((alpha > 0) | (alpha2 > 0))


def _check_pair(fg: np.ndarray, alpha: np.ndarray, what: str) -> None:
    if fg.dtype != np.uint8 or alpha.dtype != np.uint8 or fg.ndim != 3 or fg.shape[2] != 3 or alpha.ndim != 2:
        raise ValueError(f"{what}: expected fg (H, W, 3) uint8 and alpha (H, W) uint8, got {fg.shape} "
                         f"{fg.dtype} and {alpha.shape} {alpha.dtype}")
    if fg.shape[:2] != alpha.shape:
        raise ValueError(f"{what}: fg {fg.shape[:2]} and alpha {alpha.shape} differ in size")


class CompositionAugment:
    """Turns one (fg, alpha, bg) triple into a training crop; see the module docstring for the recipe.

    Args:
        config: the recipe.
    """

    def __init__(self, config: AugmentConfig):
        self.config = config
        self._trimap = TRIMAP_KINDS[config.trimap]
        self._hsv = None
        if config.hsv_p > 0:
            # albumentations works on 8-bit HSV: hue in units of 2 degrees, saturation and value in 0..255.
            self._hsv = A.Compose([
                A.HueSaturationValue(
                    hue_shift_limit=config.hue_shift_deg / 2,
                    sat_shift_limit=config.sat_shift * 255,
                    val_shift_limit=config.val_shift * 255,
                    p=1.0,
                )
            ])

    def __call__(
        self,
        fg: np.ndarray,
        alpha: np.ndarray,
        bg: np.ndarray,
        rng: np.random.Generator,
        second: SecondForeground | None = None,
    ) -> dict[str, np.ndarray]:
        """Composes one training crop.

        Args:
            fg: (H, W, 3) uint8 RGB foreground.
            alpha: (H, W) uint8 alpha of ``fg``.
            bg: (h, w, 3) uint8 RGB background, any size.
            rng: the only source of randomness.
            second: called (at most once) for a second foreground when the ``second_fg_p`` coin says so; None
                never merges one.
        Returns:
            dict with, S = ``config.crop_size``: ``image``, ``fg``, ``bg``: (S, S, 3) float32 RGB in [0, 1];
            ``alpha``: (S, S) float32 in [0, 1]; ``trimap``: (S, S) uint8 in {0, 128, 255};
            image == alpha * fg + (1 - alpha) * bg up to float32 rounding.
        """
        cfg = self.config
        out = cfg.crop_size
        _check_pair(fg, alpha, "foreground")
        if bg.dtype != np.uint8 or bg.ndim != 3 or bg.shape[2] != 3:
            raise ValueError(f"background: expected (h, w, 3) uint8, got {bg.shape} {bg.dtype}")
        h, w = alpha.shape

        fg2 = alpha2 = None
        if second is not None and cfg.second_fg_p > 0 and rng.random() < cfg.second_fg_p:
            fg2, alpha2 = second()
            _check_pair(fg2, alpha2, "second foreground")
            # Only alpha2 is resized to the first fg's size here: the crop centre is chosen on the merged alpha and
            # must be sampled exactly; fg2's colours are sampled straight from its own frame by the warp below.
            fg2_to_fg = _resize_map(alpha2.shape, (h, w))
            if alpha2.shape != (h, w):
                alpha2 = cv2.resize(alpha2, (w, h), interpolation=cv2.INTER_LINEAR)

        # The canvas is the foreground frame the window is cut from: the source, optionally resized, upscaled when
        # smaller than the window, then transformed by the affine (same size, about its centre).
        canvas = (h, w)
        if cfg.resize_fg_p > 0 and rng.random() < cfg.resize_fg_p:
            canvas = (cfg.resize_fg_size, cfg.resize_fg_size)
        window = cfg.windows[int(rng.integers(len(cfg.windows)))]
        if min(canvas) < window:
            f = window / min(canvas)
            canvas = (max(window, round(canvas[0] * f)), max(window, round(canvas[1] * f)))
        angle = 0.0
        if max(canvas) >= cfg.rotation_min_side:
            angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        scale = tuple(rng.uniform(*cfg.scale_range, size=2))
        shear = rng.uniform(-cfg.shear_deg, cfg.shear_deg)
        flip = (bool(rng.random() < cfg.hflip_p), bool(rng.random() < cfg.vflip_p))
        forward = affine_matrix(canvas, angle, scale, shear, flip)
        canvas_to_src = _resize_map((h, w), canvas) @ np.linalg.inv(forward)

        centre = self._pick_centre(alpha, alpha2, np.linalg.inv(canvas_to_src), canvas, rng)
        step = window / out
        ox = _window_origin(None if centre is None else centre[0], canvas[1], window, out, rng)
        oy = _window_origin(None if centre is None else centre[1], canvas[0], window, out, rng)
        out_to_canvas = np.array([[step, 0.0, ox], [0.0, step, oy], [0.0, 0.0, 1.0]])
        out_to_src = canvas_to_src @ out_to_canvas

        fg_out = _warp(fg, out_to_src, out).astype(np.float32) / 255
        alpha_out = _warp(alpha, out_to_src, out).astype(np.float32) / 255
        if alpha2 is not None:
            fg_out, alpha_out = blend_foregrounds(
                fg_out,
                alpha_out,
                _warp(fg2, fg2_to_fg @ out_to_src, out).astype(np.float32) / 255,
                _warp(alpha2, out_to_src, out).astype(np.float32) / 255,
            )
        if self._hsv is not None and rng.random() < cfg.hsv_p:
            self._hsv.set_random_seed(int(rng.integers(2**31)))
            fg_out = self._hsv(image=fg_out)["image"]

        trimap = self._trimap(alpha_out, rng, cfg.trimap_range)
        bg_out = _warp(bg, self._bg_map(bg.shape[:2], canvas, rng) @ out_to_canvas, out).astype(np.float32) / 255
        a = alpha_out[..., None]
        image = a * fg_out + (1.0 - a) * bg_out
        return {"image": image, "fg": fg_out, "bg": bg_out, "alpha": alpha_out, "trimap": trimap}

    @staticmethod
    def _pick_centre(
        alpha: np.ndarray,
        alpha2: np.ndarray | None,
        src_to_canvas: np.ndarray,
        canvas: tuple[int, int],
        rng: np.random.Generator,
    ) -> tuple[float, float] | None:
        """A uniformly random fractional pixel of the (merged) source alpha, as canvas (x, y); one that the affine
        maps inside the canvas when there is such a pixel. None when the alpha has no fractional pixel."""
        width = alpha.shape[1]

        def mapped(idx: np.ndarray, inside_only: bool = True) -> np.ndarray:
            q = src_to_canvas[:2, :2] @ np.stack([idx % width, idx // width]) + src_to_canvas[:2, 2:]
            if not inside_only:
                return q
            ok = (q[0] >= 0) & (q[0] <= canvas[1] - 1) & (q[1] >= 0) & (q[1] <= canvas[0] - 1)
            return q[:, ok]

        # Rejection sampling: uniform random pixels, kept when fractional and mapped inside. Each kept one is
        # uniform over the valid pixels, and this avoids scanning a multi-megapixel alpha; the full scan is the
        # fallback for alphas with very few fractional pixels.
        idx = rng.integers(0, alpha.size, size=1024)
        a2 = None if alpha2 is None else alpha2.reshape(-1)[idx]
        q = mapped(idx[_fractional_mask(alpha.reshape(-1)[idx], a2)])
        if q.shape[1] == 0:
            idx = np.flatnonzero(_fractional_mask(alpha, alpha2))
            if len(idx) == 0:
                return None
            q = mapped(idx)
            if q.shape[1] == 0:
                q = mapped(idx, inside_only=False)
        k = int(rng.integers(q.shape[1]))
        return float(q[0, k]), float(q[1, k])

    def _bg_map(self, bg_hw: tuple[int, int], canvas: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """canvas -> bg: the bg resized (aspect kept) to cover the canvas, then a canvas-sized part at a random
        offset."""
        ratio = max(canvas[0] / bg_hw[0], canvas[1] / bg_hw[1])
        if not self.config.bg_downscale:
            ratio = max(ratio, 1.0)
        cover = (max(canvas[0], round(bg_hw[0] * ratio)), max(canvas[1], round(bg_hw[1] * ratio)))
        ty = int(rng.integers(0, cover[0] - canvas[0] + 1))
        tx = int(rng.integers(0, cover[1] - canvas[1] + 1))
        return _resize_map(bg_hw, cover) @ _translate(tx, ty)


class A2UAugment:
    """A2U matting's pipeline (``matting.data.a2u``): same call and output as ``CompositionAugment``.

    The random choices are drawn from ``rng`` in A2U's order: merge coin (and, inside ``second``, the partner),
    640-resize coin, angle (only for a long side >= ``rotation_min_side``), x scale, y scale, shear, the two
    affine mirrors, the extra horizontal mirror, the fg and bg erosion kernels, the crop corner, then the hue
    shift and the saturation and value draws (no jitter draws when the crop's alpha is all zero).

    Args:
        config: the recipe.
    """

    def __init__(self, config: A2UConfig):
        self.config = config

    def __call__(
        self,
        fg: np.ndarray,
        alpha: np.ndarray,
        bg: np.ndarray,
        rng: np.random.Generator,
        second: SecondForeground | None = None,
    ) -> dict[str, np.ndarray]:
        """Composes one training crop.

        Args:
            fg: (H, W, 3) uint8 RGB foreground.
            alpha: (H, W) uint8 alpha of ``fg``.
            bg: (h, w, 3) uint8 RGB background, any size.
            rng: the only source of randomness.
            second: called (at most once) for a second foreground when the merge coin says so.
        Returns:
            dict with, S = ``config.crop_size``: ``image``, ``fg``, ``bg``: (S, S, 3) float32 RGB in [0, 1]
            (``image`` unclipped: float32 rounding can exceed 1 by ~1e-7); ``alpha``: (S, S) float32 in [0, 1];
            ``trimap``: (S, S) uint8 in {0, 128, 255}; image == alpha * fg + (1 - alpha) * bg up to rounding.
        """
        cfg = self.config
        _check_pair(fg, alpha, "foreground")
        if bg.dtype != np.uint8 or bg.ndim != 3 or bg.shape[2] != 3:
            raise ValueError(f"background: expected (h, w, 3) uint8, got {bg.shape} {bg.dtype}")
        alpha = alpha.astype(np.float32) / 255
        if rng.random() < cfg.second_fg_p and second is not None:
            fg2, alpha2 = second()
            _check_pair(fg2, alpha2, "second foreground")
            fg, alpha = a2u.merge_second_foreground(fg, alpha, fg2, alpha2.astype(np.float32) / 255)
        if rng.random() < cfg.resize_fg_p:
            size = (cfg.resize_fg_size, cfg.resize_fg_size)
            fg, alpha = a2u.resize_nearest(fg, size), a2u.resize_nearest(alpha, size)

        fg, alpha = self._affine_and_flip(fg, alpha, rng)
        lo, hi = cfg.trimap_range
        k_fg, k_bg = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        trimap = trimap_from_alpha_erode(alpha, k_fg, k_bg)

        crop = cfg.crop_size
        bg = a2u.enlarge_to_cover(bg, alpha.shape)
        fg, alpha, trimap, bg = a2u.upscale_small(fg, alpha, trimap, bg, crop)
        corner = a2u.pick_crop_corner(trimap, crop, rng)
        if (trimap == a2u.UNKNOWN).any():
            fg, alpha, trimap, bg = a2u.cut_window((fg, alpha, trimap, bg), corner, crop)
        else:
            fg, alpha, trimap, bg = a2u.resize_all(fg, alpha, trimap, bg, crop)

        if (alpha != 0).any():
            hue = int(rng.integers(-cfg.hue_shift_deg, cfg.hue_shift_deg))
            fg = a2u.hsv_jitter(fg, alpha, hue, float(rng.random()), float(rng.random()))
        image, fg, bg, alpha = a2u.composite(fg, alpha, bg)
        return {"image": image, "fg": fg, "bg": bg, "alpha": alpha, "trimap": np.ascontiguousarray(trimap)}

    def _affine_and_flip(
        self, fg: np.ndarray, alpha: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The random affine (full size, nearest, zero border) and the extra horizontal mirror."""
        cfg = self.config
        angle = 0.0
        if max(alpha.shape) >= cfg.rotation_min_side:
            angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        scale = (rng.uniform(*cfg.scale_range), rng.uniform(*cfg.scale_range))
        shear = rng.uniform(-cfg.shear_deg, cfg.shear_deg)
        # A2U keeps an axis when its draw is below 1 - p, so a draw >= 1 - p mirrors it.
        mirror = tuple(bool(u >= 1 - cfg.affine_flip_p) for u in rng.random(2))
        inverse = a2u.affine_inverse_matrix(alpha.shape, angle, scale, shear, mirror)
        fg, alpha = a2u.warp_nearest(fg, inverse), a2u.warp_nearest(alpha, inverse)
        if rng.random() < cfg.hflip_p:
            fg, alpha = cv2.flip(fg, 1), cv2.flip(alpha, 1)
        return fg, alpha


def build_augment(config: AugmentConfig | A2UConfig) -> CompositionAugment | A2UAugment:
    """The callable that turns (fg, alpha, bg, rng, second) into a training crop for this config."""
    return A2UAugment(config) if isinstance(config, A2UConfig) else CompositionAugment(config)
