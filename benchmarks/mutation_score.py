"""Mutation score of the hidden tests: how many small bugs in the solutions they catch.

For each assignment, the answer cells of the instructor's source notebook are
mutated with a small AST mutator (one change per mutant, only inside the
``### BEGIN SOLUTION`` / ``### END SOLUTION`` regions):

* ``compare``   flipped comparisons (``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``,
  ``is`` <-> ``is not``, ``in`` <-> ``not in``, ``<`` <-> ``>``);
* ``off_by_one`` ``e + 1`` / ``e - 1`` for the arguments of ``range`` and the bounds of slices;
* ``swap_args`` the first two positional arguments of a call swapped;
* ``remove``    a statement replaced by ``pass``;
* ``constant``  numeric constants changed (``n + 1``, ``n - 1``; ``x * 2``, ``x / 2``; ``True`` <-> ``False``);
* ``augassign`` ``x += y`` -> ``x = y`` (and every other augmented assignment);
* ``binop``     ``+`` <-> ``-``, ``*`` <-> ``/``;
* ``boolop``    ``and`` <-> ``or``, ``not x`` -> ``x``;
* ``dim``       ``dim=-1`` <-> ``dim=1``, ``dim=0`` -> ``dim=1``, ``dim=2`` -> ``dim=-1``.

Every mutant notebook (plus the unmutated solution, which must score full
marks) is graded by the sandboxed engine (``python -m autograder files ...
--workers N``), the whole hidden suite, in one batch per assignment. (The
engine's ``-k`` cannot shorten this: a selection that leaves a grade cell
without tests is "not graded".) A mutant that the engine reports as not
graded counts neither as killed nor as surviving; the run says how many. A mutant is *killed* when it
loses points on one of its own grade cells: the autograded test cells that
follow its answer cell in the notebook, up to the next answer cell. Survivors
listed in ``benchmarks/mutation_equivalent.toml`` (reviewed: they cannot change
what the specification asks for) are left out of the score. The script prints,
per grade cell, the share of non-equivalent mutants killed, and writes every
survivor with its diff to ``<out>/survivors-<assignment>.md``.

A benchmark, not a test (a full run grades hundreds of notebooks)::

    .venv/bin/python benchmarks/mutation_score.py [--assignment a02_rnn_from_scratch] \\
        [--max-mutants-per-cell 12] [--seed 0] [--workers 2] [--out _build/mutation] [--repo DIR]

``--repo`` grades with the hidden tests of another checkout (for a before/after
comparison); ``--list`` only prints the mutants; ``--rescore`` scores the reports of
an earlier run again (same ``--seed`` and sampling) after the equivalent list changed.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import hashlib
import json
import random
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nbformat  # noqa: E402

EQUIVALENT = REPO / "benchmarks" / "mutation_equivalent.toml"


# ----------------------------------------------------------------------------- mutants


@dataclass
class Mutant:
    assignment: str
    cell: str  # the answer cell's grade_id
    operator: str
    line: int  # 1-based line in the cell
    before: str  # the source of the answer cell
    after: str  # the mutated source

    @property
    def key(self) -> str:
        """A stable id: the assignment, the cell and a hash of the mutated source."""
        return f"{self.assignment}/{self.cell}:{hashlib.sha1(self.after.encode()).hexdigest()[:10]}"

    def diff(self) -> str:
        return "".join(difflib.unified_diff(self.before.splitlines(True), self.after.splitlines(True),
                                            "solution", "mutant", n=1))


def _solution_lines(source: str) -> set[int]:
    """1-based line numbers strictly between BEGIN SOLUTION and END SOLUTION markers."""
    inside, lines = False, set()
    for i, line in enumerate(source.splitlines(), start=1):
        if "### BEGIN SOLUTION" in line:
            inside = True
        elif "### END SOLUTION" in line:
            inside = False
        elif inside:
            lines.add(i)
    return lines


def _offsets(source: str) -> list[int]:
    starts, pos = [], 0
    for line in source.splitlines(True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)
    return starts


def _replace(source: str, node: ast.AST, text: str) -> str:
    starts = _offsets(source)
    # ast offsets are in UTF-8 bytes; the cells are ASCII inside solution code, but be safe.
    lines = source.splitlines(True)

    def pos(lineno, col):
        prefix = lines[lineno - 1].encode()[:col].decode(errors="ignore")
        return starts[lineno - 1] + len(prefix)

    a, b = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
    return source[:a] + text + source[b:]


_CMP = {ast.Lt: [ast.LtE, ast.Gt], ast.LtE: [ast.Lt], ast.Gt: [ast.GtE, ast.Lt], ast.GtE: [ast.Gt],
        ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Is: [ast.IsNot], ast.IsNot: [ast.Is],
        ast.In: [ast.NotIn], ast.NotIn: [ast.In]}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult}
_DIMS = {-1: 1, 1: -1, 0: 1, 2: -1}


def _num(node):
    """The value of an int/float literal, including a negative one (``-1``)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) in (int, float):
        return -node.operand.value
    return None


