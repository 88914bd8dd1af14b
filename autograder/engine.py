"""The sandboxed grading engine.

Two kinds of process grade a submission:

* the **harness** (this module, in a process forked from the engine for each
  submission) rebuilds the program from the instructor's source, runs the
  hidden tests with pytest, computes references and scores. It never imports
  or executes student code;
* the **runner** (:mod:`autograder.runner`, a fresh interpreter started from a
  copy of the runner code outside the course) executes the student's program
  and answers data-only requests (:mod:`autograder.channel`).

:class:`RemoteSession` implements the :class:`autograder.api.Submission`
interface over the channel, so the same hidden tests run against the
in-process back end (development) and against the runner (grading).

Failure policy (fail closed): a runner that crashes, times out, runs out of
memory or breaks the protocol gives 0 for the test that was running (with the
reason), and a fresh runner is started for the next test. A fault of the
grading infrastructure (the harness dies or errors, the sandbox cannot start,
the GPU is gone) never becomes a score: the submission is retried a bounded
number of times and otherwise reported "not graded".
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import channel
from . import notebook as nbmod
from .api import Ref, Result, StudentError
from .grading import GradeReport, _all_zero, run_hidden_tests, score

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = HERE / "config.toml"
RUNNER_FILES = ("runner.py", "channel.py", "inprocess.py", "api.py", "notebook.py")
GRADER_FILES = ("api.py", "channel.py", "engine.py", "runner.py", "inprocess.py", "notebook.py", "grading.py",
                "pytest.ini", "tests/conftest.py")
SEED_SCHEME = "crc32(test name) per test, harness and runner"

DEFAULTS = {
    "limits": {"request_seconds": 60, "program_seconds": 120, "submission_seconds": 300, "cpu_seconds": 600, "memory_mb": 6144,
               "processes": 64, "output_mb": 8, "scratch_mb": 64, "open_files": 256, "reply_mb": 512},
    "sandbox": {"isolate": True, "uid_base": 61000, "uid_count": 1000, "threads": 1,
                "hide": ["/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/mnt", "/media", "/srv", "/opt",
                         "/run/user"],
                "preload": ["numpy", "jieba"],
                "visible_top_level": ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc",
                                      "/proc", "/sys", "/dev"]},
    "engine": {"retries": 2, "harness_grace_seconds": 120, "results_dir": ".grading"},
}


class InfrastructureError(RuntimeError):
    """The grading machinery failed; the submission is not graded (never scored)."""


def load_config(path: str | Path | None = None, **overrides) -> dict:
    """The defaults, updated from ``config.toml`` (or ``path``), then from ``overrides``
    given as ``section__key=value``."""
    cfg = json.loads(json.dumps(DEFAULTS))
    path = Path(path) if path else CONFIG
    if path.exists():
        with open(path, "rb") as f:
            user = tomllib.load(f)
        for section, values in user.items():
            if section not in cfg:
                raise ValueError(f"{path}: unknown section [{section}]")
            for key, value in values.items():
                if key not in cfg[section]:
                    raise ValueError(f"{path}: unknown key {key!r} in [{section}]")
                cfg[section][key] = value
    for name, value in overrides.items():
        section, key = name.split("__", 1)
        cfg[section][key] = value
    return cfg


def grader_version(course: Path, assignment: str) -> str:
    """A hash of everything that decides a score: the grader's code, the hidden
    tests and the instructor's source (points)."""
    h = hashlib.sha256()
    for rel in GRADER_FILES:
        p = course / "autograder" / rel
        if not p.exists():
            p = HERE / rel
        h.update(rel.encode() + b"\0" + p.read_bytes())
    h.update((course / "autograder" / "tests" / f"test_{assignment}.py").read_bytes())
    h.update((course / "solutions" / assignment / f"{assignment}.ipynb").read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------
# The sandbox: one fork server per worker slot
# ----------------------------------------------------------------------------


class UidLease:
    """An exclusive claim on one uid of the pool (so two engines never share one)."""

    def __init__(self, base: int, count: int, start: int = 0):
        self.uid, self._f = None, None
        for i in range(count):
            uid = base + (start + i) % count
            f = open(f"/tmp/.autograder-uid-{uid}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self.uid, self._f = uid, f
            return
        raise InfrastructureError("no free runner uid in the pool")

    def release(self):
        if self._f is not None:
            self._f.close()
            self._f = None


def processes_of(uid: int) -> list[int]:
    """Pids whose real uid is ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except OSError:
            continue
    return pids


def gpu_processes() -> list[int] | None:
    """Pids using a GPU according to nvidia-smi, or None when it cannot tell."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [int(x) for x in out.stdout.split() if x.strip().isdigit()]


class Sandbox:
    """A fork server for runners, isolated once, and the uid its runners use."""

    def __init__(self, cfg: dict, course: Path, slot: int = 0, device: str = "cpu", gpu: str | None = None):
        self.cfg, self.course, self.slot, self.device, self.gpu = cfg, Path(course).resolve(), slot, device, gpu
        self.proc = None
        self.ctl = None
        self.boot = None
        self.caps: dict = {}
        self.lease = None
        self.uid = None
        self._buf = b""

    # -- lifecycle -------------------------------------------------------------
    def env(self) -> dict:
        threads = str(self.cfg["sandbox"]["threads"])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "SEQCOURSE_OFFLINE": "1", "PYTHONHASHSEED": "0",
               "CUDA_VISIBLE_DEVICES": self.gpu if (self.device == "cuda" and self.gpu is not None) else ""}
        if self.device == "cuda" and self.gpu is None:
            env.pop("CUDA_VISIBLE_DEVICES")
        if os.environ.get("SEQCOURSE_DATA"):
            env["SEQCOURSE_DATA"] = os.path.realpath(os.environ["SEQCOURSE_DATA"])
        return env

    def _keep(self) -> list[str]:
        import importlib.util

        keep = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), self.boot}
        spec = importlib.util.find_spec("seqcourse")
        if spec is not None and spec.origin:
            keep.add(os.path.dirname(os.path.realpath(spec.origin)))
        if os.environ.get("SEQCOURSE_DATA"):
            keep.add(os.path.realpath(os.environ["SEQCOURSE_DATA"]))
        return sorted(keep)

    def start(self, timeout: float = 120.0) -> None:
        sb = self.cfg["sandbox"]
        root = os.geteuid() == 0
        if root and sb["isolate"]:
            self.lease = UidLease(sb["uid_base"], sb["uid_count"], start=self.slot)
            self.uid = self.lease.uid
        self.boot = tempfile.mkdtemp(prefix="agr-boot-", dir="/tmp")
        os.chmod(self.boot, 0o755)
        pkg = Path(self.boot) / "agrunner"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        for name in RUNNER_FILES:
            shutil.copyfile(HERE / name, pkg / name)
        ours, theirs = socket.socketpair()
        hide = list(sb["hide"]) + [str(self.course), str(REPO)]
        config = {"ctl_fd": theirs.fileno(), "hide": hide, "keep": self._keep(), "isolate": bool(sb["isolate"]),
                  "visible_top_level": list(sb["visible_top_level"]), "preload": list(sb["preload"]),
                  "tmp_mb": int(self.cfg["limits"]["scratch_mb"])}
        cfg_path = Path(self.boot) / "config.json"
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        log = open(Path(self.boot) / "sandbox.log", "wb")
        python = os.path.join(sys.prefix, "bin", "python")
        self._owner = os.getpid()
        self.proc = subprocess.Popen(
            [python, "-I", str(pkg / "runner.py"), "launch", str(cfg_path)],
            pass_fds=[theirs.fileno()], env=self.env(), cwd=self.boot, stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True)
        log.close()
        theirs.close()
        self.ctl = ours
        line = self._readline(timeout)
        if line is None:
            err = (Path(self.boot) / "sandbox.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise InfrastructureError(f"the sandbox did not start: {err}")
        hello = json.loads(line)
        self.caps = hello["caps"]
        self.caps["uid"] = self.uid

    def _readline(self, timeout: float):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ctl], [], [], left)[0]:
                return None
            data = self.ctl.recv(65536)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def alive(self) -> bool:
        if self.proc is None:
            return False
        if os.getpid() == self._owner:
            return self.proc.poll() is None
        try:  # in a forked harness process the fork server is not our child
            os.kill(self.proc.pid, 0)
        except OSError:
            return False
        return True

    def spawn(self) -> tuple[int, int]:
        """A fresh runner: (pid, socket fd)."""
        if not self.alive():
            raise InfrastructureError("the sandbox's fork server is not running")
        lim = self.cfg["limits"]
        req = {"op": "spawn", "uid": self.uid, "device": self.device, "env": self.env(),
               "threads": self.cfg["sandbox"]["threads"],
               "limits": {k: lim[k] for k in ("memory_mb", "processes", "output_mb", "open_files", "cpu_seconds")}}
        try:
            self.ctl.sendall((json.dumps(req) + "\n").encode())
            if not select.select([self.ctl], [], [], 60)[0]:
                raise InfrastructureError("the fork server did not answer")
            msg, fds, _, _ = socket.recv_fds(self.ctl, 65536, 1)
        except OSError as exc:
            raise InfrastructureError(f"the fork server failed: {exc}") from None
        if not msg or not fds:
            raise InfrastructureError("the fork server went away")
        return json.loads(msg.split(b"\n", 1)[0])["pid"], fds[0]

    def sweep(self, pid: int | None = None) -> list[int]:
        """Kill a runner's process group and every process of the runner uid; return survivors."""
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.uid is None:
            return []
        survivors = []
        for _ in range(200):
            survivors = processes_of(self.uid)
            if not survivors:
                break
            for p in survivors:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)
        return survivors

    def check_clean(self) -> None:
        """Before the next job: no runner process is left (nor on the GPU)."""
        left = self.sweep()
        if left:
            raise InfrastructureError(f"runner processes {left} of uid {self.uid} survive SIGKILL")
        if self.device == "cuda":
            on_gpu = gpu_processes()
            if on_gpu and self.uid is not None:
                mine = set(on_gpu) & set(processes_of(self.uid))
                if mine:
                    raise InfrastructureError(f"runner processes {sorted(mine)} still hold the GPU")

    def stop(self) -> None:
        if self.ctl is not None:
            try:
                self.ctl.sendall(b'{"op": "exit"}\n')
            except OSError:
                pass
            self.ctl.close()
            self.ctl = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        self.sweep()
        if self.boot:
            shutil.rmtree(self.boot, ignore_errors=True)
            self.boot = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None


