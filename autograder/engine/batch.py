"""Batches: a scheduler that grades many submissions on parallel worker slots.

Each :class:`Slot` owns a sandbox (a warm fork server and its runner uid).
For each submission the scheduler forks a *harness* process from this one
(which has imported pytest and torch once, so a harness starts warm); the
harness runs :func:`autograder.grading.grade` with a ``RemoteSession`` on the
slot's sandbox and writes its report, as JSON, to a pipe. This process is the
only writer of the results store and of the gradebook (``on_result``).

Failure policy: a fault that is not the student's (a harness that dies or
errs, a sandbox that cannot start, a GPU that vanished) is retried on a fresh
sandbox at most ``retries`` times and otherwise reported "not graded"; it
never becomes a score and is never cached.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import grading
from .. import notebook as nbmod
from ..course import Course
from ..sandbox.protocol import InfrastructureError
from .remote import RemoteSession
from .sandbox import Sandbox
from .store import ResultsStore

AUTOGRADER = Path(__file__).resolve().parent.parent
CANARY = "__canary__"


@dataclass
class Job:
    assignment: str
    notebook: str
    job_id: str  # the student id, or a name for the report
    attempts: int = 0
    key: str = ""
    errors: list = field(default_factory=list)
    nodes: list = field(default_factory=list)  # where it was tried (cluster back end)


@dataclass
class Slot:
    """One worker: a sandbox, and the harness process grading a job on it (if any).

    The local scheduler drives many slots at once through ``begin``/``feed``/``finish``;
    a cluster worker drives its one slot with ``grade``.
    """

    index: int
    sandbox: Sandbox
    job: Job | None = None
    pid: int | None = None
    rfd: int | None = None
    deadline: float = 0.0
    chunks: list = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.job is not None

    def ready(self) -> None:
        """Before a job: a live fork server and no leftovers of the last one (InfrastructureError if not)."""
        if not self.sandbox.alive():
            self.sandbox.stop()
            self.sandbox.start()
        self.sandbox.check_clean()

    def begin(self, job: Job, cfg: dict, course: Course, extra_args, log_path: str, inject_fault=None) -> None:
        """Fork a harness that grades ``job`` on this slot's sandbox; its report arrives on ``rfd``."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _harness_child(job, self, cfg, course, extra_args, w, log_path, inject_fault)
        os.close(w)
        grace = float(cfg["limits"]["submission_seconds"]) + float(cfg["engine"]["harness_grace_seconds"])
        self.job, self.pid, self.rfd = job, pid, r
        self.deadline, self.chunks = time.monotonic() + grace, []

    def feed(self) -> bool:
        """Read what the harness wrote; False once it has closed its end."""
        data = os.read(self.rfd, 1 << 20)
        if data:
            self.chunks.append(data)
        return bool(data)

    def kill(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def finish(self, forced: dict | None = None) -> dict:
        """Reap the harness and return its report (``forced`` instead, when given). A slot whose
        submission was not graded gets a fresh sandbox before its next job."""
        pid = self.pid
        os.close(self.rfd)
        _, status = os.waitpid(pid, 0)
        report = forced
        if report is None:
            try:
                report = json.loads(b"".join(self.chunks))
            except ValueError:
                report = {"status": "not graded", "cause": "not_graded",
                          "error": f"the harness process died (wait status {status}) without a report"}
            if status != 0 and report.get("status") == "graded":
                report = {"status": "not graded", "cause": "not_graded",
                          "error": f"the harness process exited with status {status}"}
        self.job = self.pid = self.rfd = None
        self.chunks = []
        try:
            self.sandbox.check_clean()
        except InfrastructureError as exc:
            report = {"status": "not graded", "cause": "not_graded", "error": str(exc)}
        if report.get("status") != "graded":
            self.sandbox.stop()  # restart this slot's sandbox before its next job
            try:
                self.sandbox.start()
            except InfrastructureError:
                pass
        return report

    def grade(self, job: Job, cfg: dict, course: Course, extra_args, log_path: str) -> dict:
        """Grade one job to the end (blocking) and return its report."""
        try:
            self.ready()
        except InfrastructureError as exc:
            return {"status": "not graded", "cause": "not_graded", "error": str(exc)}
        self.begin(job, cfg, course, extra_args, log_path)
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return self.finish({"status": "not graded", "cause": "not_graded",
                                    "error": "the harness process did not finish in time"})
            if select.select([self.rfd], [], [], min(left, 5.0))[0] and not self.feed():
                return self.finish()


def grader_version(course: Course, assignment: str) -> str:
    """A hash of everything that decides a score: the grader's code, the hidden
    tests, the instructor's source (points) and the course package."""
    h = hashlib.sha256()
    files = sorted(p for p in AUTOGRADER.rglob("*") if p.suffix in (".py", ".ini", ".toml")
                   and "tests" not in p.relative_to(AUTOGRADER).parts[:1])
    files += [course.hidden_tests_dir / "conftest.py", course.tests(assignment), course.source(assignment)]
    if course.package.is_dir():
        files += sorted(course.package.rglob("*.py"))
    for p in files:
        if p.exists():
            h.update(str(p.name).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def submission_hash(source_nb, notebook_path) -> str:
    """What identifies a submission for the cache: its rebuilt program, or its bytes if unreadable."""
    h = hashlib.sha256()
    program, _ = grading.read_program(source_nb, notebook_path)
    if program is None:
        try:
            raw = Path(notebook_path).read_bytes()
        except OSError:
            raw = b""
        h.update(b"unreadable\0" + raw)
    else:
        h.update(json.dumps([program.cells, program.answer_ids, sorted(program.problems.items())]).encode())
    return h.hexdigest()


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set (Slurm, Ray, cgroups), else
    every GPU nvidia-smi lists. Entries are what ``CUDA_VISIBLE_DEVICES`` accepts."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
            return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return []


def default_workers(device: str = "cpu") -> int:
    """One worker per core on the CPU; one per visible GPU on CUDA."""
    if device == "cuda":
        return max(1, len(visible_gpus()))
    return max(1, len(os.sched_getaffinity(0)))


def _prewarm_harness(preload=()) -> None:
    """Import what every harness needs before forking them, so each forked
    harness starts warm (torch's first deterministic-algorithms call alone
    takes seconds; jieba's dictionary, which hidden tests use for references,
    another second)."""
    import pytest  # noqa: F401
    import torch

    from ..sandbox.protocol import preload as preload_modules

    preload_modules(preload)

    if torch.cuda.is_initialized():
        raise RuntimeError("this process has initialised CUDA, so it cannot fork grading harnesses "
                           "(CUDA cannot be re-initialised in a forked child); grade from a fresh process, "
                           "e.g. `python -m autograder grade ...`")
    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(), warn_only=True)
    # Everything allocated so far lives as long as the engine: keep it out of
    # the garbage collector, so the full collections pytest runs in each
    # forked harness do not walk torch's whole heap.
    gc.freeze()


def _harness_args(device: str, extra_args) -> list[str]:
    """pytest arguments: on the CPU the gpu-marked cases are deselected, never run against a runner without CUDA."""
    args = list(extra_args)
    if device != "cuda":
        args += ["-m", "not gpu"]
    return args


def _die_with_parent() -> None:
    """SIGKILL this process when the one that forked it dies (an engine or a cluster worker killed
    from outside leaves no harness grading on for nobody)."""
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _harness_child(job: Job, slot: Slot, cfg: dict, course: Course, extra_args, wfd: int, log_path: str,
                   inject_fault) -> None:
    """Body of the forked harness process: grade, write the report, exit."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent()
        # One thread, before any tensor operation: an OpenMP pool that the parent used before forking
        # does not exist in this child, and the first parallel region would wait for it forever.
        # (It also keeps a harness to its own core, as each runner is.)
        import torch

        torch.set_num_threads(1)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sb = slot.sandbox
        if os.geteuid() != 0:
            # Runners share our uid outside their user namespace: make this process non-dumpable,
            # so that none of its /proc files (root, environ, mem) can be opened by them.
            import ctypes

            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
        # The harness sees the devices its runners see: none on the CPU, the slot's GPU on CUDA.
        os.environ["CUDA_VISIBLE_DEVICES"] = sb.env().get("CUDA_VISIBLE_DEVICES", "")
        if sb.device != "cuda":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if inject_fault is not None and job.job_id != CANARY:
            inject_fault(job)
        if sb.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InfrastructureError("grading on CUDA, but no GPU is available to this worker")
        deadline = time.monotonic() + float(cfg["limits"]["submission_seconds"])
        report = grading.grade(course, job.assignment, job.notebook,
                               lambda program: RemoteSession(sb, program, cfg, deadline),
                               _harness_args(sb.device, extra_args), test_seconds=cfg["limits"]["test_seconds"])
        data = asdict(report)
    except BaseException as exc:  # everything here is the grader's fault, never the student's
        data = {"assignment": job.assignment, "status": "not graded", "cause": "not_graded",
                "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"}
    encoded = json.dumps(data).encode()
    view = memoryview(encoded)
    while view:
        view = view[os.write(wfd, view):]
    os._exit(0)


class Progress:
    """Counts graded, retried and not-graded submissions, in all and per node; draws a bar when asked."""

    KINDS = ("graded", "retried", "not graded")

    def __init__(self, total: int, done: int, show: bool):
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.per_node: dict[str, dict[str, int]] = {}
        self.bar = None
        if show:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: this process forks
            self.bar = tqdm(total=total, initial=done, unit="sub", file=sys.stderr)

    def count(self, what: str, finished: bool, node: str | None = None) -> None:
        self.counts[what] += 1
        if node is not None:
            self.per_node.setdefault(node, dict.fromkeys(self.KINDS, 0))[what] += 1
        if self.bar is not None:
            post = {"graded": self.counts["graded"], "retried": self.counts["retried"],
                    "not_graded": self.counts["not graded"]}
            if self.per_node:  # graded/retried/not graded on each node
                post["nodes"] = " ".join(f"{n}:{c['graded']}/{c['retried']}/{c['not graded']}"
                                         for n, c in sorted(self.per_node.items()))
            self.bar.set_postfix(post)
            if finished:
                self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.per_node and self.bar is not None:
            for node, c in sorted(self.per_node.items()):
                print(f"node {node}: {c['graded']} graded, {c['retried']} retried, {c['not graded']} not graded",
                      file=sys.stderr)


class WeakIsolation(RuntimeError):
    """The sandbox's guarantees do not hold on this machine, and weak isolation was not allowed."""


class NoWorkers(RuntimeError):
    """No grading worker could be started (or kept) on the cluster."""


class CanaryFailed(RuntimeError):
    """The instructor's own solution does not score full marks through the engine: the batch stops."""


class Scheduler:
    """Grades jobs on parallel slots; the single writer of results (see the module docstring)."""

    def __init__(self, course: Course, cfg: dict, *, device: str = "cpu", workers: int | None = None,
                 extra_args=(), force: bool = False, progress: bool = True, on_result=None, inject_fault=None,
                 logs_dir: Path | None = None, canary: bool = True, allow_weak_isolation: bool = False):
        self.course, self.cfg, self.device = course, cfg, device
        self.workers = workers or default_workers(device)
        self.extra_args, self.force, self.show = list(extra_args), force, progress
        self.on_result, self.inject_fault, self.canary = on_result, inject_fault, canary
        self.allow_weak = allow_weak_isolation
        self.warning = ""
        self.store = ResultsStore(course.results_dir(cfg))
        self.logs_dir = Path(logs_dir) if logs_dir else course.results_dir(cfg) / "logs"
        self.retries = int(cfg["engine"]["retries"])
        self.results: dict[str, dict] = {}
        self.queue: list[Job] = []
        self.slots: list[Slot] = []
        self.progress: Progress | None = None

    # -- preparing: the cache ------------------------------------------------------
    def _prepare(self, jobs: list[Job]) -> list[Job]:
        versions, sources, pending = {}, {}, []
        for job in jobs:
            a = job.assignment
            if a not in versions:
                versions[a] = grader_version(self.course, a)
                sources[a] = nbmod.read_notebook(self.course.source(a))
            job.key = self.store.key(a, submission_hash(sources[a], job.notebook), versions[a], self.device,
                                     self.extra_args)
            cached = None if self.force else self.store.get(a, job.key)
            if cached is not None:
                self._deliver(job, dict(cached, cached=True))
            else:
                pending.append(job)
        return pending

    def _deliver(self, job: Job, report: dict) -> None:
        if self.warning:
            report["warning"] = self.warning
        if job.job_id == CANARY:
            self._check_canary(job, report)
            return
        self.results[job.job_id] = report
        if self.on_result:
            self.on_result(job, report)

    def _check_canary(self, job: Job, report: dict) -> None:
        if report.get("status") != "graded":
            raise CanaryFailed(f"the instructor's solution of {job.assignment} could not be graded through the "
                               f"engine, so no submission was graded: {report.get('error', '')[:1500]}")
        if report["scores"] != report["max_scores"]:
            lost = {g: f"{report['scores'][g]:g}/{m:g}" for g, m in report["max_scores"].items()
                    if report["scores"][g] != m}
            why = [f"{t['name']}: {t.get('reason', '')}" for t in report["tests"] if t["outcome"] != "passed"
                   and t["outcome"] != "skipped"][:5]
            raise CanaryFailed(f"the instructor's solution of {job.assignment} does not score full marks through "
                               f"the engine ({lost}), so grading would be wrong; nothing was graded. "
                               f"Failing tests: {why}")

    # -- running -----------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> dict[str, dict]:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        canaries = []
        if self.canary:
            for a in dict.fromkeys(j.assignment for j in jobs):
                canaries.append(Job(a, str(self.course.source(a)), CANARY))
        pending = self._prepare(canaries) + self._prepare(jobs)
        self.progress = Progress(len(jobs), len(jobs) - len([j for j in pending if j.job_id != CANARY]), self.show)
        try:
            if pending:
                self._start_workers(max(1, min(self.workers, len(pending))), [j.assignment for j in pending])
            # The canaries go first, alone: a batch whose solution does not score stops before any student.
            self.queue = [j for j in pending if j.job_id == CANARY]
            self._loop()
            self.queue = [j for j in pending if j.job_id != CANARY]
            self._loop()
        finally:
            self._stop_workers()
            self.progress.close()
        return self.results

    # -- the local back end: slots in this process -----------------------------------
    def _start_workers(self, n: int, assignments: list[str]) -> None:
        gpus = visible_gpus() if self.device == "cuda" else []
        share = -(-n // len(gpus)) if gpus else 1  # more workers than GPUs: each runner gets 1/share of one
        for i in range(n):
            gpu = gpus[i % len(gpus)] if gpus else None
            self.slots.append(Slot(i, Sandbox(self.cfg, self.course, slot=i, device=self.device, gpu=gpu,
                                              gpu_share=share)))
        for slot in self.slots:  # the fork servers warm up side by side, and beside this process
            slot.sandbox.launch()
        _prewarm_harness(self.cfg["sandbox"]["preload"])
        for slot in self.slots:
            slot.sandbox.wait_ready()
        if self.slots:
            self._check_isolation(self.slots[0].sandbox.isolation_problems())

    def _stop_workers(self) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                slot.kill()
                try:
                    os.waitpid(slot.pid, 0)
                except OSError:
                    pass
            slot.sandbox.stop()

    def _check_isolation(self, missing: list[str], where: str = "this machine") -> None:
        """Refuse (WeakIsolation) when a guarantee does not hold, unless weak isolation is allowed."""
        if not missing:
            return
        text = "; ".join(missing)
        if not self.allow_weak:
            raise WeakIsolation(
                f"{where} does not give the sandbox what grading needs: {text}. Grade as root in a "
                f"container (see autograder/README.md), or enable unprivileged user namespaces "
                f"(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone), or pass "
                f"--allow-weak-isolation to grade anyway with a warning in every report.")
        warning = f"graded with weak isolation: {text}" + ("" if where == "this machine" else f" ({where})")
        self.warning = f"{self.warning}; {warning}" if self.warning else warning
        print(f"WARNING: {warning}", file=sys.stderr)

    def _loop(self) -> None:
        while self.queue or any(s.busy for s in self.slots):
            for slot in self.slots:
                if not slot.busy and self.queue:
                    self._dispatch(slot, self.queue.pop(0))
            busy = {s.rfd: s for s in self.slots if s.busy}
            if not busy:
                continue
            ready, _, _ = select.select(list(busy), [], [], 1.0)
            now = time.monotonic()
            for rfd, slot in busy.items():
                if rfd in ready:
                    if not slot.feed():
                        self._finish(slot.job, slot.finish())
                elif now > slot.deadline:
                    slot.kill()
                    job = slot.job
                    self._finish(job, slot.finish({"status": "not graded", "cause": "not_graded",
                                                   "error": "the harness process did not finish in time"}))

    def _dispatch(self, slot: Slot, job: Job) -> None:
        job.attempts += 1
        try:
            slot.ready()
        except InfrastructureError as exc:
            self._finish(job, {"status": "not graded", "cause": "not_graded", "error": str(exc)})
            return
        slot.begin(job, self.cfg, self.course, self.extra_args, self.log_path(job), self.inject_fault)

    def log_path(self, job: Job) -> str:
        return str(self.logs_dir / f"{job.assignment}-{_safe(job.job_id)}.log")

    def _finish(self, job: Job, report: dict, node: str | None = None) -> None:
        """Record a graded report, or retry, or give up with "not graded"."""
        if report.get("status") == "graded":
            report["attempts"] = job.attempts
            self.store.put(job.assignment, job.key, report)
            if job.job_id != CANARY:
                self.progress.count("graded", finished=True, node=node)
            self._deliver(job, report)
            return
        job.errors.append(report.get("error", ""))
        self.store.log_failure(job.assignment, job.job_id, report.get("error", ""))
        if job.attempts <= self.retries:
            self.progress.count("retried", finished=False, node=node)
            self.queue.append(job)
            return
        if job.job_id != CANARY:
            self.progress.count("not graded", finished=True, node=node)
        self._deliver(job, {"assignment": job.assignment, "status": "not graded", "cause": "not_graded",
                            "attempts": job.attempts, "error": job.errors[-1][:3000], "scores": {},
                            "max_scores": {}, "tests": []})


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]


def grade_batch(jobs: list[Job], *, course=None, cfg: dict | None = None, workers: int | None = None,
                device: str = "cpu", extra_args=(), force: bool = False, progress: bool = True, on_result=None,
                inject_fault=None, logs_dir: Path | None = None, canary: bool = True,
                allow_weak_isolation: bool = False, cluster: str = "local", address: str | None = None,
                on_dispatch=None) -> dict[str, dict]:
    """Grade ``jobs`` on ``workers`` parallel slots; return job_id -> report (dict).

    ``on_result(job, report)`` is called in this process (one writer) as each
    submission finishes; ``inject_fault(job)`` runs in the harness process
    before grading (tests use it to simulate infrastructure faults).
    ``cluster="ray"`` grades on a Ray cluster (``address``: ``auto``, ``ray://host:port``,
    or None for ``RAY_ADDRESS`` or a local instance); see :mod:`.cluster`.
    """
    from .config import load_config

    course = course if isinstance(course, Course) else Course(course) if course is not None else Course()
    common = dict(device=device, workers=workers, extra_args=extra_args, force=force, progress=progress,
                  on_result=on_result, logs_dir=logs_dir, canary=canary, allow_weak_isolation=allow_weak_isolation)
    if cluster == "ray":
        from .cluster import RayScheduler  # Ray is imported only here

        return RayScheduler(course, cfg or load_config(), address=address, on_dispatch=on_dispatch,
                            **common).run(jobs)
    if cluster != "local":
        raise ValueError(f"unknown cluster back end {cluster!r} (local or ray)")
    return Scheduler(course, cfg or load_config(), inject_fault=inject_fault, **common).run(jobs)
