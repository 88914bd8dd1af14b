"""The sandboxed grading engine: channel, isolation, limits, fail-closed scoring,
determinism and the results store. (Engine-vs-in-process equivalence on every
assignment, solution and wrong variant is in tests/test_assignments.py; attack
submissions in tests/test_attacks.py.)"""

import json
import os
import shutil
import socket
import time
from pathlib import Path

import nbformat
import pytest
import torch

from autograder import engine
from autograder.sandbox import channel
from autograder.sandbox.protocol import EXPECTED_NUMERICS
from autograder import notebook as nbmod
from autograder.course import Course
from autograder.api import Ref, StudentError

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENTS = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir() and p.name[0] == "a")


# ---------------------------------------------------------------------------
# The channel: data only, plain tensors
# ---------------------------------------------------------------------------


def _roundtrip(obj, ref_type=None):
    header, blob = channel.encode(obj, ref_type)
    return channel.decode(header, blob, ref_type)


def test_channel_roundtrip_keeps_types_and_values():
    t = torch.randn(2, 3, dtype=torch.float64)
    obj = {"a": (t, [torch.arange(3), None, True, 3, 2.5, "s"]), "e": torch.zeros(0, 4), "n": float("nan"),
           "dt": torch.float32, "dev": torch.device("cpu"), "r": Ref("h"), "b": t[:, 1]}
    back = _roundtrip(obj, Ref)
    assert type(back["a"]) is tuple and type(back["a"][1]) is list
    assert torch.equal(back["a"][0], t) and back["a"][0].dtype == torch.float64
    assert back["e"].shape == (0, 4) and back["dt"] is torch.float32 and back["r"] == Ref("h")
    assert torch.equal(back["b"], t[:, 1]) and back["a"][1][2:] == [True, 3, 2.5, "s"]
    assert back["n"] != back["n"]


def test_channel_flattens_tensor_subclasses_and_rejects_objects():
    class Sneaky(torch.Tensor):
        def __eq__(self, other):
            return True

    back = _roundtrip(torch.ones(3).as_subclass(Sneaky))
    assert type(back) is torch.Tensor
    for bad in (object(), lambda: 0, {1, 2}, torch.nn.Linear(2, 2)):
        with pytest.raises(TypeError):
            channel.encode(bad)


def test_channel_rejects_malformed_messages():
    with pytest.raises(channel.ChannelError):
        channel.decode(b'{"$t": 0}', b"")
    with pytest.raises(channel.ChannelError):
        channel.decode(b'{"$pickle": "gASV"}', b"")
    with pytest.raises(channel.ChannelError):
        channel.decode(b"not json", b"")
    r, w = os.pipe()
    os.write(w, b"XXXX" + b"\0" * 12)
    with pytest.raises(channel.ChannelError):
        channel.recv(r, timeout=1)
    os.close(r), os.close(w)


# ---------------------------------------------------------------------------
# A runner driven directly
# ---------------------------------------------------------------------------

PROBES = '''
import os, socket, time
import torch

def whoami():
    return [os.getuid(), os.getcwd()]

def visible(paths):
    return [os.path.exists(p) for p in paths]

def can_connect(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False

def forks():
    made = 0
    for _ in range(300):  # bounded: at most 300 short-lived children even if the limit failed
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(0.5)
            os._exit(0)
        made += 1
    return made

def numerics():
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    return torch.are_deterministic_algorithms_enabled()

def crash():
    os._exit(3)

def spin():
    while True:
        pass

def add(a, b):
    return a + b

def forge(n):
    # Write a reply of our own on every descriptor: the harness must not take it.
    for fd in range(3, 64):
        try:
            os.write(fd, b"AGR1" + (10).to_bytes(4, "little") + (0).to_bytes(8, "little") + b'{"ok":true}')
        except OSError:
            pass
    return n
'''


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    cfg = engine.load_config(limits__request_seconds=5)
    sb = engine.Sandbox(cfg, Course(REPO))
    sb.start()
    yield sb
    sb.stop()


