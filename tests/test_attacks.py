"""Attack submissions against the sandboxed engine.

Each attack notebook is the solution of the first real assignment with one
answer cell replaced by an attack (or its cells tampered with). An attack
that works would earn the attacked points; the engine must give them 0, keep
full marks on the untouched parts, and go on with the batch. Everything is
graded in one engine batch, on a few hidden tests per grade cell, with tight
limits so that timeouts and bombs resolve quickly.
"""

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import engine
from autograder import notebook as nbmod
from autograder.course import Course
from tests import unprivileged

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "a01_text_and_ngrams"
# One hidden test per grade cell keeps the batch quick.
SELECT = ("tokenize__word or vocab__encode_decode or ngram_counts__bigrams or bigram_probs__add_one or "
          "perplexity__one_sequence")
LIMITS = """
[limits]
request_seconds = 10
program_seconds = 120
submission_seconds = 90
memory_mb = 4608
processes = 48
output_mb = 2
"""

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (REPO / "solutions" / ASSIGNMENT).is_dir(), reason=f"{ASSIGNMENT} is not in this course")]

# A correct implementation the attacks fall back on *only if the attack worked*:
# so a working attack would score, and a blocked one scores 0.
_TOKENIZE_OK = '''
def _honest(text, mode="word"):
    if mode not in ("char", "word", "zh_char", "zh_word"):
        raise ValueError(mode)
    text = text.lower()
    if mode == "char":
        return list(" ".join(text.split()))
    if mode == "word":
        return re.findall(r"[a-z0-9']+", text)
    raise ValueError(mode)
'''

ATTACKS = {
    # name: (answer cell, new source, grade cells that must get 0)
    "gc_and_frame_walk": ("tokenize_impl", _TOKENIZE_OK + '''
import gc, sys, types
def tokenize_text(text, mode="word"):
    # In-process this finds the hidden test module's functions and the harness's frames.
    found = [o for o in gc.get_objects() if isinstance(o, types.FunctionType)
             and str(getattr(o, "__module__", "")).startswith("test_a") and o.__name__.startswith("test_")]
    f = sys._getframe()
    while f is not None:
        found += [k for k in f.f_globals if k in ("assert_close", "check_tensor", "sub")]
        f = f.f_back
    return _honest(text, mode) if found else []
''', ["test_tokenize"]),
    "read_hidden_tests": ("tokenize_impl", _TOKENIZE_OK + '''
import glob, os
def tokenize_text(text, mode="word"):
    hits = []
    for pattern in ("/work/**/tests/test_a0*.py", "/tmp/**/tests/test_a0*.py", "/home/**/tests/test_a0*.py",
                    "/root/**/tests/test_a0*.py", "/work/*/solutions/*/*.ipynb", "/work/*/gradebook.db"):
        hits += glob.glob(pattern, recursive=True)
    hits += [p for p in ["HIDDEN", "SOLUTION", "GRADEBOOK"] if os.path.exists(p)]
    return _honest(text, mode) if hits else []
''', ["test_tokenize"]),
    "proc_walk": ("tokenize_impl", _TOKENIZE_OK + '''
import glob
def tokenize_text(text, mode="word"):
    # Other processes' views of the file system, and their command lines (notebook paths).
    hits = []
    for pattern in ("/proc/*/root/work/*/autograder/tests/test_a0*.py", "/proc/*/cwd/autograder/tests/test_a0*.py",
                    "/proc/*/root/tmp/*/course/autograder/tests/test_a0*.py"):
        hits += glob.glob(pattern)
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if b".ipynb" in open(path, "rb").read():
                hits.append(path)
        except OSError:
            pass
    return _honest(text, mode) if hits else []
''', ["test_tokenize"]),
    "network": ("tokenize_impl", _TOKENIZE_OK + '''
import socket
def tokenize_text(text, mode="word"):
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
        return _honest(text, mode)
    except OSError:
        return []
''', ["test_tokenize"]),
    "eq_torch_function_allclose": ("bigram_impl", '''
import torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: True
class Liar(torch.Tensor):
    def __eq__(self, other): return True
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return True
def bigram_probs(token_ids, vocab_size, k=1.0):
    return torch.zeros(vocab_size, vocab_size, dtype=torch.float64, device=token_ids.device).as_subclass(Liar)
''', ["test_bigram_probs", "test_perplexity"]),  # the patched __eq__ also breaks their own perplexity
    "print_passed_and_exit": ("ppl_impl", '''
print("All tests passed!")
import sys
sys.exit(0)
def bigram_perplexity(probs, sequences):
    return 1.0
''', ["test_perplexity"]),
    "os_exit": ("vocab_impl", '''
import os
class Vocabulary:
    def __init__(self, tokens, min_freq=1, reserved_tokens=None):
        print("All tests passed!", flush=True)
        os._exit(0)
''', ["test_vocab"]),
    "infinite_loop": ("ngram_impl", '''
def ngram_counts(tokens, n):
    while True:
        pass
''', ["test_ngram_counts"]),
    "memory_bomb": ("bigram_impl", '''
def bigram_probs(token_ids, vocab_size, k=1.0):
    hog = []
    for _ in range(16):  # at most 2 GiB even if the cap failed
        hog.append(bytearray(128 << 20))
    return torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
''', ["test_bigram_probs"]),
    "fork_bomb": ("ngram_impl", '''
import os, time
def ngram_counts(tokens, n):
    made = 0
    for _ in range(300):  # bounded, children exit quickly, so it cannot hurt even without a limit
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(0.5)
            os._exit(0)
        made += 1
    return {"forks": made}
''', ["test_ngram_counts"]),
    "output_flood": ("ngram_impl", '''
def ngram_counts(tokens, n):
    for _ in range(200000):
        print("x" * 999)
    return {}
''', ["test_ngram_counts"]),
}


