"""Throughput of the sandboxed engine against plain ``nbgrader autograde``.

Builds a temporary course with N submissions of one assignment (copies of the
solution, the release and the wrong variants, in turn), grades them once with
``nbgrader autograde`` and once with the engine (``--workers``), and prints
both wall times and their ratio. A benchmark, not a test::

    .venv/bin/python benchmarks/grading_throughput.py [--assignment a01_text_and_ngrams] [-n 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nbformat  # noqa: E402

from autograder import notebook as nbmod  # noqa: E402
from autograder.course import Course
from autograder import workflow  # noqa: E402
from tests.variants import load_variants, make_variant_notebook  # noqa: E402


def build_course(root: Path, assignment: str, n: int) -> None:
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copytree(REPO / "solutions" / assignment, root / "solutions" / assignment)
    (root / "autograder" / "tests").mkdir(parents=True)
    for f in ("conftest.py", f"test_{assignment}.py"):
        shutil.copy(REPO / "autograder" / "tests" / f, root / "autograder" / "tests")
    workflow.generate(root, [assignment])
    pool = [nbmod.read_notebook(Course().source(assignment)),
            nbmod.read_notebook(root / "assignments" / assignment / f"{assignment}.ipynb")]
    try:
        pool += [make_variant_notebook(assignment, spec) for spec in load_variants(assignment).values()]
    except ModuleNotFoundError:
        pass
    for i in range(n):
        d = root / "submitted" / f"s{i:03d}" / assignment
        d.mkdir(parents=True)
        nbformat.write(pool[i % len(pool)], d / f"{assignment}.ipynb")


def timed(cmd, cwd, env=None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assignment", default="a01_text_and_ngrams")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--skip-nbgrader", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agr-bench-") as tmp:
        root = Path(tmp)
        build_course(root, a.assignment, a.n)
        env = dict(os.environ, PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}")
        t_engine = timed([sys.executable, "-m", "autograder", "grade", a.assignment, "--course", str(root),
                          "--workers", str(a.workers), "--force", "--no-progress"], REPO, env)
        print(f"engine ({a.workers} workers): {a.n} submissions in {t_engine:.1f} s "
              f"({a.n / t_engine:.2f} submissions/s)")
        if a.skip_nbgrader:
            return
        nbg = [str(Path(sys.prefix) / "bin" / "nbgrader"), "autograde", a.assignment, "--force",
               "--create"]  # --create: add unknown students to the gradebook
        t_nbg = timed(nbg, root, env)
        print(f"nbgrader autograde: {a.n} submissions in {t_nbg:.1f} s ({a.n / t_nbg:.2f} submissions/s)")
        print(f"engine throughput / nbgrader throughput = {t_nbg / t_engine:.2f}x")


if __name__ == "__main__":
    main()
