"""The assignments are honest: the solution earns every automatic point, the
student release earns none, and each deliberately wrong variant loses points
exactly on the parts it breaks.

Each grading runs in a fresh interpreter (``python -m autograder.grading``),
as a real grading run would. Every notebook is also graded once by the
sandboxed engine (``python -m autograder files``: one batch per assignment,
two workers), and the two back ends must agree on every score and on every
hidden test's outcome.
"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import notebook as nbmod
from tests.variants import load_variants, make_variant_notebook

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir() and p.name[0] == "a")


def grade(assignment: str, notebook: Path, tmp_path: Path) -> dict:
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "autograder.grading", assignment, str(notebook), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


_ENGINE: dict = {}


def engine_report(assignment: str, name: str, tmp_path_factory) -> dict:
    """The engine's report on notebook ``name`` (solution, release or a variant) of ``assignment``.

    The first call grades all of them in one engine batch."""
    if assignment not in _ENGINE:
        d = tmp_path_factory.mktemp(f"engine-{assignment}")
        nbs = d / "nb"
        nbs.mkdir()
        nbformat.write(nbmod.read_notebook(nbmod.source_path(assignment)), nbs / "solution.ipynb")
        nbformat.write(nbmod.read_notebook(REPO / "assignments" / assignment / f"{assignment}.ipynb"),
                       nbs / "release.ipynb")
        try:
            variants = load_variants(assignment)
        except ModuleNotFoundError:
            variants = {}
        for vname, spec in variants.items():
            nbformat.write(make_variant_notebook(assignment, spec), nbs / f"variant-{vname}.ipynb")
        proc = subprocess.run(
            [sys.executable, "-m", "autograder", "files", assignment, *sorted(map(str, nbs.glob("*.ipynb"))),
             "--json-dir", str(d / "out"), "--workers", "2", "--force", "--no-progress"],
            cwd=REPO, capture_output=True, text=True, timeout=1800,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        _ENGINE[assignment] = {p.stem: json.loads(p.read_text()) for p in (d / "out").glob("*.json")}
    return _ENGINE[assignment][name]


def assert_same_grading(inprocess: dict, engine: dict):
    """Both back ends give the same points per grade_id and the same outcome per hidden test."""
    assert engine["status"] == "graded", engine.get("error")
    assert engine["max_scores"] == inprocess["max_scores"]
    assert engine["scores"] == inprocess["scores"], (engine["tests"], inprocess["tests"])
    assert {t["name"]: t["outcome"] for t in engine["tests"]} == {t["name"]: t["outcome"] for t in inprocess["tests"]}


def _variant_cases():
    for a in ASSIGNMENTS:
        try:
            variants = load_variants(a)
        except ModuleNotFoundError:
            continue
        for name in variants:
            yield pytest.param(a, name, id=f"{a}-{name}")


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_scores_full_marks(assignment, tmp_path, tmp_path_factory):
    report = grade(assignment, nbmod.source_path(assignment), tmp_path)
    assert_same_grading(report, engine_report(assignment, "solution", tmp_path_factory))
    failed = [t for t in report["tests"] if t["outcome"] in ("failed", "error")]
    assert not failed, failed
    assert report["scores"] == report["max_scores"]
    assert sum(report["max_scores"].values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_scores_zero_without_crashing(assignment, tmp_path, tmp_path_factory):
    release = REPO / "assignments" / assignment / f"{assignment}.ipynb"
    report = grade(assignment, release, tmp_path)
    assert_same_grading(report, engine_report(assignment, "release", tmp_path_factory))
    assert set(report["scores"]) == set(report["max_scores"])
    assert sum(report["scores"].values()) == 0, report["scores"]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_assignment_has_at_least_six_wrong_variants(assignment):
    assert len(load_variants(assignment)) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("assignment,variant", list(_variant_cases()))
def test_wrong_variant_loses_points_only_where_broken(assignment, variant, tmp_path, tmp_path_factory):
    spec = load_variants(assignment)[variant]
    path = tmp_path / f"{assignment}.ipynb"
    nbformat.write(make_variant_notebook(assignment, spec), path)
    report = grade(assignment, path, tmp_path)
    assert_same_grading(report, engine_report(assignment, f"variant-{variant}", tmp_path_factory))
    for gid, full in report["max_scores"].items():
        got = report["scores"][gid]
        if gid in spec["breaks"]:
            assert got < full, f"{variant}: {gid} should lose points but scored {got}/{full}"
        else:
            assert got == full, f"{variant}: {gid} should keep full marks but scored {got}/{full}"
