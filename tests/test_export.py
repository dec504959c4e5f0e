"""Export: the ONNX and TorchScript files give the same alpha as the PyTorch inference path."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from matting.engine.predictor import Predictor
from matting.export import export_model, main, run_exported

from helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", step=7)


def sample(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[: h // 4] = 0
    trimap[-h // 4 :] = 255
    return image, trimap


def exported_alpha(path, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    x = (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    return run_exported(path, np.ascontiguousarray(x), trimap[None, None])[0, 0]


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """Both formats exported once from the checkpoint's model (exporting takes seconds)."""
    matter = Predictor.from_checkpoint(checkpoint, "cpu")
    folder = tmp_path_factory.mktemp("export")
    return matter, {
        "onnx": export_model(matter.model, "onnx", folder / "tiny.onnx"),
        "torchscript": export_model(matter.model, "torchscript", folder / "tiny.pt"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(exported, fmt):
    matter, paths = exported
    # 64x64, then 96x128: the height and width of the exported graph are dynamic.
    for h, w, seed in ((64, 64, 0), (96, 128, 1)):
        image, trimap = sample(h, w, seed)
        expected = matter.predict(image, trimap)
        got = exported_alpha(paths[fmt], image, trimap)
        assert got.shape == (h, w)
        np.testing.assert_allclose(got, expected, atol=3e-5, rtol=0)
        assert (got[trimap == 0] == 0).all() and (got[trimap == 255] == 1).all()
        assert 0 < expected[trimap == 128].std()  # the comparison is not between two constants


@pytest.mark.slow
def test_onnx_batch_is_dynamic(exported):
    matter, paths = exported
    (a, ta), (b, tb) = sample(64, 64, 2), sample(64, 64, 3)
    x = np.stack([a, b]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    got = run_exported(paths["onnx"], np.ascontiguousarray(x), np.stack([ta, tb])[:, None])
    assert got.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(got[1, 0], matter.predict(b, tb), atol=3e-5, rtol=0)


@pytest.mark.slow
def test_onnx_records_the_output_stride_and_uses_standard_ops(exported):
    import onnx

    proto = onnx.load(str(exported[1]["onnx"]))
    assert {p.key: p.value for p in proto.metadata_props}["output_stride"] == "32"
    # Standard operators only: no custom op of this package leaked into the graph.
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}


@pytest.mark.slow
def test_cli_exports_next_to_the_checkpoint_and_verifies(checkpoint, capsys):
    assert main(["--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(checkpoint.with_name("tiny.onnx"))
    assert checkpoint.with_name("tiny.onnx").is_file()
    diff = float(out[0].rsplit(" ", 1)[1])  # "max |onnx - pytorch| alpha difference: 1.2e-06"
    assert 0 <= diff < 1e-4


def test_cli_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope.pth"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.pth" in err and err.startswith("error:")


@pytest.mark.slow
def test_cli_names_a_missing_optional_package(checkpoint, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    out = tmp_path / "tiny.onnx"
    assert main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: ONNX export needs onnxruntime: pip install onnxruntime (or pip install -r "
                   "requirements-dev.txt)")
    assert not out.exists()
    # Without the check, onnxruntime is not needed.
    assert main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out), "--no-verify"]) == 0


def test_torchscript_uses_standard_ops(exported):
    import torch

    module = torch.jit.load(str(exported[1]["torchscript"]))
    kinds = {node.kind() for node in module.inlined_graph.nodes()}
    assert "aten::_convolution" in kinds  # the traced network
    assert not any(kind.startswith("matting::") for kind in kinds)
