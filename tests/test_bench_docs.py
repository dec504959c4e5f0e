"""The helper that writes benchmark tables into docs/benchmarks.md, and the sections that file must carry."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from matting.metrics import __main__ as metrics_cli
from matting.metrics import bench as metrics_bench
from matting.utils import bench_docs
from matting.utils.bench_docs import DocsSectionError, command_line, replace_section, section_span, write_section

REPO = Path(__file__).resolve().parents[1]

# Every section a script of this repository writes (each script's docstring names its sections; `upsamplers` and
# `gpu` are written by scripts/bench_upsamplers.py and scripts/bench_gpu.py).
SECTIONS = ("upsamplers", "gpu", "model-inference", "model-training", "model-training-demo", "inference",
            "inference-tile", "loader", "loader-cache", "metrics", "image-read")

# A file with CRLF lines, non-ASCII text, no final newline and a second section next to the one replaced.
BEFORE = "# Bench\r\nintro – café\r\n\r\n<!-- bench:a -->\nold\ntable\n<!-- /bench:a -->\n"
AFTER = "text between\n<!-- bench:b -->\nkept\n<!-- /bench:b -->\nlast line, no newline"


def test_replacing_a_section_keeps_every_other_byte():
    text = BEFORE + AFTER
    new = replace_section(text, "a", "| x |\n|---|\n| 1 |")
    assert new == BEFORE.replace("old\ntable\n", "| x |\n|---|\n| 1 |\n") + AFTER
    assert replace_section(new, "a", "| x |\n|---|\n| 1 |\n\n") == new  # idempotent; trailing newlines folded
    assert replace_section(new, "a", "") == BEFORE.replace("old\ntable\n", "\n") + AFTER


def test_an_empty_section_fills_and_a_missing_one_is_appended():
    empty = "head\n<!-- bench:gpu -->\n<!-- /bench:gpu -->\ntail\n"
    assert replace_section(empty, "gpu", "t") == "head\n<!-- bench:gpu -->\nt\n<!-- /bench:gpu -->\ntail\n"
    for text, sep in (("head\n", "\n"), ("head", "\n\n"), ("head\n\n", ""), ("", "")):
        assert replace_section(text, "new", "t") == f"{text}{sep}<!-- bench:new -->\nt\n<!-- /bench:new -->\n"
    assert section_span(replace_section("head", "new", "t"), "new") is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- bench:a -->\n<!-- /bench:a -->\n<!-- bench:a -->\n", "appears 2 times"),
        ("<!-- /bench:a -->\n<!-- bench:a -->\n", "needs <!-- bench:a --> and then"),
        ("<!-- bench:a -->\nno end\n", "needs <!-- bench:a --> and then"),
        ("see <!-- bench:a -->\n<!-- /bench:a -->\n", "must be on a line of its own"),
    ],
)
def test_broken_markers_are_one_line_errors(text, message):
    with pytest.raises(DocsSectionError, match=re.escape(message)) as info:
        replace_section(text, "a", "t", "x.md")
    assert str(info.value).startswith("x.md: ") and "\n" not in str(info.value)


def test_section_names_are_checked():
    with pytest.raises(DocsSectionError, match="section name 'A b'"):
        replace_section("", "A b", "t")


def test_write_section_stamps_command_machine_and_date(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_bytes((BEFORE + AFTER).encode())
    write_section(path, "b", "| y |\n|---|", "python scripts/x.py --n 2")
    text = path.read_bytes().decode()
    assert text.startswith(BEFORE + "text between\n<!-- bench:b -->\nMade by `python scripts/x.py --n 2` on CPU ")
    assert text.endswith(".\n\n| y |\n|---|\n<!-- /bench:b -->\nlast line, no newline")
    stamp = next(line for line in text.splitlines() if line.startswith("Made by"))
    assert f"torch {torch.__version__}" in stamp and f"{os.cpu_count()} logical CPUs" in stamp
    assert re.search(r", \d{4}-\d\d-\d\d\.$", stamp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.md"]  # no temporary file left


def test_a_missing_docs_file_is_refused_before_measuring(tmp_path):
    with pytest.raises(DocsSectionError, match=f"{tmp_path / 'nope.md'}: cannot read it"):
        bench_docs.measure_and_write(str(tmp_path / "nope.md"), "x", "prog", [], lambda: pytest.fail("measured"))


def test_command_line_leaves_out_where_the_table_went():
    assert command_line("python a.py", ["--n", "2", "--write-docs"]) == "python a.py --n 2"
    assert command_line("python a.py", ["--write-docs", "/tmp/b.md", "--n", "2"]) == "python a.py --n 2"
    assert command_line("python a.py", ["--write-docs=/tmp/b.md", "--size", "8 x"]) == "python a.py --size '8 x'"


def test_docs_file_carries_every_section_the_scripts_write():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    for name in SECTIONS:
        assert section_span(text, name, "docs/benchmarks.md") is not None, name
    assert bench_docs.DOCS_FILE == REPO / "docs" / "benchmarks.md"


def test_metrics_cli_writes_its_section(tmp_path, monkeypatch, capsys):
    """The --bench --write-docs wiring, with the timing replaced by fixed rows: no benchmark runs in the suite."""
    rows = [{"metric": m, "seconds": 0.25, "s_per_mpx": 0.125} for m in ("sad", "mse", "grad", "conn", "all four")]
    monkeypatch.setattr(metrics_bench, "time_metrics", lambda *a, **k: (rows, "fixed rows"))
    path = tmp_path / "benchmarks.md"
    path.write_text("intro\n<!-- bench:metrics -->\nold\n<!-- /bench:metrics -->\nend\n")
    assert metrics_cli.main(["--bench", "--repeat", "2", "--write-docs", str(path)]) == 0
    text = path.read_text()
    assert "Made by `python -m matting.metrics --bench --repeat 2` on " in text
    assert "fixed rows\n\n| metric | s / image | s / Mpx |\n|---|---:|---:|\n| sad | 0.2500 | 0.1250 |" in text
    assert "All four: 0.125 s/Mpx, meets the target of 0.25 s/Mpx." in text
    assert text.startswith("intro\n<!-- bench:metrics -->\n") and text.endswith("<!-- /bench:metrics -->\nend\n")
    assert f"wrote the 'metrics' section of {path}" in capsys.readouterr().out


def test_metrics_cli_refuses_a_missing_docs_file_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics_bench, "time_metrics", lambda *a, **k: pytest.fail("measured"))
    assert metrics_cli.main(["--bench", "--write-docs", str(tmp_path / "nope.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'nope.md'}: cannot read it") and err.count("\n") == 1