def _session(sandbox, source=PROBES):
    program = nbmod.Program(cells=[("probes_impl", source)], answer_ids=["probes_impl"])
    return engine.RemoteSession(sandbox, program, sandbox.cfg, time.monotonic() + 120)


def test_runner_is_isolated(sandbox):
    s = _session(sandbox)
    try:
        uid, cwd = s.call("whoami")
        assert not cwd.startswith(str(REPO))
        secrets = [str(p) for p in (REPO / "autograder" / "tests").glob("test_*.py")]
        secrets += [str(REPO / "solutions"), str(REPO / "autograder" / "grading.py"), str(REPO / "nbgrader_config.py")]
        if os.geteuid() == 0 and sandbox.caps.get("mounts"):
            assert uid != 0
            assert s.call("visible", secrets) == [False] * len(secrets)
        if sandbox.caps.get("net"):
            lst = socket.socket()
            lst.bind(("127.0.0.1", 0))
            lst.listen(1)
            assert s.call("can_connect", lst.getsockname()[1]) is False
            lst.close()
    finally:
        s.close()


def test_process_cap_holds(sandbox):
    s = _session(sandbox)
    try:
        made = s.call("forks")
        if sandbox.uid is not None:  # a dedicated uid: RLIMIT_NPROC applies even though we are root
            assert made < sandbox.cfg["limits"]["processes"]
    finally:
        s.close()
    assert sandbox.sweep() == []


def test_crash_and_timeout_fail_closed_then_runner_restarts(sandbox):
    s = _session(sandbox)
    try:
        assert s.call("add", 1, 2) == 3
        with pytest.raises(StudentError) as crashed:
            s.call("crash")
        assert crashed.value.cause == "crashed"
        assert s.call("add", 2, 2) == 4  # a fresh runner
        t = time.monotonic()
        with pytest.raises(StudentError) as spun:
            s.call("spin")
        assert spun.value.cause == "timeout"
        assert time.monotonic() - t < 30
        assert s.call("add", 3, 2) == 5
    finally:
        s.close()


def test_forged_reply_is_not_taken(sandbox):
    s = _session(sandbox)
    try:
        with pytest.raises(StudentError) as forged:
            s.call("forge", 7)
        assert forged.value.cause == "protocol"
    finally:
        s.close()


def test_numerics_are_pinned_before_each_test(sandbox):
    s = _session(sandbox)
    try:
        s.before_test("test_x")
        assert s.call("numerics") is False  # the student turned determinism off ...
        s.before_test("test_y")  # ... and the harness pins it again (and checks it) before the next test
        assert s.request("settings", "reading numerics settings") == EXPECTED_NUMERICS
    finally:
        s.close()


PLANTER = '''
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)

def plant():
    print("SECRET-OUTPUT-OF-THE-PLANTER", flush=True)
    open("/tmp/planted.txt", "w").write("planted")
    if os.path.isdir("/dev/shm"):
        open("/dev/shm/planted", "w").write("planted")
    shm = libc.shmget(0x5EC12E7, 4096, 0o1000 | 0o666)  # IPC_CREAT
    if os.fork() == 0:  # a daemon that would outlive the submission
        os.setsid()
        time.sleep(120)
        os._exit(0)
    return [shm, os.getpid()]
'''

VICTIM = '''
import ctypes, glob, os
libc = ctypes.CDLL(None, use_errno=True)

def look():
    traces = []
    for path in glob.glob("/tmp/**", recursive=True) + glob.glob("/dev/shm/*"):
        if not os.path.isfile(path):
            continue
        try:
            data = open(path, "rb").read()
        except OSError:
            continue
        if b"planted" in data or b"SECRET-OUTPUT" in data:
            traces.append(path)
    if libc.shmget(0x5EC12E7, 0, 0) != -1:
        traces.append("shm")
    traces += [f"process {p}" for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    return traces
'''

HOG = '''
import os

def hog(children, mb):
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            block = bytearray(mb << 20)
            for i in range(0, len(block), 4096):  # touch every page: resident memory
                block[i] = 1
            os._exit(0)
        pids.append(pid)
    finished = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        finished += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return finished
'''


