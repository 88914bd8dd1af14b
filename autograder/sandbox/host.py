"""Execute a rebuilt program and answer the operations of the protocol.

The sandboxed runner serves requests with a :class:`ProgramSession`; the
in-process back end (development only: no isolation, the student's code shares
the process with the tests) uses the same class directly, so both behave alike.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from typing import Any

import torch

from .protocol import Program, ProtocolError, Ref, Result, StudentError

_MAGIC = re.compile(r"^(\s*)[%!].*$", re.MULTILINE)


def strip_magics(source: str) -> str:
    """Turn IPython magics and shell escapes into ``pass`` so plain Python runs the cell."""
    return _MAGIC.sub(lambda m: f"{m.group(1)}pass  # IPython magic removed for grading", source)


def short_error(exc: BaseException) -> str:
    """``TypeName: message`` of an exception, trimmed to one readable line."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text[:300]


def execute_program(program: Program) -> tuple[dict, dict]:
    """Execute every cell in one fresh namespace.

    Returns:
        ``(namespace, cell_errors)``: cell_errors maps a cell's label to the
        reason it failed (its later cells still run).
    """
    ns: dict[str, Any] = {"__name__": "__submission__"}
    errors = dict(program.problems)
    for label, source in program.cells:
        try:
            code = compile(strip_magics(source), f"<cell {label}>", "exec")
            exec(code, ns)  # noqa: S102 - running the student's program is the point
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included
            errors[label] = short_error(exc)
    return ns, errors


