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
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .sandbox.protocol import Program


class SubmissionFormatError(ValueError):
    """The submitted file is not a readable notebook."""


@dataclass
class GradeCell:
    """An nbgrader grade cell of the source: its id, points and kind."""

    grade_id: str
    points: float
    kind: str  # "autograded" (test cell), "manual" (answer) or "task"


def nbgrader_md(cell) -> dict:
    """A cell's nbgrader metadata, or {} when it is absent or malformed (a string, a list...)."""
    md = cell.get("metadata") if isinstance(cell, dict) else None
    md = md.get("nbgrader") if isinstance(md, dict) else None
    return md if isinstance(md, dict) else {}


def grade_id(cell) -> str | None:
    """A cell's nbgrader grade_id, or None when it has none or it is not a string."""
    gid = nbgrader_md(cell).get("grade_id")
    return gid if isinstance(gid, str) else None


# The nbgrader cell kinds, written once.
def is_answer(cell) -> bool:
    """An autograded answer cell: code the student writes (``solution`` and not ``grade``)."""
    md = nbgrader_md(cell)
    return cell.get("cell_type") == "code" and bool(md.get("solution")) and not md.get("grade")


def is_setup(cell) -> bool:
    """A read-only setup code cell of the instructor (locked, not a grade or task cell)."""
    md = nbgrader_md(cell)
    return cell.get("cell_type") == "code" and bool(md.get("locked")) and not md.get("grade") and not md.get("task")


def is_test(cell) -> bool:
    """An autograded test cell (``grade`` and not ``solution``)."""
    md = nbgrader_md(cell)
    return cell.get("cell_type") == "code" and bool(md.get("grade")) and not md.get("solution")


MAX_NOTEBOOK_BYTES = 64 << 20


def read_notebook(path: str | Path):
    """Read a notebook, turning every kind of damage into SubmissionFormatError."""
    try:
        if Path(path).stat().st_size > MAX_NOTEBOOK_BYTES:
            raise SubmissionFormatError(f"{path} is larger than {MAX_NOTEBOOK_BYTES >> 20} MiB; "
                                        "clear its outputs and submit again")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubmissionFormatError(f"cannot read {path}: {exc}") from exc
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SubmissionFormatError(f"{path} is not valid JSON ({type(exc).__name__}); "
                                    "was it saved as a notebook?") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise SubmissionFormatError(f"{path} is JSON but not a notebook (no 'cells' list)")
    if not all(isinstance(c, dict) for c in raw["cells"]):
        raise SubmissionFormatError(f"{path} has a cell that is not a JSON object")
    try:
        return nbformat.reads(text, as_version=4)
    except (Exception, RecursionError) as exc:  # nbformat raises several types
        raise SubmissionFormatError(f"{path} is not a valid notebook: {type(exc).__name__}") from None


def grade_cells(source_nb) -> list[GradeCell]:
    """Every grade cell of the source, in order, with its points."""
    cells = []
    for cell in source_nb.cells:
        md = nbgrader_md(cell)
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
    return [grade_id(c) for c in source_nb.cells if is_answer(c)]


def build_program(source_nb, submission_nb) -> Program:
    """Rebuild the program to grade (see the module docstring)."""
    by_id: dict[str, list] = {}
    for cell in submission_nb.cells:
        gid = grade_id(cell)
        if gid is not None:
            by_id.setdefault(gid, []).append(cell)
    cells, answers, problems = [], [], {}
    setup_n = 0
    for cell in source_nb.cells:
        if cell.cell_type != "code":
            continue
        if is_answer(cell):
            gid = grade_id(cell)
            answers.append(gid)
            found = by_id.get(gid, [])
            if not found:
                problems[gid] = f"answer cell {gid!r} is missing from the submission (deleted or its metadata was changed)"
                continue
            if len(found) > 1:
                problems[gid] = f"answer cell {gid!r} appears {len(found)} times in the submission (duplicated cell)"
                continue
            if found[0].get("cell_type") != "code":
                problems[gid] = f"answer cell {gid!r} was changed from a code cell to a {found[0].get('cell_type')} cell"
                continue
            if not isinstance(found[0].get("source"), str):
                problems[gid] = f"answer cell {gid!r} has no readable source"
                continue
            cells.append((gid, found[0].source))
        elif is_setup(cell):
            setup_n += 1
            cells.append((f"setup-{setup_n}", cell.source))
    return Program(cells=cells, answer_ids=answers, problems=problems)
