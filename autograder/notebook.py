"""Read nbgrader notebooks and rebuild the program that is graded.

The graded program is built from the instructor's source notebook
(``solutions/<assignment>/<assignment>.ipynb``):

* read-only setup code cells (nbgrader ``locked``, not grade cells) come from
  the source, never from the submission;
* autograded answer cells (``solution`` and not ``grade``) come from the
  submission, matched by ``grade_id``, in the source's order;
* everything else is ignored: the submission's test cells, outputs, metadata,
  kernelspec, cell order, extra cells, manually graded cells and free cells.

Points always come from the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO / "solutions"
RELEASE_DIR = REPO / "assignments"


class SubmissionFormatError(ValueError):
    """The submitted file is not a readable notebook."""


@dataclass
class GradeCell:
    """An nbgrader grade cell of the source: its id, points and kind."""

    grade_id: str
    points: float
    kind: str  # "autograded" (test cell), "manual" (answer) or "task"


@dataclass
class Program:
    """The code to run for one submission, and what went wrong building it."""

    cells: list[tuple[str, str]]  # (label, source): label is the grade_id or "setup-<n>"
    answer_ids: list[str]
    problems: dict[str, str] = field(default_factory=dict)  # answer grade_id -> reason


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def source_path(assignment: str) -> Path:
    """The instructor's source notebook of ``assignment``."""
    path = SOURCE_DIR / assignment / f"{assignment}.ipynb"
    if not path.exists():
        known = sorted(p.name for p in SOURCE_DIR.iterdir() if p.is_dir()) if SOURCE_DIR.exists() else []
        raise ValueError(f"unknown assignment {assignment!r}: no {path}; known: {known}")
    return path


def read_notebook(path: str | Path):
    """Read a notebook, turning every kind of damage into SubmissionFormatError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubmissionFormatError(f"cannot read {path}: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionFormatError(f"{path} is not valid JSON ({exc}); was it saved as a notebook?") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise SubmissionFormatError(f"{path} is JSON but not a notebook (no 'cells' list)")
    try:
        return nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises several types
        raise SubmissionFormatError(f"{path} is not a valid notebook: {exc}") from exc


def grade_cells(source_nb) -> list[GradeCell]:
    """Every grade cell of the source, in order, with its points."""
    cells = []
    for cell in source_nb.cells:
        md = _nbgrader(cell)
        if not md.get("grade") and not md.get("task"):
            continue
        if md.get("task"):
            kind = "task"
        elif md.get("solution"):
            kind = "manual"
        else:
            kind = "autograded"
        cells.append(GradeCell(md["grade_id"], float(md.get("points", 0)), kind))
    return cells


def answer_cell_ids(source_nb) -> list[str]:
    """grade_ids of the autograded answer cells (code the student writes)."""
    return [
        _nbgrader(c)["grade_id"]
        for c in source_nb.cells
        if c.cell_type == "code" and _nbgrader(c).get("solution") and not _nbgrader(c).get("grade")
    ]


def build_program(source_nb, submission_nb) -> Program:
    """Rebuild the program to grade (see the module docstring)."""
    by_id: dict[str, list] = {}
    for cell in submission_nb.cells:
        gid = _nbgrader(cell).get("grade_id")
        if gid is not None:
            by_id.setdefault(gid, []).append(cell)
    cells, answers, problems = [], [], {}
    setup_n = 0
    for cell in source_nb.cells:
        md = _nbgrader(cell)
        if cell.cell_type != "code":
            continue
        if md.get("solution") and not md.get("grade"):
            gid = md["grade_id"]
            answers.append(gid)
            found = by_id.get(gid, [])
            if not found:
                problems[gid] = f"answer cell {gid!r} is missing from the submission (deleted or its metadata was changed)"
                continue
            if len(found) > 1:
                problems[gid] = f"answer cell {gid!r} appears {len(found)} times in the submission (duplicated cell)"
                continue
            if found[0].cell_type != "code":
                problems[gid] = f"answer cell {gid!r} was changed from a code cell to a {found[0].cell_type} cell"
                continue
            cells.append((gid, found[0].source))
        elif md.get("locked") and not md.get("grade") and not md.get("task"):
            setup_n += 1
            cells.append((f"setup-{setup_n}", cell.source))
    return Program(cells=cells, answer_ids=answers, problems=problems)
