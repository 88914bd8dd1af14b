"""Deliberately wrong implementations of each assignment's answer cells.

``tests/variants/<assignment>.py`` defines ``VARIANTS``: a dict from a variant
name to ``{"cell": grade_id, "replace": [(old, new), ...], "breaks": [...]}``.
The variant notebook is the instructor's source with each ``old`` substring
of answer cell ``cell`` replaced by ``new`` (every ``old`` must occur); the
grade cells listed in ``breaks`` must lose points and every other
autograded grade cell must keep full marks.
"""

import copy
import importlib

from autograder import notebook as nbmod
from autograder.course import Course


def load_variants(assignment: str) -> dict:
    return importlib.import_module(f"tests.variants.{assignment}").VARIANTS


def make_variant_notebook(assignment: str, spec: dict):
    """The source notebook with one answer cell broken as ``spec`` says."""
    nb = copy.deepcopy(nbmod.read_notebook(Course().source(assignment)))
    hits = 0
    for cell in nb.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == spec["cell"]:
            for old, new in spec["replace"]:
                if old not in cell.source:
                    raise ValueError(f"variant text {old!r} not found in cell {spec['cell']!r}")
                cell.source = cell.source.replace(old, new)
            hits += 1
    if hits != 1:
        raise ValueError(f"answer cell {spec['cell']!r} found {hits} times in {assignment}")
    return nb
