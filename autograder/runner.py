"""The sandboxed runner: the only process that executes student code.

It is never imported by the harness. The engine copies this file, with
``channel.py``, ``inprocess.py``, ``api.py`` and ``notebook.py``, into a fresh
boot directory outside the course (package ``agrunner``) and starts::

    python -I <boot>/agrunner/runner.py launch <boot>/config.json

``launch`` (still privileged) reads and deletes the config, isolates itself
(new network namespace, new mount namespace in which the course, the
repository, /tmp, home directories etc. are covered by empty tmpfs mounts,
with only the Python installation, the virtual environment, the ``seqcourse``
package, the data directory and the boot directory bound back read-only), and
then re-executes itself as ``serve``: a fork server that has imported torch
once and forks one fresh runner per request. A forked runner starts a new
session, makes a private scratch directory, sends its stdout/stderr to a
size-capped file there, applies resource limits, drops to an unprivileged
uid with ``no_new_privs``, pins deterministic numerics and only then answers
requests on its own socket: ``load`` the program (execute its cells), then
``has``/``run``/``new``/``state_dict``/``settings`` until ``bye``.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import resource
import secrets
import signal
import socket
import sys

BOOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE = 38, 36, 4


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# ----------------------------------------------------------------------------
# launch: isolate, then become the fork server
# ----------------------------------------------------------------------------


def _mount(libc, src, target, fstype, flags, data=None):
    _check(libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(), ctypes.c_ulong(flags),
                      data and data.encode()), f"mount {target}")


def _isolate(cfg) -> dict:
    """Best effort: what holds is reported back to the harness."""
    libc = _libc()
    caps = {"net": False, "mounts": False}
    if not cfg.get("isolate", True):
        return caps
    try:
        _check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        caps["net"] = True
    except OSError as exc:
        caps["net_error"] = str(exc)
    try:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
        keep = [k for k in cfg["keep"] if os.path.exists(k)]
        fds = {k: os.open(k, os.O_PATH) for k in keep}  # reachable after the covers
        # An allow-list: every top-level directory that is not a system one is
        # covered too, so copies of the course elsewhere on the machine (another
        # checkout, a backup) are as unreachable as this one.
        visible = {os.path.realpath(v) for v in cfg.get("visible_top_level", [])}
        top = [os.path.join("/", e) for e in os.listdir("/")] if visible else []
        top = [t for t in top if os.path.isdir(t) and os.path.realpath(t) not in visible]
        hide = sorted({os.path.realpath(h) for h in [*cfg["hide"], *top] if os.path.isdir(h)}, key=len)
        covered = []
        for h in hide:
            if any(h == c or h.startswith(c.rstrip("/") + "/") for c in covered):
                continue
            size = f"{cfg['tmp_mb']}m" if h == "/tmp" else "4m"
            mode = "1777" if h == "/tmp" else "755"
            _mount(libc, "tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode}")
            covered.append(h)
        for k, fd in fds.items():
            if any(k == c or k.startswith(c.rstrip("/") + "/") for c in covered):
                os.makedirs(k, exist_ok=True)
                _mount(libc, f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
                _mount(libc, None, k, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            os.close(fd)
        caps["mounts"] = True
        caps["covered"] = len(covered)
    except OSError as exc:
        caps["mounts_error"] = str(exc)
    return caps


def launch(config_path: str) -> None:
    with open(config_path) as f:
        cfg = json.load(f)
    os.unlink(config_path)
    caps = _isolate(cfg)
    caps["root"] = os.geteuid() == 0
    settings = {"ctl_fd": cfg["ctl_fd"], "caps": caps, "preload": cfg.get("preload", [])}
    os.execv(sys.executable, [sys.executable, "-I", os.path.abspath(__file__), "serve", json.dumps(settings)])


# ----------------------------------------------------------------------------
# serve: the fork server
# ----------------------------------------------------------------------------


def serve(settings_json: str) -> None:
    settings = json.loads(settings_json)
    ctl = socket.socket(fileno=settings["ctl_fd"])
    sys.path.insert(0, BOOT)
    import torch  # noqa: F401 - imported once here, inherited by every runner

    from agrunner import channel, inprocess  # noqa: F401

    # Pay one-time start-up costs here, once, instead of in every runner: the
    # first use_deterministic_algorithms() call initialises lazily (seconds),
    # and the preloaded modules (config `preload`) are then shared
    # copy-on-write by every fork. Nothing of a student has run yet.
    torch.use_deterministic_algorithms(True, warn_only=True)
    for name in settings.get("preload", []):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if name == "jieba":
            module.setLogLevel(60)
            module.initialize()  # load the dictionary now rather than at the first lcut()
    gc.freeze()  # what the fork server holds stays shared and is never collected in a runner

    libc = _libc()
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children (and adopted orphans) are reaped at once
    ctl.sendall((json.dumps({"ready": True, "caps": settings["caps"], "pid": os.getpid()}) + "\n").encode())
    buf = b""
    while True:
        data = ctl.recv(65536)
        if not data:
            os._exit(0)
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if req.get("op") == "exit":
                os._exit(0)
            parent_end, child_end = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                try:
                    ctl.close()
                    parent_end.close()
                    _runner_main(child_end, req)
                finally:
                    os._exit(70)
            child_end.close()
            socket.send_fds(ctl, [(json.dumps({"pid": pid}) + "\n").encode()], [parent_end.fileno()])
            parent_end.close()


# ----------------------------------------------------------------------------
# one runner
# ----------------------------------------------------------------------------


def _limit(which, value):
    if value is None:
        return
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            resource.setrlimit(which, (hard, hard))


def _runner_main(sock, req) -> None:
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the output cap, writes fail instead of killing
    lim = req["limits"]
    uid = req.get("uid")
    scratch = os.path.join("/tmp", "agr-run-" + secrets.token_hex(8))
    os.makedirs(scratch, mode=0o700)
    if uid is not None:
        os.chown(scratch, uid, uid)
    os.chdir(scratch)
    out = os.open(os.path.join(scratch, "output.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    if uid is not None:
        os.fchown(out, uid, uid)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    keep_fd = sock.fileno()
    for fd in (out, null):
        os.close(fd)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 65536)
    mb = 1 << 20
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, lim["output_mb"] * mb)
    _limit(resource.RLIMIT_NOFILE, lim["open_files"])
    _limit(resource.RLIMIT_CPU, lim["cpu_seconds"])
    if lim.get("memory_mb"):
        _limit(resource.RLIMIT_DATA if req.get("device") == "cuda" else resource.RLIMIT_AS, lim["memory_mb"] * mb)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _limit(resource.RLIMIT_NPROC, lim["processes"])
    libc = _libc()
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.environ.clear()
    os.environ.update(req.get("env", {}))
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    sys.path[:] = [p for p in sys.path if p and p != BOOT] + [BOOT]
    sys.argv = ["runner"]

    import torch

    from agrunner import channel
    from agrunner.api import Ref, StudentError
    from agrunner.inprocess import ProgramSession, execute_program, short_error, to_data
    from agrunner.notebook import Program

    torch.set_num_threads(max(1, int(req.get("threads", 1))))
    _pin_numerics(torch)
    fd = sock.fileno()
    session = None
    while True:
        try:
            msg = channel.recv(fd, ref_type=Ref)
        except channel.ChannelError:
            os._exit(0)
        rid = msg.get("id") if type(msg) is dict else None
        try:
            op = msg["op"]
            if op == "bye":
                os._exit(0)
            if op == "load":
                program = Program(cells=[tuple(c) for c in msg["cells"]], answer_ids=list(msg["answer_ids"]),
                                  problems=dict(msg["problems"]))
                ns, errors = execute_program(program)
                session = ProgramSession(ns, errors)
                value = {"cell_errors": dict(errors)}
            elif op == "settings":
                if msg.get("apply"):
                    _pin_numerics(torch)
                if msg.get("seed") is not None:
                    torch.manual_seed(int(msg["seed"]))
                value = _numerics(torch)
            elif session is None:
                raise RuntimeError("no program loaded")
            elif op == "has":
                value = session.has(msg["name"])
            elif op == "run":
                r = session.run(msg["target"], tuple(msg["args"]), msg["kwargs"], keep=msg["keep"],
                                grad_wrt=tuple(msg["grad_wrt"]), grad_output=msg["grad_output"],
                                param_grads_of=msg["param_grads_of"])
                value = {"value": r.value, "grads": r.grads, "param_grads": r.param_grads}
            elif op == "new":
                session.new(msg["cls"], *msg["args"], keep=msg["keep"], state_dict=msg["state_dict"],
                            to_dtype=msg["to_dtype"], to_device=msg["to_device"], **msg["kwargs"])
                value = None
            elif op == "state_dict":
                value = session.state_dict(msg["handle"])
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"id": rid, "ok": True, "value": value}
            try:
                channel.send(fd, reply, Ref)
                continue
            except TypeError as exc:
                reply = {"id": rid, "ok": False, "etype": "StudentError", "msg": f"result cannot be sent: {exc}"}
        except StudentError as exc:
            reply = {"id": rid, "ok": False, "etype": "StudentError", "msg": str(exc)}
        except BaseException as exc:  # the student's SystemExit included: it must not end the runner
            etype = type(exc).__name__ if isinstance(exc, (ValueError, TypeError)) else "StudentError"
            reply = {"id": rid, "ok": False, "etype": etype, "msg": short_error(exc)}
        try:
            channel.send(fd, reply, Ref)
        except channel.ChannelError:
            os._exit(0)


def _pin_numerics(torch) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _numerics(torch) -> dict:
    return {
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
    }


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        launch(sys.argv[2])
    elif sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