def _source():
    return nbmod.read_notebook(Course().source(ASSIGNMENT))


def _cell(nb, gid):
    return [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == gid]


def _attack_notebooks(port: int) -> dict:
    nbs = {}
    for name, (gid, src, breaks) in ATTACKS.items():
        nb = copy.deepcopy(_source())
        _cell(nb, gid)[0].source = src.replace("PORT", str(port))
        nbs[name] = (nb, breaks)
    nb = copy.deepcopy(_source())
    nb.cells.remove(_cell(nb, "ngram_impl")[0])
    nbs["deleted_cell"] = (nb, ["test_ngram_counts"])
    nb = copy.deepcopy(_source())
    cell = _cell(nb, "bigram_impl")[0]
    nb.cells.insert(nb.cells.index(cell), copy.deepcopy(cell))
    nbs["duplicated_cell"] = (nb, ["test_bigram_probs"])
    nb = copy.deepcopy(_source())
    cell = _cell(nb, "ppl_impl")[0]
    nb.cells[nb.cells.index(cell)] = nbformat.v4.new_markdown_cell(cell.source, metadata=cell.metadata)
    nbs["retyped_cell"] = (nb, ["test_perplexity"])
    nb = copy.deepcopy(_source())
    for c in nb.cells:  # forged points everywhere, and a forged extra grade cell
        md = c.get("metadata", {}).get("nbgrader")
        if md:
            md["points"] = 1000
            md["grade"] = True
    nb.cells.append(nbformat.v4.new_code_cell("pass", metadata={"nbgrader": {
        "grade": True, "grade_id": "test_bonus", "points": 500, "solution": False, "locked": True}}))
    nbs["forged_points"] = (nb, [])
    nb = copy.deepcopy(_source())
    _cell(nb, "vocab_impl")[0].metadata["nbgrader"]["grade_id"] = "tokenize_impl"
    nbs["forged_grade_id"] = (nb, ["test_tokenize", "test_vocab"])
    return nbs


