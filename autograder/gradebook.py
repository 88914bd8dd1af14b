"""Write the engine's scores where nbgrader expects them.

For each graded submission:

* the gradebook (``gradebook.db``) gets the automatic score of every
  autograded grade cell (``auto_score``, no manual grading needed), and the
  manually graded answers and tasks are left for the grader
  (``needs_manual_grade``);
* ``autograded/<student>/<assignment>/<assignment>.ipynb`` is written: the
  student's notebook with every cell the instructor owns (read-only cells,
  test cells, grade metadata and points) restored from the release, deleted
  grade cells put back, forged grade metadata dropped, and in each autograded
  test cell one output that lists the hidden tests that scored it (name,
  points, outcome and the failure reason, never their source).

So formgrader, ``nbgrader generate_feedback`` and ``nbgrader export`` work
unchanged. Points always come from the instructor's notebook.
"""

from __future__ import annotations

import copy
import re
import shutil
import warnings
from pathlib import Path

import nbformat

from . import notebook as nbmod
from .course import Course
from .sandbox.protocol import CAUSES


_md = nbmod.nbgrader_md

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")
_SCHEMES = re.compile(r"(?i)\b(javascript|vbscript|data|file)(\s*):")


def plain_text(text: str) -> str:
    """A failure reason as plain text: no terminal control sequences, no other control characters."""
    return _CONTROL.sub("", str(text))


def sanitise_markdown(text: str) -> str:
    """A student's markdown with no active content: every HTML tag is shown as text
    (``<`` escaped), and link targets lose script-capable URL schemes."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;")
    return _SCHEMES.sub(lambda m: f"{m.group(1)}-blocked{m.group(2)}:", text)


def inert(cell):
    """A cell of the student's as it may appear in the autograded notebook and the feedback:
    code without outputs (the engine never ran it, so its outputs are unverified claims),
    markdown without active content, no attachments, no metadata of theirs."""
    cell = copy.deepcopy(cell)
    if cell.get("cell_type") == "code":
        cell.outputs, cell.execution_count = [], None
    else:
        cell.source = sanitise_markdown(cell.get("source", ""))
        cell.pop("attachments", None)
    return cell


def _listing(gid: str, points: float, report: dict) -> str:
    tests = [t for t in report.get("tests", []) if t["grade_id"] == gid]
    ran = [t for t in tests if t["outcome"] != "skipped"]
    each = points / len(ran) if ran else 0.0
    lines = [f"Hidden tests for {gid}: {report.get('scores', {}).get(gid, 0):g} / {points:g} points"]
    for t in tests:
        if t["outcome"] == "skipped":
            lines.append(f"  {t['name']}: skipped (not counted)")
        elif t["outcome"] == "passed":
            lines.append(f"  {t['name']}: passed, {each:.2f} / {each:.2f}")
        else:
            reason = plain_text(t.get("reason") or t["outcome"]).replace("\n", " ")[:300]
            why = CAUSES.get(t.get("cause", ""), "")
            lines.append(f"  {t['name']}: {t['outcome']}, 0.00 / {each:.2f}" + (f" [{why}]" if why else "")
                         + f" ({reason})")
    problems = report.get("cell_problems") or {}
    for cell, why in problems.items():
        lines.append(f"  note: {plain_text(cell)}: {plain_text(why)}")
    return "\n".join(lines) + "\n"


def autograded_notebook(release_nb, submission_nb, report: dict):
    """The notebook nbgrader's feedback and formgrader read (see the module docstring)."""
    rel_cells = {}
    for cell in release_nb.cells:
        gid = nbmod.grade_id(cell)
        if gid:
            rel_cells[gid] = cell
    count: dict[str, int] = {}
    for cell in submission_nb.cells:
        gid = nbmod.grade_id(cell)
        if gid:
            count[gid] = count.get(gid, 0) + 1
    out_cells, seen = [], set()
    rel_order = [(nbmod.grade_id(c), c) for c in release_nb.cells]

    def restore(gid):
        rel = copy.deepcopy(rel_cells[gid])
        if rel.cell_type == "code":
            rel.outputs, rel.execution_count = [], None
        return rel

    def insert_missing_before(gid):
        # Put back release grade cells that precede ``gid`` and were deleted.
        for rgid, _ in rel_order:
            if rgid is None or rgid in seen:
                continue
            if rgid == gid:
                break
            if count.get(rgid, 0) == 0:
                out_cells.append(restore(rgid))
                seen.add(rgid)

    for cell in submission_nb.cells:
        cell = inert(cell)
        gid = nbmod.grade_id(cell)
        if gid is None or gid not in rel_cells or gid in seen:
            # A free cell, or forged / duplicated grade metadata: keep the content as a plain cell.
            cell.metadata = {}
            out_cells.append(cell)
            continue
        insert_missing_before(gid)
        rel = rel_cells[gid]
        rmd = _md(rel)
        if rmd.get("locked") or (rmd.get("grade") and not rmd.get("solution")):
            new = restore(gid)  # the instructor's cell, whatever the student did to it
        else:
            new = copy.deepcopy(rel)  # an answer: the student's text under the release's metadata
            new.source = cell.source if rel.cell_type == cell.cell_type else sanitise_markdown(cell.source)
            if new.cell_type == "code":
                new.outputs, new.execution_count = [], None
        out_cells.append(new)
        seen.add(gid)
    insert_missing_before(None)
    nb = copy.deepcopy(release_nb)
    nb.cells = out_cells
    points = {g.grade_id: g.points for g in nbmod.grade_cells(release_nb)}
    for cell in nb.cells:
        md = _md(cell)
        if cell.cell_type == "code" and md.get("grade") and not md.get("solution") and md.get("grade_id") in points:
            text = _listing(md["grade_id"], points[md["grade_id"]], report)
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    return nb


