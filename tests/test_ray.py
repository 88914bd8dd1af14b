"""The Ray back end (``--cluster ray``) on a local cluster: a head with no CPU and two
worker nodes of one CPU each, started once for the module.

* Solutions, releases, wrong variants and attack submissions of two assignments
  get the same scores, test outcomes and causes as on the local back end.
* Losing a worker node mid-batch charges nobody; the gradebook stays intact and a
  rerun grades the rest (and only the rest).
* An attack that kills its own runner, or looks for Ray from inside the sandbox,
  gets 0 on the attacked test and disturbs nothing else.
"""

import copy
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import nbformat
import pytest

ray = pytest.importorskip("ray", reason="Ray is in requirements.lock; `make test` installs it")

from ray.cluster_utils import Cluster  # noqa: E402

from autograder import engine  # noqa: E402
from autograder import notebook as nbmod  # noqa: E402
from autograder import workflow  # noqa: E402
from autograder.course import Course  # noqa: E402
from autograder.engine import cluster as ray_backend  # noqa: E402
from autograder.engine.batch import CANARY  # noqa: E402
from tests import unprivileged  # noqa: E402
from tests.test_attacks import _TOKENIZE_OK, _cell  # noqa: E402
from tests.variants import load_variants, make_variant_notebook  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
A01, A02 = "a01_text_and_ngrams", "a02_rnn_from_scratch"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all((REPO / "solutions" / a).is_dir() for a in (A01, A02)), reason="needs a01 and a02")]

# The attack looks for Ray from inside the runner; it returns correct tokens only if it found
# anything (and a token that is always wrong otherwise), so a blocked attack scores 0 on
# test_tokenize and a working one would score.
RAY_REACH = _TOKENIZE_OK + '''
import glob, os, socket
def tokenize_text(text, mode="word"):
    found = [k for k, v in os.environ.items() if "RAY" in k.upper() or "ray" in v.lower()]
    for pattern in ("/tmp/ray", "/tmp/ray/session_*/sockets/*", "/dev/shm/*", "/root/.ray/*", "/proc/*/environ"):
        for path in glob.glob(pattern):
            try:
                if path.endswith("environ") and b"RAY_" not in open(path, "rb").read():
                    continue
            except OSError:
                continue
            found.append(path)
    for host, port in ADDRESSES:
        try:
            socket.create_connection((host, port), timeout=2).close()
            found.append(f"{host}:{port}")
        except OSError:
            pass
    for path in UNIX_SOCKETS:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(path)
            found.append(path)
        except OSError:
            pass
    return _honest(text, mode) if found else ["<nothing found>"]
'''

KILL_OWN_RUNNER = '''
import ctypes, os, signal
class Vocabulary:
    def __init__(self, tokens, min_freq=1, reserved_tokens=None):
        os.kill(os.getpid(), signal.SIGKILL)  # may not end it (a PID namespace's init ignores it)
        ctypes.string_at(0)  # a segmentation fault is not
'''


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray_backend.connect(c.address)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def _config(tmp: Path, **engine_keys) -> dict:
    cfg = engine.load_config()
    cfg["engine"]["results_dir"] = str(tmp / "store")
    cfg["engine"].update(engine_keys)
    return cfg


def _compact(report: dict):
    """What must agree between back ends: the scores and every test's outcome and cause."""
    return (report["status"], report["scores"], report["max_scores"],
            sorted((t["name"], t["outcome"], t["cause"]) for t in report["tests"]))


def _ray_reach_source(address: str) -> str:
    host, port = address.rsplit(":", 1)
    sockets = sorted(str(p) for p in Path("/tmp/ray").glob("session_latest/sockets/*"))
    return RAY_REACH.replace("ADDRESSES", repr([(host, int(port)), ("127.0.0.1", int(port))])) \
                    .replace("UNIX_SOCKETS", repr(sockets))


def _notebooks(d: Path, address: str) -> dict:
    """job id -> (path, grade cells an attack must lose): solution, release, variants, attacks."""
    out = {}
    for a in (A01, A02):
        nbs = {"solution": nbmod.read_notebook(Course().source(a)),
               "release": nbmod.read_notebook(Course().release(a))}
        name, spec = next((n, v) for n, v in load_variants(a).items() if v["breaks"])
        nbs[f"variant-{name}"] = make_variant_notebook(a, spec)
        for name, nb in nbs.items():
            out[f"{a[:3]}-{name}"] = (a, nb, None)
    src = nbmod.read_notebook(Course().source(A01))
    for name, (gid, text, breaks) in {"ray_reach": ("tokenize_impl", _ray_reach_source(address), ["test_tokenize"]),
                                      "kill_own_runner": ("vocab_impl", KILL_OWN_RUNNER, ["test_vocab"])}.items():
        nb = copy.deepcopy(src)
        _cell(nb, gid)[0].source = text
        out[f"a01-attack-{name}"] = (A01, nb, breaks)
    jobs = {}
    for job_id, (a, nb, breaks) in out.items():
        path = d / f"{job_id}.ipynb"
        nbformat.write(nb, path)
        jobs[job_id] = (engine.Job(a, str(path), job_id), breaks)
    return jobs


