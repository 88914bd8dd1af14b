"""The whole book builds, executed, with Sphinx warnings as errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# Written after every successful build; tests/test_browser.py reuses a build that is
# newer than every file the build reads, and rebuilds otherwise.
BOOK_OK = REPO / "_build" / ".book-ok"
BOOK_INPUTS = ["book", "seqcourse", "_static", "_config.yml", "_toc.yml", "tools/offline_book.py"]


def build_book() -> subprocess.CompletedProcess:
    """Build the executed book into _build/html, warnings as errors; mark a success."""
    BOOK_OK.unlink(missing_ok=True)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "--warningiserror", "--keep-going"],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=1800,
    )
    if proc.returncode == 0:
        BOOK_OK.touch()
    return proc


def book_is_fresh() -> bool:
    """True when the last build succeeded and no input of the build changed since."""
    if not BOOK_OK.exists():
        return False
    built = BOOK_OK.stat().st_mtime
    for name in BOOK_INPUTS:
        path = REPO / name
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()
                                                and "__pycache__" not in f.parts and ".ipynb_checkpoints" not in f.parts]
        if any(f.stat().st_mtime > built for f in files):
            return False
    return True


@pytest.mark.book
@pytest.mark.slow
def test_book_builds_executed_without_warnings():
    proc = build_book()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    html = REPO / "_build" / "html"
    assert (html / "index.html").exists()
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    for part in toc["parts"]:
        for ch in part["chapters"]:
            page = html / f"{ch['file']}.html"
            assert page.exists(), page
            body = page.read_text()
            # An executed chapter shows its outputs; none shows a traceback.
            assert "Traceback (most recent call last)" not in body, page
    chapter1 = (html / "book" / "sequence-data-and-markov-models.html").read_text()
    assert re.search(r"<img[^>]+src=\"[^\"]*\.png\"", chapter1), "chapter 1 shows no plot"
