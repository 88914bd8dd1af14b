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

from .text import SeqDataLoader

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
        tie_weights: share one ``(V, H)`` matrix between the input embedding
            and the output layer (Press & Wolf, 2017; Inan et al., 2017).
            Needs ``embed_size == hidden_size``.
    """

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int = 1, cell: str = "rnn",
                 embed_size: int | None = None, dropout: float = 0.0, tie_weights: bool = False):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
        if tie_weights and embed_size != hidden_size:
            raise ValueError(f"tie_weights needs embed_size == hidden_size (the embedding and the output "
                             f"layer share one (V, H) matrix), got embed_size={embed_size}, "
                             f"hidden_size={hidden_size}")
        self.vocab_size, self.cell = vocab_size, cell
        self.embedding = nn.Embedding(vocab_size, embed_size) if embed_size else None
        input_size = embed_size or vocab_size
        self.rnn = _CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                                dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            # nn.Embedding stores (V, E) and nn.Linear(H, V) stores (V, H): with E = H
            # they are the same shape, so one Parameter can serve both.
            self.head.weight = self.embedding.weight
            # nn.Embedding's N(0, 1) init would give the output layer logits of size ~sqrt(H):
            # start small instead, as an output layer would.
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

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


class FixedWindowLM(nn.Module):
    """A fixed-window neural language model (Bengio et al., 2003).

    Like an n-gram model it looks at the last ``context_size`` tokens only;
    unlike one, it maps them to learned embeddings, concatenates them and
    predicts the next token with a small MLP, so similar contexts share
    statistical strength::

        h_t = tanh([e(x_{t-n+1}); ...; e(x_t)] W_1 + b_1),   o_t = h_t W_2 + b_2

    It follows the module interface of :class:`RNNLM`: ``state`` holds the last
    ``context_size`` token ids ``(B, context_size)``, so consecutive chunks of
    one stream see each other's tokens. With ``state=None`` the missing
    positions before the start hold a padding id ``V`` with its own embedding.

    Args:
        vocab_size: number of tokens ``V``.
        context_size: tokens of context ``n`` (an ``(n+1)``-gram model's window).
        embed_size: embedding width ``E``.
        hidden_size: width ``H`` of the hidden layer.
    """

    def __init__(self, vocab_size: int, context_size: int, embed_size: int, hidden_size: int):
        super().__init__()
        for name, val in (("vocab_size", vocab_size), ("context_size", context_size),
                          ("embed_size", embed_size), ("hidden_size", hidden_size)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.vocab_size, self.context_size = vocab_size, context_size
        self.embedding = nn.Embedding(vocab_size + 1, embed_size)  # row V: "before the start"
        self.hidden = nn.Linear(context_size * embed_size, hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, X: torch.Tensor, state=None):
        """Args: X ``(B, T)`` token ids; state ``(B, n)`` previous ids or ``None``.

        Returns: logits ``(B, T, V)`` and the new state ``(B, n)``.
        """
        if X.dim() != 2:
            raise ValueError(f"X must be (B, T) token ids, got shape {tuple(X.shape)}")
        B, T = X.shape
        n = self.context_size
        if state is None:
            state = X.new_full((B, n), self.vocab_size)  # (B, n): padding before the start
        padded = torch.cat([state, X], dim=1)  # (B, n + T)
        windows = padded.unfold(1, n, 1)[:, 1:]  # (B, T, n): window t ends with X[:, t]
        emb = self.embedding(windows).reshape(B, T, -1)  # (B, T, n*E)
        hidden = torch.tanh(self.hidden(emb))  # (B, T, H)
        return self.head(hidden), padded[:, -n:]  # (B, T, V), (B, n)


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


def _check_ids(token_ids) -> torch.Tensor:
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"token_ids must be a 1-D sequence of token ids, got shape {tuple(ids.shape)}")
    if len(ids) < 2:
        raise ValueError(f"token_ids must hold at least 2 tokens (one prediction), got {len(ids)}")
    return ids


@torch.no_grad()
def _neural_heldout_nll(model: nn.Module, ids: torch.Tensor, num_steps: int, batch_size: int,
                        carry_state: bool, device) -> tuple[float, int]:
    inputs, targets = ids[:-1], ids[1:]  # predict ids[t] from ids[:t], t = 1 .. N-1
    n = len(targets)
    B = min(batch_size, n)
    length = -(-n // B)  # ceil(n / B): each of the B rows is one contiguous stretch
    pad = B * length - n  # < B padding positions, all at the end of the last stretches
    X = torch.cat([inputs, inputs.new_zeros(pad)]).reshape(B, length)  # (B, N/B)
    Y = torch.cat([targets, targets.new_full((pad,), -100)]).reshape(B, length)  # -100: ignored
    total, count, state = 0.0, 0, None
    for i in range(0, length, num_steps):
        x, y = X[:, i:i + num_steps].to(device), Y[:, i:i + num_steps].to(device)  # (B, T)
        logits, state = model(x, state if carry_state else None)  # (B, T, V)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), y.reshape(-1),
                                 ignore_index=-100, reduction="sum").item()
        count += int((y != -100).sum())
    return total, count


def heldout_nll(model, token_ids, *, num_steps: int = 64, batch_size: int = 1, carry_state: bool = True,
                device: torch.device | str | None = None) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of a held-out stream, and the number of predictions.

    The deterministic evaluator behind :func:`heldout_perplexity`: it scores
    ``P(ids[t] | ids[:t])`` for every ``t = 1 .. N-1``, in order, with no random
    offset and no dropped tokens, so the count is always ``N - 1``.

    Args:
        model: a neural language model with the module interface
            (``logits, state = model(X, state)``), or a fitted n-gram model
            (anything with a ``token_log_probs(ids)`` method, such as
            :class:`seqcourse.ngram.NGramLM` and :class:`seqcourse.ngram.KneserNeyLM`).
        token_ids: ``(N,)`` held-out token ids (a tensor or a list).
        num_steps: neural models read the stream in chunks of this many tokens.
        batch_size: neural models read the stream as ``B`` contiguous stretches
            side by side (faster; the first token of each stretch after the
            first is then predicted from a fresh state). ``1`` reads it as one stream.
        carry_state: carry the state from chunk to chunk (sequential training);
            ``False`` restarts it every ``num_steps`` tokens (random partitioning).
        device: where to run a neural model; default: where its parameters are.

    Returns:
        ``(total_nll, count)`` with ``count == N - 1``.
    """
    ids = _check_ids(token_ids)
    if hasattr(model, "token_log_probs"):  # an n-gram model: score the ids directly
        log_probs = model.token_log_probs(ids.tolist())
        return -math.fsum(log_probs), len(log_probs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module language model or a fitted n-gram model, "
                        f"got {type(model).__name__}")
    for name, val in (("num_steps", num_steps), ("batch_size", batch_size)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return _neural_heldout_nll(model, ids, num_steps, batch_size, carry_state, device)
    finally:
        model.train(was_training)


def heldout_perplexity(model, token_ids, *, num_steps: int = 64, batch_size: int = 1,
                       carry_state: bool = True, device: torch.device | str | None = None) -> float:
    """Perplexity on a held-out stream, the same way for n-gram and neural models.

    ``exp(total_nll / (N - 1))`` over every prediction ``P(ids[t] | ids[:t])``,
    ``t = 1 .. N-1``: deterministic (no random offset) and complete (no token
    dropped). See :func:`heldout_nll` for the arguments. An n-gram model
    that gives some token probability 0 has perplexity ``inf``.
    """
    total, count = heldout_nll(model, token_ids, num_steps=num_steps, batch_size=batch_size,
                               carry_state=carry_state, device=device)
    return math.inf if math.isinf(total) else perplexity(total / count)


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, loader, device: torch.device | str | None = None) -> float:
    """Held-out perplexity of ``model`` over ``loader``.

    A :class:`seqcourse.text.SeqDataLoader` is evaluated with the deterministic
    :func:`heldout_perplexity` on its whole corpus (same ``batch_size`` and
    ``num_steps``; the state is carried if the loader is sequential), so
    every held-out token is scored and repeated evaluations agree. Any other
    iterable of ``(X, Y)`` minibatches is scored as given.
    """
    if isinstance(loader, SeqDataLoader):
        return heldout_perplexity(model, loader.corpus, num_steps=loader.num_steps, batch_size=loader.batch_size,
                                  carry_state=loader.sequential, device=device)
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
        val_loader: optional held-out loader, evaluated after every epoch with
            :func:`evaluate_perplexity` (a ``SeqDataLoader`` is scored by the
            deterministic :func:`heldout_perplexity`: every token, no random offset).
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
