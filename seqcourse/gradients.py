"""Measuring how gradients flow back through time in PyTorch recurrent layers.

The central quantity is ``||dL/dh_t||``: the norm of the *total* gradient of
a loss with respect to the hidden state at step ``t``, including every path
through later states.  ``nn.RNN`` runs the whole sequence in one kernel and
does not expose ``h_t`` as a graph node, so :func:`state_grad_norms` steps
the same module one time step at a time and keeps each state's gradient.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_module(rnn) -> None:
    if not isinstance(rnn, (nn.RNN, nn.GRU, nn.LSTM)):
        raise TypeError(f"rnn must be an nn.RNN, nn.GRU or nn.LSTM, got {type(rnn).__name__}")


def last_step_loss(outputs: torch.Tensor, batch_first: bool = False) -> torch.Tensor:
    """A many-to-one loss: the sum of the last time step's outputs.

    Its gradient on ``h_T`` is all ones, so the measured norms show only what
    the recurrence does to a signal on its way back.
    """
    return outputs[:, -1].sum() if batch_first else outputs[-1].sum()


def state_grad_norms(rnn: nn.Module, inputs: torch.Tensor, loss_fn=None, state=None) -> torch.Tensor:
    """``||dL/dh_t||`` for every time step ``t = 1..T``.

    Args:
        rnn: an ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` (any ``num_layers``,
            unidirectional).
        inputs: ``(T, B, I)``, or ``(B, T, I)`` when ``rnn.batch_first``.
        loss_fn: maps the outputs (same layout as ``rnn(inputs)[0]``) to a
            scalar; default :func:`last_step_loss`.
        state: optional initial state, as ``rnn`` accepts it.

    Returns:
        A float tensor ``(T,)``: entry ``t-1`` is the Frobenius norm, over the
        batch and all layers, of the gradient with respect to the hidden state
        ``h_t`` (for an LSTM, ``h_t`` only, not the cell ``c_t``).
    """
    _check_module(rnn)
    if rnn.bidirectional:
        raise ValueError("a bidirectional layer has no single state h_t per step; use bidirectional=False")
    if inputs.dim() != 3:
        raise ValueError(f"inputs must be 3-D, (T, B, I) or (B, T, I) with batch_first; got {tuple(inputs.shape)}")
    loss_fn = loss_fn or (lambda out: last_step_loss(out, rnn.batch_first))
    time_dim = 1 if rnn.batch_first else 0
    steps = inputs.unbind(time_dim)  # T tensors (B, I)
    hs = []
    for x_t in steps:
        _, state = rnn(x_t.unsqueeze(time_dim), state)  # one step
        h = state[0] if isinstance(state, tuple) else state  # (L, B, H)
        h.retain_grad()
        hs.append(h)
    # The output at step t *is* the top layer's h_t; build it from the states so
    # that the loss reaches h_t through the same graph node as the recurrence.
    outputs = torch.stack([h[-1] for h in hs], dim=time_dim)  # (T, B, H) or (B, T, H)
    loss = loss_fn(outputs)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    loss.backward()
    norms = [h.grad.norm() if h.grad is not None else torch.zeros(()) for h in hs]
    return torch.stack(norms).detach().cpu()


def input_grad_norms(rnn: nn.Module, inputs: torch.Tensor, loss_fn=None, state=None) -> torch.Tensor:
    """``||dL/dx_t||`` for every time step: how much the loss still feels input ``t``.

    Same arguments as :func:`state_grad_norms`; this one needs no stepping,
    because the inputs are leaves of the graph.

    Returns:
        A float tensor ``(T,)`` (norm over the batch and the features).
    """
    _check_module(rnn)
    if inputs.dim() != 3:
        raise ValueError(f"inputs must be 3-D, (T, B, I) or (B, T, I) with batch_first; got {tuple(inputs.shape)}")
    loss_fn = loss_fn or (lambda out: last_step_loss(out, rnn.batch_first))
    x = inputs.detach().clone().requires_grad_(True)
    out, _ = rnn(x, state)
    loss = loss_fn(out)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    loss.backward()
    time_dim = 1 if rnn.batch_first else 0
    g = x.grad.transpose(0, time_dim) if time_dim else x.grad  # (T, B, I)
    return g.flatten(1).norm(dim=1).detach().cpu()


@torch.no_grad()
def set_spectral_radius_(weight: torch.Tensor, radius: float) -> torch.Tensor:
    """Rescale a square matrix in place so that its largest |eigenvalue| is ``radius``.

    Args:
        weight: ``(H, H)``, e.g. ``rnn.weight_hh_l0``.
        radius: the target spectral radius, ``> 0``.

    Returns:
        ``weight`` (modified in place).
    """
    if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight must be a square (H, H) matrix, got {tuple(weight.shape)}; "
                         f"for an LSTM/GRU weight_hh, rescale each (H, H) gate block")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    current = spectral_radius(weight)
    if current == 0:
        raise ValueError("weight has spectral radius 0 (e.g. all zeros or nilpotent); cannot rescale it")
    weight.mul_(radius / current)
    return weight


def spectral_radius(weight: torch.Tensor) -> float:
    """Largest absolute eigenvalue of a square matrix."""
    if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"weight must be a square (H, H) matrix, got {tuple(weight.shape)}")
    return float(torch.linalg.eigvals(weight.detach().double().cpu()).abs().max())


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return ``x`` unchanged, but multiply the gradient flowing back through it by ``factor``.

    ``factor * x + (1 - factor) * x.detach()`` has the value of ``x`` and the
    derivative ``factor``: ``factor = 0`` is ``x.detach()`` (truncation), ``1``
    is ``x`` itself.
    """
    return factor * x + (1 - factor) * x.detach()


def recurrent_weight_grad(rnn: nn.RNN, inputs: torch.Tensor, factors) -> torch.Tensor:
    """Gradient of :func:`last_step_loss` with respect to ``rnn.weight_hh_l0``, with scaled paths.

    The step from ``h_{t-1}`` into ``h_t`` passes its gradient multiplied by
    ``factors[t-1]`` (via :func:`scale_grad`). All ones is full BPTT; a zero at
    step ``t`` cuts every path through time that crosses it (truncated BPTT);
    ``Bernoulli(p) / p`` factors give randomised truncation, unbiased in
    expectation (Tallec & Ollivier, 2017).

    Args:
        rnn: a one-layer, unidirectional, seq-first ``nn.RNN``.
        inputs: ``(T, B, I)``.
        factors: ``T`` numbers (a list or a ``(T,)`` tensor).

    Returns:
        ``(H, H)``, the gradient in PyTorch's layout (that of ``weight_hh_l0``).
    """
    if not isinstance(rnn, nn.RNN) or rnn.num_layers != 1 or rnn.bidirectional or rnn.batch_first:
        raise TypeError("rnn must be a one-layer, unidirectional, seq-first nn.RNN")
    if inputs.dim() != 3 or len(factors) != inputs.shape[0]:
        raise ValueError(f"inputs must be (T, B, I) and factors hold T numbers; got {tuple(inputs.shape)} "
                         f"and {len(factors)} factors")
    h = inputs.new_zeros(1, inputs.shape[1], rnn.hidden_size)  # (1, B, H)
    for x_t, factor in zip(inputs, factors):  # x_t: (B, I)
        _, h = rnn(x_t[None], scale_grad(h, float(factor)))  # one step; h: (1, B, H)
    (grad,) = torch.autograd.grad(last_step_loss(h), rnn.weight_hh_l0)
    return grad
