"""A parallel corpus made in code: human-readable dates -> ISO 8601 dates.

Offline there is no machine-translation corpus large enough to train on, so
the seq2seq chapter and assignment translate dates written in many styles
("3rd of March 2021", "Mar 3, 21", "03/03/2021", ...) into ``2021-03-03``.
The corpus is a deterministic function of its seed.
"""

from __future__ import annotations

import datetime as _dt
import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _ordinal(day: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    if 11 <= day % 100 <= 13:
        return f"{day}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# Each style turns a date into one human-readable string.
STYLES = {
    "ordinal_of": lambda d: f"{_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",
    "month_day_year": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "abbr_short_year": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year % 100:02d}",
    "day_month_year": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    "abbr_day_month": lambda d: f"{d.day} {MONTHS[d.month - 1][:3].lower()} {d.year}",
    "weekday_long": lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {_ordinal(d.day)}, {d.year}",
    "us_slash": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    "dotted": lambda d: f"{d.day}.{d.month}.{d.year}",
}


def to_iso(date: _dt.date) -> str:
    """``2021-03-03``."""
    return date.isoformat()


def random_date(rng: random.Random, start_year: int = 1950, end_year: int = 2049) -> _dt.date:
    """A uniformly random day between 1 January ``start_year`` and 31 December ``end_year``."""
    first = _dt.date(start_year, 1, 1).toordinal()
    last = _dt.date(end_year, 12, 31).toordinal()
    return _dt.date.fromordinal(rng.randint(first, last))


def make_date_pairs(n: int, seed: int = 0, styles: list[str] | None = None,
                    start_year: int = 1950, end_year: int = 2049) -> list[tuple[str, str]]:
    """``n`` (human-readable, ISO) pairs, deterministic from ``seed``.

    The two-digit-year style ("Mar 3, 21") is ambiguous outside one century,
    so it is only used for dates in 2000-2099 (read as 20YY).

    Args:
        n: number of pairs.
        seed: seeds a private ``random.Random``; the global RNG is untouched.
        styles: names from :data:`STYLES` to draw from (default: all).
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    names = list(styles) if styles is not None else list(STYLES)
    unknown = [s for s in names if s not in STYLES]
    if unknown or not names:
        raise ValueError(f"unknown or empty styles {unknown or names}; choose from {sorted(STYLES)}")
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        date = random_date(rng, start_year, end_year)
        style = rng.choice(names)
        if style == "abbr_short_year" and not 2000 <= date.year <= 2099:
            continue
        pairs.append((STYLES[style](date), to_iso(date)))
    return pairs


def split_pairs(pairs: list, val_frac: float = 0.1) -> tuple[list, list]:
    """Hold out the last ``val_frac`` of the pairs, after removing from the
    held-out part any source string that also occurs in the training part."""
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"val_frac must be in (0, 1), got {val_frac}")
    cut = int(len(pairs) * (1 - val_frac))
    train, val = pairs[:cut], pairs[cut:]
    seen = {src for src, _ in train}
    return train, [p for p in val if p[0] not in seen]
