"""Training runs a user breaks: a used output folder, a failed start, a kill during a save, a resume after steps
were logged, a loss that explodes then turns NaN. Nothing is lost or mixed, and train.log says what happened."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from matting.config import load_config
from matting.data.io import write_png
from matting.data.make_demo import make_demo
from matting.engine.checkpoint import atomic_torch_save, load_checkpoint
from matting.engine.trainer import Trainer, TrainingDiverged
from matting.errors import MattingError
from matting.infer import main as infer_main
from matting.train import main

from helpers import save_tiny_checkpoint
from test_train import TINY_DEMO, tiny_config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, seed=1, **TINY_DEMO)
    return root


def train(cfg: Path, *args: str) -> int:
    return main(["--config", str(cfg), "--no-progress", "data.val_count=0", *args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_fresh_run_into_a_used_output_dir_is_refused_and_restart_moves_it_aside(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tmp_path, tiny_data, iterations=1)
    run = tmp_path / "run"
    assert train(cfg) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert train(cfg) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--resume" in err and "--restart" in err, err
    assert snapshot(run) == before  # nothing touched
    with pytest.raises(MattingError, match="--restart"):  # the Python API refuses too
        Trainer(load_config(cfg, ["data.val_count=0"]), progress=False)

    assert train(cfg, "--restart") == 0
    old = list(tmp_path.glob("run.old-*"))
    assert len(old) == 1 and snapshot(old[0]) == before  # moved aside whole, never deleted
    log = (run / "train.log").read_text()
    assert log.count("run 'tiny'") == 1 and f"moved the earlier run to {old[0]}" in log


@pytest.mark.slow
def test_resume_from_elsewhere_into_a_used_output_dir_is_refused(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tmp_path, tiny_data, iterations=1)
    assert train(cfg) == 0
    other = tmp_path / "other.pth"
    shutil.copy(tmp_path / "run" / "checkpoints" / "latest.pth", other)
    capsys.readouterr()
    assert train(cfg, "--resume", str(other), "train.iterations=2") == 2
    assert "--restart" in capsys.readouterr().err
    assert train(cfg, "--resume", str(other), "train.iterations=2", "--restart") == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pth")["step"] == 2


def test_a_failed_start_leaves_nothing(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tmp_path, tiny_data, iterations=1)
    assert train(cfg, f"data.dataset_dir={tmp_path / 'nowhere'}") == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert train(cfg, "train.batch_size=100") == 2  # fails after the model and data were built
    assert not (tmp_path / "run").exists()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_save_removes_the_temporary_files_of_killed_saves(tmp_path):
    stale = tmp_path / f".latest.pth.tmp{dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".latest.pth.tmp{os.getppid()}"  # another live process may be writing: keep it
    alive.write_bytes(b"in progress")
    other = tmp_path / f".best.pth.tmp{dead_pid()}"  # another file's: removed when that file is saved
    other.write_bytes(b"x")
    atomic_torch_save({"a": torch.ones(2)}, tmp_path / "latest.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["latest.pth", alive.name, other.name])
    atomic_torch_save({"a": torch.ones(2)}, tmp_path / "best.pth")
    assert not other.exists()


def event_steps(log_dir: Path, tag: str) -> list[int]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_resume_purges_the_steps_logged_after_the_checkpoint(tmp_path, tiny_data):
    """Killed after step 3 was logged but before it was saved: the resumed run logs 3 again, and TensorBoard
    must show it once."""
    cfg = load_config(tiny_config(tmp_path, tiny_data, iterations=4, ckpt_every=2, log_every=1), ["data.val_count=0"])
    latest = Path(cfg.output_dir) / "checkpoints" / "latest.pth"
    Trainer(cfg, progress=False).fit(until=2)
    kept = latest.read_bytes()
    Trainer(cfg, resume=latest, progress=False).fit(until=3)
    latest.write_bytes(kept)  # as if killed before the step-3 save
    Trainer(cfg, resume=latest, progress=False).fit()
    assert event_steps(Path(cfg.output_dir) / "tb", "loss/total") == [1, 2, 3, 4]


def poison(trainer: Trainer, monkeypatch, explode_from: int, nan_at: int) -> None:
    """From step ``explode_from`` the loss is 1e10 times too big (finite); at step ``nan_at`` it is NaN."""
    real = trainer.criterion.forward

    def forward(pred, batch):
        total, terms = real(pred, batch)
        step = trainer.state.step + 1
        if step >= nan_at:
            return total * float("nan"), terms
        return (total * 1e10, terms) if step >= explode_from else (total, terms)

    monkeypatch.setattr(trainer.criterion, "forward", forward)


@pytest.mark.slow
def test_after_a_nan_the_kept_checkpoint_is_the_last_healthy_one(tmp_path, tiny_data, monkeypatch):
    cfg = load_config(tiny_config(tmp_path, tiny_data, iterations=20, ckpt_every=1), ["data.val_count=0"])
    trainer = Trainer(cfg, progress=False)
    poison(trainer, monkeypatch, explode_from=7, nan_at=9)
    latest = Path(cfg.output_dir) / "checkpoints" / "latest.pth"
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit()
    message = str(err.value)
    assert "loss is nan at step 9" in message and f"{latest} (step 6)" in message, message
    assert load_checkpoint(latest)["step"] == 6  # steps 7 and 8 had finite but exploding losses
    log = (Path(cfg.output_dir) / "train.log").read_text()
    assert "loss is nan at step 9" in log  # the fatal error reaches the log, not only stderr
    assert "step 7: loss" in log and "not saved" in log


@pytest.mark.slow
def test_nan_before_any_checkpoint_says_so(tmp_path, tiny_data, monkeypatch):
    cfg = load_config(tiny_config(tmp_path, tiny_data), ["data.val_count=0"])
    trainer = Trainer(cfg, progress=False)
    poison(trainer, monkeypatch, explode_from=99, nan_at=1)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1.*no checkpoint was saved"):
        trainer.fit()
    assert not (Path(cfg.output_dir) / "checkpoints" / "latest.pth").exists()


@pytest.mark.slow
def test_trimap_value_warning_is_one_clean_line(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "c.pth")
    trimap = np.full((32, 32), 128, np.uint8)
    trimap[:4] = 127
    write_png(tmp_path / "t.png", trimap)
    write_png(tmp_path / "i.png", np.zeros((32, 32, 3), np.uint8))
    assert infer_main(["--checkpoint", str(checkpoint), "--image", str(tmp_path / "i.png"), "--trimap",
                       str(tmp_path / "t.png"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {tmp_path / 't.png'}: 128 trimap pixels are not 0/128/255; mapped them by "
                   "thresholds <85 / >170"], err


def test_a_crash_reaches_train_log_with_its_traceback(tmp_path, tiny_data, monkeypatch):
    cfg = load_config(tiny_config(tmp_path, tiny_data), ["data.val_count=0"])
    trainer = Trainer(cfg, progress=False)

    def bug(pred, batch):
        raise ZeroDivisionError("a bug in a loss")

    monkeypatch.setattr(trainer.criterion, "forward", bug)
    with pytest.raises(ZeroDivisionError):
        trainer.fit()
    log = (Path(cfg.output_dir) / "train.log").read_text()
    assert "crashed at step 0" in log and "Traceback" in log and "ZeroDivisionError: a bug in a loss" in log
