"""Grading on a Ray cluster: one actor per worker slot, each owning a sandbox on its node.

This module is imported only for ``--cluster ray``; the local back end never imports Ray.

What travels, and which way:

* the autograder's code, as a Ray runtime environment (``py_modules``), once per
  job, without its hidden tests;
* the *grader bundle* (hidden tests, source notebooks, the course package),
  as one object in Ray's object store, once per batch; the settings go with the
  actors' constructor;
* each submission as bytes, to one actor; its report comes back as a JSON
  string, which this process (the driver) parses and validates as data. Nothing
  a student wrote is unpickled here.

The driver is the only writer of the results store, the logs and the gradebook,
and computes every cache key itself, so keys and regrade semantics are those of
the local back end. An actor or node that dies mid-submission is an
infrastructure fault: the submission is retried on another actor at most
``retries`` times and is otherwise "not graded", never a score.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from .. import notebook as nbmod
from ..course import Course
from ..sandbox.protocol import InfrastructureError
from .batch import CANARY, Job, NoWorkers, Scheduler, Slot, WeakIsolation, _prewarm_harness, _safe
from .sandbox import Sandbox
from .store import valid_report

AUTOGRADER = Path(__file__).resolve().parent.parent
#: Largest report (JSON) the driver accepts from an actor, and the longest log tail it keeps.
MAX_REPLY_BYTES = 16 << 20
LOG_TAIL = 20000


# ---------------------------------------------------------------------------
# The grader bundle
# ---------------------------------------------------------------------------


def make_bundle(course: Course, assignments) -> bytes:
    """A gzipped tar of what grading ``assignments`` needs besides the autograder's code: their source
    notebooks and hidden tests (with the suite's shared helpers) and the course package, each at its
    place relative to the course directory, so the unpacked bundle is a :class:`Course` of its own."""
    files: list[Path] = []
    for a in sorted(set(assignments)):
        files += [course.source(a), course.tests(a)]
    if course.hidden_tests_dir.is_dir():
        # conftest.py and helpers; never another assignment's suite
        files += sorted(p for p in course.hidden_tests_dir.glob("*.py") if not p.name.startswith("test_"))
    if course.package.is_dir():
        files += sorted(p for p in course.package.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(str(path.resolve().relative_to(course.root)))
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same bytes for the same files
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack_bundle(data: bytes, digest: str, into: Path) -> Course:
    """Check the bundle against the driver's digest and unpack it as a course directory."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise InfrastructureError("the grader bundle arrived damaged (its SHA-256 differs from the driver's)")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return Course(into)


def runtime_env() -> dict:
    """The autograder's code for every actor, without the hidden tests (those travel in the bundle)."""
    return {"py_modules": [str(AUTOGRADER)], "excludes": ["/tests/", "__pycache__/", "*.pyc"]}


# ---------------------------------------------------------------------------
# The actor: one per worker slot, on its node
# ---------------------------------------------------------------------------


class GradingWorker:
    """Owns one sandbox (fork server and runner uid) on its node and grades one submission at a time."""

    def __init__(self, bundle: bytes, digest: str, cfg: dict, device: str, index: int, extra_args: list):
        self.home = Path(tempfile.mkdtemp(prefix="agr-node-"))
        self.digest, self.cfg, self.device, self.extra_args = digest, cfg, device, list(extra_args)
        self.course = unpack_bundle(bundle, digest, self.home / "course")
        if self.course.package.is_dir():
            sys.path.insert(0, str(self.course.root))  # hidden tests import the shipped course package
        # Ray chose this actor's GPU through CUDA_VISIBLE_DEVICES; the sandbox passes that set on unchanged.
        self.slot = Slot(index, Sandbox(cfg, self.course, slot=index, device=device))
        self.slot.sandbox.launch()
        # Meanwhile warm this process (torch, pytest, the preloaded modules): every forked harness starts warm.
        _prewarm_harness(cfg["sandbox"]["preload"])
        self.slot.sandbox.wait_ready()

    def describe(self) -> str:
        """This node's identity, its isolation and the limits in effect, as JSON."""
        import torch

        sb = self.slot.sandbox
        ctx = ray.get_runtime_context()
        return json.dumps({
            "node_id": ctx.get_node_id(), "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(), "missing": sb.isolation_problems(), "caps": sb.caps, "limits": self.cfg["limits"],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "bundle": self.digest,
            "autograder": str(AUTOGRADER), "hidden_tests_in_code": (AUTOGRADER / "tests").exists(), "python": sys.version.split()[0],
            "torch": torch.__version__, "ray": ray.__version__})

    def grade(self, assignment: str, job_id: str, data: bytes) -> str:
        """Grade one submission given as bytes; return {"report": ..., "log": tail} as JSON."""
        subs = self.home / "submissions"
        subs.mkdir(exist_ok=True)
        nb = subs / f"{_safe(job_id)}.ipynb"
        nb.write_bytes(data)
        log = self.home / "harness.log"
        try:
            report = self.slot.grade(Job(assignment, str(nb), job_id), self.cfg, self.course,
                                     self.extra_args, str(log))
        finally:
            nb.unlink(missing_ok=True)
        try:
            tail = log.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            tail = ""
        return json.dumps({"report": report, "log": tail})

    def close(self) -> None:
        self.slot.kill()
        self.slot.sandbox.stop()
        shutil.rmtree(self.home, ignore_errors=True)


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------


