"""What the harness and the runner agree on: data types, operations, failure causes, numerics.

This package (``autograder/sandbox``) is the code that runs next to the
student's code. The engine copies it whole into the runner's boot directory,
so it imports nothing from the rest of ``autograder`` (a test checks this):
only the standard library, torch and safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ----------------------------------------------------------------------------
# Values that cross between a hidden test and the student's program
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A handle to an object kept inside the student's program."""

    name: str


@dataclass
class Result:
    """What ``Submission.run`` returns."""

    value: Any = None
    grads: list = field(default_factory=list)
    param_grads: dict = field(default_factory=dict)


@dataclass
class Program:
    """The code to run for one submission, and what went wrong building it."""

    cells: list[tuple[str, str]]  # (label, source): label is the grade_id or "setup-<n>"
    answer_ids: list[str]
    problems: dict[str, str] = field(default_factory=dict)  # answer grade_id -> reason


def is_setup(label: str) -> bool:
    """Whether a program cell is one of the instructor's read-only setup cells."""
    return label.startswith("setup-")


def instructor_failures(program: Program, cell_errors: dict) -> dict:
    """Setup cells that failed before any student code ran.

    Such a failure (a missing package, a data file, a broken import of the
    course package) is the grading machine's fault, never the student's.
    """
    failed = {}
    for label, _ in program.cells:
        if not is_setup(label):
            break
        if label in cell_errors:
            failed[label] = cell_errors[label]
    return failed


# ----------------------------------------------------------------------------
# Why a hidden test did not pass: typed causes
# ----------------------------------------------------------------------------

#: Every cause a test outcome can carry, with the words feedback shows.
CAUSES = {
    "passed": "passed",
    "wrong": "the result does not match what the task asks for",
    "raised": "the submitted code raised an exception",
    "missing": "a function, class or answer cell the test needs is missing",
    "program_failed": "an answer cell raised an error when the notebook was run",
    "timeout": "the time limit ran out",
    "memory": "the memory limit was reached",
    "crashed": "the process running the submission ended (a crash, exit, signal, or a process or CPU limit)",
    "protocol": "the process running the submission sent a reply that breaks the grading protocol",
    "skipped": "not run on this machine (for example a CUDA case without a GPU); not counted",
    "not_graded": "a fault of the grading machinery, not of the submission: not graded, to be retried",
}


class StudentError(AssertionError):
    """The student's code failed: raised, returned a non-data value, is missing, or broke a limit.

    It subclasses AssertionError so that a test failing this way is a plain
    test failure; ``cause`` (a key of :data:`CAUSES`) says why.
    """

    def __init__(self, message: str = "", cause: str = "raised"):
        super().__init__(message)
        if cause not in CAUSES:
            raise ValueError(f"unknown cause {cause!r}")
        self.cause = cause


class InfrastructureError(RuntimeError):
    """The grading machinery failed; the submission is not graded (never scored)."""

    cause = "not_graded"


class ProtocolError(Exception):
    """A request the harness itself built is malformed (an error in a hidden test, not the student's)."""


# ----------------------------------------------------------------------------
# Operations: the only requests a runner answers
# ----------------------------------------------------------------------------

#: op -> the request's fields. The runner dispatches on this table; the harness
#: builds every request from it.
OPERATIONS = {
    "load": ("cells", "answer_ids", "problems"),
    "settings": ("apply", "seed"),
    "has": ("name",),
    "run": ("target", "args", "kwargs", "keep", "grad_wrt", "grad_output", "param_grads_of"),
    "new": ("cls", "args", "kwargs", "keep", "state_dict", "to_dtype", "to_device"),
    "state_dict": ("handle",),
}


def check_reply(op: str, value) -> None:
    """Raise StudentError(cause="protocol") unless ``value`` has the shape ``op`` answers with."""
    ok = {
        "load": lambda v: type(v) is dict and type(v.get("cell_errors")) is dict,
        "settings": lambda v: type(v) is dict,
        "has": lambda v: type(v) is bool,
        "run": lambda v: type(v) is dict and type(v.get("grads")) is list and type(v.get("param_grads")) is dict,
        "new": lambda v: v is None,
        "state_dict": lambda v: type(v) is dict,
    }[op](value)
    if not ok:
        raise StudentError(f"the runner sent a malformed answer to {op!r}", cause="protocol")


# ----------------------------------------------------------------------------
# Numerics: defined once, pinned in the runner, the harness and the in-process back end
# ----------------------------------------------------------------------------

#: What every process that computes a graded number must have set. warn_only:
#: an operation without a deterministic kernel warns instead of raising, so a
#: correct submission that uses one is not failed; the kernels that do exist
#: are the deterministic ones.
EXPECTED_NUMERICS = {"deterministic": True, "warn_only": True, "cudnn_benchmark": False,
                     "cudnn_deterministic": True, "matmul_tf32": False, "cudnn_tf32": False}


def preload(names) -> None:
    """Import ``names`` (config ``[sandbox] preload``) ahead of time, skipping any that is not
    installed; jieba's dictionary is loaded now rather than at its first ``lcut()``. The fork server
    does this once for its runners, and the engine once for its harnesses."""
    import importlib

    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if name == "jieba":
            module.setLogLevel(60)
            module.initialize()


def pin_numerics(torch) -> None:
    """Deterministic algorithms, no cuDNN autotuning, no TF32."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def cudnn_flags(torch, enabled: bool = True):
    """``torch.backends.cudnn.flags`` with the pinned values passed explicitly.

    Calling ``flags(enabled=True)`` alone resets ``deterministic=False`` and
    ``allow_tf32=True`` inside the block; this does not.
    """
    return torch.backends.cudnn.flags(enabled=enabled, benchmark=False, deterministic=True, allow_tf32=False)


class Numerics:
    """The C-level switches behind :func:`pin_numerics`, captured before any student code runs.

    The runner pins and reads back through these references, so a student who
    replaces ``torch.use_deterministic_algorithms`` or ``torch.backends`` attributes
    changes neither what is pinned nor what is reported. What this cannot prove:
    the student's code runs in the same process and may switch the settings
    during its own call (it only changes the student's own results, which are
    compared with references the harness computes with its own settings).
    """

    def __init__(self, torch):
        C = torch._C
        self._set = (C._set_deterministic_algorithms, C._set_cudnn_benchmark, C._set_cudnn_deterministic,
                     C._set_cublas_allow_tf32, C._set_cudnn_allow_tf32)
        self._get = {"deterministic": C._get_deterministic_algorithms,
                     "warn_only": C._get_deterministic_algorithms_warn_only,
                     "cudnn_benchmark": C._get_cudnn_benchmark, "cudnn_deterministic": C._get_cudnn_deterministic,
                     "matmul_tf32": C._get_cublas_allow_tf32, "cudnn_tf32": C._get_cudnn_allow_tf32}

    def pin(self) -> None:
        det, bench, cudnn_det, mm_tf32, cudnn_tf32 = self._set
        det(True, warn_only=True)
        bench(False)
        cudnn_det(True)
        mm_tf32(False)
        cudnn_tf32(False)

    def state(self) -> dict:
        return {k: bool(get()) for k, get in self._get.items()}


def numerics_state(torch) -> dict:
    """The settings :func:`pin_numerics` sets, as read back."""
    return {
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
        "warn_only": bool(torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
    }
