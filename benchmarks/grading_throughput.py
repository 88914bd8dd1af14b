"""Throughput of the sandboxed engine against plain ``nbgrader autograde``.

Builds a temporary course with N submissions of one assignment (copies of the
solution, the release and the wrong variants, in turn), grades them once with
``nbgrader autograde`` and once with the engine (``--workers``), and prints
both wall times and their ratio. A benchmark, not a test::

    .venv/bin/python benchmarks/grading_throughput.py [--assignment a01_text_and_ngrams] [-n 100] [--workers 2]

With ``--cluster ray`` it also starts a local Ray cluster (a head with no CPU and
``--workers`` worker nodes of one CPU each), grades the same submissions on it
with ``--cluster ray``, and prints its wall time beside the local back end's,
their ratio and Ray's overhead. ``--skip-nbgrader`` leaves nbgrader out.
"""

from __future__ import annotations

import argparse
import resource
import json
import os
import shutil
import statistics
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
    shutil.copytree(REPO / "seqcourse", root / "seqcourse", ignore=shutil.ignore_patterns("__pycache__"))
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
    return timed_cpu(cmd, cwd, env)[0]


def timed_cpu(cmd, cwd, env=None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and the children it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ray_run(root: Path, a, env) -> float:
    """Wall time of grading the course on a local Ray cluster (the cluster's own start not counted)."""
    from ray.cluster_utils import Cluster

    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(a.workers):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(f"ray: head + {a.workers} worker nodes started in {time.perf_counter() - start:.1f} s (not counted)")
    try:
        wall, cpu = timed_cpu([sys.executable, "-m", "autograder", "grade", a.assignment, "--course", str(root),
                               "--cluster", "ray", "--address", cluster.address, "--force", "--no-progress"],
                              REPO, env)
        # The driver grades nothing itself: its CPU time is what one machine must spend per submission
        # on keys, reports and the gradebook, whatever the size of the cluster.
        print(f"ray driver: {cpu:.1f} CPU seconds in all, {1000 * cpu / a.n:.0f} ms per submission "
              f"(start-up included)")
        return wall
    finally:
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assignment", default="a01_text_and_ngrams")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--skip-nbgrader", action="store_true")
    ap.add_argument("--cluster", choices=["local", "ray"], default="local",
                    help="ray: also grade on a local Ray cluster of --workers one-CPU nodes")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agr-bench-") as tmp:
        root = Path(tmp)
        build_course(root, a.assignment, a.n)
        env = dict(os.environ, PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}")
        t_engine = timed([sys.executable, "-m", "autograder", "grade", a.assignment, "--course", str(root),
                          "--workers", str(a.workers), "--force", "--no-progress"], REPO, env)
        print(f"engine ({a.workers} workers): {a.n} submissions in {t_engine:.1f} s "
              f"({a.n / t_engine:.2f} submissions/s; {t_engine * a.workers / a.n:.2f} worker-seconds each)")
        seconds = sorted(json.loads(p.read_text())["seconds"] for p in (root / ".grading" / a.assignment).glob("*.json"))
        if seconds:  # one harness per stored report (identical submissions share one)
            print(f"per submission, harness only: median {statistics.median(seconds):.2f} s, "
                  f"mean {statistics.fmean(seconds):.2f} s, max {seconds[-1]:.2f} s over {len(seconds)} reports")
        if a.cluster == "ray":
            t_ray = ray_run(root, a, env)
            print(f"ray ({a.workers} worker nodes of 1 CPU): {a.n} submissions in {t_ray:.1f} s "
                  f"({a.n / t_ray:.2f} submissions/s)")
            print(f"ray wall time / local wall time = {t_ray / t_engine:.3f} "
                  f"(Ray's overhead: {100 * (t_ray / t_engine - 1):+.1f} %)")
        if a.skip_nbgrader:
            return
        nbg = [str(Path(sys.prefix) / "bin" / "nbgrader"), "autograde", a.assignment, "--force",
               "--create"]  # --create: add unknown students to the gradebook
        t_nbg = timed(nbg, root, env)
        print(f"nbgrader autograde: {a.n} submissions in {t_nbg:.1f} s ({a.n / t_nbg:.2f} submissions/s)")
        print(f"engine throughput / nbgrader throughput = {t_nbg / t_engine:.2f}x")


if __name__ == "__main__":
    main()