@dataclass
class Worker:
    """The driver's view of one actor."""

    index: int
    handle: Any
    ready_ref: Any = None  # describe(), until the actor is up
    since: float = 0.0
    node: str = ""
    job: Job | None = None
    ref: Any = None  # the grade() call in flight
    deadline: float = 0.0

    @property
    def up(self) -> bool:
        return self.ready_ref is None


def node_name(info: dict) -> str:
    return f"{info.get('ip', '?')}/{str(info.get('node_id', ''))[:6]}"


def connect(address: str | None) -> bool:
    """Connect to Ray (``auto``, ``ray://host:port``, ``RAY_ADDRESS``, or a new local instance);
    True when this call started the connection."""
    if ray.is_initialized():
        shipped = ray.get_runtime_context().runtime_env.get("py_modules") or []
        if not shipped:
            raise NoWorkers("this process is connected to Ray without the autograder's runtime environment; "
                            "connect with autograder.engine.cluster.connect(address), or pass "
                            "runtime_env=autograder.engine.cluster.runtime_env() to ray.init")
        return False
    kwargs = dict(address=address, log_to_driver=False, logging_level="WARNING", runtime_env=runtime_env())
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a local instance just for this batch
    # Ray puts the driver's working directory on every worker's module path; from the root directory
    # (which holds no module, and exists on every node, also for a local instance's processes started
    # from here) the workers import the autograder shipped in the runtime environment, never a checkout
    # that happens to sit at the same path on their node.
    cwd = os.getcwd()
    os.chdir("/")
    try:
        ray.init(**kwargs)
    finally:
        os.chdir(cwd)
    return True


