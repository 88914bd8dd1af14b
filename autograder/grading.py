"""Run an assignment's hidden tests against one submission and score them.

One pipeline, :func:`grade`, serves both back ends: the in-process one
(development) and the sandboxed engine. Only the *session* differs: the
object that implements the ``Submission`` interface for the hidden tests.

Scores come only from the outcomes of the hidden tests, which compare the
student's results with references computed here. A hidden test is named
after the nbgrader ``grade_id`` it scores (``test_x`` or ``test_x__case``);
the points of that grade cell, read from the instructor's source, are split
evenly over the tests that ran (skipped GPU cases are left out of the split).
Every outcome carries a typed ``cause`` (see ``sandbox.protocol.CAUSES``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from . import notebook as nbmod
from .course import Course
from .sandbox.protocol import CAUSES, InfrastructureError, ProtocolError, StudentError, instructor_failures

HERE = Path(__file__).resolve().parent

#: Environment variables that change how pytest reports (and so how long a
#: harness takes); the harness runs without them.
_PYTEST_ENV = ("CI", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DEBUG", "PY_COLORS", "NO_COLOR", "FORCE_COLOR")


@dataclass
class TestOutcome:
    name: str
    grade_id: str
    outcome: str  # passed, failed, error, skipped
    reason: str = ""
    cause: str = "passed"  # a key of CAUSES


@dataclass
class GradeReport:
    assignment: str
    scores: dict = field(default_factory=dict)  # grade_id -> points earned (autograded cells)
    max_scores: dict = field(default_factory=dict)  # grade_id -> points available
    tests: list = field(default_factory=list)  # TestOutcome as dicts
    cell_problems: dict = field(default_factory=dict)
    status: str = "graded"  # graded | not graded
    cause: str = ""  # why nothing was graded: "unreadable" (the student's file) or "not_graded"
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


def classify(exc: BaseException, when: str) -> str:
    """The cause of a failed test phase."""
    if when != "call":
        return "not_graded"  # a fixture of the hidden suite failed: not the student's doing
    cause = getattr(exc, "cause", None)
    if isinstance(cause, str) and cause in CAUSES:
        return cause
    if isinstance(exc, (ProtocolError, OSError, ImportError)):
        return "not_graded"  # a malformed request of the test, or the harness's own environment
    return "wrong"


class _Collector:
    """A pytest plugin: provides the ``sub`` fixture and records outcomes with their causes."""

    def __init__(self, session_factory, test_seconds: float | None = None):
        self._factory = session_factory
        self._session = None
        self._test_seconds = test_seconds
        self.outcomes: dict[str, tuple[str, str, str]] = {}  # name -> (outcome, reason, cause)

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

    @pytest.hookimpl(hookwrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        """A time limit on each test as a whole, the harness's own checks included (a huge
        wrong answer must not keep the harness busy for minutes)."""
        if not self._test_seconds:
            yield
            return
        limit = float(self._test_seconds)

        def expired(signum, frame):
            raise StudentError(f"the test took more than {limit:g} s (the submission's results were too "
                               f"large or too slow to check)", cause="timeout")

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        result = yield
        report = result.get_result()
        name = item.nodeid.split("::")[-1]
        if report.skipped:
            self.outcomes.setdefault(name, ("skipped", "", "skipped"))
        elif report.failed:
            exc = call.excinfo.value if call.excinfo is not None else None
            cause = classify(exc, call.when) if exc is not None else "not_graded"
            self.outcomes[name] = ("failed" if call.when == "call" else "error", _reason(report), cause)
        elif call.when == "call" and name not in self.outcomes:
            self.outcomes[name] = ("passed", "", "passed")

    def pytest_collectreport(self, report):
        if report.failed:
            raise InfrastructureError(f"the hidden tests failed to import: {report.longreprtext[-2000:]}")


def _reason(report) -> str:
    exc = getattr(report, "longrepr", None)
    crash = getattr(exc, "reprcrash", None)
    msg = crash.message if crash is not None else str(exc)
    # Keep only the exception line: never the hidden test's source.
    return msg.strip().splitlines()[0][:400] if msg.strip() else "failed"


def run_hidden_tests(tests_file: Path, session_factory, extra_args=(), only=None,
                     test_seconds: float | None = None) -> dict[str, tuple[str, str, str]]:
    """Run the hidden suite with ``sub`` from ``session_factory``; return name -> (outcome, reason, cause).

    ``only``: run just these tests (names as reported); ``test_seconds``: a time limit per test.
    """
    plugin = _Collector(session_factory, test_seconds)
    targets = [f"{tests_file}::{name}" for name in only] if only else [str(tests_file)]
    args = [*targets, "-q", "-c", str(HERE / "pytest.ini"), "--rootdir", str(HERE), "-p", "no:randomly",
            "-p", "no:cacheprovider", "--no-header", "-o", "console_output_style=classic", *extra_args]
    saved = {k: os.environ.pop(k) for k in _PYTEST_ENV if k in os.environ}
    # No third-party pytest plugin takes part (and none costs start-up time in each harness).
    autoload = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        code = pytest.main(args, plugins=[plugin])
    finally:
        os.environ.update(saved)
        if autoload is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        else:
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = autoload
    if code not in (0, 1):  # 0 all passed, 1 some failed; anything else is our fault
        raise InfrastructureError(f"pytest could not run the hidden tests {tests_file.name} (exit code {code})")
    return plugin.outcomes


def score(assignment: str, outcomes: dict, source_nb) -> GradeReport:
    """Turn test outcomes into points per grade_id, using the source's points."""
    cells = [c for c in nbmod.grade_cells(source_nb) if c.kind == "autograded"]
    gids = {c.grade_id for c in cells}
    report = GradeReport(assignment)
    by_gid: dict[str, list[TestOutcome]] = {g: [] for g in gids}
    for name, (outcome, reason, cause) in sorted(outcomes.items()):
        gid = grade_id_of(name, gids)
        if gid is None:
            raise InfrastructureError(f"hidden test {name!r} matches no grade_id of {assignment}: {sorted(gids)}")
        t = TestOutcome(name, gid, outcome, reason, cause)
        by_gid[gid].append(t)
        report.tests.append(asdict(t))
    for cell in cells:
        ran = [t for t in by_gid[cell.grade_id] if t.outcome != "skipped"]
        if not ran:
            raise InfrastructureError(f"grade cell {cell.grade_id!r} of {assignment} has no hidden test that ran")
        passed = sum(t.outcome == "passed" for t in ran)
        report.scores[cell.grade_id] = round(cell.points * passed / len(ran), 6)
        report.max_scores[cell.grade_id] = cell.points
    return report