LEAKY = '''
import os, socket, threading, time

def leak_descriptors():
    kept = []
    try:
        while True:
            kept.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    globals()["_kept"] = kept
    return len(kept)

def open_one():
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return True

def reply_then_babble():
    def babble():  # bytes nobody asked for, after the reply, on every descriptor that may be the channel
        time.sleep(0.3)
        for fd in range(3, 64):
            try:
                os.write(fd, b"AGR1garbage")
            except OSError:
                pass
    threading.Thread(target=babble, daemon=True).start()
    return 1

def reply_then_die():
    threading.Timer(0.3, lambda: os._exit(5)).start()
    return 2

def add(a, b):
    return a + b
'''


def test_leftovers_of_one_grade_cell_never_fail_the_next(sandbox):
    s = _session(sandbox, LEAKY)
    try:
        s.before_test("test_first__leak")
        assert s.call("leak_descriptors") > 100
        s.before_test("test_second__open")  # another grade cell: a fresh runner
        assert s.call("open_one") is True
        for what in ("reply_then_babble", "reply_then_die"):
            s.before_test(f"test_third__{what}")
            assert s.call(what) in (1, 2)
            time.sleep(1.0)
            s.before_test(f"test_third__{what}_next")  # same grade cell: replaced, since the runner misbehaved
            assert s.call("add", 2, 3) == 5
        assert s.events == []  # nothing was charged
    finally:
        s.close()


def test_nothing_of_one_submission_is_visible_to_the_next(sandbox):
    per = sandbox.caps["per_runner"]
    assert per.get("tmp") and per.get("ipc") and per.get("pid") and per.get("proc"), per
    planter = _session(sandbox, PLANTER)
    try:
        shm, pid = planter.call("plant")
        assert shm >= 0
    finally:
        planter.close()
    victim = _session(sandbox, VICTIM)
    try:
        assert victim.call("look") == []
    finally:
        victim.close()


def test_memory_cap_holds_for_a_runner_and_its_children_together(tmp_path):
    cfg = engine.load_config(limits__request_seconds=60, limits__total_memory_mb=600)
    sb = engine.Sandbox(cfg, Course(REPO))
    sb.start()
    try:
        if not sb.caps["per_runner"].get("memory"):
            pytest.skip(f"no memory cgroup for runners on this machine: {sb.caps['per_runner']}")
        s = _session(sb, HOG)
        try:
            assert s.call("hog", 2, 100) == 2  # 200 MiB together: under the cap
            finished = s.call("hog", 4, 250)  # 1000 MiB together: over it, though each child is small
        except StudentError as exc:  # the whole runner may be the one the OOM killer picks
            assert exc.cause == "crashed"
        else:
            assert finished < 4
        finally:
            s.close()
    finally:
        sb.stop()


# ---------------------------------------------------------------------------
# Batches: infrastructure faults, the results store, regrades
# ---------------------------------------------------------------------------


