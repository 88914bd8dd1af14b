"""Running the engine as a normal user, from tests that run as root.

``grading_user()`` creates (once) a dedicated unprivileged account,
``user_python()`` a virtual environment that user can execute (Debian's
world-executable Python plus this environment's site-packages through a
``.pth`` file; the default interpreter lives in root's home), and
``course_copy()`` a course directory owned by that user. ``as_user()`` wraps a
command with ``setpriv`` so it runs with that uid, no supplementary groups.
"""

from __future__ import annotations

import os
import pwd
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USER = "agr-grader-test"
SYSTEM_PYTHONS = ("/usr/bin/python3.11", "/usr/bin/python3")


def available() -> str | None:
    """Why the unprivileged run cannot happen here, or None when it can."""
    if os.geteuid() != 0:
        return "not root: the suite already runs as a normal user"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not any(Path(p).exists() and _version(p) == ver for p in SYSTEM_PYTHONS):
        return f"no world-executable system Python {ver} to run the engine as a normal user"
    return None


def _version(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def grading_user() -> tuple[int, int]:
    """(uid, gid) of the test account, created with useradd if missing."""
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


def user_python(root: Path) -> str:
    """A venv the test user can run, seeing this environment's packages read-only."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = next(p for p in SYSTEM_PYTHONS if Path(p).exists() and _version(p) == ver)
    venv = root / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (target / "course-environment.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    return str(venv / "bin" / "python")


def course_copy(root: Path, assignments: list[str]) -> Path:
    """A course with ``assignments`` (source, hidden tests) and the course package."""
    course = root / "course"
    for a in assignments:
        (course / "solutions" / a).mkdir(parents=True)
        shutil.copy(REPO / "solutions" / a / f"{a}.ipynb", course / "solutions" / a)
        (course / "autograder" / "tests").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "autograder" / "tests" / f"test_{a}.py", course / "autograder" / "tests")
    shutil.copy(REPO / "autograder" / "tests" / "conftest.py", course / "autograder" / "tests")
    shutil.copytree(REPO / "seqcourse", course / "seqcourse", ignore=shutil.ignore_patterns("__pycache__"))
    return course


def workspace() -> Path:
    """A fresh directory under /tmp the test user owns (pytest's own tmp dirs are private to root)."""
    return Path(tempfile.mkdtemp(prefix="agr-user-test-", dir="/tmp"))


def hand_over(path: Path, uid: int, gid: int) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, uid, gid)


def as_user(cmd: list[str], uid: int, gid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd]
