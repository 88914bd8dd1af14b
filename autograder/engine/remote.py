"""The ``Submission`` interface over the channel, backed by sandboxed runners.

Every operation goes through one request path (:meth:`RemoteSession.request`):
a random request id, a deadline, the reply checked for the shape its
operation answers with (``protocol.check_reply``), and every way a runner
can fail turned into a typed cause. A runner that crashes, times out or
breaks the protocol fails the test that was running, and the next request
starts a fresh runner that re-runs the program.
"""

from __future__ import annotations

import os
import secrets
import select
import time
import zlib

from ..sandbox import channel, protocol
from ..sandbox.protocol import InfrastructureError, ProtocolError, Ref, Result, StudentError
from .sandbox import Sandbox


class RemoteSession:
    """:class:`autograder.api.Submission` backed by sandboxed runners."""

    retries_crashes = True  # grading re-runs a crashed test once on a fresh runner

    def __init__(self, sandbox: Sandbox, program: protocol.Program, cfg: dict, deadline: float):
        self.sb, self.program, self.cfg, self.deadline = sandbox, program, cfg, deadline
        self.request_s = float(cfg["limits"]["request_seconds"])
        self.max_reply = int(cfg["limits"]["reply_mb"]) << 20
        self.pid = None
        self.fd = None
        self.broken = None  # why the program cannot run at all
        self.infra_error = None
        self.events: list[str] = []
        self.cell_errors: dict = {}
        self.isolation: dict = {}  # what the last runner reported holding (its own namespaces, cgroups)
        self._cell = None  # the grade cell of the test being run
        self.requests = 0

    # -- runner lifecycle --------------------------------------------------------
    def _start(self):
        try:
            self.pid, self.fd = self.sb.spawn()
            hello = self._hello()
        except InfrastructureError as exc:
            self.infra_error = str(exc)
            raise
        if self.sb.device == "cuda" and hello.get("cuda") != "ok":
            self.infra_error = f"the runner cannot use CUDA: {hello.get('cuda')}"
            raise InfrastructureError(self.infra_error)
        try:
            value = self._exchange("load", "running the program's cells",
                                   {"cells": [list(c) for c in self.program.cells],
                                    "answer_ids": list(self.program.answer_ids),
                                    "problems": dict(self.program.problems)})
        except StudentError as exc:
            self.broken = StudentError(f"the program could not be run: {exc}", cause=exc.cause)
            raise self.broken from None
        self.cell_errors = dict(value["cell_errors"])
        self.isolation = value.get("isolation") if type(value.get("isolation")) is dict else {}
        failed = protocol.instructor_failures(self.program, self.cell_errors)
        if failed:
            self.infra_error = f"a read-only setup cell failed before any student code ran: {failed}"
            raise InfrastructureError(self.infra_error)

    def _hello(self) -> dict:
        """The runner's first frame, sent before any student code runs."""
        try:
            msg = channel.recv(self.fd, timeout=float(self.cfg["limits"]["program_seconds"]), max_bytes=1 << 20)
        except channel.ChannelError as exc:
            self._kill()
            raise InfrastructureError(f"a new runner did not start: {exc}") from None
        if type(msg) is not dict or msg.get("id") != "hello" or type(msg.get("value")) is not dict:
            self._kill()
            raise InfrastructureError("a new runner sent no greeting")
        return msg["value"]

    def _kill(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.pid is not None:
            self.sb.sweep(self.pid)
            self.pid = None

    def close(self):
        if self.fd is not None:
            try:
                channel.send(self.fd, {"id": "bye", "op": "bye"})
            except channel.ChannelError:
                pass
        self._kill()

    def _fail(self, reason: str, cause: str) -> StudentError:
        self._kill()
        self.events.append(reason)
        return StudentError(reason, cause=cause)

    def _exchange(self, op: str, what: str, fields: dict):
        """Send one request and return the checked value of its reply."""
        rid = secrets.token_hex(16)
        left = self.deadline - time.monotonic()
        limit = float(self.cfg["limits"]["program_seconds"]) if op == "load" else self.request_s
        timeout = min(limit, left)
        try:
            if timeout <= 0:
                raise channel.ChannelTimeout("no time left")
            channel.send(self.fd, {"id": rid, "op": op, **fields}, Ref)
            msg = channel.recv(self.fd, timeout=timeout, max_bytes=self.max_reply)
        except channel.ChannelTimeout:
            reason = f"timed out after {timeout:.0f} s while {what}"
            if left <= timeout:
                reason = (f"the submission's time budget ({self.cfg['limits']['submission_seconds']} s) "
                          f"ran out while {what}")
            raise self._fail(reason, "timeout") from None
        except channel.ChannelClosed:
            raise self._fail(f"the runner process ended while {what} (a crash, os._exit, a signal, or a memory, "
                             f"process or CPU limit)", "crashed") from None
        except channel.ChannelError as exc:
            raise self._fail(f"the runner broke the protocol while {what}: {exc}", "protocol") from None
        if type(msg) is not dict or msg.get("id") != rid or type(msg.get("ok")) is not bool:
            raise self._fail(f"the runner sent a reply that does not answer the request while {what}", "protocol")
        if not msg["ok"]:
            text = str(msg.get("msg", ""))[:1000]
            if msg.get("replace") is True:
                self._kill()  # e.g. after a CUDA error: the next request gets a fresh runner
            if msg.get("etype") == "ProtocolError":
                raise ProtocolError(text)  # the hidden test built a bad request: not the student's fault
            cause = msg.get("cause") if msg.get("cause") in protocol.CAUSES else "raised"
            if cause in ("passed", "skipped", "not_graded"):
                cause = "raised"  # a runner cannot claim a pass, a skip or an infrastructure fault
            raise StudentError(text, cause=cause)
        value = msg.get("value")
        try:
            protocol.check_reply(op, value)
        except StudentError as exc:
            raise self._fail(str(exc), "protocol") from None
        return value

    def request(self, op: str, what: str, **fields):
        """The one request path of every operation in ``protocol.OPERATIONS``."""
        if op not in protocol.OPERATIONS or set(fields) - set(protocol.OPERATIONS[op]):
            raise ProtocolError(f"malformed request {op!r} with {sorted(fields)}")
        self.requests += 1
        if self.infra_error:
            raise InfrastructureError(self.infra_error)
        if self.broken:
            raise StudentError(str(self.broken), cause=self.broken.cause)
        if time.monotonic() >= self.deadline:
            raise StudentError(f"the submission's time budget ({self.cfg['limits']['submission_seconds']} s) "
                               f"ran out", cause="timeout")
        if self.fd is None:
            self._start()
        return self._exchange(op, what, fields)

    # -- the harness's per-test check ------------------------------------------------
    def before_test(self, name: str):
        """Before each hidden test: a fresh runner for each grade cell, and whenever the runner
        sent bytes nobody asked for or died after its last reply (never charged to the next
        test); then the numerics are pinned and checked, and the test's seed set."""
        cell = name.split("[", 1)[0].split("__", 1)[0]
        if self.fd is not None and (cell != self._cell or select.select([self.fd], [], [], 0)[0]):
            self._kill()
        self._cell = cell
        got = self.request("settings", "checking numerics settings", apply=True, seed=zlib.crc32(name.encode()))
        if any(got.get(k) is not v for k, v in protocol.EXPECTED_NUMERICS.items()):
            raise StudentError(f"the runner's numerics settings are not the pinned ones: {got}", cause="protocol")

    # -- Submission ----------------------------------------------------------------
    def has(self, name: str) -> bool:
        return self.request("has", f"looking up {name!r}", name=name)

    def run(self, target, args=(), kwargs=None, *, keep=None, grad_wrt=(), grad_output=None, param_grads_of=None):
        value = self.request("run", f"running {target}", target=target, args=list(args), kwargs=dict(kwargs or {}),
                             keep=keep, grad_wrt=list(grad_wrt), grad_output=grad_output,
                             param_grads_of=param_grads_of)
        return Result(value=value.get("value"), grads=value["grads"], param_grads=value["param_grads"])

    def call(self, name, *args, **kwargs):
        return self.run(name, args, kwargs).value

    def new(self, cls, *args, keep, state_dict=None, to_dtype=None, to_device=None, **kwargs):
        self.request("new", f"constructing {cls}", cls=cls, args=list(args), kwargs=dict(kwargs), keep=keep,
                     state_dict=state_dict, to_dtype=to_dtype,
                     to_device=str(to_device) if to_device is not None else None)

    def state_dict(self, handle):
        return self.request("state_dict", f"reading the state dict of {handle}", handle=handle)
