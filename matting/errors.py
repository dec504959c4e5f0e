"""User-facing errors and the command-line wrapper that turns them into one-line messages."""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Callable


class MattingError(Exception):
    """A problem with the user's input (a file, a config, an argument), not a bug.

    The message is one line that names the file or key and says what is wrong. Command-line entry points
    print it as ``error: <message>`` and exit with status 2, without a traceback.
    """


class MattingWarning(UserWarning):
    """Something about the user's input that does not stop the work but should be known (trimap values that had
    to be mapped, files skipped in a folder). Command-line entry points print it as one line ``warning: ...``,
    without Python's source line."""


def cli(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wraps a command-line ``main``: user errors become one line on stderr and exit status 2; MattingWarnings
    are printed as one line each.

    Ctrl-C exits with 130 after whatever clean-up ``main`` did in its own ``finally``/``except`` blocks.
    Real bugs still raise with a traceback: hiding those would make them impossible to report.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            try:
                code = main(*args, **kwargs)
            except MattingError as exc:
                say(f"error: {exc}")
                return 2
            except KeyboardInterrupt:
                say("interrupted")
                return 130
        return int(code or 0)

    return wrapper


def say(line: str, file=None) -> None:
    """Writes ``line`` and its newline to ``file`` (default stderr) in one call, then flushes.

    ``print`` writes the text and the newline separately; under torchrun every rank shares one stderr pipe, and
    with unbuffered streams two ranks' messages then interleave mid-line. One write of a short line is atomic.
    """
    file = file or sys.stderr
    file.write(line + "\n")
    file.flush()


def _one_line_warnings(show: Callable) -> Callable:
    """A ``warnings.showwarning`` that prints MattingWarnings as ``warning: <message>`` and passes others on."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MattingWarning):
            say(f"warning: {message}", file)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


class OutputError(MattingError):
    """A result could not be written (a full disk, a folder that became read-only, a lost network mount).

    The message names the file and the reason; whoever catches it adds what was kept. Loops over many items
    stop on it instead of going on: the next write would fail the same way.
    """