def _expr_mutations(node: ast.AST, parent: ast.AST | None):
    """(operator, node to replace, replacement node) for one expression node."""
    out = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in _CMP.get(type(op), []):
                m = copy.deepcopy(node)
                m.ops[i] = new()
                out.append(("compare", node, m))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        m = copy.deepcopy(node)
        m.op = _BIN[type(node.op)]()
        out.append(("binop", node, m))
    elif isinstance(node, ast.BoolOp):
        m = copy.deepcopy(node)
        m.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append(("boolop", node, m))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("boolop", node, copy.deepcopy(node.operand)))
    elif isinstance(node, ast.Call):
        pos = node.args
        if len(pos) >= 2 and not any(isinstance(a, ast.Starred) for a in pos[:2]):
            m = copy.deepcopy(node)
            m.args[0], m.args[1] = m.args[1], m.args[0]
            if ast.dump(m) != ast.dump(node):
                out.append(("swap_args", node, m))
        if isinstance(node.func, ast.Name) and node.func.id == "range":
            for i, a in enumerate(pos):
                for delta, op in ((1, ast.Add()), (-1, ast.Sub())):
                    m = copy.deepcopy(node)
                    m.args[i] = ast.BinOp(left=copy.deepcopy(a), op=op, right=ast.Constant(1))
                    out.append(("off_by_one", node, m))
        for i, kw in enumerate(node.keywords):
            if kw.arg == "dim" and _num(kw.value) in _DIMS:
                m = copy.deepcopy(node)
                m.keywords[i].value = ast.Constant(_DIMS[_num(kw.value)]) if _DIMS[_num(kw.value)] >= 0 else \
                    ast.UnaryOp(op=ast.USub(), operand=ast.Constant(1))
                out.append(("dim", node, m))
    elif isinstance(node, ast.Slice):
        for field in ("lower", "upper"):
            bound = getattr(node, field)
            if bound is None:
                continue
            for op in (ast.Add(), ast.Sub()):
                m = copy.deepcopy(node)
                setattr(m, field, ast.BinOp(left=copy.deepcopy(bound), op=op, right=ast.Constant(1)))
                out.append(("off_by_one", node, m))
    elif isinstance(node, ast.Constant) and not isinstance(parent, ast.UnaryOp):
        v = node.value
        if type(v) is bool:
            out.append(("constant", node, ast.Constant(not v)))
        elif type(v) is int:
            out += [("constant", node, ast.Constant(v + 1)), ("constant", node, ast.Constant(v - 1))]
        elif type(v) is float:
            out += [("constant", node, ast.Constant(v * 2)), ("constant", node, ast.Constant(v / 2))]
    return out


def _stmt_mutations(node: ast.stmt):
    out = []
    if isinstance(node, ast.AugAssign):
        out.append(("augassign", node, ast.Assign(targets=[copy.deepcopy(node.target)], value=copy.deepcopy(node.value),
                                                   lineno=node.lineno)))
    if isinstance(node, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.If, ast.For,
                         ast.Continue, ast.Break, ast.Raise)) and not (isinstance(node, ast.Expr)
                                                                       and isinstance(node.value, ast.Constant)):
        out.append(("remove", node, None))
    return out


