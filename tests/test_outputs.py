"""Output locations: checked before any work (unwritable, a file where a folder is needed, an input about to be
overwritten), and a write that fails mid-way is one line saying what was kept. Every command is covered."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch

import matting.infer as infer
from matting.data.io import check_writable_dir, read_rgb, write_png
from matting.data.make_demo import make_demo
from matting.engine import checkpoint as ckpt_module
from matting.engine import evaluator, predictor
from matting.engine.checkpoint import load_checkpoint
from matting.errors import MattingError, OutputError
from matting.evaluate import main as evaluate_main
from matting.export import main as export_main
from matting.metrics.__main__ import main as metrics_main
from matting.train import main as train_main

from helpers import save_tiny_checkpoint
from test_evaluate import make_test_folder
from test_infer import make_pair, write_pair
from test_train import TINY_DEMO, tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "latest.pth", step=5)


@pytest.fixture
def blocked(tmp_path):
    """A place nothing can be written to, even by root: a path below a regular file."""
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file" / "out"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def no_work(monkeypatch):
    """Makes loading a checkpoint fail the test: the output check must come before any work."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output location was checked")

    monkeypatch.setattr(predictor, "model_from_checkpoint", forbidden)
    monkeypatch.setattr("matting.export.model_from_checkpoint", forbidden)


def test_check_writable_dir(tmp_path, blocked, monkeypatch):
    check_writable_dir(tmp_path / "new" / "deeper")  # creatable: nothing is created by the check
    assert not (tmp_path / "new").exists()
    with pytest.raises(MattingError, match="a_file is a file, not a folder"):
        check_writable_dir(blocked)
    with pytest.raises(MattingError, match="a_file: exists and is not a folder"):
        check_writable_dir(tmp_path / "a_file")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(MattingError, match=r"new: cannot write here \(Read-only file system\)"):
        check_writable_dir(tmp_path / "new")


@pytest.mark.slow
def test_evaluate_checks_out_before_inference(tmp_path, checkpoint, blocked, capsys, monkeypatch):
    make_test_folder(tmp_path / "test")
    no_work(monkeypatch)
    args = ["--data", str(tmp_path / "test"), "--checkpoint", str(checkpoint), "--out", str(blocked)]
    assert evaluate_main(args) == 2
    assert str(blocked) in one_line(capsys)


def test_evaluate_never_writes_into_its_test_folder(tmp_path, checkpoint, capsys, monkeypatch):
    make_test_folder(tmp_path / "test")
    before = {p: p.read_bytes() for p in (tmp_path / "test").rglob("*") if p.is_file()}
    no_work(monkeypatch)
    assert evaluate_main(["--data", str(tmp_path / "test"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "test")]) == 2
    assert "test/alpha, a folder the test set is read from" in one_line(capsys)
    assert {p: p.read_bytes() for p in (tmp_path / "test").rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_evaluate_write_failure_midway_says_what_was_kept(tmp_path, checkpoint, capsys, monkeypatch):
    make_test_folder(tmp_path / "test")
    written = []

    def fill_up(path, image):
        if len(written) == 2:
            raise OutputError(f"{path}: could not write ({'No space left on device'})")
        written.append(path)
        write_png(path, image)

    monkeypatch.setattr(evaluator, "write_png", fill_up)
    out = tmp_path / "eval"
    assert evaluate_main(["--data", str(tmp_path / "test"), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--device", "cpu", "--workers", "0", "--no-progress"]) == 2
    err = one_line(capsys)
    assert "No space left on device" in err and f"2 alpha mattes are in {out / 'alpha'}" in err
    assert sorted(p.name for p in (out / "alpha").iterdir()) == sorted(p.name for p in written)
    assert not (out / "summary.json").exists() and not (out / "metrics.csv").exists()


def test_infer_refuses_to_overwrite_an_input(tmp_path, checkpoint, capsys, monkeypatch):
    image, trimap = make_pair()
    img, tri = write_pair(tmp_path, "photo", image, trimap)
    no_work(monkeypatch)
    for out in (img, tri):
        assert infer.main(["--checkpoint", str(checkpoint), "--image", str(img), "--trimap", str(tri),
                     "--out", str(out)]) == 2
        assert f"{out}: is an input" in one_line(capsys)
    assert np.array_equal(read_rgb(img), image)
    # Folders: outputs go to OUT/alpha/<stem>.png; with OUT the parent of the image folder 'alpha' they would
    # replace the images.
    (tmp_path / "images").rename(tmp_path / "alpha")
    assert infer.main(["--checkpoint", str(checkpoint), "--image", str(tmp_path / "alpha"), "--trimap",
                 str(tmp_path / "trimaps"), "--out", str(tmp_path)]) == 2
    assert "is an input" in one_line(capsys)
    assert np.array_equal(read_rgb(tmp_path / "alpha" / "photo.png"), image)


def test_infer_out_that_is_a_file_or_unwritable(tmp_path, checkpoint, blocked, capsys, monkeypatch):
    image, trimap = make_pair()
    img, tri = write_pair(tmp_path, "photo", image, trimap)
    no_work(monkeypatch)
    (tmp_path / "results").write_text("my notes")
    args = ["--checkpoint", str(checkpoint), "--image", str(img), "--trimap", str(tri)]
    assert infer.main([*args, "--out", str(tmp_path / "results")]) == 2
    assert "results: exists and is not a folder" in one_line(capsys)
    assert (tmp_path / "results").read_text() == "my notes"
    assert infer.main([*args, "--out", str(blocked)]) == 2
    assert str(blocked) in one_line(capsys)
    assert infer.main([*args, "--out", str(blocked / "x.png")]) == 2
    assert "a_file is a file, not a folder" in one_line(capsys)


@pytest.mark.slow
def test_infer_write_failure_in_a_folder_stops_and_says_what_was_kept(tmp_path, checkpoint, capsys, monkeypatch):
    image, trimap = make_pair()
    for stem in ("a", "b", "c"):
        write_pair(tmp_path, stem, image, trimap)
    calls = []

    def fill_up(path, array):
        calls.append(path)
        if len(calls) == 2:
            raise OutputError(f"{path}: could not write (No space left on device)")
        write_png(path, array)

    monkeypatch.setattr(infer, "write_png", fill_up)
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(checkpoint), "--image", str(tmp_path / "images"), "--trimap",
                       str(tmp_path / "trimaps"), "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "No space left on device" in err and f"1 of 3 images were written to {out}" in err
    assert len(calls) == 2  # stopped: the third image was not tried


def test_export_checks_out_before_loading(tmp_path, checkpoint, blocked, capsys, monkeypatch):
    before = checkpoint.read_bytes()
    no_work(monkeypatch)
    assert export_main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(checkpoint)]) == 2
    assert "is an input" in one_line(capsys)
    assert checkpoint.read_bytes() == before
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(blocked / "m.onnx")]) == 2
    assert "a_file is a file, not a folder" in one_line(capsys)
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_line(capsys)