class RayScheduler(Scheduler):
    """The batch scheduler on Ray actors (see the module docstring); caching, canaries, retries and the
    one-writer rule are the local scheduler's own."""

    def __init__(self, course: Course, cfg: dict, *, address: str | None = None, on_dispatch=None, **kwargs):
        requested = kwargs.pop("workers", None)
        super().__init__(course, cfg, workers=1 << 30, **kwargs)
        self.requested, self.address, self.on_dispatch = requested, address, on_dispatch
        self.actors: list[Worker] = []
        self.nodes: dict[str, dict] = {}  # node name -> what its first actor reported
        self.refused: dict[str, str] = {}  # node name -> why it was refused
        self.started_ray = False
        self.spares = 0
        self.start_seconds = float(cfg["engine"]["worker_start_seconds"])
        self.points: dict[str, dict] = {}
        self.errors: list[str] = []  # why actors did not start, for the message when none is left

    # -- starting ----------------------------------------------------------------------
    def _start_workers(self, n: int, assignments: list[str]) -> None:
        self.started_ray = connect(self.address)
        resource = "GPU" if self.device == "cuda" else "CPU"
        total = int(ray.cluster_resources().get(resource, 0))
        if total < 1:
            raise NoWorkers(f"the Ray cluster has no {resource} resources to grade on")
        n = min(n, self.requested or total)
        for a in set(assignments):
            self.points[a] = {c.grade_id: c.points for c in nbmod.grade_cells(nbmod.read_notebook(self.course.source(a)))
                              if c.kind == "autograded"}
        bundle = make_bundle(self.course, assignments)
        self.digest = hashlib.sha256(bundle).hexdigest()
        self.bundle_ref = ray.put(bundle)  # shipped once per node through the object store
        if self.device == "cuda":
            self.options = dict(num_gpus=1, num_cpus=0)
        else:
            self.options = dict(num_cpus=1)
        self.options.update(max_restarts=0, max_concurrency=1)
        self.remote_cls = ray.remote(GradingWorker)
        self.spares = n * (self.retries + 1)  # replacements for actors that die
        for i in range(n):
            self._spawn(i)
        # Grading starts as soon as one actor is up; the others join as they come (and a node's
        # isolation is checked when its first actor reports).
        deadline = time.monotonic() + self.start_seconds
        while not any(w.up for w in self.actors) and self.actors and time.monotonic() < deadline:
            self._poll_starting(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
        if not any(w.up for w in self.actors):
            for w in list(self.actors):
                self._drop(w, replace=False)
            if self.refused:
                raise WeakIsolation("every node was refused: " + "; ".join(self.refused.values()))
            raise NoWorkers(f"no grading actor started on the Ray cluster within {self.start_seconds:g} s "
                            f"({'; '.join(self.errors[-3:]) if self.errors else 'no resources free'})")

    def _spawn(self, index: int) -> None:
        handle = self.remote_cls.options(**self.options).remote(
            self.bundle_ref, self.digest, self.cfg, self.device, index, self.extra_args)
        self.actors.append(Worker(index, handle, ready_ref=handle.describe.remote(), since=time.monotonic()))

    def _poll_starting(self, timeout: float) -> None:
        starting = {w.ready_ref: w for w in self.actors if not w.up}
        if not starting:
            return
        done, _ = ray.wait(list(starting), num_returns=1, timeout=timeout)
        for ref in done:
            self._adopt(starting[ref])

    def _adopt(self, w: Worker) -> None:
        """An actor answered describe() (or failed to start): take it into the pool or drop it."""
        try:
            info = json.loads(ray.get(w.ready_ref))
        except (ray.exceptions.RayError, ValueError, TypeError) as exc:
            self.errors.append(f"an actor did not start: {_first_line(exc)}")
            self._drop(w, replace=True)
            return
        w.ready_ref, w.node = None, node_name(info)
        if info.get("bundle") != self.digest:
            self.errors.append(f"{w.node} unpacked a different bundle")
            self._drop(w, replace=False)
            return
        if w.node not in self.nodes:  # a node's isolation is checked once, when its first actor reports
            self.nodes[w.node] = info
            self._report_node(w.node, info)
            try:
                self._check_isolation(list(info.get("missing") or []), where=f"node {w.node} ({info.get('host')})")
            except WeakIsolation as exc:
                self.refused[w.node] = str(exc)
                print(f"refused node {w.node}: {exc}", file=sys.stderr)
        if w.node in self.refused:
            self._drop(w, replace=False)

    def _report_node(self, node: str, info: dict) -> None:
        per = info.get("caps", {}).get("per_runner", {})
        held = [k for k in ("net", "mounts", "userns") if info.get("caps", {}).get(k)]
        held += [k for k in ("pid", "proc", "ipc", "tmp", "memory", "pids") if per.get(k)]
        lim = info.get("limits", {})
        gpu = f", CUDA_VISIBLE_DEVICES={info['cuda_visible_devices']}" if self.device == "cuda" else ""
        print(f"node {node} ({info.get('host')}, python {info.get('python')}, torch {info.get('torch')}{gpu}): "
              f"isolation {'+'.join(held) or 'none'}; missing: {'; '.join(info.get('missing') or []) or 'nothing'}; "
              f"limits: {lim.get('memory_mb')} MiB, {lim.get('submission_seconds')} s per submission",
              file=sys.stderr)

    def _drop(self, w: Worker, replace: bool) -> None:
        try:
            ray.kill(w.handle, no_restart=True)
        except Exception:  # already gone
            pass
        if w in self.actors:
            self.actors.remove(w)
        if replace and self.spares > 0:
            self.spares -= 1
            self._spawn(max([x.index for x in self.actors] + [w.index]) + 1)

    # -- running -------------------------------------------------------------------------
    def _loop(self) -> None:
        while self.queue or any(w.job for w in self.actors):
            for w in self.actors:
                if w.up and w.job is None and self.queue:
                    self._dispatch_to(w, self._pick(w))
            busy = {w.ref: w for w in self.actors if w.job is not None}
            starting = {w.ready_ref: w for w in self.actors if not w.up}
            if not busy and not starting:
                self._give_up("no grading actor is left on the Ray cluster")
                return
            done, _ = ray.wait([*busy, *starting], num_returns=1, timeout=1.0)
            for ref in done:
                if ref in busy:
                    self._collect_from(busy[ref])
                else:
                    self._adopt(starting[ref])
            now = time.monotonic()
            for w in list(self.actors):
                if w.job is not None and now > w.deadline:
                    job = w.job
                    w.job = None
                    self._drop(w, replace=True)
                    self._finish(job, _not_graded(f"the actor on node {w.node} did not report in time"), node=w.node)
                elif not w.up and now - w.since > self.start_seconds:
                    self.errors.append(f"an actor did not start within {self.start_seconds:g} s")
                    self._drop(w, replace=False)

    def _pick(self, w: Worker) -> Job:
        """The next job, preferring one that has not failed on this actor's node before."""
        for i, job in enumerate(self.queue):
            if w.node not in job.nodes:
                return self.queue.pop(i)
        return self.queue.pop(0)

    def _dispatch_to(self, w: Worker, job: Job) -> None:
        job.attempts += 1
        job.nodes.append(w.node)
        try:
            data = _read_submission(job.notebook)
        except OSError as exc:  # the driver cannot read its own copy: nothing to charge
            self._finish(job, _not_graded(f"the driver could not read {job.notebook}: {exc}"))
            return
        w.job, w.ref = job, w.handle.grade.remote(job.assignment, job.job_id, data)
        lim = self.cfg["limits"]
        w.deadline = time.monotonic() + float(lim["submission_seconds"]) + \
            2 * float(self.cfg["engine"]["harness_grace_seconds"])
        if self.on_dispatch is not None:
            self.on_dispatch(job, w.node)

    def _collect_from(self, w: Worker) -> None:
        job, ref = w.job, w.ref
        w.job = w.ref = None
        try:
            payload = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the actor, its worker process or its node died
            self._drop(w, replace=True)
            self._finish(job, _not_graded(f"the grading actor on node {w.node} failed while grading "
                                          f"({type(exc).__name__}: {_first_line(exc)}); an infrastructure "
                                          f"fault, not the submission's"), node=w.node)
            return
        report, log = self._validate(job, payload)
        if log:
            (self.logs_dir / f"{job.assignment}-{_safe(job.job_id)}.log").write_text(log)
        if report.get("status") == "graded":
            report["node"] = w.node
        self._finish(job, report, node=w.node)

    def _validate(self, job: Job, payload) -> tuple[dict, str]:
        """A report from an actor, checked as data against what the driver knows of the assignment."""
        if type(payload) is not str or len(payload) > MAX_REPLY_BYTES:
            return _not_graded("an actor returned something that is not a report"), ""
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return _not_graded("an actor returned a report that is not valid JSON"), ""
        if type(data) is not dict or type(data.get("report")) is not dict:
            return _not_graded("an actor returned a report of the wrong shape"), ""
        report, log = data["report"], data.get("log") if type(data.get("log")) is str else ""
        if report.get("status") != "graded":
            return _not_graded(str(report.get("error", ""))[:3000] or "not graded"), log
        points = self.points.get(job.assignment, {})
        if not valid_report(report) or report.get("assignment") != job.assignment \
                or report["max_scores"] != points \
                or any(not 0 <= report["scores"][g] <= points[g] for g in points):
            return _not_graded("an actor returned a graded report that does not match the assignment's "
                               "grade cells"), log
        return report, log

    def _give_up(self, why: str) -> None:
        for job in self.queue:
            if job.job_id != CANARY:
                self.progress.count("not graded", finished=True)
            self._deliver(job, {**_not_graded(f"{why}: {'; '.join(self.errors[-3:])}"),
                                "attempts": job.attempts, "scores": {}, "max_scores": {}, "tests": []})
        self.queue = []

    def _stop_workers(self) -> None:
        closing = []
        for w in self.actors:
            if w.up and w.job is None:
                closing.append(w.handle.close.remote())
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=30)
        for w in self.actors:
            try:
                ray.kill(w.handle, no_restart=True)
            except Exception:
                pass
        self.actors = []
        if self.started_ray:
            ray.shutdown()


