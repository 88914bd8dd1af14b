"""Recurrent language models: the model, its training loop, perplexity and sampling.

Every model here follows one interface, which the training loop relies on::

    logits, state = model(X, state)   # X: (B, T) long -> logits: (B, T, V)

``state`` is ``None`` at the start of a sequence, and whatever the model
returned otherwise (a tensor, or a tuple of tensors for an LSTM).
"""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

_CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RNNLM(nn.Module):
    """A token-level language model: embedding -> recurrent layers -> linear.

    Args:
        vocab_size: number of tokens ``V``.
        hidden_size: width ``H`` of the recurrent state.
        num_layers: stacked recurrent layers.
        cell: ``"rnn"`` (tanh), ``"gru"`` or ``"lstm"``.
        embed_size: width of a learned embedding; ``None`` feeds one-hot
            vectors, as the classic character models do.
        dropout: dropout between stacked layers (as in ``nn.LSTM``).
    """

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int = 1, cell: str = "rnn",
                 embed_size: int | None = None, dropout: float = 0.0):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        self.vocab_size, self.cell = vocab_size, cell
        self.embedding = nn.Embedding(vocab_size, embed_size) if embed_size else None
        input_size = embed_size or vocab_size
        self.rnn = _CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, X: torch.Tensor, state=None):
        """Args: X ``(B, T)`` token ids; state from a previous call or ``None``.

        Returns: logits ``(B, T, V)`` and the new state.
        """
        if X.dim() != 2:
            raise ValueError(f"X must be (B, T) token ids, got shape {tuple(X.shape)}")
        if self.embedding is not None:
            inputs = self.embedding(X)  # (B, T, E)
        else:
            inputs = F.one_hot(X, self.vocab_size).float()  # (B, T, V)
        outputs, state = self.rnn(inputs, state)  # (B, T, H)
        return self.head(outputs), state  # (B, T, V)


def detach_state(state):
    """Cut the graph behind a carried state (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def perplexity(mean_nll: float) -> float:
    """Perplexity = exp(mean cross-entropy in nats per token)."""
    return math.exp(mean_nll)


def lm_loss(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all ``B*T`` positions.

    Args: logits ``(B, T, V)``; Y ``(B, T)`` targets.
    """
    if logits.dim() != 3 or Y.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and Y (B, T); got {tuple(logits.shape)} and {tuple(Y.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))  # (B*T, V) vs (B*T,)


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, loader, device: torch.device | str | None = None) -> float:
    """Held-out perplexity of ``model`` over every minibatch of ``loader``."""
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    carry = getattr(loader, "sequential", False)
    for X, Y in loader:
        X, Y = X.to(device), Y.to(device)
        logits, state = model(X, state if carry else None)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1), reduction="sum").item()
        count += Y.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("the loader yielded no batches; the held-out text is shorter than one batch")
    return perplexity(total / count)


