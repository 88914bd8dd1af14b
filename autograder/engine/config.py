"""The engine's settings: ``autograder/config.toml`` is the single source of defaults.

An instructor's own file (``--config FILE``) may set any subset of those keys;
an unknown section or key is an error that names it, so a typo never silently
leaves a default in force.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read the grading config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None


def defaults() -> dict:
    """The settings of ``config.toml``, as shipped."""
    return _read(CONFIG)


def load_config(path: str | Path | None = None, **overrides) -> dict:
    """The defaults, updated from ``path`` (an instructor's file), then from
    ``overrides`` given as ``section__key=value``."""
    cfg = defaults()
    layers = []
    if path is not None:
        layers.append((str(path), _read(Path(path))))
    over: dict = {}
    for name, value in overrides.items():
        section, sep, key = name.partition("__")
        if not sep:
            raise ValueError(f"override {name!r} must be written section__key")
        over.setdefault(section, {})[key] = value
    layers.append(("overrides", over))
    for where, user in layers:
        for section, values in user.items():
            if section not in cfg:
                raise ValueError(f"{where}: unknown section [{section}] (known: {sorted(cfg)})")
            for key, value in values.items():
                if key not in cfg[section]:
                    raise ValueError(f"{where}: unknown key {key!r} in [{section}] (known: {sorted(cfg[section])})")
                cfg[section][key] = copy.deepcopy(value)
    return cfg
