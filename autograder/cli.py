"""Command line of the grading engine: ``python -m autograder <command>``.

    grade ASSIGNMENT        grade submitted/<student>/ASSIGNMENT/ASSIGNMENT.ipynb of every
                            (or --student) student, write the gradebook and autograded/
    files ASSIGNMENT NB...  grade notebooks, write one JSON report each (no gradebook)
    limits                  print the limits in effect and which isolation holds here

Options: --workers N (default: cores, or visible GPUs with --device cuda), --device cpu|cuda,
--course DIR (default: this repository), --force (ignore cached results),
--config FILE (default: autograder/config.toml), --tests-csv FILE (one row per hidden test,
with its cause), --no-canary (skip grading the instructor's solution first),
--cluster local|ray (default local; ray grades on Ray actors, see autograder/README.md),
--address auto|ray://HOST:PORT (the Ray cluster; default RAY_ADDRESS, or a new local instance).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from . import engine
from .course import Course
from .sandbox.protocol import CAUSES


def _common(p):
    p.add_argument("--course", default=None, help="course directory (holds nbgrader_config.py)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--config", default=None)
    p.add_argument("--force", action="store_true", help="regrade even when a cached result exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-canary", action="store_true", help="do not grade the instructor's solution first")
    p.add_argument("--allow-weak-isolation", action="store_true",
                   help="grade even where the sandbox's isolation does not fully hold (a warning goes in every report)")
    p.add_argument("--json-dir", default=None, help="write each report here as <id>.json")
    p.add_argument("--tests-csv", default=None, help="write one row per hidden test, with its cause")
    p.add_argument("-k", dest="select", default=None, help="only hidden tests matching this pytest -k expression")
    _cluster(p)


def _cluster(p):
    p.add_argument("--cluster", choices=["local", "ray"], default="local",
                   help="grade on this machine (local) or on a Ray cluster (ray)")
    p.add_argument("--address", default=None,
                   help="with --cluster ray: auto, or ray://HOST:PORT (default: RAY_ADDRESS, else a local instance)")


def _summary(results: dict) -> int:
    bad = 0
    for job_id, rep in sorted(results.items()):
        if rep.get("status") != "graded":
            bad += 1
            first = rep.get("error", "").splitlines()[0] if rep.get("error") else ""
            print(f"{job_id:30s} NOT GRADED  {first}")
            continue
        total = sum(rep["scores"].values())
        full = sum(rep["max_scores"].values())
        flag = " (cached)" if rep.get("cached") else ""
        print(f"{job_id:30s} {total:7.2f} / {full:g}{flag}")
    return bad


def _write_outputs(a, results: dict) -> None:
    if a.json_dir:
        out = Path(a.json_dir)
        out.mkdir(parents=True, exist_ok=True)
        for job_id, rep in results.items():
            (out / f"{job_id}.json").write_text(json.dumps(rep, indent=1, ensure_ascii=False))
    if a.tests_csv:
        with open(a.tests_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "test", "grade_id", "outcome", "cause", "cause_in_words", "reason"])
            for job_id, rep in sorted(results.items()):
                if rep.get("status") != "graded":
                    w.writerow([job_id, "", "", "not graded", "not_graded", CAUSES["not_graded"], rep.get("error", "")[:300]])
                    continue
                for t in rep["tests"]:
                    cause = t.get("cause", "")
                    w.writerow([job_id, t["name"], t["grade_id"], t["outcome"], cause, CAUSES.get(cause, ""),
                                t.get("reason", "")])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autograder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade collected submissions into the gradebook")
    g.add_argument("assignment")
    g.add_argument("--student", action="append", default=None)
    _common(g)
    f = sub.add_parser("files", help="grade notebooks, JSON reports only")
    f.add_argument("assignment")
    f.add_argument("notebooks", nargs="+")
    _common(f)
    col = sub.add_parser("collect", help="collect an LMS zip into submitted/ (see autograder/collect.py)")
    col.add_argument("assignment")
    col.add_argument("archive")
    col.add_argument("--course", default=None)
    col.add_argument("--regexp", default=None)
    lim = sub.add_parser("limits", help="print the limits and the isolation that holds here")
    lim.add_argument("--config", default=None)
    lim.add_argument("--course", default=None)
    lim.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    _cluster(lim)
    a = ap.parse_args(argv)
    if a.cmd != "collect" and a.address and a.cluster != "ray":
        raise SystemExit("--address needs --cluster ray")

    if a.cmd == "collect":
        from . import collect

        return collect.main([a.assignment, a.archive, *(["--course", a.course] if a.course else []),
                             *(["--regexp", a.regexp] if a.regexp else [])])
    try:
        cfg = engine.load_config(a.config)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    course = Course(a.course) if a.course else Course()
    if a.cmd == "limits":
        print(json.dumps(cfg, indent=1))
        if a.cluster == "ray":
            from .engine.cluster import probe_nodes

            for node in probe_nodes(cfg, course, a.address, a.device):
                print("isolation on node", json.dumps(node))
            return 0
        print("isolation on this machine:", json.dumps(engine.probe(cfg, course)))
        return 0
    try:
        course.check_assignment(a.assignment)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    extra = ["-k", a.select] if a.select else []
    on_result, writer = None, None
    if a.cmd == "files":
        jobs = [engine.Job(a.assignment, str(Path(nb).resolve()), Path(nb).stem) for nb in a.notebooks]
        if len({j.job_id for j in jobs}) != len(jobs):
            raise SystemExit("notebook file names must be unique (a report is named after each)")
        if not a.json_dir:
            raise SystemExit("files: --json-dir DIR is required (a report is written per notebook)")
    else:
        from .gradebook import GradebookWriter

        students = a.student or course.students(a.assignment)
        if not students:
            raise SystemExit(f"no submissions of {a.assignment} under {course.submitted_dir} "
                             f"(run `make collect` first)")
        jobs = [engine.Job(a.assignment, str(course.submitted(s, a.assignment)), s) for s in students]

        writer = GradebookWriter(course)  # one connection for the batch

        def on_result(job, report):  # runs in this process only: one gradebook writer
            writer.write(job.assignment, job.job_id, report, job.notebook)

    try:
        results = engine.grade_batch(jobs, course=course, cfg=cfg, workers=a.workers, device=a.device,
                                     extra_args=extra, force=a.force, progress=not a.no_progress,
                                     on_result=on_result, canary=not a.no_canary,
                                     allow_weak_isolation=a.allow_weak_isolation, cluster=a.cluster,
                                     address=a.address)
    except (engine.CanaryFailed, engine.WeakIsolation, engine.NoWorkers) as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 3
    finally:
        if writer is not None:
            writer.close()
    _write_outputs(a, results)
    bad = _summary(results)
    if bad:
        print(f"{bad} submission(s) not graded: run the same command again to retry them", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
