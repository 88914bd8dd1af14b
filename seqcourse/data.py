"""Offline-first data sets: download once from the real URL, verify SHA-1, reuse.

Files live in one data directory:

* ``$SEQCOURSE_DATA`` when that environment variable is set;
* otherwise ``$XDG_CACHE_HOME/seqcourse`` (``~/.cache/seqcourse``).

A file that is already there and whose SHA-1 matches is used as is, with no
network access.  A missing file is downloaded to a temporary name, verified,
and only then moved into place, so a broken download never leaves a corrupt
file behind.  ``SEQCOURSE_OFFLINE=1`` forbids downloads altogether.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "SEQCOURSE_DATA"
OFFLINE_ENV = "SEQCOURSE_OFFLINE"


@dataclass(frozen=True)
class Dataset:
    """One downloadable file: its name in the data directory, URL and SHA-1."""

    filename: str
    url: str
    sha1: str


DATASETS: dict[str, Dataset] = {
    "timemachine": Dataset(
        "timemachine.txt",
        "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        "090b5e7e70c295757f55df93cb0a180b9691891a",
    ),
    "tangshi": Dataset(
        "tangshisanbaishou.simplified.json",
        "https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/"
        "bdd8a3bd9ad00429f9ab7e52fa2ce4d02de8f630/%E8%92%99%E5%AD%A6/"
        "tangshisanbaishou.simplified.json",
        "e54b654113c821ac4a9aa9e6c80425b148889597",
    ),
    "fr-en-small": Dataset(
        "fr-en-small.txt",
        "https://raw.githubusercontent.com/d2l-ai/d2l-zh/"
        "9344cac4965f8109086b8d330185eb5067a6692f/data/fr-en-small.txt",
        "4192ace3405b0b6a2f9761eb6c19494b1f8a9761",
    ),
}


class DataError(RuntimeError):
    """A data file is missing, cannot be downloaded, or fails its checksum."""


class ChecksumError(DataError):
    """A file's SHA-1 does not match the one the course expects."""


def data_dir() -> Path:
    """The directory data files are read from and downloaded into."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "seqcourse"


def sha1_of(path: str | os.PathLike) -> str:
    """Hex SHA-1 of a file, read in 1 MiB chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _lookup(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


def _missing_message(ds: Dataset, target: Path, reason: str) -> str:
    return (
        f"data file {ds.filename!r} is not in {target.parent} and could not be "
        f"downloaded ({reason}).\n"
        f"  Fix: download {ds.url}\n"
        f"  (SHA-1 {ds.sha1}) into {target.parent}, or set {DATA_ENV} to a "
        f"directory that holds a verified copy."
    )


def fetch(name: str, *, timeout: float = 30.0) -> Path:
    """Return the path of a verified copy of data set ``name``.

    Args:
        name: a key of :data:`DATASETS` (``"timemachine"``, ``"tangshi"``,
            ``"fr-en-small"``).
        timeout: seconds to wait for the network before giving up.

    Raises:
        ChecksumError: the file in the data directory is not the expected
            file (it is left untouched for you to inspect or delete).
        DataError: the file is missing and cannot be downloaded.
    """
    ds = _lookup(name)
    target = data_dir() / ds.filename
    if target.exists():
        digest = sha1_of(target)
        if digest != ds.sha1:
            raise ChecksumError(
                f"{target} has SHA-1 {digest}, expected {ds.sha1}: the file is "
                f"corrupt or a different version, so it is not used.\n"
                f"  Fix: delete it and run again to download {ds.url}"
            )
        return target
    if _offline():
        raise DataError(_missing_message(ds, target, f"{OFFLINE_ENV} is set"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(_missing_message(ds, target, f"cannot create directory: {exc}")) from exc
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{ds.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(ds.url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        digest = sha1_of(tmp_name)
        if digest != ds.sha1:
            raise ChecksumError(
                f"downloaded {ds.url} but its SHA-1 is {digest}, expected {ds.sha1}; "
                f"the download was discarded. Fix: retry later, or place a "
                f"verified copy in {target.parent}."
            )
        os.replace(tmp_name, target)
    except ChecksumError:
        raise
    except OSError as exc:  # URLError, timeouts and socket errors are OSErrors
        raise DataError(_missing_message(ds, target, f"network error: {exc}")) from exc
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return target


# ----------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------


def load_time_machine() -> str:
    """The raw text of H. G. Wells' *The Time Machine* (about 179 kB)."""
    return fetch("timemachine").read_text(encoding="utf-8")


def d2l_time_machine(batch_size: int, num_steps: int, num_train: int = 10000, num_val: int = 5000):
    """A ``d2l.TimeMachine`` data module whose file comes from this data layer.

    d2l's default root is ``../data``, relative to the working directory.
    Here the root is the course's data directory, where :func:`fetch` has
    already put a verified copy, so d2l's own SHA-1 check finds it and d2l
    never downloads.  (Its default ``num_train``/``num_val`` windows overlap
    one small region of the book; chapter 3 explains why the course splits
    the text 90/10 instead.)
    """
    from d2l import torch as d2l  # imported lazily: it pulls in torchvision

    root = str(fetch("timemachine").parent)

    class TimeMachine(d2l.TimeMachine):
        def _download(self):
            self.root = root
            return super()._download()

    return TimeMachine(batch_size=batch_size, num_steps=num_steps, num_train=num_train, num_val=num_val)


_NOTE = re.compile(r"[（(][^（()）]*[)）]")


def strip_editorial_notes(line: str) -> str:
    """Remove parenthesised editorial notes such as ``(明年 一作：年年)``.

    Notes may use ASCII or full-width parentheses, mixed, and may span lines.
    """
    return _NOTE.sub("", line).strip()


def load_tang_poems() -> list[dict]:
    """The 320 poems of 唐诗三百首 with editorial notes removed.

    Returns:
        A list of dicts with keys ``title``, ``author``, ``form`` (e.g.
        ``"五言绝句"``) and ``lines`` (a list of strings, one per couplet line
        as in the source).
    """
    raw = json.loads(fetch("tangshi").read_text(encoding="utf-8"))
    poems = []
    for group in raw["content"]:
        for poem in group["content"]:
            # A note can run over two paragraphs, so strip notes from the whole poem.
            text = strip_editorial_notes("\n".join(poem["paragraphs"]))
            lines = [line.strip() for line in text.split("\n")]
            poems.append(
                {
                    "title": poem["chapter"],
                    "author": poem["author"],
                    "form": group["type"],
                    "lines": [line for line in lines if line],
                }
            )
    return poems


def load_fr_en() -> list[tuple[str, str]]:
    """The 20 French-English sentence pairs of ``fr-en-small.txt``."""
    pairs = []
    for lineno, line in enumerate(fetch("fr-en-small").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"fr-en-small.txt line {lineno} does not have two tab-separated fields")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs
