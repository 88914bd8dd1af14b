"""The sandboxed runner: the only process that executes student code.

It is never imported by the harness. The engine copies the whole
``sandbox`` package into a fresh boot directory outside the course and starts::

    python -I <boot>/sandbox/runner.py launch <boot>/config.json

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

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x00020000, 0x10000000, 0x08000000, 0x20000000, 0x40000000)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_PDEATHSIG = 38, 36, 4, 1
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
# SECBIT_NOROOT | _LOCKED, SECBIT_NO_SETUID_FIXUP | _LOCKED, SECBIT_KEEP_CAPS_LOCKED, SECBIT_NO_CAP_AMBIENT_RAISE | _LOCKED
SECUREBITS_ALL_LOCKED = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80


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


def _enter_user_namespace(libc) -> None:
    """Without root: a new user namespace in which this process is root, mapped to our own uid.

    It gives the same mount and network namespaces that real root gets; outside
    the namespace every runner is still the engine's (unprivileged) uid, and
    inside it runners drop every capability (``_drop_capabilities``).
    """
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _bind_readonly(libc, fd: int, target: str) -> None:
    """Bind ``fd``'s directory at ``target``, read-only, keeping the flags a user namespace locks."""
    os.makedirs(target, exist_ok=True)
    _mount(libc, f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    st = os.statvfs(target).f_flag  # ST_* bits: ST_RELATIME is 4096, MS_RELATIME 1 << 21
    locked = (st & (MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)) | (MS_RELATIME if st & 4096 else 0)
    _mount(libc, None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | locked)


def _isolate(cfg) -> dict:
    """Best effort: what holds is reported back to the harness."""
    libc = _libc()
    caps = {"net": False, "mounts": False, "userns": False}
    if not cfg.get("isolate", True):
        return caps
    if os.geteuid() != 0:
        try:
            _enter_user_namespace(libc)
            caps["userns"] = True
        except OSError as exc:
            caps["userns_error"] = str(exc)
            return caps  # without it no namespace can be made: nothing below would hold
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
                _bind_readonly(libc, fd, k)
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
    caps = {"engine_root": os.geteuid() == 0}
    caps.update(_isolate(cfg))
    settings = {"ctl_fd": cfg["ctl_fd"], "caps": caps, "preload": cfg.get("preload", []), "keep": cfg.get("keep", []),
                "course_path": cfg.get("course_path"), "package": cfg.get("package")}
    os.execv(sys.executable, [sys.executable, "-I", os.path.abspath(__file__), "serve", json.dumps(settings)])


# ----------------------------------------------------------------------------
# serve: the fork server
# ----------------------------------------------------------------------------


KEEP: list = []  # what the fork server's mount namespace binds back (set by serve)


def serve(settings_json: str) -> None:
    settings = json.loads(settings_json)
    KEEP[:] = [str(k) for k in settings.get("keep", [])]
    ctl = socket.socket(fileno=settings["ctl_fd"])
    sys.path.insert(0, BOOT)
    if settings.get("course_path"):
        # The course's own package, copied beside the sandbox: it comes first on the path,
        # so no editable install or other checkout can shadow it.
        sys.path.insert(0, settings["course_path"])
    import torch  # noqa: F401 - imported once here, inherited by every runner

    from sandbox import channel, host, protocol  # noqa: F401

    # Pay one-time start-up costs here, once, instead of in every runner: the
    # first use_deterministic_algorithms() call initialises lazily (seconds),
    # and the preloaded modules (config `preload`) are then shared
    # copy-on-write by every fork. Nothing of a student has run yet.
    protocol.pin_numerics(torch)
    protocol.preload(settings.get("preload", []))
    caps = dict(settings["caps"])
    if settings.get("package"):
        try:
            pkg = importlib.import_module(settings["package"])
            caps["package_file"] = os.path.realpath(pkg.__file__)
        except Exception as exc:  # reported; the engine refuses to grade
            caps["package_error"] = f"{type(exc).__name__}: {exc}"
    caps["torch"] = torch.__version__
    gc.freeze()  # what the fork server holds stays shared and is never collected in a runner

    libc = _libc()
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children (and adopted orphans) are reaped at once
    ctl.sendall((json.dumps({"ready": True, "caps": caps, "pid": os.getpid()}) + "\n").encode())
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


def _private_namespaces(libc, tmp_mb: int, keep=()) -> dict:
    """Namespaces of this runner alone: IPC objects, a fresh /tmp and /dev/shm, and (after the
    fork in ``_runner_main``) its own PID namespace with its own /proc. Nothing of one
    submission is then visible to the next, and all of it is gone when the runner ends."""
    held = {"ipc": False, "tmp": False, "pid": False}
    try:
        _check(libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")
        held["ipc"] = True
    except OSError as exc:
        held["ipc_error"] = str(exc)
    try:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
        # What lives under /tmp or /dev/shm and must stay visible (the boot directory, and a
        # virtual environment or data directory that happens to be there) is bound back after the cover.
        covers = ("/tmp", "/dev/shm")
        back = sorted({BOOT, *(k for k in keep if any(k == c or k.startswith(c + "/") for c in covers))}, key=len)
        fds = {k: os.open(k, os.O_PATH) for k in back if os.path.isdir(k)}
        _mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
        if os.path.isdir("/dev/shm"):
            _mount(libc, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
        for k, fd in fds.items():
            _bind_readonly(libc, fd, k)
            os.close(fd)
        held["tmp"] = True
    except OSError as exc:
        held["tmp_error"] = str(exc)
    try:
        _check(libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        held["pid"] = True
    except OSError as exc:
        held["pid_error"] = str(exc)
    return held


def _join_cgroups(limits: dict) -> dict:
    """Cap the runner and all its children together (memory, processes) with a cgroup of its own,
    where this machine lets us create one (cgroup v1 memory/pids controllers, or v2); say what holds."""
    held = {"memory": False, "pids": False}
    total = int(limits.get("total_memory_mb") or limits["memory_mb"]) << 20
    name = "agr-run-" + secrets.token_hex(6)
    own = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(",") if controllers else ["unified"]:
                    own[c] = path
    except OSError:
        return held
    plans = []
    if os.path.isdir("/sys/fs/cgroup/memory") and "memory" in own:
        plans.append(("memory", f"/sys/fs/cgroup/memory{own['memory']}", {"memory.limit_in_bytes": total,
                                                                            "memory.memsw.limit_in_bytes": total}))
    if os.path.isdir("/sys/fs/cgroup/pids") and "pids" in own:
        plans.append(("pids", f"/sys/fs/cgroup/pids{own['pids']}", {"pids.max": int(limits["processes"])}))
    if not plans and os.path.exists("/sys/fs/cgroup/cgroup.controllers") and "unified" in own:
        plans.append(("v2", f"/sys/fs/cgroup{own['unified']}", {"memory.max": total, "memory.swap.max": 0,
                                                                "pids.max": int(limits["processes"])}))
    for kind, parent, settings in plans:
        path = os.path.join(parent.rstrip("/"), name)
        try:
            os.mkdir(path)
            for key, value in settings.items():
                try:
                    with open(os.path.join(path, key), "w") as f:
                        f.write(str(value))
                    if kind == "v2":
                        held["memory" if key.startswith("memory") else "pids"] = True
                except OSError:
                    if key in ("memory.limit_in_bytes", "pids.max") and kind != "v2":
                        raise
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            if kind != "v2":
                held[kind] = True
            held.setdefault("paths", []).append(path)
        except OSError as exc:
            held[f"{kind}_error"] = str(exc)
    return held


def _drop_capabilities(libc) -> None:
    """Inside a user namespace the runner is its root: give up every capability for good
    (bounding set, effective/permitted/inheritable, ambient) and lock the securebits so
    that no exec can bring one back."""
    libc.prctl(PR_SET_SECUREBITS, SECUREBITS_ALL_LOCKED, 0, 0, 0)
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    _check(libc.capset(header, data), "capset")


def _remove_cgroups(paths) -> None:
    for path in paths or []:
        try:
            os.rmdir(path)
        except OSError:
            pass


def _runner_main(sock, req) -> None:
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the output cap, writes fail instead of killing
    lim = req["limits"]
    uid = req.get("uid")
    libc = _libc()
    groups = _join_cgroups(lim) if req.get("isolate", True) else {}
    held = _private_namespaces(libc, int(lim.get("scratch_mb", 64)), KEEP) if req.get("isolate", True) else {}
    if held.get("pid"):
        # The next child is PID 1 of a new PID namespace: it becomes the runner. This process
        # waits for it (killing this process group kills both, and PID 1's death ends every
        # process in the namespace), then removes the cgroups.
        child = os.fork()
        if child:
            sock.close()
            os.closerange(3, 65536)
            while True:
                try:
                    os.waitpid(child, 0)
                    break
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
            _remove_cgroups(groups.get("paths"))
            os._exit(0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        try:
            _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            held["proc"] = True
        except OSError as exc:
            held["proc_error"] = str(exc)
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
        # RLIMIT_NPROC counts every process of a uid: only with a dedicated uid does it bound
        # the runner alone (with the engine's own uid it would count the instructor's processes).
        _limit(resource.RLIMIT_NPROC, lim["processes"])
    elif req.get("userns"):
        _drop_capabilities(libc)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    os.environ.clear()
    os.environ.update(req.get("env", {}))
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    course_path = [p for p in sys.path[:1] if p.startswith(BOOT)]
    sys.path[:] = course_path + [p for p in sys.path if p and not p.startswith(BOOT)] + [BOOT]
    sys.argv = ["runner"]

    import torch

    from sandbox import channel, protocol

    torch.set_num_threads(max(1, int(req.get("threads", 1))))
    numerics = protocol.Numerics(torch)  # before any student code runs
    numerics.pin()
    # The first frame, sent before any student code runs, says whether this runner can
    # work at all: a runner that cannot start CUDA is the machine's fault, never the student's.
    hello = {"cuda": None}
    if req.get("device") == "cuda":
        try:
            torch.zeros(1, device="cuda")
            fraction = float(req.get("cuda_memory_fraction") or 0)
            if 0 < fraction < 1:  # several runners share this GPU: each gets its part
                torch.cuda.set_per_process_memory_fraction(fraction)
            hello["cuda"] = "ok"
        except BaseException as exc:
            hello["cuda"] = f"{type(exc).__name__}: {exc}"[:500]
    channel.send(sock.fileno(), {"id": "hello", "ok": True, "value": hello}, protocol.Ref)
    _serve_requests(numerics, sock.fileno(), torch, channel, protocol, dict(groups, **held))


def _serve_requests(numerics, fd, torch, channel, protocol, isolation: dict) -> None:
    """Answer requests until ``bye``: each op of ``protocol.OPERATIONS`` has one handler."""
    from sandbox.host import ProgramSession, execute_program, short_error

    state = {"session": None}

    def need_session():
        if state["session"] is None:
            raise protocol.ProtocolError("no program loaded")
        return state["session"]

    def op_load(cells, answer_ids, problems):
        program = protocol.Program(cells=[tuple(c) for c in cells], answer_ids=list(answer_ids),
                                   problems=dict(problems))
        ns, errors = execute_program(program)
        state["session"] = ProgramSession(ns, errors, program.problems)
        return {"cell_errors": dict(errors), "isolation": {k: v for k, v in isolation.items() if k != "paths"}}

    def op_settings(apply=False, seed=None):
        if apply:
            numerics.pin()
        if seed is not None:
            torch.manual_seed(int(seed))
        return numerics.state()

    def op_has(name):
        return need_session().has(name)

    def op_run(target, args, kwargs, keep, grad_wrt, grad_output, param_grads_of):
        r = need_session().run(target, tuple(args), kwargs, keep=keep, grad_wrt=tuple(grad_wrt),
                               grad_output=grad_output, param_grads_of=param_grads_of)
        return {"value": r.value, "grads": r.grads, "param_grads": r.param_grads}

    def op_new(cls, args, kwargs, keep, state_dict, to_dtype, to_device):
        need_session().new(cls, *args, keep=keep, state_dict=state_dict, to_dtype=to_dtype,
                           to_device=to_device, **kwargs)
        return None

    def op_state_dict(handle):
        return need_session().state_dict(handle)

    handlers = {"load": op_load, "settings": op_settings, "has": op_has, "run": op_run, "new": op_new,
                "state_dict": op_state_dict}
    assert set(handlers) == set(protocol.OPERATIONS)

    while True:
        try:
            msg = channel.recv(fd, ref_type=protocol.Ref)
        except channel.ChannelError:
            os._exit(0)
        rid = msg.get("id") if type(msg) is dict else None
        try:
            op = msg["op"]
            if op == "bye":
                os._exit(0)
            if op not in handlers:
                raise protocol.ProtocolError(f"unknown op {op!r}")
            fields = protocol.OPERATIONS[op]
            value = handlers[op](**{k: msg.get(k) for k in fields})
            reply = {"id": rid, "ok": True, "value": value}
            try:
                channel.send(fd, reply, protocol.Ref)
                continue
            except TypeError as exc:
                reply = {"id": rid, "ok": False, "etype": "StudentError", "cause": "wrong",
                         "msg": f"the result cannot be sent back (data only): {exc}"}
        except protocol.StudentError as exc:
            reply = {"id": rid, "ok": False, "etype": "StudentError", "cause": exc.cause, "msg": str(exc)}
        except protocol.ProtocolError as exc:
            reply = {"id": rid, "ok": False, "etype": "ProtocolError", "msg": str(exc)}
        except MemoryError:
            reply = {"id": rid, "ok": False, "etype": "StudentError", "cause": "memory",
                     "msg": "the submission ran out of memory"}
        except BaseException as exc:  # the student's SystemExit included: it must not end the runner
            reply = {"id": rid, "ok": False, "etype": "StudentError", "cause": "raised", "msg": short_error(exc)}
            if isinstance(exc, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(exc)[:200]:
                reply["replace"] = True  # a CUDA error can be sticky: the harness replaces this runner
        try:
            channel.send(fd, reply, protocol.Ref)
        except channel.ChannelError:
            os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        launch(sys.argv[2])
    elif sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