def to_data(value, what: str = "result"):
    """Convert a returned value to data only: plain tensors, numbers, strings, containers."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        # A subclass is flattened to a plain tensor; the data is copied.
        return value.detach().as_subclass(torch.Tensor).clone()
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return torch.from_numpy(value.copy())
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    if type(value) in (list, tuple):
        return type(value)(to_data(v, what) for v in value)
    if type(value) is dict:
        return {str(k): to_data(v, what) for k, v in value.items()}
    raise StudentError(
        f"{what} is a {type(value).__name__}; expected tensors, numbers, strings or lists/dicts of them",
        cause="wrong",
    )


def _tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


class ProgramSession:
    """The student's namespace plus kept objects, driven by data-only requests."""

    def __init__(self, namespace: dict, cell_errors: dict, problems: dict | None = None):
        self.ns = namespace
        self.cell_errors = cell_errors
        self.problems = dict(problems or {})  # answer cells left out of the program (deleted, duplicated...)
        self.kept: dict[str, Any] = {}
        self._rng = None  # the student's own RNG state, once a harness shares our process

    # -- random numbers ----------------------------------------------------------
    def before_test(self, name: str) -> None:
        """Give the student's code its own random stream, seeded as a separate
        runner seeds itself for test ``name``.

        In the grading process the harness and the student's code share one
        RNG; without this, a module's random initialisation would consume the
        test's stream and shift every input the test draws afterwards, so the
        two back ends would not see the same inputs.
        """
        cuda = torch.cuda.is_available()
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
            torch.manual_seed(zlib.crc32(name.encode()))
            self._rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)

    @contextlib.contextmanager
    def _student_rng(self):
        """Run the student's code on its own stream; leave the harness's untouched."""
        if self._rng is None:  # a runner process: the stream is the student's alone
            yield
            return
        cuda = torch.cuda.is_available()
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
            cpu_state, cuda_state = self._rng
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            try:
                yield
            finally:
                self._rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)

    # -- resolving names -----------------------------------------------------
    def _missing(self, name: str) -> StudentError:
        if not self.cell_errors:
            return StudentError(f"{name!r} is not defined by the submission", cause="missing")
        details = "; ".join(f"{k}: {v}" for k, v in self.cell_errors.items())
        ran_and_failed = set(self.cell_errors) - set(self.problems)
        return StudentError(f"{name!r} is not defined by the submission ({details})",
                            cause="program_failed" if ran_and_failed else "missing")

    def _resolve(self, target: str):
        if target.startswith("@"):
            handle, _, attr = target[1:].partition(".")
            if handle not in self.kept:
                raise StudentError(f"no kept object {handle!r} (an earlier step failed)")
            obj = self.kept[handle]
            if attr:
                if attr.startswith("_") and attr != "__call__":
                    raise ProtocolError(f"refusing private attribute {attr!r}")
                try:
                    return getattr(obj, attr)
                except Exception as exc:
                    raise StudentError(f"{handle}.{attr}: {short_error(exc)}") from None
            return obj
        if target not in self.ns:
            raise self._missing(target)
        return self.ns[target]

    def _arg(self, value):
        if isinstance(value, Ref):
            if value.name not in self.kept:
                raise StudentError(f"no kept object {value.name!r} (an earlier step failed)")
            return self.kept[value.name]
        if isinstance(value, list):
            return [self._arg(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._arg(v) for v in value)
        if isinstance(value, dict):
            return {k: self._arg(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.clone()  # the student may modify its inputs in place
        return value

    # -- the interface ---------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.ns

    def run(self, target, args=(), kwargs=None, *, keep=None, grad_wrt=(), grad_output=None, param_grads_of=None):
        fn = self._resolve(target)
        args = [self._arg(a) for a in args]
        kwargs = {k: self._arg(v) for k, v in (kwargs or {}).items()}
        wrt = []
        for key in grad_wrt:
            holder = args if isinstance(key, int) else kwargs
            t = holder[key]
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise ProtocolError(f"grad_wrt {key!r} is not a floating-point tensor argument")
            holder[key] = t.detach().requires_grad_(True)
            wrt.append(holder[key])
        module = None
        if param_grads_of is not None:
            module = self._resolve("@" + param_grads_of)
            if not isinstance(module, torch.nn.Module):
                raise StudentError(f"kept object {param_grads_of!r} is not an nn.Module")
            module.zero_grad(set_to_none=True)
        try:
            with torch.enable_grad(), self._student_rng():
                out = fn(*args, **kwargs)
                if wrt or module is not None:
                    outs = _tensors(out)
                    if not outs:
                        raise StudentError(f"{target} returned no tensor to differentiate")
                    gos = _tensors(grad_output) if grad_output is not None else [torch.ones_like(o) for o in outs]
                    if len(gos) != len(outs):
                        raise ProtocolError(f"grad_output has {len(gos)} tensors for {len(outs)} outputs")
                    pairs = [(o, g.to(o.device, o.dtype)) for o, g in zip(outs, gos) if o.requires_grad]
                    if not pairs:
                        raise StudentError(f"the output of {target} does not depend on the inputs through autograd")
                    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        except (StudentError, ProtocolError):
            raise
        except MemoryError:
            raise StudentError(f"{target} ran out of memory", cause="memory") from None
        except Exception as exc:
            raise StudentError(f"{target} raised {short_error(exc)}") from None
        result = Result()
        if keep is not None:
            self.kept[keep] = out
        else:
            result.value = to_data(out, f"the return value of {target}")
        result.grads = [to_data(t.grad) if t.grad is not None else None for t in wrt]
        if module is not None:
            result.param_grads = {
                n: to_data(p.grad) for n, p in module.named_parameters() if p.grad is not None
            }
        return result

    def call(self, name, *args, **kwargs):
        return self.run(name, args, kwargs).value

    def new(self, cls, *args, keep, state_dict=None, to_dtype=None, to_device=None, **kwargs):
        self.run(cls, args, kwargs, keep=keep)
        module = self.kept[keep]
        if to_dtype is not None or to_device is not None:
            if not isinstance(module, torch.nn.Module):
                raise StudentError(f"{cls} is not an nn.Module, so it cannot be moved to {to_dtype or to_device}")
            try:
                module.to(device=to_device, dtype=to_dtype)
            except Exception as exc:
                raise StudentError(f"{cls}.to() failed: {short_error(exc)}") from None
        if state_dict is not None:
            if not isinstance(module, torch.nn.Module):
                raise StudentError(f"{cls} is not an nn.Module, so weights cannot be loaded into it")
            try:
                module.load_state_dict({k: v.clone() for k, v in state_dict.items()}, strict=True)
            except Exception as exc:
                raise StudentError(f"{cls}.load_state_dict failed: {short_error(exc)}") from None

    def state_dict(self, handle):
        module = self._resolve("@" + handle)
        if not isinstance(module, torch.nn.Module):
            raise StudentError(f"kept object {handle!r} is not an nn.Module")
        return to_data(dict(module.state_dict()), f"state_dict of {handle}")


def load_inprocess(program: Program) -> ProgramSession:
    """Execute ``program`` here and return a session that implements ``Submission``."""
    ns, errors = execute_program(program)
    return ProgramSession(ns, errors, program.problems)


__all__ = ["ProgramSession", "execute_program", "load_inprocess", "to_data", "strip_magics", "short_error"]
