"""Notebook hygiene: no outputs in git, chapters are MyST notebooks in the toc,
and chapters import shared code instead of redefining it."""

import ast
import json
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _tracked(pattern: str) -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True, check=True)
        files = [REPO / f for f in out.stdout.split()]
    except (OSError, subprocess.CalledProcessError):
        files = []
    return files or [p for p in REPO.rglob(pattern) if ".venv" not in p.parts and "_build" not in p.parts]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [ch["file"] for ch in part["chapters"]]
    return files


def test_no_tracked_notebook_has_outputs():
    dirty = []
    for path in _tracked("*.ipynb"):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell.get("outputs") or cell.get("execution_count"):
                dirty.append(str(path.relative_to(REPO)))
                break
    assert not dirty, f"notebooks with outputs (clear them before committing): {dirty}"


def test_toc_lists_existing_myst_notebooks_in_kebab_case():
    for entry in _toc_files():
        path = REPO / f"{entry}.md"
        assert path.exists(), f"_toc.yml lists {entry} but {path} does not exist"
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", path.stem), path.stem
        text = path.read_text()
        if "{code-cell}" in text:  # an executed chapter: a jupytext MyST notebook
            assert text.startswith("---") and "format_name: myst" in text.split("---")[1], path
            assert "kernelspec" in text.split("---")[1], f"{path} lacks a kernelspec"


def test_no_data_file_is_tracked():
    names = {"timemachine.txt", "tangshisanbaishou.simplified.json", "fr-en-small.txt"}
    tracked = {p.name for p in _tracked("*")}
    assert not names & tracked


def _package_names() -> set[str]:
    names = set()
    for mod in (REPO / "seqcourse").glob("*.py"):
        tree = ast.parse(mod.read_text())
        names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")}
    return names


def test_chapters_do_not_redefine_package_code():
    shared = _package_names()
    offenders = []
    for entry in _toc_files():
        text = (REPO / f"{entry}.md").read_text()
        for block in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, flags=re.S):
            for name in re.findall(r"^\s*(?:def|class)\s+(\w+)", block, flags=re.M):
                if name in shared:
                    offenders.append(f"{entry}: {name}")
    assert not offenders, f"chapters redefine package code (import it instead): {offenders}"


def test_no_hot_linked_images():
    for entry in _toc_files():
        text = (REPO / f"{entry}.md").read_text()
        assert not re.search(r"!\[[^\]]*\]\(https?://", text), entry
        assert not re.search(r"<img[^>]+src=[\"']https?://", text), entry
