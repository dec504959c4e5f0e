"""The command-line wrapper: user errors and warnings as one line each, written in one piece."""

from __future__ import annotations

import io
import warnings

from matting.errors import MattingError, MattingWarning, cli


class Recorder(io.StringIO):
    """A stream that remembers every write call, as an unbuffered stderr passes each one to the pipe."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_errors_and_warnings_are_single_writes(monkeypatch):
    # Ranks under torchrun share one stderr; a line written in two calls interleaves with the other rank's.
    stderr = Recorder()
    monkeypatch.setattr("sys.stderr", stderr)

    @cli
    def main() -> int:
        warnings.warn("trimap.png: values mapped", MattingWarning)
        raise MattingError("bad.yaml: unknown key train.lrr")

    assert main() == 2
    assert stderr.calls == ["warning: trimap.png: values mapped\n", "error: bad.yaml: unknown key train.lrr\n"]


def test_interrupt_exits_130(monkeypatch):
    stderr = Recorder()
    monkeypatch.setattr("sys.stderr", stderr)

    @cli
    def main() -> int:
        raise KeyboardInterrupt

    assert main() == 130 and stderr.calls == ["interrupted\n"]
