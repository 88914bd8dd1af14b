"""The two ways to set up the course (venv from the lock, conda) agree."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _lock() -> dict:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_lock_pins_the_fixed_stack():
    lock = _lock()
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.2"
    assert lock["jupyter-book"].startswith("1.")
    for pkg in ["nbgrader", "jieba", "tqdm", "pytest", "numpy", "pandas", "matplotlib", "matplotlib-inline",
                "requests", "scipy", "ipython", "pillow", "jupytext", "myst-nb"]:
        assert pkg in lock, pkg
    assert "d2l" not in lock  # installed with --no-deps by tools/ensure-env.sh


def test_conda_environment_lists_the_same_pins():
    text = (REPO / "environment.yml").read_text()
    lock = _lock()
    pins = re.findall(r"^\s*-\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, flags=re.M)
    assert len(pins) >= 15
    for name, version in pins:
        assert lock.get(name.lower()) == version, f"{name}=={version} differs from requirements.lock"
    assert "-c requirements.lock" in text  # everything else constrained to the lock
    assert "d2l==1.0.3" in text and "--no-deps" in text  # the documented post-step


def test_every_top_level_requirement_is_pinned_in_conda_and_lock():
    wanted = [re.split(r"[<>=]", l)[0].strip().lower()
              for l in (REPO / "requirements.in").read_text().splitlines() if l and not l.startswith("#")]
    text = (REPO / "environment.yml").read_text().lower()
    lock = _lock()
    for name in wanted:
        assert name in lock, name
        assert f"{name}=={lock[name]}" in text, name


def test_setup_script_installs_d2l_without_deps_and_reuses_the_env():
    script = (REPO / "tools" / "ensure-env.sh").read_text()
    assert "--no-deps" in script and "d2l==1.0.3" in script
    assert ".env-hash" in script  # a second run with an unchanged lock installs nothing
