"""Run an assignment's hidden tests against one submission and score them.

Scores come only from the outcomes of the hidden tests, which compare the
student's results with references computed here. A hidden test is named
after the nbgrader ``grade_id`` it scores (``test_x`` or ``test_x__case``);
the points of that grade cell, read from the instructor's source, are split
evenly over the tests that ran (skipped GPU cases are left out of the split).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from . import notebook as nbmod
from .api import StudentError

HERE = Path(__file__).resolve().parent
TESTS = HERE / "tests"


def tests_path(assignment: str) -> Path:
    path = TESTS / f"test_{assignment}.py"
    if not path.exists():
        raise ValueError(f"no hidden tests for {assignment!r}: {path} does not exist")
    return path


@dataclass
class TestOutcome:
    name: str
    grade_id: str
    outcome: str  # passed, failed, error, skipped
    reason: str = ""


@dataclass
class GradeReport:
    assignment: str
    scores: dict = field(default_factory=dict)  # grade_id -> points earned (autograded cells)
    max_scores: dict = field(default_factory=dict)  # grade_id -> points available
    tests: list = field(default_factory=list)  # TestOutcome as dicts
    cell_problems: dict = field(default_factory=dict)
    status: str = "graded"  # graded | not graded
    error: str = ""
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return round(sum(self.scores.values()), 6)

    @property
    def max_total(self) -> float:
        return round(sum(self.max_scores.values()), 6)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


def grade_id_of(test_name: str, grade_ids) -> str | None:
    """``test_x[cpu]`` or ``test_x__case[cpu]`` -> ``test_x`` when it is a grade_id."""
    base = test_name.split("[", 1)[0]
    if base in grade_ids:
        return base
    head = base.split("__", 1)[0]
    return head if head in grade_ids else None


class _Collector:
    """A pytest plugin: provides the ``sub`` fixture and records outcomes."""

    def __init__(self, session_factory):
        self._factory = session_factory
        self._session = None
        self.outcomes: dict[str, tuple[str, str]] = {}

    @pytest.fixture(scope="session")
    def sub(self):
        if self._session is None:
            self._session = self._factory()
        return self._session

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item):
        # A back end may check its program before each test (the sandboxed
        # runner re-pins deterministic numerics and seeds itself); a failure
        # here fails the test, never passes it.
        before = getattr(self._session, "before_test", None)
        if before is not None:
            before(item.nodeid.split("::")[-1])

    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::")[-1]
        if report.when == "call" or report.outcome != "passed":
            if report.skipped:
                self.outcomes.setdefault(name, ("skipped", ""))
                return
            if report.failed:
                self.outcomes[name] = ("failed" if report.when == "call" else "error", _reason(report))
            elif name not in self.outcomes:
                self.outcomes[name] = ("passed", "")

    def pytest_collectreport(self, report):
        if report.failed:
            raise RuntimeError(f"hidden tests failed to import: {report.longreprtext[-2000:]}")


def _reason(report) -> str:
    exc = getattr(report, "longrepr", None)
    crash = getattr(exc, "reprcrash", None)
    if crash is not None:
        msg = crash.message
    else:
        msg = str(exc)
    # Keep only the exception line: never the hidden test's source.
    return msg.strip().splitlines()[0][:400] if msg.strip() else "failed"


def run_hidden_tests(assignment: str, session_factory, extra_args=(), tests_file=None) -> dict[str, tuple[str, str]]:
    """Run the hidden suite with ``sub`` from ``session_factory``; return name -> (outcome, reason).

    ``tests_file`` overrides the suite's path (a course directory other than this repository).
    """
    plugin = _Collector(session_factory)
    args = [str(tests_file or tests_path(assignment)), "-q", "-c", str(HERE / "pytest.ini"), "--rootdir", str(HERE),
            "-p", "no:randomly", "--no-header", "-o", "console_output_style=classic", *extra_args]
    code = pytest.main(args, plugins=[plugin])
    if code not in (0, 1):  # 0 all passed, 1 some failed; anything else is our fault
        raise RuntimeError(f"pytest could not run the hidden tests of {assignment} (exit code {code})")
    return plugin.outcomes


def score(assignment: str, outcomes: dict, source_nb) -> GradeReport:
    """Turn test outcomes into points per grade_id, using the source's points."""
    cells = [c for c in nbmod.grade_cells(source_nb) if c.kind == "autograded"]
    gids = {c.grade_id for c in cells}
    report = GradeReport(assignment)
    by_gid: dict[str, list[TestOutcome]] = {g: [] for g in gids}
    for name, (outcome, reason) in sorted(outcomes.items()):
        gid = grade_id_of(name, gids)
        if gid is None:
            raise RuntimeError(f"hidden test {name!r} matches no grade_id of {assignment}: {sorted(gids)}")
        t = TestOutcome(name, gid, outcome, reason)
        by_gid[gid].append(t)
        report.tests.append(asdict(t))
    for cell in cells:
        ran = [t for t in by_gid[cell.grade_id] if t.outcome != "skipped"]
        if not ran:
            raise RuntimeError(f"grade cell {cell.grade_id!r} of {assignment} has no hidden test that ran")
        passed = sum(t.outcome == "passed" for t in ran)
        report.scores[cell.grade_id] = round(cell.points * passed / len(ran), 6)
        report.max_scores[cell.grade_id] = cell.points
    return report


def grade_inprocess(assignment: str, notebook_path) -> GradeReport:
    """Grade a submission by running its program in this process (no isolation)."""
    from .inprocess import load_inprocess

    start = time.perf_counter()
    source_nb = nbmod.read_notebook(nbmod.source_path(assignment))
    try:
        sub_nb = nbmod.read_notebook(notebook_path)
    except nbmod.SubmissionFormatError as exc:
        report = _all_zero(assignment, source_nb, str(exc))
        report.seconds = time.perf_counter() - start
        return report
    program = nbmod.build_program(source_nb, sub_nb)
    outcomes = run_hidden_tests(assignment, lambda: load_inprocess(program))
    report = score(assignment, outcomes, source_nb)
    report.cell_problems = dict(program.problems)
    report.seconds = time.perf_counter() - start
    return report


def _all_zero(assignment, source_nb, reason) -> GradeReport:
    report = GradeReport(assignment, error=reason)
    for cell in nbmod.grade_cells(source_nb):
        if cell.kind == "autograded":
            report.scores[cell.grade_id] = 0.0
            report.max_scores[cell.grade_id] = cell.points
    report.cell_problems = {"notebook": reason}
    return report


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m autograder.grading", description=__doc__)
    p.add_argument("assignment")
    p.add_argument("notebook")
    p.add_argument("--json", help="write the report here")
    a = p.parse_args(argv)
    report = grade_inprocess(a.assignment, a.notebook)
    if a.json:
        Path(a.json).write_text(report.to_json())
    for gid in report.max_scores:
        print(f"{gid:40s} {report.scores[gid]:6.2f} / {report.max_scores[gid]:g}")
    print(f"{'total':40s} {report.total:6.2f} / {report.max_total:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["GradeReport", "grade_inprocess", "run_hidden_tests", "score", "StudentError"]
