"""The grader's layout shows its architecture, and the layout is enforced.

* ``autograder/sandbox`` runs next to student code and is copied whole into
  each runner's boot directory: it imports nothing from the rest of
  ``autograder`` (only the standard library, torch, safetensors and numpy).
* Only ``autograder/course.py`` builds the paths of a course.
* ``autograder/config.toml`` is the single source of the engine's defaults.
"""

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

AUTOGRADER = Path(__file__).resolve().parent.parent / "autograder"
ALLOWED_THIRD_PARTY = {"torch", "safetensors", "numpy", "sandbox"}  # "sandbox": its own name in the boot directory


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or ""


@pytest.mark.parametrize("path", sorted((AUTOGRADER / "sandbox").glob("*.py")), ids=lambda p: p.name)
def test_the_sandbox_package_imports_nothing_from_the_rest_of_the_grader(path):
    for level, module in _imports(path):
        root = module.split(".")[0]
        assert level <= 1, f"{path.name} imports from outside its package: {'.' * level}{module}"
        if level == 0:
            assert root in sys.stdlib_module_names or root in ALLOWED_THIRD_PARTY, f"{path.name} imports {module}"


def test_only_course_py_builds_course_paths():
    names = r"""["'](solutions|assignments|submitted|autograded|gradebook\.db)["']"""
    pattern = re.compile(rf"/\s*{names}|{names}\s*/")  # a path built with pathlib's /
    for path in AUTOGRADER.rglob("*.py"):
        if path.name == "course.py" or "tests" in path.relative_to(AUTOGRADER).parts:
            continue
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not hits, f"{path.relative_to(AUTOGRADER)} builds course paths: {hits}"


def test_config_toml_is_the_single_source_of_defaults():
    from autograder.engine import config

    shipped = tomllib.loads((AUTOGRADER / "config.toml").read_text())
    assert config.load_config() == shipped
    text = "".join(p.read_text() for p in (AUTOGRADER / "engine").glob("*.py"))
    for section in shipped.values():
        for key, value in section.items():
            if isinstance(value, int) and not isinstance(value, bool) and value > 8:
                assert not re.search(rf"\b{key}\b\W+{value}\b", text), f"a second default for {key} in engine/"