def _as(user: str, d: Path):
    """(command prefix, course directory, environment) to run the engine as ``user``."""
    env = dict(os.environ)
    if user == "root":
        return [sys.executable], REPO, env
    why = unprivileged.available()
    if why:
        pytest.skip(why)
    uid, gid = unprivileged.grading_user()
    python = unprivileged.user_python(d)
    course = unprivileged.course_copy(d, [ASSIGNMENT])
    env.update(HOME=str(d), PYTHONDONTWRITEBYTECODE="1")
    unprivileged.hand_over(d, uid, gid)
    probe = subprocess.run(unprivileged.as_user([python, "-c", "import torch, autograder.engine"], uid, gid),
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    if probe.returncode != 0:  # e.g. a checkout inside a directory only root may enter
        pytest.skip(f"the test user cannot import this environment: {probe.stderr.strip()[-300:]}")
    return unprivileged.as_user([python], uid, gid), course, env


@pytest.fixture(scope="module", params=["root", "user"])
def graded(request, tmp_path_factory):
    """Every attack graded in one batch, as root and as a normal user (user namespaces)."""
    d = tmp_path_factory.mktemp("attacks") if request.param == "root" else unprivileged.workspace()
    prefix, course, env = _as(request.param, d)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    nbs = _attack_notebooks(port)
    paths = []
    for name, (nb, _) in nbs.items():
        p = d / "nb" / f"{name}.ipynb"
        p.parent.mkdir(exist_ok=True)
        nbformat.write(nb, p)
        paths.append(str(p))
    (d / "config.toml").write_text(LIMITS)
    if request.param != "root":
        unprivileged.hand_over(d, *unprivileged.grading_user())
    proc = subprocess.run(
        [*prefix, "-m", "autograder", "files", ASSIGNMENT, *paths, "--json-dir", str(d / "out"),
         "--workers", "2", "--force", "--no-progress", "-k", SELECT, "--config", str(d / "config.toml"),
         "--course", str(course)],
        cwd=REPO, capture_output=True, text=True, timeout=1800, env=env)
    listener.close()
    reports = {p.stem: json.loads(p.read_text()) for p in (d / "out").glob("*.json")}
    yield nbs, reports, proc
    if request.param != "root":
        shutil.rmtree(d, ignore_errors=True)


def test_every_attack_was_graded(graded):
    nbs, reports, proc = graded
    assert set(reports) == set(nbs), proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, rep in reports.items():
        assert rep["status"] == "graded", (name, rep.get("error"))


@pytest.mark.parametrize("attack", sorted(list(ATTACKS) + ["deleted_cell", "duplicated_cell", "retyped_cell",
                                                           "forged_points", "forged_grade_id"]))
def test_attack_scores_zero_on_attacked_parts_only(graded, attack):
    nbs, reports, _ = graded
    rep = reports[attack]
    breaks = nbs[attack][1]
    source_points = {c.grade_id: c.points for c in nbmod.grade_cells(_source()) if c.kind == "autograded"}
    assert rep["max_scores"] == source_points  # points come from the source, never the submission
    for gid, full in rep["max_scores"].items():
        if gid in breaks:
            assert rep["scores"][gid] == 0, (attack, gid, rep["tests"])
        else:
            assert rep["scores"][gid] == full, (attack, gid, rep["tests"], rep.get("error"))


def test_failures_carry_typed_causes(graded):
    _, reports, _ = graded

    def causes(name, gid):
        return {t["cause"] for t in reports[name]["tests"] if t["grade_id"] == gid}

    assert causes("infinite_loop", "test_ngram_counts") == {"timeout"}
    assert causes("os_exit", "test_vocab") == {"crashed"}
    assert causes("memory_bomb", "test_bigram_probs") == {"memory"}
    for attack, gid in [("deleted_cell", "test_ngram_counts"), ("duplicated_cell", "test_bigram_probs"),
                        ("retyped_cell", "test_perplexity")]:
        assert causes(attack, gid) == {"missing"}
    assert causes("forged_points", "test_tokenize") == {"passed"}
