"""seqcourse: the shared code of *Sequence Models, an executable course*.

Importing this package has no side effects: it does not seed, download, pick
a device or change plot styles.  Each of those is an explicit call:

>>> from seqcourse import utils, data
>>> utils.seed_everything(0)
>>> text = data.load_time_machine()
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