def mutants_of_cell(assignment: str, grade_id: str, source: str) -> list[Mutant]:
    """Every single-change mutant of the solution regions of one answer cell."""
    tree = ast.parse(source)
    inside = _solution_lines(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    seen, out = {source}, []
    for node in ast.walk(tree):
        if not hasattr(node, "lineno") or node.lineno not in inside or node.end_lineno not in inside:
            continue
        if isinstance(node, ast.stmt):
            cands = _stmt_mutations(node)
        elif isinstance(node, ast.expr) or isinstance(node, ast.Slice):
            cands = _expr_mutations(node, parents.get(node))
        else:
            cands = []
        for op, target, new in cands:
            if new is None:  # remove the statement: a `pass` with the same indentation
                text = "pass"
            else:
                text = ast.unparse(new)
            mutated = _replace(source, target, text)
            try:
                ast.parse(mutated)
            except SyntaxError:
                continue
            if mutated in seen:
                continue
            seen.add(mutated)
            out.append(Mutant(assignment, grade_id, op, target.lineno, source, mutated))
    return out


# ----------------------------------------------------------------------------- notebooks


def _nbg(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def answer_cells(nb) -> dict[str, list[str]]:
    """Autograded answer cell grade_id -> the autograded test cells that follow it (its own grade ids)."""
    own, current = {}, None
    for cell in nb.cells:
        md = _nbg(cell)
        if cell.cell_type != "code":
            continue
        if md.get("solution") and not md.get("grade"):
            current = md["grade_id"]
            own[current] = []
        elif md.get("grade") and not md.get("solution") and current is not None:
            own[current].append(md["grade_id"])
    return {k: v for k, v in own.items() if v}


def mutant_notebook(nb, mutant: Mutant):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if _nbg(cell).get("grade_id") == mutant.cell:
            cell.source = mutant.after
    return nb


def load_equivalent(path: Path = EQUIVALENT) -> dict[str, dict]:
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {e["key"]: e for e in data.get("equivalent", [])}


# ----------------------------------------------------------------------------- grading


def grade(repo: Path, assignment: str, notebooks: list[Path], out: Path, workers: int) -> dict[str, dict]:
    cmd = [sys.executable, "-m", "autograder", "files", assignment, *map(str, notebooks), "--json-dir", str(out),
           "--workers", str(workers), "--force", "--no-progress"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def run_assignment(args, assignment: str, equivalent: dict) -> dict:
    repo = Path(args.repo).resolve()
    nb = nbformat.read(repo / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    own = answer_cells(nb)
    rng = random.Random(f"{args.seed}:{assignment}")
    mutants = []
    for cell in nb.cells:
        gid = _nbg(cell).get("grade_id")
        if gid in own:
            ms = mutants_of_cell(assignment, gid, cell.source)
            if args.max_mutants_per_cell and len(ms) > args.max_mutants_per_cell:
                ms = rng.sample(ms, args.max_mutants_per_cell)
            mutants += ms
    print(f"{assignment}: {len(mutants)} mutants over {len(own)} answer cells", flush=True)
    if args.list:
        for m in mutants:
            print(f"--- {m.key} [{m.operator}] line {m.line}\n{m.diff()}")
        return {}
    work = Path(args.out) / assignment
    nbdir, jsondir = work / "notebooks", work / "reports"
    names = {f"m{i:04d}": m for i, m in enumerate(mutants)}
    paths = [nbdir / "solution.ipynb"] + [nbdir / f"{name}.ipynb" for name in names]
    t0 = time.perf_counter()
    if args.rescore:  # the reports of an earlier run with the same mutants (same --seed and sampling)
        reports = {p.stem: json.loads(p.read_text()) for p in jsondir.glob("*.json")}
    else:
        for d in (nbdir, jsondir):
            d.mkdir(parents=True, exist_ok=True)
            for old in d.iterdir():
                old.unlink()
        nbformat.write(nb, paths[0])
        for name, m in names.items():
            nbformat.write(mutant_notebook(nb, m), nbdir / f"{name}.ipynb")
        reports = grade(repo, assignment, paths, jsondir, args.workers)
    seconds = time.perf_counter() - t0
    base = reports.get("solution")
    if not base or base.get("status") != "graded" or base["scores"] != base["max_scores"]:
        raise RuntimeError(f"{assignment}: the unmutated solution does not score full marks: {base}")

    rows: dict[str, dict] = {}
    survivors, ungraded = [], []
    for name, m in names.items():
        label = "+".join(own[m.cell])
        row = rows.setdefault(label, {"mutants": 0, "equivalent": 0, "killed": 0})
        row["mutants"] += 1
        rep = reports.get(name)
        if rep is None or rep.get("status") != "graded":
            ungraded.append((m, rep.get("error") if rep else "no report"))
            row["mutants"] -= 1  # an infrastructure fault says nothing about the tests
            continue
        killed = any(rep["scores"].get(g, 0) < rep["max_scores"][g] for g in own[m.cell])
        if killed:
            row["killed"] += 1
        elif m.key in equivalent:
            row["equivalent"] += 1
        else:
            survivors.append(m)
    write_survivors(Path(args.out) / f"survivors-{assignment}.md", assignment, survivors, equivalent, names, reports)
    if not args.rescore:
        print(f"{assignment}: graded {len(paths)} notebooks in {seconds:.0f} s ({args.workers} workers)")
    if ungraded:
        print(f"  {len(ungraded)} mutants not graded (left out): {ungraded[0][1]!s:.200}")
    print(f"  {'grade cell(s)':45s} {'mutants':>7s} {'equiv.':>6s} {'killed':>6s} {'score':>7s}")
    for label, row in rows.items():
        n = row["mutants"] - row["equivalent"]
        score = row["killed"] / n if n else 1.0
        row["score"] = score
        flag = "" if score >= 0.95 else "  < 95 %"
        print(f"  {label:45s} {row['mutants']:7d} {row['equivalent']:6d} {row['killed']:6d} {100 * score:6.1f}%{flag}")
    total = sum(r["mutants"] - r["equivalent"] for r in rows.values())
    killed = sum(r["killed"] for r in rows.values())
    print(f"  {'all':45s} {sum(r['mutants'] for r in rows.values()):7d} "
          f"{sum(r['equivalent'] for r in rows.values()):6d} {killed:6d} {100 * killed / max(total, 1):6.1f}%")
    return {"rows": rows, "seconds": seconds, "survivors": len(survivors)}


def write_survivors(path: Path, assignment: str, survivors: list[Mutant], equivalent: dict, names, reports) -> None:
    lines = [f"# Surviving mutants of {assignment}", "",
             "Each one kept full marks on its own grade cells. Either a hidden test is missing, or the",
             "mutant is equivalent: then add its key to benchmarks/mutation_equivalent.toml with the reason.", ""]
    for m in survivors:
        lines += [f"## `{m.key}` ({m.operator}, line {m.line})", "", "```diff", m.diff().rstrip(), "```", ""]
    path.write_text("\n".join(lines))
    print(f"  {len(survivors)} survivors -> {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--assignment", action="append", default=None, help="repeatable; default: every assignment")
    p.add_argument("--max-mutants-per-cell", type=int, default=0, help="sample at most this many per answer cell (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "_build" / "mutation"), help="folder for notebooks, reports, survivors")
    p.add_argument("--repo", default=str(REPO), help="the checkout whose solutions and hidden tests are used")
    p.add_argument("--list", action="store_true", help="only list the mutants")
    p.add_argument("--rescore", action="store_true",
                   help="do not grade: score the reports already in --out again (after reviewing equivalent mutants)")
    args = p.parse_args(argv)
    repo = Path(args.repo).resolve()
    assignments = args.assignment or sorted(d.name for d in (repo / "solutions").iterdir()
                                            if d.is_dir() and d.name[0] == "a")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    equivalent = load_equivalent()
    t0 = time.perf_counter()
    summary = {a: run_assignment(args, a, equivalent) for a in assignments}
    if not args.list and not args.rescore:
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
