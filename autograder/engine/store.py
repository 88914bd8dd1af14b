"""The results store: graded reports, keyed so that a regrade of the same
submission by the same grader is a cache hit.

Only graded reports are stored, so an infrastructure failure never
overwrites a valid score; an entry is validated when read, and one of the
wrong shape (a partial write, a hand edit, another version's format) is a
cache miss, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

SEED_SCHEME = "crc32(test name) per test, harness and runner"


def valid_report(data) -> bool:
    """Whether ``data`` has the shape of a graded report."""
    if type(data) is not dict or data.get("status") != "graded":
        return False
    scores, maxes, tests = data.get("scores"), data.get("max_scores"), data.get("tests")
    if type(scores) is not dict or type(maxes) is not dict or type(tests) is not list:
        return False
    if set(scores) != set(maxes):
        return False
    for table in (scores, maxes):
        for k, v in table.items():
            if type(k) is not str or type(v) not in (int, float) or not math.isfinite(v):
                return False
    for t in tests:
        if type(t) is not dict or not all(type(t.get(k)) is str for k in ("name", "grade_id", "outcome")):
            return False
    return True


class ResultsStore:
    """Graded reports keyed by (submission hash, grader version, seeds, device, test selection)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def key(self, assignment, sub_hash, version, device, extra_args) -> str:
        text = json.dumps([assignment, sub_hash, version, SEED_SCHEME, device, list(extra_args)])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, assignment, key) -> Path:
        return self.root / assignment / f"{key}.json"

    def get(self, assignment, key) -> dict | None:
        try:
            data = json.loads(self.path(assignment, key).read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return data if valid_report(data) else None

    def put(self, assignment, key, report: dict) -> None:
        if not valid_report(report):
            return
        p = self.path(assignment, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        os.replace(tmp, p)

    def log_failure(self, assignment, job_id, error) -> None:
        p = self.root / assignment / "not-graded.log"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a") as f:
            f.write(json.dumps({"time": time.time(), "job": job_id, "error": str(error)[-2000:]}) + "\n")