@pytest.mark.slow
def test_export_write_failure_is_one_line(tmp_path, checkpoint, capsys, monkeypatch):
    def full_disk(module, f, *args, **kwargs):
        f.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", full_disk)
    out = tmp_path / "m.pt"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    err = one_line(capsys)
    assert "No space left on device" in err and str(out) in err
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_metrics_checks_the_csv_location_before_scoring(tmp_path, blocked, capsys, monkeypatch):
    make_test_folder(tmp_path / "t")
    monkeypatch.setattr("matting.metrics.batch.evaluate_items", lambda *a, **k: pytest.fail("scored first"))
    base = ["--pred", str(tmp_path / "t" / "alpha"), "--gt", str(tmp_path / "t" / "alpha"),
            "--trimap", str(tmp_path / "t" / "trimaps"), "--no-progress"]
    assert metrics_main([*base, "--out", str(blocked / "m.csv")]) == 2
    assert "a_file is a file, not a folder" in one_line(capsys)
    assert metrics_main([*base, "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_line(capsys)


def test_train_checks_output_dir_first(tmp_path, blocked, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {blocked}\ndevice: cpu\ndata: {{dataset_dir: {tmp_path / 'nowhere'}}}\n")
    assert train_main(["--config", str(config)]) == 2
    assert "a_file is a file, not a folder" in one_line(capsys)


@pytest.mark.slow
def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    """A full disk during a save (torch's zip writer raises RuntimeError 'unexpected pos'): one line saying which
    step latest.pth still holds; the file is intact and no temporary file is left."""
    make_demo(tmp_path / "demo", seed=1, **TINY_DEMO)
    cfg = tiny_config(tmp_path, tmp_path / "demo", iterations=3, ckpt_every=1)
    real_save, saves = torch.save, []

    def save_until_full(obj, f):
        saves.append(obj["step"])
        if len(saves) == 2:
            f.write(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4242")
        real_save(obj, f)

    monkeypatch.setattr(ckpt_module.torch, "save", save_until_full)
    assert train_main(["--config", str(cfg), "--no-progress", "data.val_count=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "unexpected pos" in err and "latest.pth still holds step 1" in err, err
    monkeypatch.setattr(ckpt_module.torch, "save", real_save)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(ckpt_dir / "latest.pth")["step"] == 1
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest.pth"]
    assert "unexpected pos" in (tmp_path / "run" / "train.log").read_text()  # the log says why the run ended