def _not_graded(error: str) -> dict:
    return {"status": "not graded", "cause": "not_graded", "error": error}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _read_submission(path: str) -> bytes:
    """The submission's bytes; a file over the reader's size cap travels cut, so the actor reports it."""
    with open(path, "rb") as f:
        return f.read(nbmod.MAX_NOTEBOOK_BYTES + 1)


def probe_nodes(cfg: dict, course: Course, address: str | None = None, device: str = "cpu") -> list[dict]:
    """``python -m autograder limits --cluster ray``: one actor on every alive node reports its isolation."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = connect(address)
    try:
        bundle = make_bundle(course, [])
        digest, ref = hashlib.sha256(bundle).hexdigest(), ray.put(bundle)
        cls = ray.remote(GradingWorker)
        handles = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            handles.append(cls.options(num_cpus=0, max_restarts=0,
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                           .remote(ref, digest, cfg, device, len(handles), []))
        reports = []
        for h in handles:
            try:
                reports.append(json.loads(ray.get(h.describe.remote(), timeout=float(cfg["engine"]["worker_start_seconds"]))))
                ray.get(h.close.remote(), timeout=30)
            except (ray.exceptions.RayError, ValueError) as exc:
                reports.append({"error": _first_line(exc)})
            ray.kill(h, no_restart=True)
        return reports
    finally:
        if started:
            ray.shutdown()
