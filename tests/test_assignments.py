"""The assignments are honest: the solution earns every automatic point, the
student release earns none, and each deliberately wrong variant loses points
exactly on the parts it breaks (a variant with an empty ``breaks`` is a correct
solution written another way, and keeps full marks).

Every notebook of an assignment is graded in one batch of the sandboxed engine
(``python -m autograder files``). The in-process back end grades, in one fresh
interpreter per assignment, the solution, the release and one variant per
grade_id, and the two back ends must agree on every score, every hidden
test's outcome and its cause.
"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import notebook as nbmod
from autograder.course import Course
from autograder.devices import cuda_available
from tests.variants import load_variants, make_variant_notebook

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENTS = Course().assignments()


def _variants(assignment: str) -> dict:
    try:
        return load_variants(assignment)
    except ModuleNotFoundError:
        return {}


def _inprocess_subset(assignment: str) -> list[str]:
    """The solution, the release, and the first variant that breaks each grade_id."""
    names, covered = ["solution", "release"], set()
    for vname, spec in _variants(assignment).items():
        new = set(spec["breaks"]) - covered
        if new:
            names.append(f"variant-{vname}")
            covered |= new
    return names


_REPORTS: dict = {}


def reports(assignment: str, tmp_path_factory) -> dict:
    """{"engine": {name: report}, "inprocess": {name: report}} for every notebook of ``assignment``."""
    if assignment in _REPORTS:
        if isinstance(_REPORTS[assignment], str):  # the batch failed once: do not grade it all again
            pytest.fail(_REPORTS[assignment])
        return _REPORTS[assignment]
    d = tmp_path_factory.mktemp(f"grade-{assignment}")
    nbs = d / "nb"
    nbs.mkdir()
    nbformat.write(nbmod.read_notebook(Course().source(assignment)), nbs / "solution.ipynb")
    nbformat.write(nbmod.read_notebook(Course().release(assignment)), nbs / "release.ipynb")
    for vname, spec in _variants(assignment).items():
        nbformat.write(make_variant_notebook(assignment, spec), nbs / f"variant-{vname}.ipynb")
    # On a machine with a GPU the engine grades on both devices, and they must agree.
    kinds = {"engine": "cpu", **({"engine-cuda": "cuda"} if cuda_available() else {})}
    for kind, device in kinds.items():
        engine = subprocess.run(
            [sys.executable, "-m", "autograder", "files", assignment, *sorted(map(str, nbs.glob("*.ipynb"))),
             "--json-dir", str(d / kind), "--workers", "2", "--force", "--no-progress", "--device", device],
            cwd=REPO, capture_output=True, text=True, timeout=1800)
        if engine.returncode != 0:
            _REPORTS[assignment] = f"the engine failed on {assignment}: {engine.stdout[-2000:]}{engine.stderr[-3000:]}"
            pytest.fail(_REPORTS[assignment])
    inproc = subprocess.run(
        [sys.executable, "-m", "autograder.grading", assignment,
         *[str(nbs / f"{n}.ipynb") for n in _inprocess_subset(assignment)], "--json-dir", str(d / "inprocess")],
        cwd=REPO, capture_output=True, text=True, timeout=1800)
    if inproc.returncode != 0:
        _REPORTS[assignment] = f"in-process grading failed on {assignment}: {inproc.stderr[-3000:]}"
        pytest.fail(_REPORTS[assignment])
    _REPORTS[assignment] = {kind: {p.stem: json.loads(p.read_text()) for p in (d / kind).glob("*.json")}
                            for kind in (*kinds, "inprocess")}
    return _REPORTS[assignment]


def graded(assignment: str, name: str, tmp_path_factory) -> dict:
    """The engine's report on ``name``; where the in-process back end graded it too, they agree."""
    both = reports(assignment, tmp_path_factory)
    engine = both["engine"][name]
    assert engine["status"] == "graded", engine.get("error")
    inproc = both["inprocess"].get(name)
    if inproc is not None:  # in-process runs the CUDA cases wherever a GPU exists: compare like with like
        same_device = both.get("engine-cuda", {}).get(name, engine)
        assert same_device["max_scores"] == inproc["max_scores"]
        assert same_device["scores"] == inproc["scores"], (same_device["tests"], inproc["tests"])
        outcome = {t["name"]: (t["outcome"], t["cause"]) for t in inproc["tests"]}
        assert {t["name"]: (t["outcome"], t["cause"]) for t in same_device["tests"]} == outcome
    on_cuda = both.get("engine-cuda", {}).get(name)
    if on_cuda is not None:  # the CUDA cases ran there too; the CPU cases must agree
        assert on_cuda["scores"] == engine["scores"]
        cpu_outcomes = {t["name"]: t["outcome"] for t in engine["tests"]}
        assert all(cpu_outcomes.get(t["name"], t["outcome"]) == t["outcome"] for t in on_cuda["tests"])
    return engine


def _variant_cases():
    for a in ASSIGNMENTS:
        for name in _variants(a):
            yield pytest.param(a, name, id=f"{a}-{name}")


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_scores_full_marks(assignment, tmp_path_factory):
    report = graded(assignment, "solution", tmp_path_factory)
    assert {t["cause"] for t in report["tests"]} <= {"passed", "skipped"}, report["tests"]
    assert report["scores"] == report["max_scores"]
    assert sum(report["max_scores"].values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_scores_zero_without_crashing(assignment, tmp_path_factory):
    report = graded(assignment, "release", tmp_path_factory)
    assert set(report["scores"]) == set(report["max_scores"])
    assert sum(report["scores"].values()) == 0, report["scores"]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_assignment_has_at_least_six_wrong_variants(assignment):
    assert len([v for v in _variants(assignment).values() if v["breaks"]]) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("assignment,variant", list(_variant_cases()))
def test_variant_loses_points_only_where_broken(assignment, variant, tmp_path_factory):
    spec = load_variants(assignment)[variant]
    report = graded(assignment, f"variant-{variant}", tmp_path_factory)
    for gid, full in report["max_scores"].items():
        got = report["scores"][gid]
        if gid in spec["breaks"]:
            assert got < full, f"{variant}: {gid} should lose points but scored {got}/{full}"
        else:
            assert got == full, f"{variant}: {gid} should keep full marks but scored {got}/{full}"
