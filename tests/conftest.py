"""Test configuration: offline data, and the CPU/GPU ``device`` parameter.

The ``gpu`` marker and the ``device`` parametrisation are defined once, in
:mod:`autograder.devices`, for these tests and the hidden suites alike.
"""

import os
from pathlib import Path

from autograder.devices import _skip_cuda_without_gpu, pytest_configure, pytest_generate_tests  # noqa: F401

REPO = Path(__file__).resolve().parent.parent

# Tests read data from the offline mirror beside the checkout unless told otherwise.
_mirror = REPO.parent / "shared" / "data"
if "SEQCOURSE_DATA" not in os.environ and _mirror.is_dir():
    os.environ["SEQCOURSE_DATA"] = str(_mirror)