# ----------------------------------------------------------------------------
# The Submission interface over the channel
# ----------------------------------------------------------------------------


_EXPECTED_NUMERICS = {"deterministic": True, "cudnn_benchmark": False, "matmul_tf32": False, "cudnn_tf32": False}


class RemoteSession:
    """:class:`autograder.api.Submission` backed by sandboxed runners."""

    def __init__(self, sandbox: Sandbox, program: nbmod.Program, cfg: dict, deadline: float):
        self.sb, self.program, self.cfg, self.deadline = sandbox, program, cfg, deadline
        self.request_s = float(cfg["limits"]["request_seconds"])
        self.max_reply = int(cfg["limits"]["reply_mb"]) << 20
        self.pid = None
        self.fd = None
        self.broken = None  # why the program cannot run at all
        self.infra_error = None
        self.events: list[str] = []
        self.cell_errors: dict = {}
        self.requests = 0

    # -- runner lifecycle --------------------------------------------------------
    def _start(self):
        try:
            self.pid, self.fd = self.sb.spawn()
        except InfrastructureError as exc:
            self.infra_error = str(exc)
            raise
        try:
            value = self._raw("load", "running the program's cells", cells=[list(c) for c in self.program.cells],
                              answer_ids=list(self.program.answer_ids), problems=dict(self.program.problems))
        except StudentError as exc:
            self.broken = f"the program could not be run: {exc}"
            raise StudentError(self.broken) from None
        self.cell_errors = dict(value["cell_errors"])

    def _kill(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.pid is not None:
            self.sb.sweep(self.pid)
            self.pid = None

    def close(self):
        if self.fd is not None:
            try:
                channel.send(self.fd, {"id": "bye", "op": "bye"})
            except channel.ChannelError:
                pass
        self._kill()

    def _raw(self, op: str, what: str, **kw):
        rid = secrets.token_hex(16)
        left = self.deadline - time.monotonic()
        limit = float(self.cfg["limits"]["program_seconds"]) if op == "load" else self.request_s
        timeout = min(limit, left)
        try:
            if timeout <= 0:
                raise channel.ChannelTimeout("no time left")
            channel.send(self.fd, {"id": rid, "op": op, **kw}, Ref)
            msg = channel.recv(self.fd, timeout=timeout, max_bytes=self.max_reply)
        except channel.ChannelTimeout:
            self._kill()
            reason = f"timed out after {timeout:.0f} s while {what}"
            if left <= timeout:
                reason = f"the submission's time budget ({self.cfg['limits']['submission_seconds']} s) ran out while {what}"
            self.events.append(reason)
            raise StudentError(reason) from None
        except channel.ChannelClosed:
            self._kill()
            reason = (f"the runner process ended while {what} (a crash, os._exit, a signal, or a memory, "
                      f"process or CPU limit)")
            self.events.append(reason)
            raise StudentError(reason) from None
        except channel.ChannelError as exc:
            self._kill()
            reason = f"the runner broke the protocol while {what}: {exc}"
            self.events.append(reason)
            raise StudentError(reason) from None
        if type(msg) is not dict or msg.get("id") != rid or type(msg.get("ok")) is not bool:
            self._kill()
            reason = f"the runner sent a reply that does not answer the request while {what}"
            self.events.append(reason)
            raise StudentError(reason)
        if msg["ok"]:
            return msg.get("value")
        text = str(msg.get("msg", ""))[:1000]
        etype = msg.get("etype")
        if etype == "ValueError":
            raise ValueError(text)
        if etype == "TypeError":
            raise TypeError(text)
        raise StudentError(text)

    def _request(self, op: str, what: str, **kw):
        self.requests += 1
        if self.infra_error:
            raise InfrastructureError(self.infra_error)
        if self.broken:
            raise StudentError(self.broken)
        if time.monotonic() >= self.deadline:
            raise StudentError(f"the submission's time budget ({self.cfg['limits']['submission_seconds']} s) ran out")
        if self.fd is None:
            self._start()
        return self._raw(op, what, **kw)

    # -- the harness's per-test check ------------------------------------------------
    def before_test(self, name: str):
        seed = zlib.crc32(name.encode())
        got = self._request("settings", "checking numerics settings", apply=True, seed=seed)
        if type(got) is not dict or any(got.get(k) is not v for k, v in _EXPECTED_NUMERICS.items()):
            raise AssertionError(f"the runner's numerics settings are not deterministic: {got}")

    # -- Submission ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        value = self._request("has", f"looking up {name!r}", name=name)
        if type(value) is not bool:
            raise StudentError("the runner sent a malformed answer")
        return value

    def run(self, target, args=(), kwargs=None, *, keep=None, grad_wrt=(), grad_output=None, param_grads_of=None):
        value = self._request("run", f"running {target}", target=target, args=list(args), kwargs=dict(kwargs or {}),
                              keep=keep, grad_wrt=list(grad_wrt), grad_output=grad_output,
                              param_grads_of=param_grads_of)
        if type(value) is not dict or type(value.get("grads")) is not list or type(value.get("param_grads")) is not dict:
            raise StudentError("the runner sent a malformed answer")
        return Result(value=value.get("value"), grads=value["grads"], param_grads=value["param_grads"])

    def call(self, name, *args, **kwargs):
        return self.run(name, args, kwargs).value

    def new(self, cls, *args, keep, state_dict=None, to_dtype=None, to_device=None, **kwargs):
        self._request("new", f"constructing {cls}", cls=cls, args=list(args), kwargs=dict(kwargs), keep=keep,
                      state_dict=state_dict, to_dtype=to_dtype,
                      to_device=str(to_device) if to_device is not None else None)

    def state_dict(self, handle):
        value = self._request("state_dict", f"reading the state dict of {handle}", handle=handle)
        if type(value) is not dict:
            raise StudentError("the runner sent a malformed answer")
        return value


# ----------------------------------------------------------------------------
# Grading one submission (inside a harness process)
# ----------------------------------------------------------------------------


def _program_key(program: nbmod.Program | None, raw: bytes) -> str:
    h = hashlib.sha256()
    if program is None:
        h.update(b"unreadable\0" + raw)
    else:
        h.update(json.dumps([program.cells, program.answer_ids, sorted(program.problems.items())]).encode())
    return h.hexdigest()


def read_submission(course: Path, assignment: str, notebook_path):
    """(source notebook, program or None, error or '', submission hash)."""
    source_nb = nbmod.read_notebook(Path(course) / "solutions" / assignment / f"{assignment}.ipynb")
    try:
        raw = Path(notebook_path).read_bytes()
    except OSError:
        raw = b""
    try:
        sub_nb = nbmod.read_notebook(notebook_path)
    except nbmod.SubmissionFormatError as exc:
        return source_nb, None, str(exc), _program_key(None, raw)
    program = nbmod.build_program(source_nb, sub_nb)
    return source_nb, program, "", _program_key(program, raw)


def grade_one(assignment: str, notebook_path, sandbox: Sandbox, cfg: dict, course: Path = REPO,
              extra_args=()) -> GradeReport:
    """Grade one submission with its program in sandboxed runners."""
    start = time.perf_counter()
    course = Path(course)
    source_nb, program, error, _ = read_submission(course, assignment, notebook_path)
    if program is None:
        report = _all_zero(assignment, source_nb, error)
        report.seconds = time.perf_counter() - start
        return report
    if sandbox.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InfrastructureError("grading on CUDA, but no GPU is available to this worker")
    deadline = time.monotonic() + float(cfg["limits"]["submission_seconds"])
    session = RemoteSession(sandbox, program, cfg, deadline)
    try:
        outcomes = run_hidden_tests(assignment, lambda: session, extra_args,
                                    tests_file=course / "autograder" / "tests" / f"test_{assignment}.py")
    finally:
        session.close()
    if session.infra_error:
        raise InfrastructureError(session.infra_error)
    report = score(assignment, outcomes, source_nb)
    report.cell_problems = dict(program.problems)
    report.error = "; ".join(dict.fromkeys(session.events))[:2000]
    report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------
# The results store
# ----------------------------------------------------------------------------


class ResultsStore:
    """Graded reports keyed by (submission hash, grader version, seeds, device, test selection).

    Only graded reports are stored, so an infrastructure failure never
    overwrites a valid score.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def key(self, assignment, sub_hash, version, device, extra_args) -> str:
        text = json.dumps([assignment, sub_hash, version, SEED_SCHEME, device, list(extra_args)])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, assignment, key) -> Path:
        return self.root / assignment / f"{key}.json"

    def get(self, assignment, key) -> dict | None:
        p = self.path(assignment, key)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("status") == "graded" else None

    def put(self, assignment, key, report: dict) -> None:
        if report.get("status") != "graded":
            return
        p = self.path(assignment, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        os.replace(tmp, p)

    def log_failure(self, assignment, job_id, error) -> None:
        p = self.root / assignment / "not-graded.log"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a") as f:
            f.write(json.dumps({"time": time.time(), "job": job_id, "error": error[-2000:]}) + "\n")


# ----------------------------------------------------------------------------
# Batches: parallel workers
# ----------------------------------------------------------------------------


@dataclass
class Job:
    assignment: str
    notebook: str
    job_id: str  # the student id, or a name for the report
    attempts: int = 0
    key: str = ""
    errors: list = field(default_factory=list)


def default_workers(device: str = "cpu") -> int:
    if device == "cuda":
        exe = shutil.which("nvidia-smi")
        if exe:
            try:
                out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
                n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
                if n:
                    return n
            except (OSError, subprocess.TimeoutExpired):
                pass
        return 1
    return max(1, len(os.sched_getaffinity(0)))


def _harness_child(job: Job, sandbox: Sandbox, cfg: dict, course: Path, extra_args, wfd: int, log_path: str,
                   inject_fault) -> None:
    """Body of the forked harness process: grade, write the report, exit."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        if sandbox.device == "cuda" and sandbox.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = sandbox.gpu
        if inject_fault is not None:
            inject_fault(job)
        report = asdict(grade_one(job.assignment, job.notebook, sandbox, cfg, course, extra_args))
    except BaseException as exc:  # everything here is the grader's fault, never the student's
        report = {"assignment": job.assignment, "status": "not graded",
                  "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"}
    data = json.dumps(report).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(wfd, view):]
    os._exit(0)


