"""Counting and measuring what a sequence layer costs (chapter 12).

Three layers map a sequence of ``n`` vectors of width ``d`` to another such
sequence: a 1-D convolution, a recurrent layer and a self-attention layer.
This module counts their multiply-adds, times their forward pass on the
current device (median of several repeats after a warm-up, synchronising a
GPU), fits log-log slopes, finds where two cost curves cross, and measures
the peak memory of one call.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

KINDS = ("cnn", "rnn", "attention")


# ----------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------


def multiply_adds(kind: str, n: int, d: int, kernel_size: int = 3) -> int:
    """Multiply-adds of one forward pass over one sequence (biases ignored).

    * ``"cnn"``: each of ``n`` outputs is a ``k*d``-long dot product per output
      channel: ``k * n * d**2``.
    * ``"rnn"``: each of ``n`` steps multiplies the input and the previous state
      by a ``d x d`` matrix: ``2 * n * d**2``.
    * ``"attention"``: four ``n x d`` by ``d x d`` projections (queries, keys,
      values, output): ``4 * n * d**2``; scores ``Q K^T``: ``n**2 * d``;
      weighted sum of values: ``n**2 * d``.
    """
    _check_kind(kind)
    for name, value in (("n", n), ("d", d), ("kernel_size", kernel_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if kind == "cnn":
        return kernel_size * n * d * d
    if kind == "rnn":
        return 2 * n * d * d
    return 4 * n * d * d + 2 * n * n * d


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# ----------------------------------------------------------------------------
# The three layers
# ----------------------------------------------------------------------------


def make_layer(kind: str, d: int, kernel_size: int = 3, device=None) -> nn.Module:
    """A width-preserving layer: ``nn.Conv1d(d, d, k, padding=k // 2)``,
    ``nn.RNN(d, d)`` (tanh) or one-head ``nn.MultiheadAttention(d)``, in eval mode."""
    _check_kind(kind)
    if kind == "cnn":
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the length, got {kernel_size}")
        layer = nn.Conv1d(d, d, kernel_size, padding=kernel_size // 2)
    elif kind == "rnn":
        layer = nn.RNN(d, d, batch_first=True)
    else:
        layer = nn.MultiheadAttention(d, num_heads=1, batch_first=True)
    return layer.to(device).eval()


def apply_layer(kind: str, layer: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` on ``X`` ``(B, n, d)`` and return ``(B, n, d)``."""
    _check_kind(kind)
    if X.dim() != 3:
        raise ValueError(f"X must be (B, n, d), got shape {tuple(X.shape)}")
    if kind == "cnn":
        return layer(X.transpose(1, 2)).transpose(1, 2)  # (B, d, n) -> (B, n, d)
    if kind == "rnn":
        return layer(X)[0]  # (B, n, d)
    return layer(X, X, X, need_weights=False)[0]  # (B, n, d)


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device=None, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    On a CPU the seconds are processor time of this process
    (``time.process_time``), so that other programs running at the same time
    do not inflate them. On a GPU they are wall-clock seconds, and the device
    is synchronised before and after each call, since kernels run
    asynchronously and a bare timer would only measure the launch.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = torch.device(device or "cpu")
    for _ in range(warmup):
        fn()
    return statistics.median(_time_once(fn, device) for _ in range(repeats))


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    # On a CPU, count the processor time this process used: unlike the wall
    # clock it leaves out the time other programs held the processor, and on
    # an idle machine with one thread the two agree. On a GPU, the wall clock
    # between two synchronisations.
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


@torch.no_grad()
def time_layer(kind: str, n: int, d: int, batch_size: int = 1, device=None, repeats: int = 5,
               warmup: int = 2, kernel_size: int = 3, seed: int = 0) -> float:
    """Median seconds of one forward pass of a fresh ``kind`` layer on ``(batch_size, n, d)``."""
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    layer = make_layer(kind, d, kernel_size, device)
    X = torch.randn(batch_size, n, d, device=device)  # (B, n, d)
    return time_call(lambda: apply_layer(kind, layer, X), device, repeats, warmup)


@torch.no_grad()
def measure_grid(kinds: Sequence[str], ns: Sequence[int], ds: Sequence[int], batch_size: int = 1,
                 device=None, repeats: int = 5, warmup: int = 1, seed: int = 0) -> list[dict]:
    """Time every ``kind`` at every ``(n, d)``.

    The repeats are interleaved: each round times every configuration once,
    so a burst of load from other programs spreads over all configurations
    instead of distorting a few of them.

    Returns:
        rows ``{"kind", "n", "d", "seconds", "min_seconds"}``: the median and
        the fastest of the ``repeats`` calls.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    calls = []
    for kind in kinds:
        for n in ns:
            for d in ds:
                layer = make_layer(kind, d, device=device)
                X = torch.randn(batch_size, n, d, device=device)  # (B, n, d)
                fn = (lambda k=kind, m=layer, x=X: apply_layer(k, m, x))
                for _ in range(warmup):
                    fn()
                calls.append(((kind, n, d), fn, []))
    for _ in range(repeats):
        for _, fn, times in calls:
            times.append(_time_once(fn, device))
    return [{"kind": k, "n": n, "d": d, "seconds": statistics.median(times), "min_seconds": min(times)}
            for (k, n, d), _, times in calls]


# ----------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``: the exponent ``p`` in ``y ~ x**p``."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"need two or more (x, y) points of equal count, got {len(xs)} and {len(ys)}")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError("log-log fits need positive x and y")
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("all x are equal; a slope needs at least two distinct x")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def crossover(xs: Sequence[float], ya: Sequence[float], yb: Sequence[float]) -> float | None:
    """The first ``x`` where curve ``a`` overtakes curve ``b`` (from ``a < b`` to ``a >= b``).

    Interpolates linearly in log-log coordinates between the two grid points
    that bracket the change.  Returns ``None`` if ``a < b`` nowhere turns into
    ``a >= b`` on the grid (including when ``a >= b`` already at the first point).
    """
    if not len(xs) == len(ya) == len(yb) or len(xs) < 2:
        raise ValueError("xs, ya and yb must have the same length (>= 2)")
    g = [math.log(a) - math.log(b) for a, b in zip(ya, yb)]  # < 0 while a is cheaper
    for i in range(1, len(xs)):
        if g[i - 1] < 0 <= g[i]:
            lx0, lx1 = math.log(xs[i - 1]), math.log(xs[i])
            frac = -g[i - 1] / (g[i] - g[i - 1])
            return math.exp(lx0 + frac * (lx1 - lx0))
    return None


# ----------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ start/stop banners (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], object], device=None) -> int:
    """Peak bytes allocated by PyTorch during ``fn()``, above what was allocated before.

    On CUDA this reads the caching allocator's peak counter
    (``torch.cuda.max_memory_allocated``). On the CPU it replays the
    allocations and frees recorded by ``torch.profiler`` with
    ``profile_memory=True`` and returns the highest running total.
    """
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"peak_memory supports 'cpu' and 'cuda' devices, got {device}")
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return int(peak)
