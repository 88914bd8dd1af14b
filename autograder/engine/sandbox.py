"""The sandbox: one fork server per worker slot, isolated once, and its runners.

The fork server is started from a copy of the ``sandbox`` package in a fresh
boot directory outside the course, next to a copy of the course's own
``seqcourse`` package, so a runner imports exactly the course's code (never
another checkout's, whatever the virtual environment points at). It isolates
itself (see ``sandbox/runner.py``) and forks one fresh runner per request.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..course import Course
from ..sandbox.protocol import InfrastructureError

SANDBOX_PACKAGE = Path(__file__).resolve().parent.parent / "sandbox"


def real_python() -> str:
    """This interpreter, reached through real paths: a virtual environment behind a
    symbolic link keeps working once the link's directory is hidden."""
    return os.path.join(os.path.realpath(sys.prefix), "bin", "python")


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


#: Variables a runner keeps from the engine's environment, where set: the GPU
#: driver's libraries often live on LD_LIBRARY_PATH (e.g. /usr/local/nvidia).
PASS_ENV = ("LD_LIBRARY_PATH", "CUDA_HOME", "NVIDIA_DRIVER_CAPABILITIES")


class Sandbox:
    """A fork server for runners, isolated once, and the uid its runners use."""

    def __init__(self, cfg: dict, course: Course, slot: int = 0, device: str = "cpu", gpu: str | None = None,
                 gpu_share: int = 1):
        self.cfg, self.course, self.slot, self.device, self.gpu = cfg, course, slot, device, gpu
        self.gpu_share = max(1, gpu_share)  # runners of this engine that share the slot's GPU
        self.gpu_leftovers = 0  # runner processes found on the GPU after their submission, then killed
        self.proc = None
        self.ctl = None
        self.boot = None
        self.caps: dict = {}
        self.lease = None
        self.uid = None
        self._buf = b""
        self._owner = os.getpid()

    # -- lifecycle -------------------------------------------------------------
    def env(self) -> dict:
        threads = str(self.cfg["sandbox"]["threads"])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "SEQCOURSE_OFFLINE": "1", "PYTHONHASHSEED": "0"}
        for name in PASS_ENV:
            if os.environ.get(name):
                env[name] = os.environ[name]
        if self.device == "cuda":
            # A GPU chosen by the engine, or the visible set the engine was given (Slurm, Ray).
            if self.gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = self.gpu
            elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
                env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if os.environ.get("SEQCOURSE_DATA"):
            env["SEQCOURSE_DATA"] = os.path.realpath(os.environ["SEQCOURSE_DATA"])
        return env

    def _keep(self) -> list[str]:
        """What the runner's mount namespace binds back, read-only: the Python installation, the
        directories on its module path (a site directory added by a .pth file included), the
        data directory and the boot directory. Real paths only; nothing inside the course."""
        keep = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), self.boot}
        for entry in sys.path:
            # Site directories only (one added by a .pth file included): never the working
            # directory or a checkout that happens to be on the path.
            real = os.path.realpath(entry) if entry else ""
            if os.path.basename(real) in ("site-packages", "dist-packages") and os.path.isdir(real):
                keep.add(real)
        if os.environ.get("SEQCOURSE_DATA"):
            keep.add(os.path.realpath(os.environ["SEQCOURSE_DATA"]))
        # Never the course directory or a directory above it: either would expose the hidden tests.
        course = str(self.course.root)
        return sorted(k for k in keep if k != course and not course.startswith(k.rstrip("/") + "/"))

    def _make_boot(self) -> Path:
        boot = Path(os.path.realpath(tempfile.mkdtemp(prefix="agr-boot-", dir="/tmp")))
        os.chmod(boot, 0o755)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(SANDBOX_PACKAGE, boot / "sandbox", ignore=ignore)
        package = self.package_source()
        if package is not None:
            shutil.copytree(package, boot / "course" / package.name, ignore=ignore)
        for p in boot.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        return boot

    def start(self, timeout: float = 120.0) -> None:
        """Start the fork server and wait until it is ready (``launch`` + ``wait_ready``)."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the fork server without waiting for it (several slots warm up side by side)."""
        sb = self.cfg["sandbox"]
        root = os.geteuid() == 0
        if root and sb["isolate"]:
            self.lease = UidLease(sb["uid_base"], sb["uid_count"], start=self.slot)
            self.uid = self.lease.uid
        boot = self._make_boot()
        self.boot = str(boot)
        ours, theirs = socket.socketpair()
        hide = list(sb["hide"]) + [str(self.course.root)]
        config = {"ctl_fd": theirs.fileno(), "hide": hide, "keep": self._keep(), "isolate": bool(sb["isolate"]),
                  "visible_top_level": list(sb["visible_top_level"]), "preload": list(sb["preload"]),
                  "tmp_mb": int(self.cfg["limits"]["scratch_mb"]), "course_path": str(boot / "course"),
                  "package": self.course.package.name}
        cfg_path = boot / "config.json"
        fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        log = open(boot / "sandbox.log", "wb")
        self._owner = os.getpid()
        try:
            self.proc = subprocess.Popen(
                [real_python(), "-I", str(boot / "sandbox" / "runner.py"), "launch", str(cfg_path)],
                pass_fds=[theirs.fileno()], env=self.env(), cwd=self.boot, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
        except OSError as exc:
            self.stop()
            raise InfrastructureError(f"the sandbox could not be started: {exc}") from None
        finally:
            log.close()
            theirs.close()
        self.ctl = ours

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for the launched fork server's greeting, then check its package and probe a runner."""
        boot = Path(self.boot)
        line = self._readline(timeout)
        if line is None:
            err = (boot / "sandbox.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise InfrastructureError(f"the sandbox did not start: {err}")
        hello = json.loads(line)
        self.caps = hello["caps"]
        self.caps["uid"] = self.uid
        self.caps["engine_uid"] = os.geteuid()
        self._check_package()
        self.caps["per_runner"] = self._probe_runner()

    def _probe_runner(self) -> dict:
        """What one runner holds of its own (namespaces, cgroups): fork one and load nothing."""
        from ..sandbox import channel
        from ..sandbox.protocol import Ref

        pid, fd = self.spawn()
        try:
            hello = channel.recv(fd, timeout=60, max_bytes=1 << 20)
            if type(hello) is not dict or hello.get("id") != "hello":
                return {"error": "no greeting"}
            channel.send(fd, {"id": "probe", "op": "load", "cells": [], "answer_ids": [], "problems": {}}, Ref)
            msg = channel.recv(fd, timeout=60, max_bytes=1 << 20)
            value = msg.get("value") if type(msg) is dict else None
            iso = value.get("isolation") if type(value) is dict else None
            return iso if type(iso) is dict else {}
        except channel.ChannelError as exc:
            return {"error": str(exc)}
        finally:
            os.close(fd)
            self.sweep(pid)

    def isolation_problems(self) -> list[str]:
        """The guarantees of the threat model (autograder/README.md) that do not hold here."""
        if not self.cfg["sandbox"]["isolate"]:
            return ["isolation is turned off in the config ([sandbox] isolate = false)"]
        caps, per = self.caps, self.caps.get("per_runner", {})
        missing = []
        if not caps.get("net"):
            missing.append("a network namespace (runners could reach the network)")
        if not caps.get("mounts"):
            missing.append("a mount namespace (runners could read the hidden tests)")
        if not caps.get("engine_root") and not caps.get("userns"):
            missing.append(f"a user namespace ({caps.get('userns_error', 'unavailable')})")
        for key, what in (("pid", "a PID namespace per runner"), ("proc", "a private /proc per runner"),
                          ("ipc", "an IPC namespace per runner"), ("tmp", "a private /tmp per runner")):
            if not per.get(key):
                missing.append(what)
        return missing

    def package_source(self) -> Path | None:
        """The course package the runner gets: the course's own copy, or, for a course without one,
        the one this environment imports."""
        if self.course.package.is_dir():
            return self.course.package
        import importlib.util

        spec = importlib.util.find_spec(self.course.package.name)
        return Path(spec.origin).resolve().parent if spec is not None and spec.origin else None

    def _check_package(self) -> None:
        """The runner must import the course's own package, from the boot copy, or nothing runs."""
        where = self.caps.get("package_file")
        if self.package_source() is not None and not (where and where.startswith(str(Path(self.boot) / "course") + "/")):
            self.stop()
            raise InfrastructureError(
                f"the runner imports {self.course.package.name} from {where!r}, not the course's own copy; "
                f"check that nothing on the runner's path shadows it")

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
               "threads": self.cfg["sandbox"]["threads"], "isolate": bool(self.cfg["sandbox"]["isolate"]),
               "userns": bool(self.caps.get("userns")), "cuda_memory_fraction": 1.0 / self.gpu_share,
               "limits": {k: lim[k] for k in ("memory_mb", "total_memory_mb", "processes", "output_mb",
                                              "open_files", "cpu_seconds", "scratch_mb")}}
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
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
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
        """Before the next job: no runner process is left, and none holds the GPU."""
        if self.device == "cuda" and self.uid is not None:
            # Looked at before the sweep, while a leftover (say, a daemonised child) still runs.
            held = [p for p in (gpu_processes() or []) if p in set(processes_of(self.uid))]
            if held:
                self.gpu_leftovers += len(held)
        left = self.sweep()
        if left:
            raise InfrastructureError(f"runner processes {left} of uid {self.uid} survive SIGKILL")
        if self.device == "cuda" and self.uid is not None:
            still = [p for p in (gpu_processes() or []) if p in set(processes_of(self.uid))]
            if still:
                raise InfrastructureError(f"runner processes {sorted(still)} still hold the GPU after SIGKILL")

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


def probe(cfg: dict, course: Course) -> dict:
    """Start a sandbox and one runner; report which isolation holds here, and as which user."""
    sb = Sandbox(cfg, course)
    sb.start()
    try:
        caps = dict(sb.caps)
        caps["missing"] = sb.isolation_problems()
        return caps
    finally:
        sb.stop()
