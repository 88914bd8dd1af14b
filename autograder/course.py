"""Where everything of a course lives.

A :class:`Course` is passed everywhere a path is needed; no other module of
the autograder builds these paths. A course directory holds::

    nbgrader_config.py
    solutions/<a>/<a>.ipynb            the instructor's source (points, tests' cells)
    assignments/<a>/<a>.ipynb          the generated student release
    autograder/tests/test_<a>.py       the hidden tests
    submitted/<student>/<a>/<a>.ipynb  collected submissions
    autograded/<student>/<a>/<a>.ipynb what the engine writes for nbgrader
    seqcourse/                         the course package the program imports
    gradebook.db                       nbgrader's gradebook
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_ASSIGNMENT = re.compile(r"^a[0-9]{2}_[a-z0-9_]+$")


@dataclass(frozen=True)
class Course:
    """The directories and files of one course."""

    root: Path = REPO

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())

    # -- assignments ----------------------------------------------------------
    def assignments(self) -> list[str]:
        """Every assignment with a source notebook, in order."""
        src = self.root / "solutions"
        if not src.is_dir():
            return []
        return sorted(p.name for p in src.iterdir() if p.is_dir() and (p / f"{p.name}.ipynb").exists())

    def check_assignment(self, assignment: str) -> str:
        """``assignment`` if the course has it; otherwise a ValueError that lists the known ones."""
        if not _ASSIGNMENT.match(assignment or "") or not self.source(assignment).exists():
            raise ValueError(f"unknown assignment {assignment!r}: no {self.source(assignment)}; "
                             f"known: {self.assignments()}")
        return assignment

    def source(self, assignment: str) -> Path:
        return self.root / "solutions" / assignment / f"{assignment}.ipynb"

    def release(self, assignment: str) -> Path:
        return self.root / "assignments" / assignment / f"{assignment}.ipynb"

    def tests(self, assignment: str) -> Path:
        return self.root / "autograder" / "tests" / f"test_{assignment}.py"

    # -- students ---------------------------------------------------------------
    @property
    def submitted_dir(self) -> Path:
        return self.root / "submitted"

    def submitted(self, student: str, assignment: str) -> Path:
        return self.submitted_dir / student / assignment / f"{assignment}.ipynb"

    def autograded(self, student: str, assignment: str) -> Path:
        return self.root / "autograded" / student / assignment / f"{assignment}.ipynb"

    def students(self, assignment: str) -> list[str]:
        """Students with a submission folder for ``assignment``."""
        if not self.submitted_dir.is_dir():
            return []
        return sorted(p.name for p in self.submitted_dir.iterdir() if (p / assignment).is_dir())

    # -- the engine's files -------------------------------------------------------
    def results_dir(self, cfg: dict) -> Path:
        return self.root / cfg["engine"]["results_dir"]

    @property
    def gradebook_url(self) -> str:
        return f"sqlite:///{self.root / 'gradebook.db'}"

    @property
    def package(self) -> Path:
        """The course package that programs and hidden tests import."""
        return self.root / "seqcourse"

    @property
    def hidden_tests_dir(self) -> Path:
        return self.root / "autograder" / "tests"
