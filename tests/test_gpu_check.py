"""The GPU acceptance command, in the parts that need no GPU.

* ``tools/gpu_check.py`` refuses cleanly (exit 2, one BAD line) on a machine without a GPU;
* ``make gpu-wheels`` builds a folder from which ``make gpu-check`` installs what it needs with
  ``pip install --no-index --find-links`` (no network), for this machine's Python version here,
  and stays under 50 MB.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.devices import cuda_available

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU: run `make gpu-check` instead")
def test_gpu_check_refuses_cleanly_without_a_gpu():
    proc = subprocess.run([sys.executable, "tools/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[0].startswith("BAD CUDA is available"), lines
    assert "no GPU" in proc.stderr


@pytest.mark.slow
def test_gpu_wheels_install_with_no_network(tmp_path):
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = tmp_path / "wheels"
    proc = subprocess.run(["make", "-s", "gpu-wheels", f"GPU_PY_VERSION={version}", f"GPU_WHEELS={wheels}"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and "Could not" in proc.stderr and os.environ.get("CI") != "true":
        pytest.skip(f"the package index is not reachable: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    size = sum(p.stat().st_size for p in wheels.iterdir())
    assert size < 50 << 20, f"{size >> 20} MiB"
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_INDEX", "PIP_EXTRA"))}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                           "--find-links", str(wheels), "--target", str(site), "-r", "tools/gpu-requirements.txt"],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path[:0] = [sys.argv[1]]; "
                            "import nbformat, jieba, safetensors, pytest, tqdm, numpy; print('ok')", str(site)],
                           capture_output=True, text=True, timeout=300)
    assert probe.stdout.strip() == "ok", probe.stderr[-2000:]
