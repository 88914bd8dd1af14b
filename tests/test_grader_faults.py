"""Faults that are not the student's are never charged to the student.

A tiny assignment (``a99_probe``: one setup cell, one answer cell, two graded
test cells) is built in a temporary course, so each case grades in seconds.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from autograder import engine
from autograder.course import Course
from autograder.sandbox.protocol import Program

REPO = Path(__file__).resolve().parent.parent
A = "a99_probe"

SETUP = "import math"
ANSWER = "def f(x):\n    return x * x\n"
HIDDEN = '''
import os
import signal
from pathlib import Path


def test_square(sub):
    assert sub.call("f", 2) == 4


def test_killed_from_outside(sub):
    mark = Path(__file__).with_name("killed-once")
    if not mark.exists():  # the first time only: an operator (or the OOM killer) kills the runner
        mark.write_text("x")
        sub.call("f", 1)
        os.killpg(sub.pid, signal.SIGKILL)
    assert sub.call("f", 3) == 9
'''


def _md(gid, **kw):
    base = {"grade": False, "grade_id": gid, "locked": False, "schema_version": 3, "solution": False, "task": False}
    base.update(kw)
    return {"nbgrader": base}


def make_course(root: Path, setup: str = SETUP, package_marker: str | None = None) -> Course:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(setup, metadata=_md("setup", locked=True)),
        nbformat.v4.new_code_cell(ANSWER, metadata=_md("f_impl", solution=True)),
        nbformat.v4.new_code_cell("assert f(2) == 4", metadata=_md("test_square", grade=True, locked=True, points=2)),
        nbformat.v4.new_code_cell("assert f(3) == 9",
                                  metadata=_md("test_killed_from_outside", grade=True, locked=True, points=2)),
    ]
    (root / "solutions" / A).mkdir(parents=True)
    nbformat.write(nb, root / "solutions" / A / f"{A}.ipynb")
    (root / "autograder" / "tests").mkdir(parents=True)
    shutil.copy(REPO / "autograder" / "tests" / "conftest.py", root / "autograder" / "tests")
    (root / "autograder" / "tests" / f"test_{A}.py").write_text(HIDDEN)
    shutil.copytree(REPO / "seqcourse", root / "seqcourse", ignore=shutil.ignore_patterns("__pycache__"))
    if package_marker is not None:
        (root / "seqcourse" / "_which_copy.py").write_text(f"WHERE = {package_marker!r}\n")
    return Course(root)


def submission(course: Course, tmp: Path, answer: str = ANSWER) -> str:
    nb = nbformat.read(course.source(A), as_version=4)
    nb.cells[1].source = answer
    path = tmp / f"sub-{abs(hash(answer))}.ipynb"
    nbformat.write(nb, path)
    return str(path)


def grade(course, notebook, **kw):
    cfg = engine.load_config(engine__retries=kw.pop("retries", 1))
    return engine.grade_batch([engine.Job(A, notebook, "s")], course=course, cfg=cfg, workers=1, progress=False,
                              force=True, **kw)["s"]


@pytest.mark.slow
def test_a_runner_killed_from_outside_is_retried_before_anything_is_charged(tmp_path):
    course = make_course(tmp_path / "course")
    rep = grade(course, submission(course, tmp_path), canary=False)
    assert rep["status"] == "graded" and rep["scores"] == rep["max_scores"], rep["tests"]
    assert (course.hidden_tests_dir / "killed-once").exists()  # the kill did happen


@pytest.mark.slow
def test_a_crash_that_reproduces_is_charged(tmp_path):
    course = make_course(tmp_path / "course")
    (course.hidden_tests_dir / "killed-once").write_text("x")  # no kill from outside this time
    crashing = "import os\ndef f(x):\n    if x == 3:\n        os._exit(3)\n    return x * x\n"
    rep = grade(course, submission(course, tmp_path, crashing))
    causes = {t["grade_id"]: t["cause"] for t in rep["tests"]}
    assert causes == {"test_square": "passed", "test_killed_from_outside": "crashed"}
    assert rep["scores"]["test_killed_from_outside"] == 0


@pytest.mark.slow
def test_a_failing_setup_cell_is_never_charged_and_the_canary_stops_the_batch(tmp_path):
    course = make_course(tmp_path / "course", setup="import no_such_module_on_this_machine")
    nb = submission(course, tmp_path)
    with pytest.raises(engine.CanaryFailed):
        grade(course, nb, retries=0)
    rep = grade(course, nb, retries=0, canary=False)
    assert rep["status"] == "not graded" and rep["cause"] == "not_graded" and rep["scores"] == {}
    assert not list(course.results_dir(engine.load_config()).glob(f"{A}/*.json"))  # nothing cached


@pytest.mark.slow
def test_the_runner_imports_the_course_own_package_not_the_environment_one(tmp_path):
    course = make_course(tmp_path / "second-checkout", package_marker="the course's own copy")
    sb = engine.Sandbox(engine.load_config(), course)
    sb.start()
    try:
        program = Program(cells=[("impl", "import importlib\ndef where():\n"
                                  "    return importlib.import_module('seqcourse._which_copy').WHERE\n")],
                          answer_ids=["impl"])
        s = engine.RemoteSession(sb, program, sb.cfg, time.monotonic() + 120)
        try:
            assert s.call("where") == "the course's own copy"
        finally:
            s.close()
    finally:
        sb.stop()


@pytest.mark.slow
def test_a_virtual_environment_behind_a_symbolic_link_works(tmp_path):
    course = make_course(tmp_path / "course")
    link = tmp_path / "venv-link"
    link.symlink_to(os.path.realpath(sys.prefix), target_is_directory=True)
    proc = subprocess.run([str(link / "bin" / "python"), "-m", "autograder", "limits", "--course", str(course.root)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    caps = json.loads(proc.stdout.split("isolation on this machine:", 1)[1])
    assert caps["mounts"] and caps["net"] and caps["missing"] == [], caps


@pytest.mark.slow
def test_cpu_grading_on_a_gpu_host_deselects_the_cuda_cases(tmp_path, monkeypatch):
    """On a machine whose harness sees a GPU, grading with --device cpu must not run the CUDA cases
    against runners that have none (each would score 0): they are deselected, and the harness is masked."""
    course = make_course(tmp_path / "course")
    (course.hidden_tests_dir / "killed-once").write_text("x")
    tests = course.tests(A)
    tests.write_text(tests.read_text() + '''

import pytest


@pytest.mark.gpu
def test_square__on_cuda(sub):
    import torch
    x = torch.full((1,), 4.0, device="cuda")  # fails on a machine without a GPU: it must never run on the CPU
    assert sub.call("f", x).item() == 16
''')
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the harness (forked from here) "sees" a GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    rep = grade(course, submission(course, tmp_path), canary=False, device="cpu")
    assert rep["status"] == "graded" and rep["scores"] == rep["max_scores"], rep["tests"]
    assert not any("on_cuda" in t["name"] for t in rep["tests"])


def test_the_engine_refuses_to_fork_harnesses_after_cuda_was_initialised(tmp_path, monkeypatch):
    import torch

    course = make_course(tmp_path / "course")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="CUDA"):
        grade(course, submission(course, tmp_path), canary=False)


@pytest.mark.slow
def test_a_runner_that_cannot_use_cuda_is_not_graded_never_charged(tmp_path):
    """On a machine whose runners cannot create a CUDA context (here: none has a GPU), grading on
    CUDA gives "not graded" from the runner's first frame, before any student code runs."""
    from autograder.devices import cuda_available

    if cuda_available():
        pytest.skip("this machine's runners can use CUDA")
    course = make_course(tmp_path / "course")
    sb = engine.Sandbox(engine.load_config(), course, device="cuda")
    sb.start()
    try:
        s = engine.RemoteSession(sb, Program(cells=[("impl", ANSWER)], answer_ids=["impl"]), sb.cfg,
                                 time.monotonic() + 120)
        with pytest.raises(engine.InfrastructureError):
            s.call("f", 2)
        assert s.infra_error and s.events == []
        s.close()
    finally:
        sb.stop()