def _prewarm_harness() -> None:
    """Import what every harness needs before forking them, so each forked
    harness starts warm (torch's first deterministic-algorithms call alone
    takes seconds)."""
    import pytest  # noqa: F401
    import torch

    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(), warn_only=True)
    # Everything allocated so far lives as long as the engine: keep it out of
    # the garbage collector, so the full collections pytest runs in each
    # forked harness do not walk torch's whole heap.
    gc.freeze()


def grade_batch(jobs: list[Job], *, course: Path = REPO, cfg: dict | None = None, workers: int | None = None,
                device: str = "cpu", extra_args=(), force: bool = False, progress: bool = True, on_result=None,
                inject_fault=None, logs_dir: Path | None = None) -> dict[str, dict]:
    """Grade ``jobs`` on ``workers`` parallel slots; return job_id -> report (dict).

    ``on_result(job, report)`` is called in this process (one writer) as each
    submission finishes; ``inject_fault(job)`` runs in the harness process
    before grading (tests use it to simulate infrastructure faults).
    """
    cfg = cfg or load_config()
    course = Path(course).resolve()
    workers = workers or default_workers(device)
    _prewarm_harness()
    store = ResultsStore(course / cfg["engine"]["results_dir"])
    logs_dir = Path(logs_dir) if logs_dir else course / cfg["engine"]["results_dir"] / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    retries = int(cfg["engine"]["retries"])
    results: dict[str, dict] = {}
    versions: dict[str, str] = {}

    pending = []
    for job in jobs:
        if job.assignment not in versions:
            versions[job.assignment] = grader_version(course, job.assignment)
        _, _, _, sub_hash = read_submission(course, job.assignment, job.notebook)
        job.key = store.key(job.assignment, sub_hash, versions[job.assignment], device, extra_args)
        cached = None if force else store.get(job.assignment, job.key)
        if cached is not None:
            cached = dict(cached, cached=True)
            results[job.job_id] = cached
            if on_result:
                on_result(job, cached)
        else:
            pending.append(job)

    bar = None
    counts = {"graded": 0, "retried": 0, "not graded": 0}
    if progress:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: this process forks
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), unit="sub", file=sys.stderr)

    def update_bar():
        if bar is not None:
            bar.set_postfix(graded=counts["graded"], retried=counts["retried"], not_graded=counts["not graded"])

    slots = []
    ngpu = default_workers("cuda") if device == "cuda" else 0
    workers = max(1, min(workers, len(pending))) if pending else 0
    try:
        for i in range(workers):
            gpu = str(i % ngpu) if device == "cuda" and ngpu else None
            slots.append({"sb": Sandbox(cfg, course, slot=i, device=device, gpu=gpu), "job": None})
        for s in slots:
            s["sb"].start()
        queue = list(pending)
        running = {}  # read fd -> (slot, pid, job, deadline, chunks)
        grace = float(cfg["limits"]["submission_seconds"]) + float(cfg["engine"]["harness_grace_seconds"])
        while queue or running:
            for s in slots:
                if s["job"] is None and queue:
                    job = queue.pop(0)
                    job.attempts += 1
                    try:
                        if not s["sb"].alive():
                            s["sb"].stop()
                            s["sb"].start()
                        s["sb"].check_clean()
                    except InfrastructureError as exc:
                        _finish_attempt(job, {"status": "not graded", "error": str(exc)}, s, queue, results, store,
                                        counts, retries, on_result)
                        update_bar()
                        if bar is not None and job.job_id in results:
                            bar.update(1)
                        continue
                    r, w = os.pipe()
                    log_path = str(logs_dir / f"{job.assignment}-{_safe(job.job_id)}.log")
                    pid = os.fork()
                    if pid == 0:
                        os.close(r)
                        _harness_child(job, s["sb"], cfg, course, extra_args, w, log_path, inject_fault)
                    os.close(w)
                    s["job"] = job
                    running[r] = (s, pid, job, time.monotonic() + grace, [])
            if not running:
                continue
            ready, _, _ = select.select(list(running), [], [], 1.0)
            now = time.monotonic()
            for r in list(running):
                s, pid, job, deadline, chunks = running[r]
                done = False
                if r in ready:
                    data = os.read(r, 1 << 20)
                    if data:
                        chunks.append(data)
                    else:
                        done = True
                elif now > deadline:
                    os.kill(pid, signal.SIGKILL)
                    chunks.clear()
                    chunks.append(json.dumps({"status": "not graded",
                                              "error": "the harness process did not finish in time"}).encode())
                    done = True
                if not done:
                    continue
                os.close(r)
                del running[r]
                _, status = os.waitpid(pid, 0)
                try:
                    report = json.loads(b"".join(chunks))
                except ValueError:
                    report = {"status": "not graded",
                              "error": f"the harness process died (wait status {status}) without a report"}
                if status != 0 and report.get("status") == "graded":
                    report = {"status": "not graded", "error": f"the harness process exited with status {status}"}
                s["job"] = None
                try:
                    s["sb"].check_clean()
                except InfrastructureError as exc:
                    report = {"status": "not graded", "error": str(exc)}
                if report.get("status") != "graded":
                    s["sb"].stop()  # restart this slot's sandbox before its next job
                    try:
                        s["sb"].start()
                    except InfrastructureError:
                        pass
                finished = _finish_attempt(job, report, s, queue, results, store, counts, retries, on_result)
                update_bar()
                if finished and bar is not None:
                    bar.update(1)
    finally:
        for s in slots:
            s["sb"].stop()
        if bar is not None:
            bar.close()
    return results


def _finish_attempt(job, report, slot, queue, results, store, counts, retries, on_result) -> bool:
    if report.get("status") == "graded":
        counts["graded"] += 1
        report["attempts"] = job.attempts
        store.put(job.assignment, job.key, report)
        results[job.job_id] = report
        if on_result:
            on_result(job, report)
        return True
    job.errors.append(report.get("error", ""))
    store.log_failure(job.assignment, job.job_id, report.get("error", ""))
    if job.attempts <= retries:
        counts["retried"] += 1
        queue.append(job)
        return False
    counts["not graded"] += 1
    final = {"assignment": job.assignment, "status": "not graded", "attempts": job.attempts,
             "error": job.errors[-1][:3000], "scores": {}, "max_scores": {}, "tests": []}
    results[job.job_id] = final
    if on_result:
        on_result(job, final)
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]


def probe(cfg: dict | None = None, course: Path = REPO) -> dict:
    """Start a sandbox and report which isolation features hold here."""
    sb = Sandbox(cfg or load_config(), course)
    sb.start()
    try:
        return dict(sb.caps)
    finally:
        sb.stop()
