"""The instructor workflow: the committed release matches its source, and a
whole term round-trips through nbgrader with the engine doing the grading
(generate -> collect -> grade -> feedback -> export)."""

import csv
import html
import json
import os
import shutil
import zipfile
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import notebook as nbmod
from autograder.course import Course
from autograder import workflow
from tests.variants import load_variants, make_variant_notebook

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENTS = workflow.assignments(REPO)


@pytest.mark.slow
def test_committed_release_matches_a_fresh_generation():
    problems = workflow.check_release(REPO)
    assert not problems, "\n".join(problems)


def _lacks_cell_ids(a):
    return any("id" not in c for c in json.loads((REPO / "solutions" / a / f"{a}.ipynb").read_text())["cells"])


@pytest.mark.parametrize("a", sorted({ASSIGNMENTS[0], *[a for a in ASSIGNMENTS if _lacks_cell_ids(a)]}))
def test_generation_is_deterministic(tmp_path, a):
    outs = []
    for i in range(2):
        course = tmp_path / f"c{i}"
        course.mkdir()
        shutil.copy(REPO / "nbgrader_config.py", course)
        shutil.copytree(REPO / "solutions" / a, course / "solutions" / a)
        workflow.generate(course, [a])
        outs.append((course / "assignments" / a / f"{a}.ipynb").read_bytes())
    assert outs[0] == outs[1]


def _nbgrader(course, *args):
    env = dict(os.environ, PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(Path(sys.prefix) / "bin" / "nbgrader"), *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_round_trip_generate_grade_feedback_export(tmp_path):
    a = ASSIGNMENTS[0]
    course = tmp_path / "course"
    course.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "solutions" / a, course / "solutions" / a)
    shutil.copytree(REPO / "autograder" / "tests", course / "autograder" / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "test_a*.py"))
    shutil.copy(REPO / "autograder" / "tests" / f"test_{a}.py", course / "autograder" / "tests")
    shutil.copytree(REPO / "seqcourse", course / "seqcourse", ignore=shutil.ignore_patterns("__pycache__"))
    workflow.generate(course, [a])  # also registers the assignment in the course's gradebook

    release = course / "assignments" / a / f"{a}.ipynb"
    variants = load_variants(a)
    vname = sorted(variants)[0]
    subs = {"alice": nbmod.read_notebook(Course().source(a)), "bob": nbmod.read_notebook(release),
            "carol": make_variant_notebook(a, variants[vname])}
    # The class arrives as an LMS archive: a folder per student, or an id prefix on the file name.
    archive = tmp_path / "lms.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for student, nb in subs.items():
            name = f"{student}/{a}.ipynb" if student != "bob" else f"bob_{a} (1).ipynb"
            zf.writestr(name, nbformat.writes(nb))
    proc = subprocess.run([sys.executable, "-m", "autograder", "collect", a, str(archive), "--course", str(course)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (course / "submitted").iterdir()) == sorted(subs)

    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", a, "--course", str(course), "--workers", "2",
                           "--no-progress", "--json-dir", str(tmp_path / "reports")],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = {s: json.loads((tmp_path / "reports" / f"{s}.json").read_text()) for s in subs}
    for s, rep in reports.items():
        assert rep["status"] == "graded", rep.get("error")
        assert (course / "autograded" / s / a / f"{a}.ipynb").exists()
    full = sum(reports["alice"]["max_scores"].values())
    assert sum(reports["alice"]["scores"].values()) == full
    assert sum(reports["bob"]["scores"].values()) == 0
    assert sum(reports["carol"]["scores"].values()) < full

    _nbgrader(course, "generate_feedback", a, "--force")
    _nbgrader(course, "export")
    with open(course / "grades.csv") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    for s, rep in reports.items():
        assert float(rows[s]["raw_score"]) == pytest.approx(sum(rep["scores"].values()))  # + 0 manual points
        assert float(rows[s]["max_score"]) == pytest.approx(
            sum(c.points for c in nbmod.grade_cells(nbmod.read_notebook(Course().source(a)))))

    hidden = (REPO / "autograder" / "tests" / f"test_{a}.py").read_text().splitlines()
    secret_lines = {line.strip() for line in hidden if len(line.strip()) > 30}
    for s in subs:
        page = course / "feedback" / s / a / f"{a}.html"
        assert page.exists()
        text = html.unescape(page.read_text())
        leaked = [line for line in secret_lines if line in text]
        assert not leaked, leaked[:5]
        if s == "carol":
            assert "Hidden tests for" in text  # the per-test listing reached the feedback
