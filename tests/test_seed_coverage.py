"""Every section heading of the course notes the book follows is covered by a
row of the seed-coverage appendix."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO.parent / "shared" / "seeds"
APPENDIX = REPO / "book" / "seed-coverage.md"


def seed_headings(path: Path) -> list[str]:
    """Markdown headings outside code fences; for a note without any, its
    numbered plain-text headings such as ``3.1.2 输入门``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    inside, heads = False, []
    for line in lines:
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        m = re.match(r"^#{1,6}\s+(.*\S)", line)
        if not inside and m:
            heads.append(m.group(1))
    if not heads:
        heads = [l.strip() for l in lines if re.match(r"^[0-9]+(\.[0-9]+)*[ .]?[^0-9 ].{0,40}$", l)]
    return heads


def _norm(s: str) -> str:
    return re.sub(r"[\s`*|\\]+", "", s)


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the course notes are not beside this checkout")
def test_every_seed_heading_is_in_the_appendix():
    table = _norm(APPENDIX.read_text(encoding="utf-8"))
    missing = []
    files = sorted(SEEDS.glob("*.txt"))
    assert files
    for f in files:
        heads = seed_headings(f)
        assert heads, f"no headings found in {f.name}"
        missing += [f"{f.name[:3]}: {h}" for h in heads if _norm(h) not in table]
    assert not missing, "seed headings missing from book/seed-coverage.md:\n" + "\n".join(missing)


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the course notes are not beside this checkout")
def test_heading_parser_skips_code_comments():
    heads = seed_headings(next(SEEDS.glob("000_*.txt")))
    assert not any(h.startswith("定义") or h.startswith("假设") for h in heads)
