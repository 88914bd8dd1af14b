"""Attack submissions against the sandboxed engine, on a05_transformer.

Each attack notebook is the solution of a05 with one answer cell replaced by an
attack on the comparisons that grade it: patched comparison functions, a tensor
subclass that claims equality, a search of the process for the harness's
reference model, a fake success message followed by ``sys.exit(0)``, and
``os._exit(0)`` in the middle of a request. Each attack falls back on the
honest answer *only if the attack worked*, so a working attack would score and
a blocked one scores 0. Everything is graded in one engine batch on one hidden
test per grade cell.
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import notebook as nbmod
from autograder.course import Course

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "a05_transformer"
# One hidden test per grade cell keeps the batch quick.
SELECT = ("positional_encoding__single_position or causal_mask__single_step or multi_head_attention__no_bias or "
          "encoder_layer__pre_norm or causal_lm__positions_matter or kv_cache__chunk_after_a_cache or "
          "generate__length_one_prompt")
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

# The honest generate, which an attack calls only when it believes it has won.
_HONEST = '''
@torch.no_grad()
def _honest_generate(self, ids, max_new_tokens, use_cache=True):
    out = ids.clone()
    for _ in range(max_new_tokens):
        nxt = self(out)[:, -1].argmax(dim=-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out


def _wrong(ids, max_new_tokens):
    return torch.zeros(ids.shape[0], ids.shape[1] + max_new_tokens, dtype=torch.long, device=ids.device)
'''

ATTACKS = {
    # name: (answer cell, new source, grade cells that must get 0)
    "patched_comparisons": ("generate_impl", _HONEST + '''
torch.equal = lambda a, b: True
torch.allclose = lambda *args, **kwargs: True
torch.Tensor.__eq__ = lambda self, other: torch.ones(self.shape, dtype=torch.bool)


def generate(self, ids, max_new_tokens, use_cache=True):
    return _wrong(ids, max_new_tokens)


CausalLM.generate = generate
''', ["test_generate"]),
    "tensor_subclass_claims_equality": ("generate_impl", _HONEST + '''
class _Liar(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.equal, torch.allclose, torch.Tensor.__eq__):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def generate(self, ids, max_new_tokens, use_cache=True):
    return _wrong(ids, max_new_tokens).as_subclass(_Liar)


CausalLM.generate = generate
''', ["test_generate"]),
    "find_the_reference_model": ("generate_impl", _HONEST + '''
import gc


def generate(self, ids, max_new_tokens, use_cache=True):
    # In the grading process itself this finds the harness's reference model.
    found = [o for o in gc.get_objects() if type(o).__name__ in ("_RefLM", "TransformerEncoderLayer")
             and type(o).__module__ != "__submission__"]
    return _honest_generate(self, ids, max_new_tokens) if found else _wrong(ids, max_new_tokens)


CausalLM.generate = generate
''', ["test_generate"]),
    "claim_success_and_exit": ("generate_impl", _HONEST + '''
import sys


def generate(self, ids, max_new_tokens, use_cache=True):
    print("All tests passed")
    sys.exit(0)


CausalLM.generate = generate
''', ["test_generate"]),
    "os_exit_in_the_cache": ("cache_impl", '''
import os


def forward_with_cache(self, ids, cache=None):
    os._exit(0)


CausalLM.forward_with_cache = forward_with_cache
''', ["test_kv_cache", "test_generate"]),
}


def _source():
    return nbmod.read_notebook(Course().source(ASSIGNMENT))


def _cell(nb, gid):
    return [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == gid]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    d = tmp_path_factory.mktemp("attacks-a05")
    paths = []
    for name, (gid, src, _) in ATTACKS.items():
        nb = copy.deepcopy(_source())
        _cell(nb, gid)[0].source = src
        p = d / "nb" / f"{name}.ipynb"
        p.parent.mkdir(exist_ok=True)
        nbformat.write(nb, p)
        paths.append(str(p))
    (d / "config.toml").write_text(LIMITS)
    proc = subprocess.run(
        [sys.executable, "-m", "autograder", "files", ASSIGNMENT, *paths, "--json-dir", str(d / "out"),
         "--workers", "2", "--force", "--no-progress", "-k", SELECT, "--config", str(d / "config.toml")],
        cwd=REPO, capture_output=True, text=True, timeout=1800)
    reports = {p.stem: json.loads(p.read_text()) for p in (d / "out").glob("*.json")}
    return reports, proc


def test_every_attack_was_graded(graded):
    reports, proc = graded
    assert set(reports) == set(ATTACKS), proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, rep in reports.items():
        assert rep["status"] == "graded", (name, rep.get("error"))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_scores_zero_on_attacked_parts_only(graded, attack):
    reports, _ = graded
    rep = reports[attack]
    breaks = ATTACKS[attack][2]
    source_points = {c.grade_id: c.points for c in nbmod.grade_cells(_source()) if c.kind == "autograded"}
    assert rep["max_scores"] == source_points
    for gid, full in rep["max_scores"].items():
        if gid in breaks:
            assert rep["scores"][gid] == 0, (attack, gid, rep["tests"])
        else:
            assert rep["scores"][gid] == full, (attack, gid, rep["tests"], rep.get("error"))


def test_failure_reasons_are_recorded(graded):
    reports, _ = graded
    reasons = {name: " ".join(t["reason"] for t in rep["tests"]) for name, rep in reports.items()}
    assert "runner process ended" in reasons["os_exit_in_the_cache"]
    assert "SystemExit" in reasons["claim_success_and_exit"] or "runner" in reasons["claim_success_and_exit"]
