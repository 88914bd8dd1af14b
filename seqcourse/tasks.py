"""Synthetic long-range tasks: the adding problem, and a many-to-one model to learn it.

The adding problem (Hochreiter & Schmidhuber, 1997) is a regression over a
sequence of ``T`` steps with two input features: a random value in ``[0, 1)``
and a marker, which is 1 at exactly two steps and 0 elsewhere. The target is
the sum of the two marked values. The first marker sits near the start, so the
model must carry one number across most of the sequence while ignoring
everything else. Predicting the mean, 1.0, gives a mean squared error of
``2 / 12 = 1/6`` (twice the variance of a uniform value): a model that does
clearly better than that has learned the long-range dependency.
"""

from __future__ import annotations

import torch
from torch import nn

# Mean squared error of always predicting the expected sum, 1.0.
BASELINE_MSE = 2.0 / 12.0

_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def adding_problem(num_samples: int, seq_len: int, generator: torch.Generator | None = None,
                   first_window: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` sequences of the adding problem.

    The first marker is at a random step among the first ``first_window``
    steps, the second in the second half of the sequence.

    Args:
        num_samples: ``B``.
        seq_len: ``T``, at least ``2 * first_window``.
        generator: a ``torch.Generator`` for reproducible draws.
        first_window: the first marker lies in steps ``0 .. first_window - 1``.

    Returns:
        ``X`` of shape ``(B, T, 2)`` (value, marker) and the targets ``y`` ``(B,)``.
    """
    for name, val in (("num_samples", num_samples), ("seq_len", seq_len), ("first_window", first_window)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if seq_len < 2 * first_window:
        raise ValueError(f"seq_len={seq_len} must be at least 2 * first_window = {2 * first_window}")
    values = torch.rand(num_samples, seq_len, generator=generator)  # (B, T)
    first = torch.randint(0, first_window, (num_samples,), generator=generator)  # (B,)
    second = torch.randint(seq_len // 2, seq_len, (num_samples,), generator=generator)  # (B,)
    markers = torch.zeros(num_samples, seq_len)  # (B, T)
    rows = torch.arange(num_samples)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]  # (B,)
    return torch.stack([values, markers], dim=-1), y  # (B, T, 2), (B,)


class SequenceRegressor(nn.Module):
    """Many-to-one: a recurrent layer reads the sequence, a linear head reads its last state.

    Args:
        cell: ``"rnn"`` (tanh), ``"gru"`` or ``"lstm"``.
        input_size: features per step ``I``.
        hidden_size: ``H``.
        forget_bias: for an LSTM, set the forget-gate bias to this value
            (``None`` keeps PyTorch's initialisation). A positive value starts
            training with the forget gates open.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, forget_bias: float | None = None):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        if forget_bias is not None and cell != "lstm":
            raise ValueError(f"forget_bias applies to an LSTM only, got cell={cell!r}")
        self.rnn = _CELLS[cell](input_size, hidden_size, batch_first=True)
        if forget_bias is not None:
            H = hidden_size
            with torch.no_grad():  # gate order i, f, g, o: the forget gate is rows H:2H
                self.rnn.bias_ih_l0[H:2 * H] = forget_bias
                self.rnn.bias_hh_l0[H:2 * H] = 0.0
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Args: X ``(B, T, I)``. Returns: predictions ``(B,)``."""
        if X.dim() != 3:
            raise ValueError(f"X must be (B, T, I), got shape {tuple(X.shape)}")
        outputs, _ = self.rnn(X)  # (B, T, H)
        return self.head(outputs[:, -1])[:, 0]  # (B,)


def train_regressor(model: nn.Module, seq_len: int, *, steps: int = 300, batch_size: int = 64,
                    lr: float = 1e-2, max_norm: float = 1.0, seed: int = 0) -> list[float]:
    """Train ``model`` on fresh adding-problem batches with Adam; return the loss of every step.

    Every step draws a new batch, so there is no overfitting to a fixed
    training set and the training loss is an unbiased estimate of the test loss.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        X, y = adding_problem(batch_size, seq_len, generator=gen)
        loss = nn.functional.mse_loss(model(X.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate_regressor(model: nn.Module, seq_len: int, num_samples: int = 2000, seed: int = 12345) -> float:
    """Mean squared error on ``num_samples`` fresh sequences (a fixed seed, so runs are comparable)."""
    X, y = adding_problem(num_samples, seq_len, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    mse = nn.functional.mse_loss(model(X.to(device)), y.to(device)).item()
    model.train(was_training)
    return mse
