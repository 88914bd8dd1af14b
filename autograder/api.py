"""What a hidden test sees: the ``Submission`` interface and strict comparisons.

Hidden tests never hold a live object of the student's. They name the
student's functions and classes by string, send data (tensors, numbers,
strings, and lists/tuples/dicts of them) and get data back. Objects a test
needs to keep between calls (a module it built, a trained model) stay with
the student's program, under a handle, and the test refers to them with
``Ref("handle")``. The same tests therefore run against an in-process
program (development) or a separate sandboxed runner process (grading).

Example::

    out = sub.call("rnn_step", x, h, W_xh, W_hh, b)           # a function
    sub.new("LSTMCell", 3, 4, keep="cell", state_dict=sd, to_dtype=torch.float64)
    res = sub.run("@cell", args=(x, None), grad_wrt=[0], param_grads_of="cell")
    res.value, res.grads[0], res.param_grads["weight_ih"]
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from .sandbox.protocol import Ref, Result, StudentError


# The handle, result and error types are the protocol's: the same classes on both sides.
__all__ = ["Ref", "Result", "StudentError", "Submission", "check_tensor", "assert_close", "assert_number"]


class Submission(Protocol):
    """The student's program, as the hidden tests see it."""

    def has(self, name: str) -> bool:
        """Whether the program defines the global ``name``."""

    def call(self, name: str, *args, **kwargs) -> Any:
        """Call a global function or class of the program; return data."""

    def run(self, target: str, args: tuple = (), kwargs: dict | None = None, *, keep: str | None = None,
            grad_wrt: tuple = (), grad_output=None, param_grads_of: str | None = None) -> Result:
        """Call ``target`` with the full set of options.

        Args:
            target: ``"name"`` (a global), ``"@h"`` (call the kept object ``h``)
                or ``"@h.method"``.
            keep: keep the returned object under this handle instead of
                returning it (``Result.value`` is then ``None``).
            grad_wrt: positions (int) or keyword names (str) of tensor
                arguments to differentiate with respect to; their gradients
                come back in ``Result.grads``, in the same order.
            grad_output: a tensor, or a tuple/list matching the tensors in the
                output, to backpropagate; ``None`` means ones for every output
                tensor (i.e. the gradient of the sum of all outputs).
            param_grads_of: a kept module's handle whose parameter gradients
                come back in ``Result.param_grads`` (by parameter name).
        """

    def new(self, cls: str, *args, keep: str, state_dict: dict | None = None, to_dtype=None, to_device=None,
            **kwargs) -> None:
        """Construct ``cls(*args, **kwargs)``, move it with ``.to(to_device, to_dtype)``,
        load ``state_dict`` (strict), and keep it under ``keep``."""

    def state_dict(self, handle: str) -> dict:
        """The state dict of a kept module, as tensors."""


# ----------------------------------------------------------------------------
# Strict checks, used before any numeric comparison
# ----------------------------------------------------------------------------


def check_tensor(x, *, shape=None, dtype=None, device=None, finite: bool = True, what: str = "result") -> torch.Tensor:
    """Fail unless ``x`` is a plain ``torch.Tensor`` with the given properties."""
    if type(x) is not torch.Tensor:
        raise AssertionError(f"{what} should be a torch.Tensor, got {type(x).__name__}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise AssertionError(f"{what} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    if dtype is not None and x.dtype != dtype:
        raise AssertionError(f"{what} has dtype {x.dtype}, expected {dtype}")
    if device is not None and x.device.type != torch.device(device).type:
        raise AssertionError(f"{what} is on {x.device}, expected {device}")
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise AssertionError(f"{what} contains inf or NaN")
    return x


def assert_close(actual, expected: torch.Tensor, *, atol: float = 1e-6, rtol: float = 1e-5, what: str = "result"):
    """Strict tensor comparison: type, shape, dtype, device, finiteness, then values."""
    check_tensor(actual, shape=expected.shape, dtype=expected.dtype, device=expected.device, what=what)
    # Compare with plain torch ops on plain tensors: nothing of the student's runs here.
    diff = (actual.detach() - expected.detach()).abs()
    bound = atol + rtol * expected.detach().abs()
    if not bool((diff <= bound).all()):
        worst = float(diff.max())
        raise AssertionError(f"{what} differs from the reference: max abs error {worst:.3g} > atol={atol:g}, rtol={rtol:g}")


def assert_number(actual, expected: float, *, atol: float = 1e-6, rtol: float = 1e-6, what: str = "result"):
    """Strict scalar comparison: a real int/float (or 0-d tensor), finite, close."""
    if type(actual) is torch.Tensor and actual.dim() == 0:
        actual = actual.item()
    if type(actual) not in (int, float):
        raise AssertionError(f"{what} should be a number, got {type(actual).__name__}")
    if not math.isfinite(actual) and math.isfinite(expected):
        raise AssertionError(f"{what} is {actual}, expected {expected:.6g}")
    if not math.isclose(actual, expected, abs_tol=atol, rel_tol=rtol):
        raise AssertionError(f"{what} is {actual:.6g}, expected {expected:.6g}")


# ----------------------------------------------------------------------------
# Strict types, with a failure message that quotes the task
# ----------------------------------------------------------------------------


def _type_names(types) -> str:
    names = [getattr(t, "__name__", str(t)) for t in types]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def assert_type(value, types, *, task: str, what: str = "result"):
    """Fail unless ``type(value)`` is exactly one of ``types`` (no subclass, no conversion).

    ``task`` is the sentence of the task that names the type; the failure
    message quotes it, so the student sees which rule was broken.
    """
    types = types if isinstance(types, tuple) else (types,)
    if type(value) not in types:
        raise AssertionError(f"{what} should be of type {_type_names(types)}, got {type(value).__name__} "
                             f"(the task says: \"{task}\")")
    return value


def assert_list_of(value, item_types, *, task: str, what: str = "result", length: int | None = None):
    """Fail unless ``value`` is a Python list whose items all have exactly one of ``item_types``."""
    item_types = item_types if isinstance(item_types, tuple) else (item_types,)
    assert_type(value, list, task=task, what=what)
    if length is not None and len(value) != length:
        raise AssertionError(f"{what} has {len(value)} items, expected {length}")
    for i, item in enumerate(value):
        if type(item) not in item_types:
            raise AssertionError(f"{what}[{i}] should be of type {_type_names(item_types)}, got {type(item).__name__} "
                                 f"(the task says: \"{task}\")")
    return value


def assert_float(actual, expected: float, *, task: str, atol: float = 1e-6, rtol: float = 1e-6,
                 what: str = "result"):
    """Like :func:`assert_number`, but ``actual`` must be a Python ``float`` (not an int, not a tensor)."""
    assert_type(actual, float, task=task, what=what)
    assert_number(actual, expected, atol=atol, rtol=rtol, what=what)