@pytest.fixture
def course(tmp_path):
    """A minimal course: one real assignment's source and hidden tests."""
    a = ASSIGNMENTS[0]
    (tmp_path / "solutions" / a).mkdir(parents=True)
    (tmp_path / "autograder" / "tests").mkdir(parents=True)
    nbformat.write(nbmod.read_notebook(Course().source(a)), tmp_path / "solutions" / a / f"{a}.ipynb")
    shutil.copytree(REPO / "seqcourse", tmp_path / "seqcourse", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("conftest.py", f"test_{a}.py"):
        (tmp_path / "autograder" / "tests" / f).write_bytes((REPO / "autograder" / "tests" / f).read_bytes())
    return tmp_path, a


def _first_test_per_grade_id(a):
    import re

    text = (REPO / "autograder" / "tests" / f"test_{a}.py").read_text()
    names = re.findall(r"^def (test_\w+)\(", text, re.M)
    firsts = {}
    for n in names:
        firsts.setdefault(n.split("__")[0], n)
    return " or ".join(sorted(firsts.values()))


@pytest.mark.slow
def test_infrastructure_faults_are_retried_and_never_scored(course, tmp_path):
    root, a = course
    sol = str(root / "solutions" / a / f"{a}.ipynb")
    extra = ["-k", _first_test_per_grade_id(a)]
    cfg = engine.load_config(engine__retries=1)
    marker = tmp_path / "faulted-once"

    def die_once(job):  # the harness process dies on the first attempt only
        if not marker.exists():
            marker.write_text("x")
            os._exit(9)

    seen = []
    res = engine.grade_batch([engine.Job(a, sol, "s1")], course=root, cfg=cfg, workers=1, extra_args=extra,
                             progress=False, inject_fault=die_once, on_result=lambda j, r: seen.append(r))
    rep = res["s1"]
    assert rep["status"] == "graded" and rep["attempts"] == 2
    assert rep["scores"] == rep["max_scores"] and len(seen) == 1
    stored = list((root / ".grading" / a).glob("*.json"))
    assert len(stored) == 1

    def always_fail(job):
        raise RuntimeError("the GPU fell off the bus")

    res = engine.grade_batch([engine.Job(a, sol, "s1")], course=root, cfg=cfg, workers=1, extra_args=extra,
                             progress=False, inject_fault=always_fail, force=True)
    assert res["s1"]["status"] == "not graded" and res["s1"]["scores"] == {}
    assert "GPU fell off" in res["s1"]["error"]
    # The valid result is still there, unchanged, and a plain regrade reuses it.
    assert json.loads(stored[0].read_text())["scores"] == rep["scores"]
    again = engine.grade_batch([engine.Job(a, sol, "s1")], course=root, cfg=cfg, workers=1, extra_args=extra,
                               progress=False)
    assert again["s1"].get("cached") and again["s1"]["scores"] == rep["scores"]


@pytest.mark.slow
def test_regrade_is_identical(course):
    root, a = course
    sol = str(root / "solutions" / a / f"{a}.ipynb")
    extra = ["-k", _first_test_per_grade_id(a)]
    cfg = engine.load_config()
    runs = [engine.grade_batch([engine.Job(a, sol, "s")], course=root, cfg=cfg, workers=1, extra_args=extra,
                               progress=False, force=True)["s"] for _ in range(2)]
    strip = [{"scores": r["scores"], "tests": r["tests"]} for r in runs]
    assert strip[0] == strip[1]


def test_config_has_documented_defaults(tmp_path):
    cfg = engine.load_config()
    readme = (REPO / "autograder" / "README.md").read_text()
    for section in cfg.values():
        for key in section:
            assert f"`{key}`" in readme, f"{key} is not documented in autograder/README.md"
    with pytest.raises(ValueError):
        bad = tmp_path / "bad-config.toml"
        bad.write_text("[limits]\nno_such_limit = 1\n")
        engine.load_config(bad)


@pytest.mark.slow
def test_a_batch_from_a_process_that_used_openmp_threads_does_not_hang(tmp_path):
    """A harness is forked from the engine; if the engine has run a parallel tensor operation (a
    notebook or a test suite that grades in-process), the child's first parallel region must not
    wait for the OpenMP threads that stayed behind in the parent."""
    if torch.get_num_threads() < 2:
        torch.set_num_threads(2)
    x = torch.randn(1024, 4096)
    x.log_softmax(-1).sum().item()  # the parent now has an OpenMP team
    a = "a02_rnn_from_scratch"
    cfg = engine.load_config()
    cfg["engine"]["results_dir"] = str(tmp_path / "store")
    cfg["limits"]["submission_seconds"], cfg["engine"]["harness_grace_seconds"] = 90, 10
    cfg["engine"]["retries"] = 0
    rep = engine.grade_batch([engine.Job(a, str(Course().source(a)), "s")], cfg=cfg, workers=1,
                             progress=False, force=True, canary=False)["s"]
    assert rep["status"] == "graded", rep.get("error")
    assert rep["scores"] == rep["max_scores"]
