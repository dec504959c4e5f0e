"""Test-wide settings.

One intra-op thread: the tests use tiny tensors, where thread synchronisation costs more than it saves, and
the CI machine has 2 cores that the subprocess tests (two-process gloo training, CLI runs) share.
The environment variable reaches those subprocesses too.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)
