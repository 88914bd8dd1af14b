"""Test configuration: offline data, and a CPU/GPU device fixture."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# Tests read data from the offline mirror beside the checkout unless told otherwise.
_mirror = REPO.parent / "shared" / "data"
if "SEQCOURSE_DATA" not in os.environ and _mirror.is_dir():
    os.environ["SEQCOURSE_DATA"] = str(_mirror)


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])


@pytest.fixture(autouse=True)
def _skip_cuda_without_gpu(request):
    if "device" in request.fixturenames and request.getfixturevalue("device") == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
