"""Test-wide settings.

Markers: ``triton`` (the Triton kernels; in the interpreter without CUDA), ``cuda`` (needs a CUDA device).

One intra-op thread: the tests use tiny tensors, where thread synchronisation costs more than it saves, and
the CI machine has 2 cores that the subprocess tests (two-process gloo training, CLI runs) share.
The environment variable reaches those subprocesses too.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)
# The command lines flush denormal floats to zero (matting.engine.runtime.flush_denormals); the tests that train
# and predict in this process do the same, so they compute what the commands compute, and as fast.
torch.set_flush_denormal(True)

# Without CUDA, the Triton kernels of the reassembly op run in Triton's interpreter on CPU tensors
# (tests/test_reassembly_triton.py). Triton reads the variable when the kernels are defined, i.e. when
# matting.upsamplers.reassembly_triton is first imported, which no module does at import time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs CUDA (scripts/gpu_check.sh runs these on a GPU machine)")


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state, whatever ran before it and on whichever machine.

    Without this, a test that builds a randomly initialised network depends on how many random numbers the
    tests before it drew: a test may pass here and fail in CI. ``MATTING_TEST_SEED`` changes the seed, to
    check that no test passes only by luck.
    """
    torch.manual_seed(int(os.environ.get("MATTING_TEST_SEED", "0")))
