"""Shared fixtures of the hidden test suites.

* ``sub`` (provided by :mod:`autograder.grading`) is the student's program.
* ``device`` parametrises a test over the devices present: ``cpu`` always,
  ``cuda`` (marked ``gpu``) on a machine with a GPU.
* Every test starts from a seed derived from its own name, and with
  deterministic kernels, so a regrade reproduces every random input.
"""

import zlib

import pytest
import torch


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize(
            "device",
            ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)],
        )


@pytest.fixture(autouse=True)
def _seeded(request):
    """Seed from the test's node id and pin deterministic numerics."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.split("::")[-1].encode()))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if "device" in request.fixturenames:
        dev = request.getfixturevalue("device")
        if dev == "cuda" and not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    yield