def all_zero(assignment: str, source_nb, reason: str, cause: str = "unreadable") -> GradeReport:
    """Zero on every autograded cell, with the reason (a submission that cannot be read)."""
    report = GradeReport(assignment, error=reason, cause=cause)
    for cell in nbmod.grade_cells(source_nb):
        if cell.kind == "autograded":
            report.scores[cell.grade_id] = 0.0
            report.max_scores[cell.grade_id] = cell.points
    report.cell_problems = {"notebook": reason}
    return report


def read_program(source_nb, notebook_path):
    """(program, '') for a readable submission, or (None, reason) for one that is not."""
    try:
        sub_nb = nbmod.read_notebook(notebook_path)
        return nbmod.build_program(source_nb, sub_nb), ""
    except nbmod.SubmissionFormatError as exc:
        return None, str(exc)
    except (Exception, RecursionError) as exc:  # whatever the file holds, it costs this student only
        return None, f"the notebook's structure cannot be read ({type(exc).__name__}); " \
                     f"download a fresh copy of the assignment and paste your answers into it"


def _check_infrastructure(sessions, outcomes) -> None:
    """Raise InfrastructureError if any test failed for a reason that is not the student's."""
    for session in sessions:
        if getattr(session, "infra_error", None):
            raise InfrastructureError(session.infra_error)
    faults = {n: r for n, (_, r, c) in outcomes.items() if c == "not_graded"}
    if faults:
        name, reason = next(iter(faults.items()))
        raise InfrastructureError(f"{len(faults)} hidden test(s) failed for a reason that is not the "
                                  f"submission's, e.g. {name}: {reason}")


