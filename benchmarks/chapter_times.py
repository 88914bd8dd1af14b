"""Per-chapter execution times of the book (a benchmark, not a test).

Executes every chapter of ``_toc.yml`` in a fresh kernel, one after the other,
and prints a table of wall-clock seconds, the way the book build runs them::

    .venv/bin/python benchmarks/chapter_times.py            # execute every chapter
    .venv/bin/python benchmarks/chapter_times.py lstm gru   # only these
    .venv/bin/python benchmarks/chapter_times.py --from-cache
        # read the times the last `make book` recorded in _build/.jupyter_cache

The budget is 90 s per chapter on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 90.0


def toc_chapters() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    return [f for f in files if "{code-cell}" in (REPO / f"{f}.md").read_text()]


def execute(chapter: str, timeout: int = 600) -> float:
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(REPO / f"{chapter}.md")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "book")}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def from_cache() -> dict[str, float]:
    db = REPO / "_build" / ".jupyter_cache" / "global.db"
    if not db.exists():
        raise SystemExit(f"no cache at {db}: run `make book` first")
    times = {}
    with sqlite3.connect(db) as con:
        for uri, data in con.execute("select uri, data from nbcache"):
            chapter = str(Path(uri).with_suffix("").relative_to(REPO))
            times[chapter] = json.loads(data)["execution_seconds"]
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chapters", nargs="*", help="chapter names (e.g. lstm); default: all")
    ap.add_argument("--from-cache", action="store_true")
    args = ap.parse_args(argv)
    chapters = toc_chapters()
    if args.chapters:
        chapters = [c for c in chapters if Path(c).name in args.chapters]
    cached = from_cache() if args.from_cache else {}
    total = 0.0
    print(f"{'chapter':45s} {'seconds':>8s}")
    for ch in chapters:
        seconds = cached.get(ch) if args.from_cache else execute(ch)
        if seconds is None:
            print(f"{ch:45s} {'(not cached)':>8s}")
            continue
        total += seconds
        flag = "  over budget" if seconds > BUDGET_S else ""
        print(f"{ch:45s} {seconds:8.1f}{flag}", flush=True)
    print(f"{'total':45s} {total:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
