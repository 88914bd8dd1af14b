"""The sandboxed grading engine (the harness side).

* :mod:`.config`  settings; ``autograder/config.toml`` is the single source of defaults
* :mod:`.sandbox` fork servers, runner uids, sweeping
* :mod:`.remote`  ``RemoteSession``: the ``Submission`` interface over the channel
* :mod:`.store`   the results store
* :mod:`.batch`   the scheduler: slots, harness processes, retries, progress
* :mod:`.cluster` the Ray back end (imported only for ``--cluster ray``)

The code that runs next to student code is :mod:`autograder.sandbox`.
"""

from ..course import Course
from ..sandbox.protocol import InfrastructureError
from .batch import CanaryFailed, Job, NoWorkers, Scheduler, WeakIsolation, default_workers, grade_batch, grader_version
from .config import load_config
from .remote import RemoteSession
from .sandbox import Sandbox, probe
from .store import ResultsStore

__all__ = ["CanaryFailed", "Course", "InfrastructureError", "Job", "NoWorkers", "RemoteSession", "ResultsStore", "Sandbox",
           "Scheduler", "WeakIsolation", "default_workers", "grade_batch", "grader_version", "load_config", "probe"]
