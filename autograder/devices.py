"""The ``gpu`` marker and the ``device`` parameter, defined once for the project's tests
(``tests/``) and the hidden suites (``autograder/tests/``).

Both conftests import :func:`pytest_configure`, :func:`pytest_generate_tests` and
the :func:`_skip_cuda_without_gpu` fixture from here. ``cuda_available`` asks
NVML rather than creating a CUDA context, so a process that later forks (the
grading engine) can still call it.
"""

from __future__ import annotations

import os

import pytest

GPU_MARKER = "gpu: needs a CUDA device; skipped (and left out of the points) where none is present"


def cuda_available() -> bool:
    """Whether a CUDA device is usable, without initialising CUDA in this process."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", GPU_MARKER)


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])


@pytest.fixture(autouse=True)
def _skip_cuda_without_gpu(request):
    if "device" in request.fixturenames and request.getfixturevalue("device") == "cuda" and not cuda_available():
        pytest.skip("no CUDA device")
