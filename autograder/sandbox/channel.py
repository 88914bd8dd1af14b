"""The data-only channel between the grading harness and the sandboxed runner.

A message is one frame on a dedicated socket (never stdin/stdout)::

    b"AGR1" | u32 header length | u64 blob length | header (JSON, UTF-8) | blob (safetensors)

The header is plain JSON. Values that JSON cannot carry are tagged objects:
``{"$t": i, "dev": "cpu"}`` is tensor ``t<i>`` of the blob, ``{"$tuple": [...]}``
a tuple, ``{"$dict": [[k, v], ...]}`` a dict, ``{"$ref": name}`` a kept-object
handle, ``{"$dtype": "float64"}``, ``{"$device": "cuda"}`` and ``{"$float": "nan"}``.
Tensors travel in one safetensors blob: raw bytes plus dtype and shape, which
decode to plain ``torch.Tensor`` objects (never subclasses, never code).
Nothing is pickled, so decoding a message cannot run code of the sender's.

This module is imported by the harness and copied, with the runner, into the
runner's scratch directory; it only uses the standard library, torch and
safetensors.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

MAGIC = b"AGR1"
_HEAD = struct.Struct("<4sIQ")
MAX_HEADER = 16 << 20  # a header is small: names, numbers, reasons


class ChannelError(Exception):
    """The peer broke the protocol, went away, or did not answer in time."""


class ChannelTimeout(ChannelError):
    pass


class ChannelClosed(ChannelError):
    pass


_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128)}


# ----------------------------------------------------------------------------
# Encoding values
# ----------------------------------------------------------------------------


def encode(obj, ref_type=None) -> tuple[bytes, bytes]:
    """``obj`` -> (header JSON bytes, safetensors blob). Raises TypeError on non-data."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v, depth=0):
        if depth > 64:
            raise TypeError("value is nested too deeply")
        if v is None or type(v) in (bool, int, str):
            return v
        if type(v) is float:
            return v if math.isfinite(v) else {"$float": repr(v)}
        if isinstance(v, torch.Tensor):
            t = v.detach()
            if t.is_complex():
                raise TypeError("complex tensors are not supported by the channel")
            key = f"t{len(tensors)}"
            dev = t.device.type
            tensors[key] = t.as_subclass(torch.Tensor).to("cpu").contiguous().clone()
            return {"$t": len(tensors) - 1, "dev": dev}
        if type(v) is tuple:
            return {"$tuple": [enc(x, depth + 1) for x in v]}
        if type(v) is list:
            return [enc(x, depth + 1) for x in v]
        if type(v) is dict:
            return {"$dict": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
        if isinstance(v, torch.dtype):
            return {"$dtype": str(v).removeprefix("torch.")}
        if isinstance(v, torch.device):
            return {"$device": str(v)}
        if ref_type is not None and type(v) is ref_type:
            return {"$ref": str(v.name)}
        raise TypeError(f"{type(v).__name__} cannot travel over the channel (data only)")

    header = json.dumps(enc(obj), allow_nan=False, separators=(",", ":")).encode()
    blob = st_save(tensors) if tensors else b""
    return header, blob


def decode(header: bytes, blob: bytes, ref_type=None, *, map_device: bool = True, max_decoded: int = 1 << 30):
    """Inverse of :func:`encode`: plain tensors, numbers, strings and containers only.

    Every reference to a tensor decodes to a copy of its own, so the decoded size
    is bounded, not only the wire size: a header that names one large tensor
    many times is refused before anything is copied.
    """
    try:
        tree = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChannelError(f"malformed header: {exc}") from None
    try:
        tensors = st_load(blob) if blob else {}
    except Exception as exc:  # safetensors raises its own error types
        raise ChannelError(f"malformed tensor blob: {exc}") from None

    budget = [max_decoded]

    def dec(v, depth=0):
        if depth > 64:
            raise ChannelError("value is nested too deeply")
        if v is None or type(v) in (bool, int, float, str):
            return v
        if type(v) is list:
            return [dec(x, depth + 1) for x in v]
        if type(v) is not dict or len(v) not in (1, 2):
            raise ChannelError("unexpected value in message")
        if "$t" in v:
            t = tensors.get(f"t{v['$t']}")
            if type(t) is not torch.Tensor:
                raise ChannelError("message refers to a missing tensor")
            budget[0] -= t.numel() * t.element_size()
            if budget[0] < 0:
                raise ChannelError(f"message decodes to more than {max_decoded} bytes")
            dev = v.get("dev", "cpu")
            if dev not in ("cpu", "cuda"):
                raise ChannelError(f"unexpected device {dev!r}")
            if map_device and dev != "cpu":
                t = t.to(dev)
            # A fresh plain tensor that owns its memory.
            return t.clone() if t.device.type == "cpu" else t
        if "$tuple" in v:
            return tuple(dec(x, depth + 1) for x in v["$tuple"])
        if "$dict" in v:
            out = {}
            for item in v["$dict"]:
                if type(item) is not list or len(item) != 2:
                    raise ChannelError("malformed dict in message")
                out[dec(item[0], depth + 1)] = dec(item[1], depth + 1)
            return out
        if "$float" in v:
            if v["$float"] not in ("nan", "inf", "-inf"):
                raise ChannelError("malformed float")
            return float(v["$float"])
        if "$dtype" in v:
            if v["$dtype"] not in _DTYPES:
                raise ChannelError(f"unknown dtype {v['$dtype']!r}")
            return _DTYPES[v["$dtype"]]
        if "$device" in v:
            return torch.device(str(v["$device"]))
        if "$ref" in v:
            if ref_type is None:
                raise ChannelError("unexpected handle in message")
            return ref_type(str(v["$ref"]))
        raise ChannelError("unexpected tagged value in message")

    try:
        return dec(tree)
    except ChannelError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ChannelError(f"malformed message: {exc}") from None


# ----------------------------------------------------------------------------
# Framing
# ----------------------------------------------------------------------------


def send(fd: int, obj, ref_type=None) -> None:
    """Encode ``obj`` and write it as one frame to ``fd``."""
    header, blob = encode(obj, ref_type)
    data = _HEAD.pack(MAGIC, len(header), len(blob)) + header + blob
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            raise ChannelClosed("the peer closed the channel") from None
        except OSError as exc:
            raise ChannelClosed(f"cannot write to the channel: {exc}") from None
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelTimeout("no answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise ChannelTimeout("no answer in time")
        try:
            chunk = os.read(fd, min(n - got, 1 << 20))
        except OSError as exc:
            raise ChannelClosed(f"cannot read from the channel: {exc}") from None
        if not chunk:
            raise ChannelClosed("the peer closed the channel")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(fd: int, *, timeout: float | None = None, max_bytes: int = 1 << 30, ref_type=None, map_device=True):
    """Read one frame (at most ``max_bytes`` in all, and at most ``max_bytes`` once decoded) and decode it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    magic, hlen, blen = _HEAD.unpack(_read_exact(fd, _HEAD.size, deadline))
    if magic != MAGIC:
        raise ChannelError("bad frame (wrong magic)")
    if hlen > MAX_HEADER or hlen + blen > max_bytes:
        raise ChannelError(f"message too large ({hlen + blen} bytes > {max_bytes})")
    header = _read_exact(fd, hlen, deadline)
    blob = _read_exact(fd, blen, deadline) if blen else b""
    return decode(header, blob, ref_type, map_device=map_device, max_decoded=max_bytes)
