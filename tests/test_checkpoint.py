"""Checkpoints load with ``torch.load(weights_only=True)``: a file whose pickle would run code is refused by every
entry point with a one-line error and runs nothing; RNG states are stored as plain data; the format-1 checkpoints
written before that still load."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from matting.config import load_config
from matting.engine.checkpoint import (
    atomic_torch_save,
    load_checkpoint,
    model_from_checkpoint,
    rng_state,
    set_rng_state,
)
from matting.engine.predictor import Predictor
from matting.engine.trainer import Trainer
from matting.errors import MattingError
from matting.evaluate import main as evaluate_main
from matting.export import main as export_main
from matting.infer import main as infer_main
from matting.models import build_model
from matting.train import main as train_main

from helpers import TINY_MODEL, save_tiny_checkpoint
from test_evaluate import make_test_folder

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this object runs ``touch <marker>`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(params=["torch.save", "pickle"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    """(a checkpoint-looking file whose unpickling creates ``marker``, marker), as a torch zip or a raw pickle."""
    marker = tmp_path / "MARKER"
    weights = save_tiny_checkpoint(tmp_path / "good.pth")
    payload = {**torch.load(weights, weights_only=True), "extra": Payload(marker)}
    path = tmp_path / "evil.pth"
    if request.param == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path, marker


def assert_refused(message: str, path: Path, marker: Path) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message and "refused" in message and "posix.system" in message, message
    assert not marker.exists(), "the file's code ran"


def test_python_api_refuses_code_in_a_checkpoint(evil):
    path, marker = evil
    loaders = [load_checkpoint, model_from_checkpoint, Predictor.from_checkpoint,
               lambda p: Trainer(load_config(None, [f"output_dir={p.parent / 'run'}", "device=cpu"]), resume=p)]
    for load in loaders:
        with pytest.raises(MattingError) as err:
            load(path)
        assert_refused(str(err.value), path, marker)
    assert not (path.parent / "run").exists()


@pytest.mark.slow
def test_every_command_refuses_code_in_a_checkpoint(evil, tmp_path, capsys):
    path, marker = evil
    make_test_folder(tmp_path / "test")
    first = sorted((tmp_path / "test" / "merged").iterdir())[0]
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ndevice: cpu\n")
    commands = [
        (infer_main, ["--checkpoint", str(path), "--image", str(first), "--trimap",
                      str(tmp_path / "test" / "trimaps" / first.name), "--out", str(tmp_path / "o")]),
        (evaluate_main, ["--checkpoint", str(path), "--data", str(tmp_path / "test"), "--out", str(tmp_path / "e"),
                         "--device", "cpu", "--no-progress"]),
        (export_main, ["--checkpoint", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]),
        (train_main, ["--config", str(config), "--resume", str(path), "--no-progress"]),
    ]
    for main, argv in commands:
        assert main(argv) == 2, main.__module__
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: "), err
        assert_refused(err, path, marker)
    assert not any((tmp_path / name).exists() for name in ("o", "e", "m.pt", "run"))


@pytest.mark.slow
def test_refusal_from_a_fresh_process_is_one_line(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "config": {}, "extra": Payload(marker)}, path)
    proc = subprocess.run([sys.executable, "-m", "matting.export", "--checkpoint", str(path), "--format", "onnx"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert_refused(proc.stderr, path, marker)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    state = rng_state()
    atomic_torch_save({"rng": state}, tmp_path / "rng.pth")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng.pth") == []
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


@pytest.mark.slow
def test_format_1_checkpoints_still_load(tmp_path):
    """Written before this change: the RNG states as numpy's and Python's own objects (a uint32 ndarray)."""
    model = build_model(**TINY_MODEL)
    old_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    expected = np.random.rand(3)
    path = tmp_path / "old.pth"
    torch.save({"format": 1, "model": model.state_dict(), "config": {"model": TINY_MODEL}, "step": 5,
                "rng": old_rng}, path)
    np.random.rand(7)
    ckpt = load_checkpoint(path)
    set_rng_state(ckpt["rng"])
    assert np.array_equal(np.random.rand(3), expected)
    loaded, info = model_from_checkpoint(path)
    assert info["step"] == 5
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_unreadable_checkpoint_is_one_line(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02not really")
    with pytest.raises(MattingError, match="junk.pth: not a readable checkpoint") as err:
        load_checkpoint(tmp_path / "junk.pth")
    assert "\n" not in str(err.value)
