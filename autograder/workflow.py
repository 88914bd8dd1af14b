"""Instructor workflow helpers: deterministic release generation and the drift check.

    python -m autograder.workflow generate [ASSIGNMENT ...]
    python -m autograder.workflow check-release [ASSIGNMENT ...]

``generate`` runs ``nbgrader generate_assignment`` (which also registers the
assignment in the gradebook) and then normalises the release so that it
depends only on the source: no outputs, no execution counts, sorted JSON
(nbformat's writer). ``check-release`` generates into a temporary copy of
the course and compares with the committed ``assignments/``: any difference
fails.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

from .course import Course


def assignments(course) -> list[str]:
    return Course(course).assignments()


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # nbgrader calls alembic
    return env


def normalise(path: Path, source: Path | None = None) -> None:
    """No outputs or execution counts; and where the source's cells have no ``id``
    (nbformat < 4.5), ids derived from the cell's position and grade_id instead of
    the random ones nbformat would invent, so a regeneration is byte-identical."""
    import hashlib
    import json

    nb = nbformat.read(path, as_version=4)
    raw = json.loads(Path(source).read_text()) if source else {"cells": []}
    src_ids = [c.get("id") for c in raw.get("cells", [])]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if i < len(src_ids) and src_ids[i] is None and len(src_ids) == len(nb.cells):
            gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
            cell["id"] = hashlib.sha1(f"{i}:{cell.cell_type}:{gid}".encode()).hexdigest()[:8]
    nbformat.write(nb, path)


def generate(course, names: list[str] | None = None) -> None:
    course = Course(course).root
    for name in names or assignments(course):
        proc = subprocess.run([str(Path(sys.prefix) / "bin" / "nbgrader"), "generate_assignment", name, "--force"],
                              cwd=course, env=_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        for nb in Course(course).release(name).parent.glob("*.ipynb"):
            normalise(nb, Course(course).source(name).parent / nb.name)


def check_release(course=None, names: list[str] | None = None) -> list[str]:
    """Regenerate into a temporary course; return the differences (empty: no drift)."""
    course = (Course(course) if course is not None else Course()).root
    names = names or assignments(course)
    problems = []
    with tempfile.TemporaryDirectory(prefix="agr-release-") as tmp:
        tmp = Path(tmp)
        shutil.copy(course / "nbgrader_config.py", tmp)
        shutil.copytree(Course(course).source(names[0]).parent.parent, Course(tmp).source(names[0]).parent.parent)
        generate(tmp, names)
        for name in names:
            new_dir, old_dir = Course(tmp).release(name).parent, Course(course).release(name).parent
            new = {p.relative_to(new_dir).as_posix() for p in new_dir.rglob("*") if p.is_file()}
            old = {p.relative_to(old_dir).as_posix() for p in old_dir.rglob("*") if p.is_file()} \
                if old_dir.exists() else set()
            for rel in sorted(new ^ old):
                problems.append(f"{name}/{rel}: {'missing from' if rel in new else 'not generated into'} assignments/")
            for rel in sorted(new & old):
                a, b = (old_dir / rel).read_text(), (new_dir / rel).read_text()
                if a != b:
                    diff = "".join(list(difflib.unified_diff(a.splitlines(True), b.splitlines(True),
                                                             f"committed/{name}/{rel}", f"generated/{name}/{rel}"))[:40])
                    problems.append(f"{name}/{rel} differs from a fresh generation (run `make generate`):\n{diff}")
    return problems


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("generate", "check-release"):
        print(__doc__)
        return 2
    cmd, names = argv[0], argv[1:] or None
    if cmd == "generate":
        generate(Course().root, names)
        return 0
    problems = check_release(None, names)
    for p in problems:
        print(p)
    print("release is up to date" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