@pytest.fixture(scope="module")
def both(cluster, tmp_path_factory):
    """One batch on the cluster and the same batch on the local back end."""
    c, _ = cluster
    d = tmp_path_factory.mktemp("ray-vs-local")
    jobs = _notebooks(d, c.address)
    sched = ray_backend.RayScheduler(Course(), _config(d / "ray"), progress=False, force=True)
    on_ray = sched.run([copy.copy(j) for j, _ in jobs.values()])
    local = engine.grade_batch([copy.copy(j) for j, _ in jobs.values()], cfg=_config(d / "local"), workers=2,
                               progress=False, force=True)
    return jobs, on_ray, local, sched


def test_ray_grades_exactly_as_the_local_back_end(both):
    jobs, on_ray, local, _ = both
    assert set(on_ray) == set(local) == set(jobs)
    for job_id in jobs:
        assert on_ray[job_id]["status"] == "graded", (job_id, on_ray[job_id].get("error"))
        assert _compact(on_ray[job_id]) == _compact(local[job_id]), job_id
    for a in ("a01", "a02"):
        sol, rel = on_ray[f"{a}-solution"], on_ray[f"{a}-release"]
        assert sol["scores"] == sol["max_scores"] and not any(rel["scores"].values())


def test_every_node_is_used_and_reports_its_isolation(both):
    _, on_ray, _, sched = both
    assert len(sched.nodes) == 2  # the two worker nodes; the head has no CPU
    for node, info in sched.nodes.items():
        assert info["missing"] == [], (node, info["missing"])
        assert info["limits"] == engine.load_config()["limits"]
        assert not info["hidden_tests_in_code"]  # the hidden tests travel in the bundle only
    assert {r["node"] for r in on_ray.values()} == set(sched.nodes)
    assert sum(c["graded"] for c in sched.progress.per_node.values()) == len(on_ray)


def test_attacks_on_ray_lose_the_attacked_points_only(both):
    jobs, on_ray, _, _ = both
    for job_id, (job, breaks) in jobs.items():
        if breaks is None:
            continue
        rep = on_ray[job_id]
        for gid, full in rep["max_scores"].items():
            if gid in breaks:
                assert rep["scores"][gid] < full, (job_id, gid)
            else:
                assert rep["scores"][gid] == full, (job_id, gid, rep["tests"])

    def cause(job_id, test):
        return next(t["cause"] for t in on_ray[job_id]["tests"] if t["name"] == test)

    # It ran with no Ray address, token, socket or session directory in reach, and said so.
    assert cause("a01-attack-ray_reach", "test_tokenize__word") == "wrong"
    assert "crashed" in {t["cause"] for t in on_ray["a01-attack-kill_own_runner"]["tests"]
                         if t["grade_id"] == "test_vocab"}
    assert on_ray["a01-attack-kill_own_runner"]["scores"]["test_vocab"] == 0


def _course_with_gradebook(d: Path) -> Course:
    root = unprivileged.course_copy(d, [A01])
    shutil.copy(REPO / "nbgrader_config.py", root)
    workflow.generate(root, [A01])
    return Course(root)


def _gradebook_totals(course: Course) -> dict:
    from nbgrader.api import Gradebook

    with Gradebook(course.gradebook_url) as gb:
        return {s.student.id: s.score for s in gb.find_assignment(A01).submissions}