class GradebookWriter:
    """Records graded submissions in the gradebook and in ``autograded/``.

    One writer is kept for a whole batch: it holds one connection (so the database's
    compiled queries are reused) and reads each assignment's notebooks once."""

    def __init__(self, course: Course, db_url: str | None = None):
        self.course = course if isinstance(course, Course) else Course(course)
        self.db_url = db_url or self.course.gradebook_url
        self._gb = None
        self._notebooks: dict[str, tuple] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._gb is not None:
            self._gb.close()
            self._gb = None

    def _gradebook(self):
        from nbgrader.api import Gradebook

        if self._gb is None:
            self._gb = Gradebook(self.db_url)
        return self._gb

    def _assignment(self, assignment: str):
        """(release notebook, grade cells of the source), checked against the gradebook once."""
        from nbgrader.api import MissingEntry

        if assignment not in self._notebooks:
            try:
                self._gradebook().find_assignment(assignment)
            except MissingEntry:
                raise RuntimeError(f"assignment {assignment!r} is not in {self.db_url}; "
                                   f"run `make generate` first") from None
            self._notebooks[assignment] = (nbmod.read_notebook(self.course.release(assignment)),
                                           nbmod.grade_cells(nbmod.read_notebook(self.course.source(assignment))))
        return self._notebooks[assignment]

    def write(self, assignment: str, student: str, report: dict, submission_path) -> None:
        """Record one graded submission (a report that is not graded is never turned into a score)."""
        if report.get("status") != "graded":
            return
        release_nb, cells = self._assignment(assignment)
        sub_dir = Path(submission_path).parent
        timestamp = None
        ts_file = sub_dir / "timestamp.txt"
        if ts_file.exists() and ts_file.read_text().strip():
            timestamp = ts_file.read_text().strip()

        gb = self._gradebook()
        # nbgrader's own session handling warns on every new submission; nothing is lost.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Object of type <Submitted\w+> not in session")
            try:
                gb.update_or_create_student(student)
                kwargs = {"timestamp": timestamp} if timestamp else {}
                gb.update_or_create_submission(assignment, student, **kwargs)
                for cell in cells:
                    grade = gb.find_grade(cell.grade_id, assignment, assignment, student)
                    if cell.kind == "autograded":
                        grade.auto_score = float(report["scores"].get(cell.grade_id, 0.0))
                        grade.needs_manual_grade = grade.manual_score is not None
                    else:
                        grade.auto_score = None
                        grade.needs_manual_grade = True
                gb.db.commit()
            except BaseException:
                gb.db.rollback()
                raise

        try:
            sub_nb = nbmod.read_notebook(submission_path)
        except nbmod.SubmissionFormatError:
            sub_nb = nbformat.v4.new_notebook()
        out = self.course.autograded(student, assignment)
        out_dir = out.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(autograded_notebook(release_nb, sub_nb, report), out)
        if ts_file.exists():
            shutil.copyfile(ts_file, out_dir / "timestamp.txt")


def write_result(course: Course, assignment: str, student: str, report: dict, submission_path,
                 db_url: str | None = None) -> None:
    """Record one graded submission in the gradebook and in ``autograded/`` (one-off; a batch
    keeps a :class:`GradebookWriter`)."""
    with GradebookWriter(course, db_url) as writer:
        writer.write(assignment, student, report, submission_path)
