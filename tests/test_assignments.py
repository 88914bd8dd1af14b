"""The assignments are honest: the solution earns every automatic point, the
student release earns none, and each deliberately wrong variant loses points
exactly on the parts it breaks.

Each grading runs in a fresh interpreter (``python -m autograder.grading``),
as a real grading run would.
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
def test_solution_scores_full_marks(assignment, tmp_path):
    report = grade(assignment, nbmod.source_path(assignment), tmp_path)
    failed = [t for t in report["tests"] if t["outcome"] in ("failed", "error")]
    assert not failed, failed
    assert report["scores"] == report["max_scores"]
    assert sum(report["max_scores"].values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_scores_zero_without_crashing(assignment, tmp_path):
    release = REPO / "assignments" / assignment / f"{assignment}.ipynb"
    report = grade(assignment, release, tmp_path)
    assert set(report["scores"]) == set(report["max_scores"])
    assert sum(report["scores"].values()) == 0, report["scores"]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_assignment_has_at_least_six_wrong_variants(assignment):
    assert len(load_variants(assignment)) >= 6


@pytest.mark.slow
@pytest.mark.parametrize("assignment,variant", list(_variant_cases()))
def test_wrong_variant_loses_points_only_where_broken(assignment, variant, tmp_path):
    spec = load_variants(assignment)[variant]
    path = tmp_path / f"{assignment}.ipynb"
    nbformat.write(make_variant_notebook(assignment, spec), path)
    report = grade(assignment, path, tmp_path)
    for gid, full in report["max_scores"].items():
        got = report["scores"][gid]
        if gid in spec["breaks"]:
            assert got < full, f"{variant}: {gid} should lose points but scored {got}/{full}"
        else:
            assert got == full, f"{variant}: {gid} should keep full marks but scored {got}/{full}"
