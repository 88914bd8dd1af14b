"""Command line of the grading engine: ``python -m autograder <command>``.

    grade ASSIGNMENT        grade submitted/<student>/ASSIGNMENT/ASSIGNMENT.ipynb of every
                            (or --student) student, write the gradebook and autograded/
    files ASSIGNMENT NB...  grade notebooks, write one JSON report each (no gradebook)
    limits                  print the limits in effect and which isolation holds here

Options: --workers N (default: cores, or GPUs with --device cuda), --device cpu|cuda,
--course DIR (default: this repository), --force (ignore cached results),
--config FILE (default: autograder/config.toml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import engine


def _common(p):
    p.add_argument("--course", default=str(engine.REPO), help="course directory (holds nbgrader_config.py)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--config", default=None)
    p.add_argument("--force", action="store_true", help="regrade even when a cached result exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-k", dest="select", default=None, help="only hidden tests matching this pytest -k expression")


def _summary(results: dict, max_scores: dict | None = None) -> int:
    bad = 0
    for job_id, rep in sorted(results.items()):
        if rep.get("status") != "graded":
            bad += 1
            print(f"{job_id:30s} NOT GRADED  {rep.get('error', '').splitlines()[0] if rep.get('error') else ''}")
            continue
        total = sum(rep["scores"].values())
        full = sum(rep["max_scores"].values())
        flag = " (cached)" if rep.get("cached") else ""
        print(f"{job_id:30s} {total:7.2f} / {full:g}{flag}")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade collected submissions into the gradebook")
    g.add_argument("assignment")
    g.add_argument("--student", action="append", default=None)
    g.add_argument("--json-dir", default=None, help="also write each student's report here")
    _common(g)
    f = sub.add_parser("files", help="grade notebooks, JSON reports only")
    f.add_argument("assignment")
    f.add_argument("notebooks", nargs="+")
    f.add_argument("--json-dir", required=True)
    _common(f)
    lim = sub.add_parser("limits", help="print the limits and the isolation that holds here")
    lim.add_argument("--config", default=None)
    a = ap.parse_args(argv)

    cfg = engine.load_config(a.config)
    if a.cmd == "limits":
        print(json.dumps(cfg, indent=1))
        print("isolation on this machine:", json.dumps(engine.probe(cfg)))
        return 0
    course = Path(a.course).resolve()
    extra = ["-k", a.select] if a.select else []
    if a.cmd == "files":
        jobs = [engine.Job(a.assignment, str(Path(nb).resolve()), Path(nb).stem) for nb in a.notebooks]
        if len({j.job_id for j in jobs}) != len(jobs):
            raise SystemExit("notebook file names must be unique (a report is named after each)")
        results = engine.grade_batch(jobs, course=course, cfg=cfg, workers=a.workers, device=a.device,
                                     extra_args=extra, force=a.force, progress=not a.no_progress)
        out = Path(a.json_dir)
        out.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            (out / f"{job.job_id}.json").write_text(json.dumps(results[job.job_id], indent=1))
        return 1 if _summary(results) else 0

    from .gradebook import write_result

    submitted = course / "submitted"
    students = a.student or sorted(p.name for p in submitted.iterdir() if (p / a.assignment).is_dir()) \
        if submitted.is_dir() else []
    if not students:
        raise SystemExit(f"no submissions of {a.assignment} under {submitted} (run `make collect` first)")
    jobs = [engine.Job(a.assignment, str(submitted / s / a.assignment / f"{a.assignment}.ipynb"), s)
            for s in students]

    def record(job, report):  # runs in this process only: one gradebook writer
        write_result(course, job.assignment, job.job_id, report, job.notebook)

    results = engine.grade_batch(jobs, course=course, cfg=cfg, workers=a.workers, device=a.device,
                                 extra_args=extra, force=a.force, progress=not a.no_progress, on_result=record)
    if a.json_dir:
        out = Path(a.json_dir)
        out.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            (out / f"{job.job_id}.json").write_text(json.dumps(results[job.job_id], indent=1))
    bad = _summary(results)
    if bad:
        print(f"{bad} submission(s) not graded: run `make grade` again to retry them", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