def test_losing_nodes_mid_batch_charges_nobody_and_a_rerun_grades_the_rest(cluster, tmp_path):
    """The node grading a slow submission dies: it is retried on the other node, which dies too.
    It ends "not graded" after its two attempts, the jobs left waiting for a worker end "not graded",
    the gradebook holds exactly the graded ones, and a rerun on the healed cluster grades the rest."""
    from autograder.gradebook import GradebookWriter

    c, workers = cluster
    course = _course_with_gradebook(tmp_path)
    src = nbmod.read_notebook(course.source(A01))
    slow = copy.deepcopy(src)  # a correct submission that takes a few seconds to load: in flight for sure
    _cell(slow, "tokenize_impl")[0].source = "import time\ntime.sleep(4)\n" + _cell(slow, "tokenize_impl")[0].source
    nbs = {"slow": slow, "solution": src, "release": nbmod.read_notebook(course.release(A01))}
    for name, spec in list(load_variants(A01).items())[:2]:
        nbs[name] = make_variant_notebook(A01, spec)
    jobs = []
    for student, nb in nbs.items():
        path = course.submitted(student, A01)
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)
        jobs.append(engine.Job(A01, str(path), student))

    killed = []

    def on_dispatch(job, node):  # kill whichever node takes the slow submission, a second later
        if job.job_id == "slow":
            victim = next(w for w in workers if w.node_id.startswith(node.split("/")[1]))
            killed.append(node)
            workers.remove(victim)
            threading.Timer(1.0, c.remove_node, [victim]).start()

    writer = GradebookWriter(course)  # one writer, in the driver, as `python -m autograder grade` keeps

    def on_result(job, report):
        writer.write(job.assignment, job.job_id, report, job.notebook)

    cfg = _config(tmp_path, retries=1, worker_start_seconds=20)
    first = ray_backend.RayScheduler(course, cfg, progress=False, on_result=on_result, on_dispatch=on_dispatch)
    results = first.run([copy.copy(j) for j in jobs])
    writer.close()
    assert len(killed) == 2 and killed[0] != killed[1]  # the retry went to the other node
    assert set(results) == set(nbs)
    lost = results["slow"]
    assert lost["status"] == "not graded" and lost["cause"] == "not_graded" and not lost["scores"]
    assert lost["attempts"] == 2 and killed[1] in lost["error"]
    assert first.progress.per_node[killed[0]]["retried"] == 1
    assert first.progress.per_node[killed[1]]["not graded"] == 1
    graded = {s: r for s, r in results.items() if r["status"] == "graded"}
    for s, r in results.items():
        assert r["status"] in ("graded", "not graded") and (r["status"] == "graded") == bool(r["scores"])
    assert first.progress.counts["graded"] == len(graded)
    assert first.progress.counts["not graded"] == len(nbs) - len(graded)
    totals = _gradebook_totals(course)
    assert set(totals) == set(graded)  # nothing of a lost submission reached the gradebook
    for s, r in graded.items():
        assert totals[s] == pytest.approx(sum(r["scores"].values()))

    workers.extend(c.add_node(num_cpus=1) for _ in range(2))  # the cluster heals; the driver starts again
    c.wait_for_nodes()
    again = ray_backend.RayScheduler(course, _config(tmp_path), workers=1, progress=False,
                                     on_result=on_result).run([copy.copy(j) for j in jobs])
    writer.close()
    assert all(r["status"] == "graded" for r in again.values())
    assert {s for s, r in again.items() if not r.get("cached")} == set(nbs) - set(graded)  # only the rest
    for s, r in graded.items():
        assert again[s]["scores"] == r["scores"]
    assert again["slow"]["scores"] == again["solution"]["scores"] == again["solution"]["max_scores"]
    totals = _gradebook_totals(course)
    assert set(totals) == set(nbs)
    for s, r in again.items():
        assert totals[s] == pytest.approx(sum(r["scores"].values()))


def test_a_node_with_weak_isolation_is_refused_with_the_reason(cluster, tmp_path):
    cfg = _config(tmp_path)
    cfg["sandbox"]["isolate"] = False  # every node now lacks the guarantees the driver requires
    job = engine.Job(A01, str(Course().source(A01)), "solution")
    with pytest.raises(engine.WeakIsolation) as err:
        ray_backend.RayScheduler(Course(), cfg, progress=False, canary=False).run([job])
    assert "every node was refused" in str(err.value) and "--allow-weak-isolation" in str(err.value)
    assert not (tmp_path / "store" / A01).exists() or not list((tmp_path / "store" / A01).glob("*.json"))


def test_a_cuda_batch_uses_the_gpu_ray_assigns_and_never_scores_without_one(cluster, tmp_path):
    """A node that advertises one GPU (this machine has none): the actor asks Ray for {"GPU": 1}, its
    sandbox passes Ray's CUDA_VISIBLE_DEVICES on unchanged, and a runner that cannot use CUDA makes
    the submission "not graded", never a zero."""
    c, _ = cluster
    gpu_node = c.add_node(num_cpus=0, num_gpus=1)
    c.wait_for_nodes()
    try:
        sched = ray_backend.RayScheduler(Course(), _config(tmp_path, retries=0), device="cuda", progress=False,
                                         canary=False)
        results = sched.run([engine.Job(A01, str(Course().source(A01)), "solution")])
    finally:
        c.remove_node(gpu_node)
    assert sched.options["num_gpus"] == 1 and sched.options["num_cpus"] == 0
    (info,) = sched.nodes.values()
    assert info["node_id"] == gpu_node.node_id and info["cuda_visible_devices"] == "0"
    assert results["solution"]["status"] == "not graded" and not results["solution"]["scores"]
    assert "CUDA" in results["solution"]["error"] or "GPU" in results["solution"]["error"]


def test_the_local_back_end_never_imports_ray():
    import subprocess

    code = ("import sys; from autograder import cli, engine; from autograder.engine import batch; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
