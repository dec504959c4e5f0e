"""The shared inference path: padding, cropping, clamping, forcing the known regions, rounding, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from matting.engine.predictor import Predictor, as_rgb_uint8, pad_to_multiple, to_uint8_alpha
from matting.errors import MattingError
from matting.models import build_model, make_input

from helpers import trained_head


class RedChannelModel(nn.Module):
    """Returns the red channel of the image in [0, 1], recovered from the network input.

    ``make_input`` normalises channel 0 by some per-channel affine map; it is calibrated here with two constant
    images, so the fake model stays right whatever the normalisation constants are. Records every input.
    """

    output_stride = 32

    def __init__(self, scale: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset
        tri = torch.full((1, 1, 1, 1), 128, dtype=torch.uint8)
        lo = make_input(torch.zeros(1, 3, 1, 1), tri)[0, 0, 0, 0].item()
        hi = make_input(torch.ones(1, 3, 1, 1), tri)[0, 0, 0, 0].item()
        self.lo, self.span = lo, hi - lo
        self.inputs: list[torch.Tensor] = []
        self.modes: list[bool] = []

    def red(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - self.lo) / self.span

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.output_stride or x.shape[-1] % self.output_stride:
            raise ValueError(f"input {tuple(x.shape)} is not a multiple of {self.output_stride}")
        self.inputs.append(x.clone())
        self.modes.append(self.training)
        return self.red(x) * self.scale + self.offset


class ConstantModel(nn.Module):
    output_stride = 16

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.value)


class SmallConvModel(nn.Module):
    """Two 3x3 convolutions: receptive-field radius 2, so tiling with any margin >= 2 must be exact."""

    output_stride = 16

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return torch.sigmoid(self.net(x))


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def unknown(h: int, w: int) -> np.ndarray:
    return np.full((h, w), 128, np.uint8)


@pytest.mark.parametrize("shape", [(45, 70), (1, 1), (1, 7), (5, 2), (33, 31), (64, 32)])
def test_pad_to_multiple_reflects_bottom_right(shape):
    h, w = shape
    image = random_image(h, w)
    padded = pad_to_multiple(image, 32)
    assert padded.shape == (-(-h // 32) * 32, -(-w // 32) * 32, 3)
    np.testing.assert_array_equal(padded[:h, :w], image)  # original stays top-left
    if w >= 2:  # reflect: the first padded column mirrors the one before the last
        if padded.shape[1] > w:
            np.testing.assert_array_equal(padded[:h, w], image[:, w - 2])
    else:  # a one-pixel side is repeated
        np.testing.assert_array_equal(padded[:h, :], np.repeat(image, padded.shape[1], axis=1))


def test_pad_to_multiple_is_noop_on_multiples():
    trimap = unknown(64, 96)
    assert pad_to_multiple(trimap, 32) is trimap


def test_predict_crops_back_exactly_and_pads_by_reflection():
    model = RedChannelModel()
    matter = Predictor(model, "cpu")
    image = random_image(45, 70)
    alpha = matter.predict(image, unknown(45, 70))
    assert alpha.shape == (45, 70) and alpha.dtype == np.float32
    # The fake network returns the red channel, so the prediction is the red channel, pixel for pixel.
    np.testing.assert_array_equal(to_uint8_alpha(alpha), image[:, :, 0])
    np.testing.assert_array_equal(matter.predict_uint8(image, unknown(45, 70)), image[:, :, 0])
    x = model.inputs[0]
    assert len(model.inputs) == 2 and x.shape == (1, 4, 64, 96)
    seen = np.round(model.red(x)[0, 0].numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(seen, np.pad(image[:, :, 0], ((0, 19), (0, 26)), mode="reflect"))


def test_predict_forces_known_regions():
    image = random_image(40, 50, seed=1)
    trimap = unknown(40, 50)
    trimap[:10] = 0
    trimap[-10:] = 255
    pred = Predictor(RedChannelModel(), "cpu").predict_uint8(image, trimap)
    assert (pred[:10] == 0).all() and (pred[-10:] == 255).all()
    np.testing.assert_array_equal(pred[10:-10], image[10:-10, :, 0])


@pytest.mark.parametrize("value,expected", [(1.7, 255), (-0.3, 0), (100.7 / 255, 101), (254.6 / 255, 255)])
def test_predict_clamps_and_rounds_not_truncates(value, expected):
    matter = Predictor(ConstantModel(value), "cpu")
    alpha = matter.predict(random_image(20, 20), unknown(20, 20))
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert (matter.predict_uint8(random_image(20, 20), unknown(20, 20)) == expected).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 2), (17, 1)])
def test_tiny_images(shape):
    image = random_image(*shape, seed=2)
    pred = Predictor(RedChannelModel(), "cpu").predict_uint8(image, unknown(*shape))
    assert pred.shape == shape
    np.testing.assert_array_equal(pred, image[:, :, 0])


def test_grey_rgba_and_16bit_inputs_match_rgb():
    matter = Predictor(RedChannelModel(), "cpu")
    rgb = random_image(20, 30, seed=3)
    tri = unknown(20, 30)
    grey = rgb[:, :, 0]
    np.testing.assert_array_equal(matter.predict_uint8(grey, tri), grey)
    rgba = np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)
    np.testing.assert_array_equal(matter.predict_uint8(rgba, tri), rgb[:, :, 0])
    rgb16 = rgb.astype(np.uint16) * 257
    np.testing.assert_array_equal(matter.predict_uint8(rgb16, tri), rgb[:, :, 0])
    np.testing.assert_array_equal(as_rgb_uint8(grey[:, :, None]), np.repeat(grey[:, :, None], 3, axis=2))
    # Views with negative strides (an OpenCV BGR image flipped to RGB, a flipped trimap) are fine.
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(matter.predict_uint8(bgr[:, :, ::-1], tri[::-1]), rgb[:, :, 0])


def test_bad_inputs_raise_matting_error():
    matter = Predictor(RedChannelModel(), "cpu")
    with pytest.raises(MattingError, match="does not match"):
        matter.predict(random_image(20, 30), unknown(20, 31))
    with pytest.raises(MattingError, match="float32"):
        matter.predict(random_image(20, 30).astype(np.float32), unknown(20, 30))
    with pytest.raises(MattingError, match="shape"):
        matter.predict(random_image(20, 30), np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(MattingError, match="amp"):
        Predictor(RedChannelModel(), "cpu", amp="fp8")


def test_off_values_in_trimap_are_mapped_with_a_warning():
    image = random_image(20, 20, seed=4)
    trimap = np.full((20, 20), 127, np.uint8)  # 127 is "unknown" after mapping, as read_trimap does it
    trimap[:5] = 3
    with pytest.warns(UserWarning, match="trimap"):
        pred = Predictor(RedChannelModel(), "cpu").predict_uint8(image, trimap)
    assert (pred[:5] == 0).all()
    np.testing.assert_array_equal(pred[5:], image[5:, :, 0])


def test_runs_in_eval_mode_and_restores_train_mode():
    model = RedChannelModel().train()
    Predictor(model, "cpu").predict(random_image(8, 8), unknown(8, 8))
    assert model.modes == [False]
    assert model.training


def test_no_autograd_graph_is_built():
    model = SmallConvModel()
    matter = Predictor(model, "cpu")
    captured = {}

    def hook(module, inputs, output):
        captured["grad"] = torch.is_grad_enabled()

    model.register_forward_hook(hook)
    matter.predict(random_image(16, 16), unknown(16, 16))
    assert captured["grad"] is False


def test_tiles_match_whole_image_when_margin_covers_receptive_field():
    image, trimap = random_image(100, 130, seed=5), unknown(100, 130)
    trimap[:20] = 0
    whole = Predictor(SmallConvModel(), "cpu").predict(image, trimap)
    model = SmallConvModel()
    tiled = Predictor(model, "cpu", tile=32, tile_margin=16).predict(image, trimap)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    # Padded 112x144 in 32-px centres with 16 px of context: 4x5 windows, none larger than 64x64.
    assert len(model.shapes) == 20
    assert max(s[-1] for s in model.shapes) <= 64 and max(s[-2] for s in model.shapes) <= 64


def test_tiles_differ_from_whole_image_without_margin():
    # Guards the test above: with no context the 3x3 convolutions see zero padding at tile borders.
    image, trimap = random_image(64, 64, seed=6), unknown(64, 64)
    whole = Predictor(SmallConvModel(), "cpu").predict(image, trimap)
    tiled = Predictor(SmallConvModel(), "cpu", tile=32, tile_margin=0).predict(image, trimap)
    assert np.abs(tiled - whole).max() > 1e-4


@pytest.mark.parametrize("upsampler", ["fade", "bilinear"])
def test_bf16_autocast_runs_the_real_network_close_to_float32(upsampler):
    """The paper's network (narrowed) under CPU bf16 autocast: float32 alpha of the image's size, close to the
    float32 prediction and not a constant (the head is calibrated, see trained_head)."""
    torch.manual_seed(0)
    model = trained_head(build_model("resnet34", upsampler, decoder_channels=(32, 16, 16, 8), context_channels=32,
                                     aspp_channels=32)).eval()
    image, trimap = random_image(40, 36, seed=4), unknown(40, 36)
    alpha = Predictor(model, "cpu", amp="bf16").predict(image, trimap)
    assert alpha.dtype == np.float32 and alpha.shape == (40, 36)
    full = Predictor(model, "cpu").predict(image, trimap)
    # An untrained network amplifies bf16 rounding (FADE's kernel logits most: softmax of rounded logits), so
    # the bound is loose; a broken path (a constant, garbage, float32 ignored) is off by about the spread itself.
    assert full.std() > 0.1 and np.abs(alpha - full).mean() < 0.25 * full.std()


def test_channels_last_by_default_on_cpu_with_the_same_alpha():
    image, trimap = random_image(40, 50, seed=3), unknown(40, 50)
    plain = Predictor(SmallConvModel(), "cpu", channels_last=False)
    model = SmallConvModel()  # the same seeded weights
    fast = Predictor(model, "cpu")
    assert fast.channels_last and not plain.channels_last
    assert model.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.model.net[0].weight.is_contiguous()
    seen = []
    layout = torch.channels_last
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=layout)))
    np.testing.assert_allclose(fast.predict(image, trimap), plain.predict(image, trimap), atol=1e-6, rtol=0)
    assert seen == [True]


@pytest.mark.slow
def test_checkpoint_with_a_different_network_is_a_clear_error(tmp_path):
    from matting.engine.checkpoint import atomic_torch_save
    from matting.models import build_model

    small = {"decoder_channels": [8, 8, 8, 8], "context_channels": 8, "aspp_channels": 8}
    # A checkpoint of the 6-block layer3 whose config does not say so (written before layer3_blocks existed).
    model = build_model("resnet34", "bilinear", layer3_blocks=6, **small)
    path = tmp_path / "old.pth"
    config = {"model": {"encoder": "resnet34", "upsampler": "bilinear", "options": small}}
    atomic_torch_save({"format": 1, "model": model.state_dict(), "config": config, "step": 1}, path)
    with pytest.raises(MattingError, match=rf"{path}: weights do not match .* model.options.layer3_blocks: 6$"):
        Predictor.from_checkpoint(path, "cpu")
    config["model"]["options"] = {**small, "layer3_blocks": 6}
    atomic_torch_save({"format": 1, "model": model.state_dict(), "config": config, "step": 1}, path)
    assert len(Predictor.from_checkpoint(path, "cpu").model.encoder.layer3) == 6


def _flushes_denormals() -> bool:
    return float(torch.tensor([1e-39]) * 1.0) == 0.0  # 1e-39 is below float32's normal range


def test_denormal_flag_is_set_only_when_asked():
    """A library user's process keeps its denormal flag unless they ask (the command lines set it themselves)."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    try:
        Predictor(SmallConvModel(), "cpu")
        assert not _flushes_denormals()
        Predictor(SmallConvModel(), "cpu", flush_denormals=True)
        assert _flushes_denormals()
    finally:
        torch.set_flush_denormal(True)  # as conftest.py sets it for the whole session


def test_former_names_still_work():
    from matting.engine.logger import Board, TensorBoardWriter
    from matting.engine.predictor import Matter
    from matting.engine.runtime import fast_cpu_math, flush_denormals

    assert Matter is Predictor and Board is TensorBoardWriter and fast_cpu_math is flush_denormals
