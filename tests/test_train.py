"""The training engine on a tiny generated dataset: exact resume, NaN stop, checkpoints, two-process gloo run,
and the whole chain train -> resume -> evaluate -> infer -> export through the command lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from matting.config import load_config
from matting.engine.checkpoint import load_checkpoint
from matting.engine.schedule import lr_factor
from matting.engine.trainer import EpochSampler, Trainer, TrainingDiverged
from matting.errors import MattingError

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny demo set (Adobe's layout) and its composed test folder, made by the project's own tools."""
    from matting.data.compose_test import compose_test_set
    from matting.data.make_demo import make_demo

    root = tmp_path_factory.mktemp("demo")
    make_demo(root, seed=1, **TINY_DEMO)
    compose_test_set(root / "Combined_Dataset", root / "test_bg", root / "test", workers=1, progress=False)
    return root


# Sizes for make_demo that keep every test here fast.
TINY_DEMO = dict(train_fgs=4, test_fgs=2, min_size=64, max_size=96, train_bgs_per_fg=2, test_bgs_per_fg=1, workers=1)


def tiny_config(tmp_path: Path, data: Path, **train) -> Path:
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp_path / "run"),
        "seed": 3,
        "device": "cpu",
        "model": {"encoder": "mobilenetv2", "upsampler": "fade", "options": {"width_mult": 0.25}},
        "data": {
            "dataset_dir": str(data / "Combined_Dataset"),
            "train_bg_dir": str(data / "train_bg"),
            "preset": "indexnet",
            "augment": {"crop_size": 64},
            "samples_per_epoch": 6,
            "num_workers": 0,
            "val_count": 1,
            "val_bgs_per_fg": 1,
            "test_dir": str(data / "test"),
        },
        "train": {
            "iterations": 4, "batch_size": 2, "lr": 0.001, "schedule": "poly", "warmup_iters": 1,
            "log_every": 1, "image_every": 2, "val_every": 2, "ckpt_every": 100, **train,
        },
        "eval": {"device": "cpu", "workers": 1},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_sampler_is_a_function_of_seed_epoch_and_position():
    a = EpochSampler(10, seed=1)
    a.set_position(epoch=2, start=0)
    full = list(a)
    a.set_position(epoch=2, start=4)
    assert list(a) == full[4:]
    assert sorted(full) == list(range(10))
    ranks = [EpochSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.set_position(2, 0)
    parts = [list(r) for r in ranks]
    assert all(len(p) == 3 for p in parts)
    assert len(set(sum(parts, []))) == 9  # disjoint


def test_lr_schedules():
    cfg = load_config(None, ["train.iterations=100", "train.warmup_iters=10", "train.schedule=cosine"]).train
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.5)
    step = load_config(None, ["train.milestones=[3, 6]", "train.gamma=0.5"]).train
    assert [lr_factor(s, step) for s in (0, 2, 3, 5, 6, 9)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(tmp_path, tiny_data, workers):
    """Stopped at step 2 and resumed, a run ends with the same weights as an uninterrupted one (CPU), also with
    persistent loader workers across the epoch boundary (3 steps per epoch)."""
    straight = load_config(tiny_config(tmp_path / "a", tiny_data), [f"data.num_workers={workers}"])
    Trainer(straight, progress=False).fit()
    stopped = load_config(tiny_config(tmp_path / "b", tiny_data), [f"data.num_workers={workers}"])
    Trainer(stopped, progress=False).fit(until=2)
    latest = Path(stopped.output_dir) / "checkpoints" / "latest.pth"
    assert load_checkpoint(latest)["step"] == 2
    Trainer(stopped, resume=latest, progress=False).fit()

    a = weights(Path(straight.output_dir) / "checkpoints" / "latest.pth")
    b = weights(latest)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ckpt = load_checkpoint(latest)
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["upsampler"] == "fade"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(latest) == []  # weights-only loadable as written
    assert set(ckpt) >= {"optimizer", "scheduler", "scaler", "rng", "best", "epoch"}
    # Validation ran on the held-out split and picked a best checkpoint.
    assert (Path(stopped.output_dir) / "checkpoints" / "best.pth").is_file()
    log = (Path(stopped.output_dir) / "train.log").read_text()
    assert "validation split" in log


@pytest.mark.slow
def test_a_signal_stops_after_the_step_with_one_save(tmp_path, tiny_data, monkeypatch):
    """SIGTERM during step 2 (a checkpoint step): the run ends after that step, latest.pth written once there."""
    cfg = load_config(tiny_config(tmp_path, tiny_data, iterations=5, ckpt_every=1))
    trainer = Trainer(cfg, progress=False)
    real_forward, real_save, saves = trainer.criterion.forward, trainer.save, []

    def forward(pred, batch):
        if trainer.state.step == 1:  # counted from 0: this is step 2
            trainer._request_stop(signal.SIGTERM, None)
        return real_forward(pred, batch)

    monkeypatch.setattr(trainer.criterion, "forward", forward)
    monkeypatch.setattr(trainer, "save", lambda name="latest.pth": saves.append((name, trainer.state.step)) or
                        real_save(name))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert [step for name, step in saves if name == "latest.pth"] == [1, 2]
    assert load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "latest.pth")["step"] == 2
    log = (Path(cfg.output_dir) / "train.log").read_text()
    assert f"stopped by signal {int(signal.SIGTERM)} at step 2; saved" in log


