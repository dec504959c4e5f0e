"""Evaluation: every item is scored or reported as failed, files and baseline are right, the CLI works end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from matting.data.io import read_gray, write_png
from matting.engine.evaluator import BASELINE_KEY, constant_baseline, evaluate
from matting.engine.predictor import Predictor
from matting.errors import MattingError
from matting.metrics import compute_metrics, write_csv

from helpers import save_tiny_checkpoint


class SigmoidModel(nn.Module):
    """A deterministic stand-in network: sigmoid of the first input channel."""

    output_stride = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x[:, :1] * 2.0)


def make_item(name: str, h: int = 40, w: int = 52, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    alpha = np.zeros((h, w), np.uint8)
    alpha[:, w // 3 :] = 255
    alpha[:, w // 3 - 4 : w // 3 + 4] = rng.integers(0, 256, (h, 8), dtype=np.uint8)
    trimap = np.zeros((h, w), np.uint8)
    trimap[:, w // 3 - 6 : w // 3 + 6] = 128
    trimap[:, w // 3 + 6 :] = 255
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return {"image": image, "alpha": alpha, "trimap": trimap, "name": name}


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture
def matter() -> Predictor:
    return Predictor(SigmoidModel(), "cpu")


def test_constant_baseline_is_128_in_unknown_and_trimap_elsewhere():
    trimap = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(constant_baseline(trimap), [[0, 128, 255]])


def test_scores_every_item_and_writes_alpha_csv_and_summary(tmp_path, matter):
    items = [make_item(f"img_{k}", seed=k) for k in range(3)]
    summary = evaluate(matter, items, tmp_path, progress=False, workers=0, meta={"split": "val", "data": "gen"})

    expected, base = [], []
    for item in items:
        pred = read_gray(tmp_path / "alpha" / f"{item['name']}.png")
        np.testing.assert_array_equal(pred, matter.predict_uint8(item["image"], item["trimap"]))
        expected.append(compute_metrics(pred, item["alpha"], item["trimap"]))
        base.append(compute_metrics(constant_baseline(item["trimap"]), item["alpha"], item["trimap"]))

    rows = read_csv(tmp_path / "metrics.csv")
    assert rows[0] == ["name", "sad", "mse", "grad", "conn"]
    assert [r[0] for r in rows[1:]] == ["img_0", "img_1", "img_2", "mean"]
    for row, exp in zip(rows[1:4], expected):
        assert [float(v) for v in row[1:]] == pytest.approx([exp[k] for k in ("sad", "mse", "grad", "conn")])
    for j, key in enumerate(("sad", "mse", "grad", "conn"), start=1):
        assert float(rows[4][j]) == pytest.approx(np.mean([e[key] for e in expected]))
        assert summary["mean"][key] == pytest.approx(np.mean([e[key] for e in expected]))
        assert summary[BASELINE_KEY][key] == pytest.approx(np.mean([b[key] for b in base]))
    assert summary["mean"]["mse_x1e3"] == pytest.approx(summary["mean"]["mse"] * 1000)
    assert summary["mean"]["sad"] > 0 and summary[BASELINE_KEY]["sad"] > 0
    assert summary["mean"]["sad"] != pytest.approx(summary[BASELINE_KEY]["sad"])
    assert (summary["count"], summary["images"], summary["failed"], summary["failures"]) == (3, 3, 0, [])
    assert summary["split"] == "val" and summary["data"] == "gen"
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # `python -m matting.metrics` writes the same file for the same scores: one mean, one number format.
    write_csv([{"name": item["name"], **exp} for item, exp in zip(items, expected)], tmp_path / "batch.csv")
    assert (tmp_path / "batch.csv").read_text() == (tmp_path / "metrics.csv").read_text()


class FlakyDataset:
    """A dataset whose item 1 cannot be loaded, as a corrupt file would make it."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items
        self.records = [type("R", (), {"name": it["name"]})() for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        if index == 1:
            raise MattingError(f"{self.items[index]['name']}.png: not a readable image")
        return self.items[index]


@pytest.mark.parametrize("workers", [0, 2])
def test_failures_are_counted_and_the_others_scored(tmp_path, matter, workers, capsys):
    items = [make_item(f"img_{k}", seed=k) for k in range(5)]
    items[3]["trimap"] = items[3]["trimap"][:, :-1]  # size mismatch: predict raises
    summary = evaluate(matter, FlakyDataset(items), tmp_path, progress=False, workers=workers)

    assert summary["images"] == 5 and summary["count"] == 3 and summary["failed"] == 2
    assert [f["name"] for f in summary["failures"]] == ["img_1", "img_3"]
    assert "not a readable image" in summary["failures"][0]["error"]
    assert "does not match" in summary["failures"][1]["error"]
    err = capsys.readouterr().err
    assert "failed: img_1" in err and "failed: img_3" in err

    rows = read_csv(tmp_path / "metrics.csv")
    assert [r[0] for r in rows[1:]] == ["img_0", "img_1", "img_2", "img_3", "img_4", "mean"]
    assert rows[2][1:] == ["", "", "", ""] and rows[4][1:] == ["", "", "", ""]
    scored = [compute_metrics(read_gray(tmp_path / "alpha" / f"img_{k}.png"), items[k]["alpha"], items[k]["trimap"])
              for k in (0, 2, 4)]
    assert summary["mean"]["sad"] == pytest.approx(np.mean([s["sad"] for s in scored]))
    assert not (tmp_path / "alpha" / "img_3.png").exists()


def test_no_fork_in_a_process_with_a_process_group(tmp_path, matter):
    """Under DDP the trainer's validation runs in a process that holds a process group (and on GPUs a CUDA
    context): its metric workers are spawned, not forked, and score exactly as forked or in-process ones."""
    import torch.distributed as dist

    from matting.engine.evaluator import _pool_context

    items = [make_item(f"img_{k}", seed=k) for k in range(2)]
    assert _pool_context().get_start_method() == "fork"
    forked = evaluate(matter, items, None, progress=False, workers=1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert _pool_context().get_start_method() == "spawn"
        spawned = evaluate(matter, items, None, progress=False, workers=1)
    finally:
        dist.destroy_process_group()
    assert spawned["mean"] == forked["mean"] == evaluate(matter, items, None, progress=False, workers=0)["mean"]


def test_a_failing_iterator_is_reported(matter):
    def gen():
        yield make_item("a")
        raise OSError("disk gone")

    summary = evaluate(matter, gen(), None, progress=False, workers=0)
    assert summary["count"] == 1 and summary["failed"] == 1
    assert "disk gone" in summary["failures"][0]["error"]


def test_image_without_unknown_region_gives_nan_mse_that_the_mean_ignores(tmp_path, matter):
    full = make_item("known", seed=1)
    full["trimap"][:] = 255
    items = [make_item("a"), full]
    with pytest.warns(UserWarning):
        summary = evaluate(matter, items, tmp_path, progress=False, workers=0)
    assert summary["mse_undefined"] == 1 and summary["count"] == 2
    only = compute_metrics(read_gray(tmp_path / "alpha" / "a.png"), items[0]["alpha"], items[0]["trimap"])
    assert summary["mean"]["mse"] == pytest.approx(only["mse"])
    assert read_csv(tmp_path / "metrics.csv")[2][2] == "nan"
    json.loads((tmp_path / "summary.json").read_text())  # strict JSON: no NaN literal


def test_nothing_scored_gives_none_means(matter):
    summary = evaluate(matter, [], None, progress=False, workers=0)
    assert summary["count"] == 0 and summary["mean"]["sad"] is None and not math.isnan(summary["images"])


# ------------------------------------------------------------------------------------------------------------
# The command line, end to end, on a generated test folder and a tiny real checkpoint.

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "latest.pth", step=11)


def make_test_folder(root: Path, fg_count: int = 2, per_fg: int = 2) -> list[dict]:
    """merged/<fg>_<k>.png, alpha/<fg>.png (named per foreground, Adobe's layout), trimaps/<fg>_<k>.png."""
    items = []
    for f in range(fg_count):
        base = make_item(f"fg{f}", h=36 + 8 * f, w=45, seed=f)
        write_png(root / "alpha" / f"fg{f}.png", base["alpha"])
        for k in range(per_fg):
            image = np.random.default_rng(100 * f + k).integers(0, 256, base["image"].shape, dtype=np.uint8)
            write_png(root / "merged" / f"fg{f}_{k}.png", image)
            write_png(root / "trimaps" / f"fg{f}_{k}.png", base["trimap"])
            items.append({"image": image, "alpha": base["alpha"], "trimap": base["trimap"], "name": f"fg{f}_{k}"})
    return items


def test_cli_end_to_end(tmp_path, checkpoint, capsys):
    from matting.evaluate import main

    items = make_test_folder(tmp_path / "test")
    out = tmp_path / "eval"
    args = ["--data", str(tmp_path / "test"), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*args, "--device", "cpu", "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out / "summary.json")
    assert any(line.startswith("| model |") for line in printed)
    assert any(line.startswith("| constant 0.5 |") for line in printed)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 4 and summary["failed"] == 0
    assert summary["step"] == 11 and summary["checkpoint"] == str(checkpoint) and summary["split"] == "test"
    matter = Predictor.from_checkpoint(checkpoint, "cpu")
    sads = []
    for item in items:
        pred = read_gray(out / "alpha" / f"{item['name']}.png")
        np.testing.assert_array_equal(pred, matter.predict_uint8(item["image"], item["trimap"]))
        sads.append(compute_metrics(pred, item["alpha"], item["trimap"])["sad"])
    assert summary["mean"]["sad"] == pytest.approx(np.mean(sads))
    assert [r[0] for r in read_csv(out / "metrics.csv")[1:]] == ["fg0_0", "fg0_1", "fg1_0", "fg1_1", "mean"]


def test_cli_counts_a_corrupt_image_and_exits_1(tmp_path, checkpoint, capsys):
    from matting.evaluate import main

    make_test_folder(tmp_path / "test")
    (tmp_path / "test" / "merged" / "fg1_0.png").write_bytes(b"not a png")
    out = tmp_path / "eval"
    args = ["--data", str(tmp_path / "test"), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*args, "--device", "cpu", "--workers", "0", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "failed: fg1_0" in captured.err and captured.out.strip().splitlines()[-1] == str(out / "summary.json")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and summary["failed"] == 1 and summary["failures"][0]["name"] == "fg1_0"
    assert "fg1_0.png" in summary["failures"][0]["error"]


def test_cli_user_errors_exit_2_with_one_line(tmp_path, checkpoint, capsys):
    from matting.evaluate import main

    assert main(["--data", str(tmp_path / "missing"), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "missing" in err
    assert main(["--data", str(tmp_path), "--checkpoint", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "none.pth" in err


@pytest.mark.slow
def test_eval_script_runs_the_module_from_any_directory(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "eval_comp1k.sh"
    proc = subprocess.run(
        ["bash", str(script), "--data", str(tmp_path / "nowhere"), "--checkpoint", str(tmp_path / "c.pth")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "c.pth" in proc.stderr


def test_cli_counts_a_truncated_jpeg_as_failed(tmp_path, checkpoint, capsys):
    """libjpeg fills a cut-off JPEG with grey and exits fine; the image must fail, named, not be scored."""
    import cv2

    from matting.evaluate import main

    items = make_test_folder(tmp_path / "test")
    merged = tmp_path / "test" / "merged"
    (merged / "fg1_0.png").unlink()
    cv2.imwrite(str(merged / "fg1_0.jpg"), items[2]["image"])
    data = (merged / "fg1_0.jpg").read_bytes()
    (merged / "fg1_0.jpg").write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "eval"
    args = ["--data", str(tmp_path / "test"), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*args, "--device", "cpu", "--workers", "0", "--no-progress"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 3 and summary["failed"] == 1
    assert f"{merged / 'fg1_0.jpg'}: not a readable image, truncated JPEG" in summary["failures"][0]["error"]
    assert "Premature end of JPEG" not in capsys.readouterr().err


def test_cli_refuses_a_test_folder_whose_composition_did_not_finish(tmp_path, checkpoint, capsys):
    from matting.evaluate import main

    make_test_folder(tmp_path / "test")
    manifest = tmp_path / "test" / "manifest.json"
    manifest.write_text(json.dumps({"tool": "matting.data.compose_test", "complete": False, "dataset": "D",
                                    "bg_dir": "B", "outputs": []}))
    assert main(["--data", str(tmp_path / "test"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "e"),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{manifest}: the composition did not finish" in err
    assert not (tmp_path / "e").exists()
