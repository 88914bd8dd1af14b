"""Shared fixtures of the hidden test suites.

* ``sub`` (provided by :mod:`autograder.grading`) is the student's program.
* ``device`` parametrises a test over ``cpu`` and ``cuda`` (marked ``gpu``;
  skipped where no GPU is present): :mod:`autograder.devices`.
* Every test starts from a seed derived from its own name, with the numerics
  pinned as in the runner (``autograder.sandbox.protocol.pin_numerics``), so a
  regrade reproduces every random input.
"""

import zlib

import pytest
import torch

from autograder.devices import _skip_cuda_without_gpu, pytest_configure, pytest_generate_tests  # noqa: F401
from autograder.sandbox.protocol import pin_numerics


@pytest.fixture(autouse=True)
def _seeded(request):
    """Seed from the test's node id and pin deterministic numerics."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.split("::")[-1].encode()))
    pin_numerics(torch)
    yield