def train_lm(model: nn.Module, train_loader, val_loader=None, *, lr: float = 1e-2, num_epochs: int = 10,
             time_budget: float | None = None, max_norm: float | None = 1.0, device=None,
             optimizer: str = "adam", progress: bool = True) -> dict:
    """Train a language model with gradient clipping and return its history.

    Args:
        model: follows the module interface (``logits, state = model(X, state)``).
        train_loader: yields ``(X, Y)`` pairs of shape ``(B, T)``. If it has
            ``sequential=True`` the state is carried (detached) between batches.
        val_loader: optional held-out loader, evaluated after every epoch.
        lr: learning rate.
        num_epochs: upper bound on epochs.
        time_budget: optional wall-clock budget in seconds; training stops after
            the first batch that crosses it (the epoch is then evaluated).
        max_norm: clip the global gradient norm to this value; ``None`` disables.
        device: where to train; default: where the model's parameters are.
        optimizer: ``"adam"`` or ``"sgd"``.
        progress: show a tqdm progress bar over epochs.

    Returns:
        ``{"epoch", "train_ppl", "val_ppl", "seconds", "grad_norm"}``, lists
        with one entry per epoch (``val_ppl`` is empty without ``val_loader``).
    """
    from tqdm import tqdm

    device = torch.device(device) if device else next(model.parameters()).device
    model.to(device)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    carry = getattr(train_loader, "sequential", False)
    history = {"epoch": [], "train_ppl": [], "val_ppl": [], "seconds": [], "grad_norm": []}
    start = time.perf_counter()
    bar = tqdm(range(1, num_epochs + 1), desc="epochs", disable=not progress, file=sys.stdout, leave=True)
    for epoch in bar:
        model.train()
        total, count, state, norms, out_of_time = 0.0, 0, None, [], False
        for X, Y in train_loader:
            X, Y = X.to(device), Y.to(device)
            # Random partitioning: every row starts a new sequence, so start from zeros.
            state = detach_state(state) if carry else None
            logits, state = model(X, state)
            loss = lm_loss(logits, Y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_norm is not None:
                norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
            opt.step()
            total += loss.item() * Y.numel()
            count += Y.numel()
            if time_budget is not None and time.perf_counter() - start > time_budget:
                out_of_time = True
                break
        if count == 0:
            raise ValueError("train_loader yielded no batches; use a smaller batch_size or num_steps")
        history["epoch"].append(epoch)
        history["train_ppl"].append(perplexity(total / count))
        if val_loader is not None:
            history["val_ppl"].append(evaluate_perplexity(model, val_loader, device))
        history["seconds"].append(time.perf_counter() - start)
        history["grad_norm"].append(sum(norms) / len(norms) if norms else float("nan"))
        postfix = {"train_ppl": f"{history['train_ppl'][-1]:.2f}"}
        if history["val_ppl"]:
            postfix["val_ppl"] = f"{history['val_ppl'][-1]:.2f}"
        bar.set_postfix(postfix)
        if out_of_time:
            break
    bar.close()
    return history


def plot_history(history: dict, ax=None, title: str | None = None):
    """Plot training (and held-out) perplexity per epoch on a log axis.

    Returns the matplotlib ``Axes``; the figure renders in a static book
    because it is an ordinary matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if not history.get("epoch"):
        raise ValueError("history is empty: train for at least one epoch before plotting")
    if ax is None:
        _, ax = plt.subplots()
    ax.plot(history["epoch"], history["train_ppl"], marker="o", label="train")
    if history.get("val_ppl"):
        ax.plot(history["epoch"], history["val_ppl"], marker="s", label="held-out")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (per token, log scale)")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


@torch.no_grad()
def generate(model: nn.Module, vocab, prefix, num_tokens: int, temperature: float = 0.0,
             generator: torch.Generator | None = None, sep: str = "") -> str:
    """Continue ``prefix`` by ``num_tokens`` tokens.

    Args:
        model: a language model with the module interface.
        vocab: a :class:`seqcourse.text.Vocab`.
        prefix: a string (split into characters) or a list of tokens.
        num_tokens: how many tokens to add.
        temperature: ``0`` is greedy (argmax); otherwise sample from
            ``softmax(logits / temperature)``. Lower is more conservative.
        generator: a ``torch.Generator`` for reproducible sampling.
        sep: joins the tokens of the result ("" for characters, " " for words).
    """
    tokens = list(prefix) if isinstance(prefix, str) else list(prefix)
    if not tokens:
        raise ValueError("prefix is empty: give at least one token to condition on")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = torch.tensor([vocab[tokens]], device=device)  # (1, T)
    logits, state = model(ids, None)  # warm up the state on the prefix
    out = list(tokens)
    for _ in range(num_tokens):
        last = logits[0, -1]  # (V,)
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            probs = torch.softmax(last.float() / temperature, dim=-1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        out.append(vocab.to_tokens(nxt))
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    model.train(was_training)
    return sep.join(out)
