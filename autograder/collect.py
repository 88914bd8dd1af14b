"""Collect submissions from an LMS archive into ``submitted/<student>/<assignment>/``.

nbgrader's ``zip_collect`` extracts first and asks questions later; this checks
the archive before anything is written:

* sizes: every member's declared and actual uncompressed size, their total, and
  the member count are capped (a zip bomb stops at the cap, never fills the disk);
* names: no absolute paths, no ``..``, no links; nested archives are reported,
  never extracted;
* student ids come from the LMS's structure only: the first path component of
  a member (a folder per student) or the first ``_``-separated token of a file
  name (``<id>_<anything>.ipynb``), matched by ``--regexp``; never from a name the
  student chose inside their own file. An id must be a safe name
  (``[A-Za-z0-9][A-Za-z0-9@._-]*``, not ``.``/``..``);
* two files that claim one student id are both reported and neither is taken;
  the rest of the class is still collected.

    python -m autograder collect ASSIGNMENT ARCHIVE.zip [--course DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from .course import Course

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._-]{0,63}$")
DEFAULT_REGEXP = r"^(?P<student_id>[^/_]+)[/_]"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar")
LIMITS = {"max_members": 20000, "max_member_mb": 64, "max_total_mb": 2048}


@dataclass
class Collected:
    students: dict = field(default_factory=dict)  # student id -> path written
    problems: list = field(default_factory=list)  # (member or id, reason)


class ArchiveError(ValueError):
    """The archive as a whole cannot be collected (unreadable, too many members, too large)."""


def safe_student_id(text: str) -> bool:
    return bool(SAFE_ID.match(text)) and text not in (".", "..")


def _member_ok(info: zipfile.ZipInfo) -> str:
    """'' if a member may be read; otherwise why not."""
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or any(part in ("..", "") for part in path.parts) or ":" in path.parts[0]:
        return "unsafe path in the archive"
    mode = (info.external_attr >> 16) & 0o170000
    if mode == 0o120000:
        return "a symbolic link"
    if name.lower().endswith(ARCHIVE_SUFFIXES):
        return "a nested archive (not extracted: ask the student to submit the notebook itself)"
    if info.file_size > LIMITS["max_member_mb"] << 20:
        return f"larger than {LIMITS['max_member_mb']} MiB uncompressed"
    return ""


def _read_capped(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """A member's bytes, refusing more than ``cap`` whatever its header claims."""
    with zf.open(info) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ArchiveError(f"{info.filename} expands beyond {cap >> 20} MiB")
    return data


def collect(course: Course, assignment: str, archive: Path, regexp: str = DEFAULT_REGEXP) -> Collected:
    """Extract every student's notebook of ``assignment`` (see the module docstring)."""
    course.check_assignment(assignment)
    pattern = re.compile(regexp)
    if "student_id" not in pattern.groupindex:
        raise ValueError(f"the collect regexp {regexp!r} has no (?P<student_id>...) group")
    result = Collected()
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArchiveError(f"{archive} is not a readable zip archive: {exc}") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(infos) > LIMITS["max_members"]:
            raise ArchiveError(f"{archive} has {len(infos)} files, more than {LIMITS['max_members']}")
        if sum(i.file_size for i in infos) > LIMITS["max_total_mb"] << 20:
            raise ArchiveError(f"{archive} expands to more than {LIMITS['max_total_mb']} MiB")
        claims: dict[str, list[zipfile.ZipInfo]] = {}
        for info in infos:
            if not info.filename.lower().endswith(".ipynb"):
                continue
            if PurePosixPath(info.filename).name.startswith("._") or "__MACOSX" in info.filename:
                continue  # macOS metadata, not a notebook
            why = _member_ok(info)
            if why:
                result.problems.append((info.filename, why))
                continue
            m = pattern.search(info.filename)
            sid = m.group("student_id") if m else None
            if sid is None:
                result.problems.append((info.filename, "no student id in its name (check --regexp)"))
                continue
            if not safe_student_id(sid):
                result.problems.append((info.filename, f"student id {sid!r} is not a safe name"))
                continue
            claims.setdefault(sid, []).append(info)
        for info in zf.infolist():  # nested archives are reported even when they hold no notebook
            if not info.is_dir() and info.filename.lower().endswith(ARCHIVE_SUFFIXES):
                result.problems.append((info.filename, _member_ok(info)))
        total = 0
        for sid, infos in sorted(claims.items()):
            if len(infos) > 1:
                names = ", ".join(i.filename for i in infos)
                result.problems.append((sid, f"{len(infos)} files claim this student id ({names}); none was taken"))
                continue
            info = infos[0]
            data = _read_capped(zf, info, LIMITS["max_member_mb"] << 20)
            total += len(data)
            if total > LIMITS["max_total_mb"] << 20:
                raise ArchiveError(f"{archive} expands to more than {LIMITS['max_total_mb']} MiB")
            target = course.submitted(sid, assignment)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            stamp = datetime(*info.date_time).strftime("%Y-%m-%d %H:%M:%S")
            (target.parent / "timestamp.txt").write_text(stamp + "\n")
            result.students[sid] = target
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m autograder collect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignment")
    p.add_argument("archive")
    p.add_argument("--course", default=None)
    p.add_argument("--regexp", default=DEFAULT_REGEXP,
                   help="matched against each member's path; its (?P<student_id>...) group is the id")
    a = p.parse_args(argv)
    course = Course(a.course) if a.course else Course()
    try:
        got = collect(course, a.assignment, Path(a.archive), a.regexp)
    except (ArchiveError, ValueError) as exc:
        print(f"nothing collected: {exc}", file=sys.stderr)
        return 2
    for sid, path in sorted(got.students.items()):
        print(f"collected: {sid} -> {path.relative_to(course.root)}")
    for what, why in got.problems:
        print(f"skipped: {what}: {why}", file=sys.stderr)
    print(f"{len(got.students)} student(s) collected, {len(got.problems)} problem(s)")
    return 0 if got.students or not got.problems else 1


if __name__ == "__main__":
    sys.exit(main())
