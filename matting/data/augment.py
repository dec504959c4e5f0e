"""Online composition for training: one random geometric + photometric recipe applied to (fg, alpha, bg).

Two recipes from the literature are named presets (``PRESETS``); ``make_augment_config(preset, **overrides)``
derives a config from one of them (e.g. a smaller ``crop_size`` for CPU demos). ``CompositionAugment`` is the
single place where fg, alpha, bg and trimap are coupled:

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
from typing import Callable

import albumentations as A
import cv2
import numpy as np

from matting.data.trimap import TRIMAP_KINDS
from matting.errors import MattingError

SecondForeground = Callable[[], tuple[np.ndarray, np.ndarray]]
"""Returns a second (fg (h, w, 3) uint8 RGB, alpha (h, w) uint8); only called when the coin says so."""


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

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

        def bad(key: str, what: str) -> MattingError:
            return MattingError(f"augment.{key}: {what} (got {getattr(self, key)!r})")

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        if not is_int(self.crop_size) or self.crop_size < 8:
            raise bad("crop_size", "must be an integer >= 8")
        if not self.crop_scales or not all(is_num(s) and s > 0 for s in self.crop_scales):
            raise bad("crop_scales", "must be a non-empty list of positive numbers")
        if self.trimap not in TRIMAP_KINDS:
            raise bad("trimap", f"must be one of {', '.join(TRIMAP_KINDS)}")
        lo_t = 0 if self.trimap == "dt" else 1
        r = self.trimap_range
        if len(r) != 2 or not all(is_int(v) for v in r) or not lo_t <= r[0] <= r[1]:
            raise bad("trimap_range", f"must be two integers [lo, hi] with {lo_t} <= lo <= hi")
        for key in ("hflip_p", "vflip_p", "second_fg_p", "resize_fg_p", "hsv_p"):
            v = getattr(self, key)
            if not is_num(v) or not 0.0 <= v <= 1.0:
                raise bad(key, "must be a probability in [0, 1]")
        for key in ("rotation_deg", "shear_deg", "hue_shift_deg", "sat_shift", "val_shift"):
            v = getattr(self, key)
            if not is_num(v) or v < 0:
                raise bad(key, "must be a number >= 0")
        s = self.scale_range
        if len(s) != 2 or not all(is_num(v) for v in s) or not 0 < s[0] <= s[1]:
            raise bad("scale_range", "must be two numbers [lo, hi] with 0 < lo <= hi")
        for key in ("rotation_min_side", "resize_fg_size"):
            v = getattr(self, key)
            if not is_int(v) or v < 1:
                raise bad(key, "must be a positive integer")
        if not isinstance(self.bg_downscale, bool):
            raise bad("bg_downscale", "must be true or false")

    @property
    def windows(self) -> tuple[int, ...]:
        """The window sides (pixels of the foreground canvas) a crop is cut from, one per ``crop_scales`` entry."""
        return tuple(max(1, round(self.crop_size * s)) for s in self.crop_scales)

    @property
    def min_source_size(self) -> int:
        """Short side a foreground needs to be used at its own scale for every window; smaller ones are upscaled
        (bicubic) so that their short side equals the drawn window. Nothing is padded."""
        return max(self.windows)


PRESETS: dict[str, AugmentConfig] = {
    # IndexNet (Lu et al., ICCV 2019): crop 320/480/640 around an unknown pixel, resize to 320, horizontal flip,
    # distance-transform trimap 1..19 px.
    "indexnet": AugmentConfig(
        crop_size=320,
        crop_scales=(1.0, 1.5, 2.0),
        trimap="dt",
        trimap_range=(1, 19),
        hflip_p=0.5,
    ),
    # GCA-Matting (Li & Lu, AAAI 2020), also A2U: second-fg merge, resize to 640, affine with flips in both axes,
    # erosion trimap 1..29, 512 crop around an unknown pixel, HSV jitter of the fg (hue +-40 deg as in GCA).
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
}


def make_augment_config(preset: str, **overrides) -> AugmentConfig:
    """The named preset with some fields replaced, e.g. ``make_augment_config("indexnet", crop_size=160)``.

    A smaller ``crop_size`` scales the whole window set (IndexNet at 160: windows 160/240/320 resized to 160).
    Raises MattingError for an unknown preset, an unknown field or a bad value, naming it.
    """
    if preset not in PRESETS:
        raise MattingError(f"augment preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(AugmentConfig)}
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