def grade(course: Course, assignment: str, notebook_path, session_factory, extra_args=(),
          test_seconds: float | None = None) -> GradeReport:
    """The grading pipeline: read, rebuild, run the hidden tests, score.

    ``session_factory(program)`` returns the object the hidden tests talk to.
    Raises InfrastructureError for a fault that is not the student's.
    """
    start = time.perf_counter()
    source_nb = nbmod.read_notebook(course.source(assignment))
    program, error = read_program(source_nb, notebook_path)
    if program is None:
        report = all_zero(assignment, source_nb, error)
        report.seconds = time.perf_counter() - start
        return report
    sessions = []

    def factory():
        sessions.append(session_factory(program))
        return sessions[-1]

    tests = course.tests(assignment)
    try:
        outcomes = run_hidden_tests(tests, factory, extra_args, test_seconds=test_seconds)
        _check_infrastructure(sessions, outcomes)
        # A runner killed from outside (the OOM killer, an operator, a node restart) looks like a
        # crash: such tests run once more on a fresh runner, and a charge stands only if it reproduces.
        crashed = sorted(n for n, (_, _, cause) in outcomes.items() if cause == "crashed")
        if crashed and getattr(sessions[-1], "retries_crashes", False):
            again = run_hidden_tests(tests, factory, extra_args, only=crashed, test_seconds=test_seconds)
            _check_infrastructure(sessions, again)
            for name in crashed:
                if name in again:
                    outcome, reason, cause = again[name]
                    if cause == "crashed":
                        reason = f"{reason} (reproduced on a fresh runner)"
                    outcomes[name] = (outcome, reason, cause)
    finally:
        for session in sessions:
            close = getattr(session, "close", None)
            if close is not None:
                close()
    session = sessions[-1] if sessions else None
    report = score(assignment, outcomes, source_nb)
    report.cell_problems = dict(program.problems)
    report.error = "; ".join(dict.fromkeys(getattr(session, "events", [])))[:2000]
    report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------
# The in-process back end (development: no isolation)
# ----------------------------------------------------------------------------


def load_inprocess(program):
    """Execute ``program`` in this process; refuse when a setup cell failed (the machine's fault)."""
    from .sandbox.host import execute_program, ProgramSession

    ns, errors = execute_program(program)
    failed = instructor_failures(program, errors)
    if failed:
        raise InfrastructureError(f"a read-only setup cell failed before any student code ran: {failed}")
    return ProgramSession(ns, errors, program.problems)


def grade_inprocess(assignment: str, notebook_path, course: Course | None = None, extra_args=()) -> GradeReport:
    """Grade a submission by running its program in this process (no isolation)."""
    import torch

    from .sandbox.protocol import pin_numerics

    from .devices import cuda_available

    pin_numerics(torch)
    torch.set_num_threads(1)  # as each sandboxed runner does (config [sandbox] threads)
    # As the engine does on the CPU: without a GPU the CUDA cases are deselected, not skipped.
    extra = [*extra_args, *([] if cuda_available() else ["-m", "not gpu"])]
    return grade(course or Course(), assignment, notebook_path, load_inprocess, extra)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m autograder.grading", description=__doc__)
    p.add_argument("assignment")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--json", help="write the report here (one notebook)")
    p.add_argument("--json-dir", help="write each report here as <notebook stem>.json")
    p.add_argument("--course", default=None, help="course directory (default: this repository)")
    p.add_argument("-k", dest="select", default=None, help="only hidden tests matching this pytest -k expression")
    a = p.parse_args(argv)
    course = Course(a.course) if a.course else Course()
    try:
        course.check_assignment(a.assignment)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if a.json and len(a.notebooks) != 1:
        raise SystemExit("--json takes one notebook; use --json-dir DIR for several")
    for nb in a.notebooks:
        report = grade_inprocess(a.assignment, nb, course, ["-k", a.select] if a.select else [])
        if a.json:
            Path(a.json).write_text(report.to_json())
        if a.json_dir:
            Path(a.json_dir).mkdir(parents=True, exist_ok=True)
            (Path(a.json_dir) / f"{Path(nb).stem}.json").write_text(report.to_json())
        print(nb)
        for gid in report.max_scores:
            print(f"  {gid:40s} {report.scores[gid]:6.2f} / {report.max_scores[gid]:g}")
        print(f"  {'total':40s} {report.total:6.2f} / {report.max_total:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["GradeReport", "TestOutcome", "grade", "grade_inprocess", "run_hidden_tests", "score", "StudentError"]
