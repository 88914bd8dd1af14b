"""The whole book builds, executed, with Sphinx warnings as errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.book
@pytest.mark.slow
def test_book_builds_executed_without_warnings():
    env = dict(os.environ)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", ".", "--warningiserror", "--keep-going"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
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
