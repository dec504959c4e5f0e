"""Writes a benchmark's table into its marked section of ``docs/benchmarks.md``.

A section is the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (each marker on a line of its
own). ``write_section`` replaces only that text, with a line saying which command made the table, on which
machine and when, followed by the table; every byte outside the section is kept as it was. A section that is not
in the file yet is added at its end. The benchmark scripts call this with ``--write-docs``.

This module imports nothing from the package, so every room (and every script) may use it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
from pathlib import Path
from typing import Callable

import torch

DOCS_FILE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class DocsSectionError(ValueError):
    """The docs file cannot take the section: missing, unreadable, or its markers are broken. One line."""


def _markers(name: str) -> tuple[str, str]:
    if not _NAME.fullmatch(name):
        raise DocsSectionError(f"section name {name!r}: use lower-case letters, digits, '-' and '_'")
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def section_span(text: str, name: str, where: str = "docs") -> tuple[int, int] | None:
    """Where the body of section ``name`` lies in ``text``: (start, end) character offsets, the body being
    everything after the opening marker's line and before the closing marker's line; None if the section is
    absent. Raises DocsSectionError when a marker is repeated, alone, out of order or not on its own line."""
    opening, closing = _markers(name)
    found = {}
    for marker in (opening, closing):
        hits = [m.start() for m in re.finditer(re.escape(marker), text)]
        if len(hits) > 1:
            raise DocsSectionError(f"{where}: {marker} appears {len(hits)} times")
        for at in hits:
            line_start = text.rfind("\n", 0, at) + 1
            line_end = text.find("\n", at)
            line_end = len(text) if line_end < 0 else line_end
            if text[line_start:line_end].strip() != marker:
                raise DocsSectionError(f"{where}: {marker} must be on a line of its own")
        found[marker] = hits[0] if hits else None
    start, end = found[opening], found[closing]
    if start is None and end is None:
        return None
    if start is None or end is None or end < start:
        raise DocsSectionError(f"{where}: section {name!r} needs {opening} and then {closing}")
    body_start = text.find("\n", start) + 1
    body_end = text.rfind("\n", 0, end) + 1
    return body_start, max(body_start, body_end)


def replace_section(text: str, name: str, body: str, where: str = "docs") -> str:
    """``text`` with the body of section ``name`` replaced by ``body`` (one trailing newline), or with the section
    appended at the end when it is absent. Nothing outside the section changes."""
    body = body.rstrip("\n") + "\n"
    span = section_span(text, name, where)
    if span is None:
        opening, closing = _markers(name)
        blank_line = "" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"
        return f"{text}{blank_line}{opening}\n{body}{closing}\n"
    return text[: span[0]] + body + text[span[1]:]


def machine() -> str:
    """One line: CPU model, logical CPUs, torch version, and the GPU (name, count) when CUDA is available."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"CPU {cpu}", f"{os.cpu_count()} logical CPUs", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(f"GPU {', '.join(sorted(set(names)))} x{len(names)} (CUDA {torch.version.cuda})")
    else:
        parts.append("no GPU")
    return ", ".join(parts)


def command_line(prog: str, argv: list[str]) -> str:
    """``prog`` and ``argv`` as a shell command, without ``--write-docs [PATH]`` (where the table went does not
    change what it measured)."""
    kept, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--write-docs":
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("-")
            continue
        if arg.startswith("--write-docs="):
            continue
        kept.append(arg)
    return " ".join([prog, *map(shlex.quote, kept)])


def check_docs_file(path: str | os.PathLike, name: str) -> None:
    """Raises DocsSectionError unless ``path`` is a readable UTF-8 file that can take section ``name``. Scripts
    call it before measuring, so that a long benchmark does not end in an error."""
    path = Path(path)
    section_span(_read(path), name, str(path))
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise DocsSectionError(f"{path}: cannot write it or its folder (the new file is renamed over it)")


def write_section(path: str | os.PathLike, name: str, body: str, command: str) -> None:
    """Replaces section ``name`` of ``path`` by a stamp (``command``, this machine, today's date) and ``body``.

    The file is written to a temporary name beside it and renamed, so an interruption leaves the old file.
    """
    path = Path(path)
    stamp = f"Made by `{command}` on {machine()}, {datetime.date.today().isoformat()}."
    table = body.strip("\n")
    text = replace_section(_read(path), name, f"{stamp}\n\n{table}\n", str(path))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(text.encode("utf-8"))
        os.replace(tmp, path)
    except OSError as exc:
        raise DocsSectionError(f"{path}: could not write it ({exc.strerror or exc}); the file is unchanged") from None
    finally:
        tmp.unlink(missing_ok=True)


def add_argument(parser: argparse.ArgumentParser, what: str = "the table") -> None:
    """Adds ``--write-docs [PATH]`` (PATH: default docs/benchmarks.md) to a benchmark's parser."""
    parser.add_argument("--write-docs", nargs="?", const=str(DOCS_FILE), metavar="PATH",
                        help=f"also write {what} into its section of PATH (default docs/benchmarks.md)")


def measure_and_write(path: str | None, name: str, prog: str, argv: list[str], measure: Callable[[], str]) -> str:
    """Runs ``measure`` (it prints its table and returns it) and, when ``path`` is given, writes the table into
    section ``name`` of ``path`` stamped with ``prog argv``. The file is checked before measuring."""
    if path:
        check_docs_file(path, name)
    table = measure()
    if path:
        write_section(path, name, table, command_line(prog, argv))
        print(f"wrote the '{name}' section of {path}")
    return table


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocsSectionError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
