"""``python -m autograder``: the grading engine's command line (see autograder/cli.py)."""

import sys

from .cli import main

sys.exit(main())