@pytest.mark.slow
def test_nan_loss_stops_without_saving(tmp_path, tiny_data, monkeypatch):
    cfg = load_config(tiny_config(tmp_path, tiny_data))
    trainer = Trainer(cfg, progress=False)
    real = trainer.criterion.forward

    def poisoned(pred, batch):
        total, terms = real(pred, batch)
        return total * float("nan"), terms

    monkeypatch.setattr(trainer.criterion, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        trainer.fit()
    assert not (Path(cfg.output_dir) / "checkpoints" / "latest.pth").exists()


@pytest.mark.slow
def test_resume_with_a_different_model_is_refused(tmp_path, tiny_data):
    cfg = load_config(tiny_config(tmp_path, tiny_data, iterations=1))
    Trainer(cfg, progress=False).fit()
    other = load_config(tiny_config(tmp_path, tiny_data), ["model.upsampler=bilinear"])
    latest = Path(cfg.output_dir) / "checkpoints" / "latest.pth"
    with pytest.raises(MattingError, match="differs from this config"):
        Trainer(other, resume=latest, progress=False)
    # Other parameter groups: a one-line error, not torch's ValueError.
    regrouped = load_config(tiny_config(tmp_path, tiny_data),
                            ["train.lr_groups=[[encoder, 0.1], [context, 1], [decoder, 1], [head, 1]]"])
    with pytest.raises(MattingError, match=f"{latest}: its optimiser state does not fit"):
        Trainer(regrouped, resume=latest, progress=False)
    # A weights-only file (as convert_official writes) names what it lacks.
    ckpt = torch.load(latest, weights_only=True)
    weights_only = tmp_path / "weights.pth"
    torch.save({k: ckpt[k] for k in ("model", "config", "step", "epoch")}, weights_only)
    # Another seed or batch size: resumed, with a warning that the data order is not the uninterrupted run's.
    reseeded = load_config(tiny_config(tmp_path, tiny_data), ["seed=7", "train.batch_size=3"])
    Trainer(reseeded, resume=latest, progress=False).fit()
    log = (Path(cfg.output_dir) / "train.log").read_text()
    assert f"{latest}: seed, train.batch_size differ from the checkpoint's config: training goes on from step 1" in log
    fresh = load_config(tiny_config(tmp_path, tiny_data), [f"output_dir={tmp_path / 'fresh'}"])
    with pytest.raises(MattingError, match="holds no optimizer, scheduler, rng, so training cannot resume"):
        Trainer(fresh, resume=weights_only, progress=False)


def run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_cli_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lrr: 1}\n")
    proc = run("-m", "matting.train", "--config", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: unknown config key 'train.lrr' (did you mean lr?)"]
    proc = run("-m", "matting.train", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "config file not found" in proc.stderr and "Traceback" not in proc.stderr


def ddp_run(tmp_path: Path, tiny_data: Path, *worker_args: str, val_count: int = 0,
            **train) -> subprocess.CompletedProcess:
    """torchrun with two CPU processes (gloo) running tests/ddp_worker.py; each writes its weights to tmp_path."""
    cfg = tiny_config(tmp_path, tiny_data, **{"iterations": 3, "batch_size": 4, **train})
    return run(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(REPO / "tests" / "ddp_worker.py"),
        str(tmp_path), *worker_args, "--", "--config", str(cfg), "--no-progress", f"data.val_count={val_count}",
        env={"OMP_NUM_THREADS": "1"}, timeout=300,  # a hang fails the test instead of stalling the suite
    )


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path, tiny_data):
    """torchrun with two CPU processes: DDP over gloo keeps the ranks' weights identical; rank 0 alone writes the
    checkpoint (holding both ranks' RNG states) and the log."""
    proc = ddp_run(tmp_path, tiny_data, val_count=1)  # rank 0 validates while rank 1 waits in the wait group
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pth")
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]) and torch.equal(value, ckpt["model"][name]), name
    assert not torch.equal(ranks[0]["head.0.weight"], torch.zeros_like(ranks[0]["head.0.weight"]))  # it trained
    log = (tmp_path / "run" / "train.log").read_text()
    assert "2 process(es)" in log and "new best validation SAD" in log
    assert (tmp_path / "run" / "checkpoints" / "best.pth").is_file()
    # One process goes on from the two processes' checkpoint (another machine), with a warning.
    from matting.train import main

    cfg = tmp_path / "tiny.yaml"
    assert main(["--config", str(cfg), "--no-progress", "--resume", "data.val_count=1", "train.iterations=4"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pth")["step"] == 4
    assert "was written by 2 process(es), this run has 1" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank(tmp_path, tiny_data):
    """Rank 1's loss is NaN at step 2: both ranks stop there with the same one-line error, nothing saved after
    step 1, and nobody waits for the others until a timeout."""
    proc = ddp_run(tmp_path, tiny_data, "--nan", "1", "2", ckpt_every=1)
    assert proc.returncode != 0
    latest = tmp_path / "run" / "checkpoints" / "latest.pth"
    message = (f"error: loss is nan at step 2 on rank 1 of 2; stopped without saving; last good checkpoint: "
               f"{latest} (step 1) (lower train.lr or set train.grad_clip)")
    lines = proc.stderr.splitlines()
    assert lines.count(message) == 2, proc.stderr[-3000:]
    assert load_checkpoint(latest)["step"] == 1
    assert not list(tmp_path.glob("rank*.pt"))  # fit ended on both ranks by the error


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, tiny_data):
    """SIGTERM reaches rank 1 alone during step 2: both ranks finish step 2, save it together, and stop."""
    proc = ddp_run(tmp_path, tiny_data, "--term", "1", "2", iterations=5)
    assert proc.returncode != 0
    assert proc.stderr.splitlines().count("interrupted") == 2, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pth")
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2
    assert "stopped by a signal to another process at step 2" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_end_to_end_cli(tmp_path, tiny_data):
    """train a few steps -> resume -> evaluate -> infer -> export, through the user-facing commands."""
    cfg = tiny_config(tmp_path, tiny_data, iterations=3)
    proc = run("-m", "matting.train", "--config", str(cfg), "--no-progress", "train.iterations=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("-m", "matting.train", "--config", str(cfg), "--no-progress", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pth"
    assert load_checkpoint(ckpt)["step"] == 3

    out = tmp_path / "eval"
    proc = run("-m", "matting.evaluate", "--data", str(tiny_data / "test"), "--checkpoint", str(ckpt),
               "--out", str(out), "--device", "cpu", "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary_path = Path(proc.stdout.strip().splitlines()[-1])
    assert summary_path == out / "summary.json"
    summary = json.loads(summary_path.read_text())
    n_test = len(list((tiny_data / "test" / "merged").iterdir()))
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 1 + n_test + 1  # header, rows, mean
    assert len(list((out / "alpha").iterdir())) == n_test
    assert summary["count"] == n_test

    merged = sorted((tiny_data / "test" / "merged").iterdir())[0]
    proc = run("-m", "matting.infer", "--checkpoint", str(ckpt), "--image", str(merged),
               "--trimap", str(tiny_data / "test" / "trimaps" / merged.name), "--out", str(tmp_path / "infer"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((tmp_path / "infer").rglob("*.png"))

    proc = run("-m", "matting.export", "--checkpoint", str(ckpt), "--format", "torchscript",
               "--out", str(tmp_path / "model.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model.pt").is_file()


@pytest.mark.parametrize(
    "argv, resume, overrides",
    [
        ([], None, []),
        (["--resume"], "latest", []),
        (["--resume", "train.iterations=4"], "latest", ["train.iterations=4"]),
        (["a.b=1", "--resume"], "latest", ["a.b=1"]),
        (["a.b=1", "--resume", "--no-progress", "c.d=2"], "latest", ["a.b=1", "c.d=2"]),
        (["--resume", "run/ck.pth"], "run/ck.pth", []),
        (["--resume=run/ck.pth", "c.d=2"], "run/ck.pth", ["c.d=2"]),
        (["a.b=1", "--resume", "run/ck.pth", "c.d=2", "e=[1, 2]"], "run/ck.pth", ["a.b=1", "c.d=2", "e=[1, 2]"]),
    ],
)
def test_resume_argument_forms(argv, resume, overrides):
    """``--resume [CKPT] [key=value ...]``: a key=value after a bare --resume is an override, not a checkpoint,
    and overrides may stand on both sides of ``--resume CKPT``."""
    from matting.train import LATEST, parse_args

    args = parse_args(["--config", "c.yaml", *argv])
    assert (LATEST if resume == "latest" else resume) == args.resume
    assert args.overrides == overrides


@pytest.mark.slow
def test_resume_cli_with_overrides_on_both_sides(tmp_path, tiny_data, capsys):
    from matting.train import main

    cfg = tiny_config(tmp_path, tiny_data, iterations=4, ckpt_every=1)
    latest = tmp_path / "run" / "checkpoints" / "latest.pth"
    assert main(["--config", str(cfg), "--no-progress", "train.iterations=1", "data.val_count=0"]) == 0
    assert main(["--config", str(cfg), "--resume", "train.iterations=2", "data.val_count=0", "--no-progress"]) == 0
    assert load_checkpoint(latest)["step"] == 2
    assert main(["--config", str(cfg), "data.val_count=0", "--resume", str(latest), "train.iterations=3",
                 "--no-progress"]) == 0
    assert load_checkpoint(latest)["step"] == 3
    assert main(["--config", str(cfg), "--resume", str(tmp_path / "nope.pth"), "--no-progress"]) == 2
    assert "nope.pth: checkpoint not found" in capsys.readouterr().err


def test_truncated_training_image_is_a_one_line_error(tmp_path, tiny_data, capsys):
    """The error comes from a data-loader worker process; it must still be one line naming the file."""
    import shutil

    from matting.train import main

    data = tmp_path / "data"
    shutil.copytree(tiny_data / "Combined_Dataset", data / "Combined_Dataset")
    shutil.copytree(tiny_data / "train_bg", data / "train_bg")
    for fg in (data / "Combined_Dataset").rglob("Training_set/*/fg/*"):
        fg.write_bytes(fg.read_bytes()[:-30])
    cfg = tiny_config(tmp_path, data, iterations=2)
    code = main(["--config", str(cfg), "--no-progress", "data.val_count=0", "data.num_workers=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "/fg/" in err[-1] and ", truncated " in err[-1], err
    assert not any("Traceback" in line for line in err), err


class _HostReads(TorchDispatchMode):
    """Counts what makes a host wait for a device, outside ``paused`` blocks: scalar reads (``item``, ``float``,
    ``bool`` of a tensor) and tensors made from host data (``torch.tensor(...)``), seen by the dispatcher; and
    ``tolist``, ``numpy``, ``cpu`` and ``item`` calls, which on CPU tensors never reach it (``watch``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.recording = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.recording and func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def watch(self, monkeypatch) -> None:
        for name in ("tolist", "numpy", "cpu", "item"):
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name, method):
        def call(tensor, *args, **kwargs):
            if self.recording:
                self.ops.append(name)
            return method(tensor, *args, **kwargs)
        return call

    def paused(self, fn):
        def run(*args, **kwargs):
            self.recording = False
            try:
                return fn(*args, **kwargs)
            finally:
                self.recording = True
        return run


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_a_training_step_reads_the_device_once(tmp_path, tiny_data, monkeypatch):
    """The hot loop waits for the device once per step (the agreed finite/stop flags): the batch transfer,
    make_input, the network, the losses and backward read nothing back and copy nothing from the host. Measured
    here on CPU through the dispatcher; the optimiser is left out (on CUDA it runs fused, on the device)."""
    cfg = load_config(tiny_config(tmp_path, tiny_data, iterations=3), ["data.val_count=0"])
    trainer = Trainer(cfg, progress=False)
    batches = [next(trainer._batches()) for _ in range(3)]
    counter = _HostReads()
    counter.watch(monkeypatch)
    monkeypatch.setattr(trainer.optimizer, "step", counter.paused(trainer.optimizer.step))
    with counter:
        for batch in batches:
            trainer.train_step(trainer._to_device(batch))
    assert counter.ops == ["tolist"] * 3, counter.ops
