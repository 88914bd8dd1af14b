"""Comparing recurrent cells: parameter counts and equal-time training.

(Gradient flow through time is measured by :mod:`seqcourse.gradients`.)

Shapes: ``T`` time steps, ``B`` batch, ``I`` input features, ``H`` hidden units.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

# Gate blocks per cell: the tanh RNN has one, the GRU three (r, z, n), the LSTM four (i, f, g, o).
GATE_BLOCKS = {"rnn": 1, "gru": 3, "lstm": 4}


def rnn_param_count(cell: str, input_size: int, hidden_size: int) -> int:
    """Parameters of one single-direction layer of ``nn.RNN``/``nn.GRU``/``nn.LSTM``.

    Each of the ``k`` gate blocks has an input matrix ``(H, I)``, a recurrent
    matrix ``(H, H)`` and, in PyTorch, *two* bias vectors ``(H,)``::

        k * (H * (I + H) + 2 * H),   k = 1 (RNN), 3 (GRU), 4 (LSTM)
    """
    if cell not in GATE_BLOCKS:
        raise ValueError(f"cell must be one of {sorted(GATE_BLOCKS)}, got {cell!r}")
    for name, val in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    k, H, I = GATE_BLOCKS[cell], hidden_size, input_size
    return k * (H * (I + H) + 2 * H)


class CountingLoader:
    """Wrap a minibatch loader and count the batches it hands out.

    ``train_lm`` stops after the batch that crosses its time budget, so the
    count is the number of parameter updates a model received.  The wrapper
    forwards ``sequential`` so that state carrying is unchanged.
    """

    def __init__(self, loader):
        self.loader = loader
        self.sequential = getattr(loader, "sequential", False)
        self.count = 0

    def __iter__(self):
        for batch in self.loader:
            self.count += 1
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Temporarily set PyTorch's number of CPU threads (``None``: leave it)."""
    if n is None:
        yield
        return
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_for_seconds(model: nn.Module, train_loader, val_loader, seconds: float, *, lr: float = 1e-2,
                      device=None, threads: int | None = None) -> dict:
    """Train a language model for a wall-clock budget and record the cost.

    A thin wrapper around :func:`seqcourse.lm.train_lm` with ``time_budget``:
    it also counts the parameter updates, and can pin the number of CPU
    threads during the run (``threads=1`` makes timings on a busy,
    shared CPU far less noisy: several threads that wait for each other
    stall whenever another process takes one of the cores).

    Args:
        model: a language model with the ``logits, state = model(X, state)`` interface.
        train_loader, val_loader: minibatch loaders of ``(B, T)`` token ids.
        seconds: the wall-clock budget, > 0.
        lr: Adam learning rate.
        device: where to train (default: where the model is).
        threads: CPU threads for the run; ``None`` keeps PyTorch's setting.
            Ignored when training on a GPU.

    Returns:
        ``train_lm``'s history plus ``"updates"`` (an int) and
        ``"wall_seconds"`` (the measured total).
    """
    from seqcourse.lm import train_lm

    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    device = torch.device(device) if device else next(model.parameters()).device
    counting = CountingLoader(train_loader)
    start = time.perf_counter()
    with cpu_threads(threads if device.type == "cpu" else None):
        history = train_lm(model, counting, val_loader, lr=lr, num_epochs=10**6, time_budget=seconds,
                           device=device, progress=False)
    history["updates"] = counting.count
    history["wall_seconds"] = time.perf_counter() - start
    return history
