"""Sequence tagging and classification: recurrent taggers and a self-attention classifier.

Three things live here:

* a synthetic "I saw a saw" corpus in which the word *saw* is a VERB or a
  NOUN, and only the word that FOLLOWS it tells which;
* :class:`RNNTagger`, an embedding -> (bi)directional recurrent layers ->
  linear model that emits one tag distribution per time step, and the small
  training / evaluation loop around it;
* a synthetic membership task and :class:`SelfAttentionClassifier`, which
  uses ``nn.MultiheadAttention`` and mean pooling.

A bidirectional model maps a whole sequence ``(B, T)`` to outputs
``(B, T, C)``; it has no left-to-right state to carry, so
:func:`rerun_generate` continues a text by re-running the model on the
whole prefix for every new token.
"""

from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

TAGS = ("OTHER", "NOUN", "VERB")
"""Tag set of the *saw* corpus; every word except *saw* is ``OTHER``."""

# After a VERB "saw" comes its object; after a NOUN "saw" comes a verb or the end.
VERB_CUES = ("a", "the", "my", "her", "him", "them")
NOUN_CUES = ("is", "was", "cuts", "broke", "fell", ".")
# Words drawn with the same probabilities before either kind of "saw", so the
# left context carries no information about the tag.
FILLERS = ("i", "we", "they", "you", "then", "and", "today", "old", "big", "tree", "dog", "wood")

IGNORE_INDEX = -100
"""Target value for padding positions; ``F.cross_entropy`` skips it."""


def make_saw_corpus(num_sentences: int, length: int = 12, saw_prob: float = 0.25, seed: int = 0
                    ) -> list[tuple[list[str], list[str]]]:
    """Generate tagged sentences in which only the right context disambiguates *saw*.

    Sentences are built left to right. At each free position (with room for
    two more words) a "saw chunk" starts with probability ``saw_prob``:
    ``saw`` followed by a cue word, a determiner or pronoun (the saw is a
    VERB with an object) or a verb / full stop (the saw is a NOUN, the
    subject of what follows). The tag is drawn first, with probability 1/2.
    Every other position holds a filler word drawn independently of all
    tags, so the words to the LEFT of a *saw* say nothing about its tag.
    All sentences have the same length, so no padding is needed.

    Args:
        num_sentences: how many sentences.
        length: tokens per sentence (at least 2).
        saw_prob: probability that a free position starts a saw chunk.
        seed: seeds a private ``random.Random``; the same seed gives the same corpus.

    Returns:
        A list of ``(tokens, tags)`` pairs of string lists of length ``length``.
    """
    for name, val in (("num_sentences", num_sentences), ("length", length)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if length < 2:
        raise ValueError(f"length must be at least 2 (a saw and its cue), got {length}")
    if not 0.0 < saw_prob <= 1.0:
        raise ValueError(f"saw_prob must be in (0, 1], got {saw_prob}")
    rng = random.Random(seed)
    corpus = []
    for _ in range(num_sentences):
        tokens, tags = [], []
        while len(tokens) < length:
            if len(tokens) <= length - 2 and rng.random() < saw_prob:
                tag = rng.choice(("NOUN", "VERB"))
                cue = rng.choice(VERB_CUES if tag == "VERB" else NOUN_CUES)
                tokens += ["saw", cue]
                tags += [tag, "OTHER"]
            else:
                tokens.append(rng.choice(FILLERS))
                tags.append("OTHER")
        corpus.append((tokens, tags))
    return corpus


def encode_tagged(corpus, vocab, pad_id: int = 0, tags=TAGS):
    """Turn ``(tokens, tags)`` pairs into padded tensors.

    Args:
        corpus: a list of ``(tokens, tags)`` pairs (see :func:`make_saw_corpus`).
        vocab: a :class:`seqcourse.text.Vocab` for the tokens.
        pad_id: token id used for padding the inputs.
        tags: the tag set; a tag's id is its position in it.

    Returns:
        ``X`` ``(N, T)`` long token ids, ``Y`` ``(N, T)`` long tag ids with
        :data:`IGNORE_INDEX` at padding, and ``lengths`` ``(N,)``.
    """
    if not corpus:
        raise ValueError("corpus is empty; generate it with make_saw_corpus(num_sentences > 0)")
    tag_to_id = {t: i for i, t in enumerate(tags)}
    lengths = torch.tensor([len(toks) for toks, _ in corpus])
    N, T = len(corpus), int(lengths.max())
    X = torch.full((N, T), pad_id, dtype=torch.long)
    Y = torch.full((N, T), IGNORE_INDEX, dtype=torch.long)
    for i, (toks, tgs) in enumerate(corpus):
        if len(toks) != len(tgs):
            raise ValueError(f"sentence {i} has {len(toks)} tokens but {len(tgs)} tags; they must match")
        unknown = [t for t in tgs if t not in tag_to_id]
        if unknown:
            raise ValueError(f"sentence {i} has tags {unknown} that are not in the tag set {tuple(tags)}")
        X[i, : len(toks)] = torch.tensor(vocab[list(toks)])
        Y[i, : len(tgs)] = torch.tensor([tag_to_id[t] for t in tgs])
    return X, Y, lengths


class RNNTagger(nn.Module):
    """Embedding -> stacked (bi)directional LSTM/GRU/RNN -> one linear read-out per step.

    Args:
        vocab_size: number of input tokens ``V``.
        embed_size: embedding width ``E``.
        hidden_size: state width ``H`` of each direction.
        num_tags: number of output classes ``C``.
        num_layers: stacked recurrent layers ``L``.
        bidirectional: run a second, right-to-left network and concatenate
            the two directions, so the read-out sees ``2H`` features.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        dropout: dropout on the outputs of every recurrent layer except the
            last (exactly what ``nn.LSTM``'s ``dropout`` argument does).
    """

    _cells = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_tags: int,
                 num_layers: int = 1, bidirectional: bool = False, cell: str = "lstm", dropout: float = 0.0):
        super().__init__()
        if cell not in self._cells:
            raise ValueError(f"cell must be one of {sorted(self._cells)}, got {cell!r}")
        if dropout and num_layers == 1:
            raise ValueError("dropout acts only between stacked layers; with num_layers=1 it does "
                             "nothing. Use num_layers >= 2 or dropout=0")
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = self._cells[cell](embed_size, hidden_size, num_layers=num_layers, batch_first=True,
                                     bidirectional=bidirectional, dropout=dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_tags)

    def forward(self, X: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Args: ``X`` ``(B, T)`` token ids; ``lengths`` ``(B,)`` true lengths of padded rows.

        With ``lengths`` the rows are packed, so the right-to-left direction
        starts at each row's last real token instead of reading padding first.

        Returns: logits ``(B, T, C)``.
        """
        if X.dim() != 2:
            raise ValueError(f"X must be (B, T) token ids, got shape {tuple(X.shape)}")
        emb = self.embedding(X)  # (B, T, E)
        if lengths is None:
            out, _ = self.rnn(emb)  # (B, T, H * num_directions)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True,
                                                       enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                      total_length=X.shape[1])  # (B, T, H * dirs)
        return self.head(out)  # (B, T, C)


def tagging_loss(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the non-padding positions.

    Args: logits ``(B, T, C)``; Y ``(B, T)`` with :data:`IGNORE_INDEX` at padding.
    """
    if logits.dim() != 3 or logits.shape[:2] != Y.shape:
        raise ValueError(f"logits must be (B, T, C) and Y (B, T); got {tuple(logits.shape)} and {tuple(Y.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1),  # (B*T, C) vs (B*T,)
                           ignore_index=IGNORE_INDEX)


@torch.no_grad()
def tag_accuracy(model: nn.Module, X, Y, lengths=None, where: torch.Tensor | None = None) -> float:
    """Fraction of positions whose argmax tag is right.

    Args:
        X, Y, lengths: as returned by :func:`encode_tagged`.
        where: optional ``(N, T)`` bool mask of positions to score (e.g. the
            positions of *saw*); padding is always excluded.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = model(X.to(device), None if lengths is None else lengths.to(device))  # (N, T, C)
    model.train(was_training)
    pred = logits.argmax(-1).cpu()  # (N, T)
    keep = Y != IGNORE_INDEX
    if where is not None:
        keep = keep & where
    if keep.sum() == 0:
        raise ValueError("no positions to score: `where` selects only padding")
    return (pred[keep] == Y[keep]).float().mean().item()


def train_tagger(model: nn.Module, X, Y, lengths=None, *, num_epochs: int = 10, batch_size: int = 64,
                 lr: float = 1e-2, seed: int = 0, device=None, time_budget: float | None = None) -> dict:
    """Train a tagger with Adam on ``(X, Y)`` and return its loss history.

    Args:
        model: maps ``(X, lengths)`` to logits ``(B, T, C)``.
        X, Y, lengths: padded data as returned by :func:`encode_tagged`.
        num_epochs, batch_size, lr: the usual.
        seed: seeds the shuffling generator.
        device: where to train; default: where the model's parameters are.
        time_budget: optional wall-clock budget in seconds.

    Returns:
        ``{"epoch": [...], "loss": [...], "seconds": [...]}``.
    """
    if X.shape != Y.shape:
        raise ValueError(f"X and Y must have the same (N, T) shape, got {tuple(X.shape)} and {tuple(Y.shape)}")
    device = torch.device(device) if device else next(model.parameters()).device
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history = {"epoch": [], "loss": [], "seconds": []}
    start = time.perf_counter()
    for epoch in range(1, num_epochs + 1):
        model.train()
        total, count = 0.0, 0
        for idx in torch.randperm(len(X), generator=gen).split(batch_size):
            xb, yb = X[idx].to(device), Y[idx].to(device)
            lb = None if lengths is None else lengths[idx]
            loss = tagging_loss(model(xb, lb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history["epoch"].append(epoch)
        history["loss"].append(total / count)
        history["seconds"].append(time.perf_counter() - start)
        if time_budget is not None and history["seconds"][-1] > time_budget:
            break
    return history


class SequenceLM(nn.Module):
    """A language model built on :class:`RNNTagger`: the "tag" of step t is token t+1.

    It follows the ``logits, state = model(X, state)`` interface of
    :func:`seqcourse.lm.train_lm`, but always returns ``state=None``: a
    bidirectional network has no left-to-right state that could be carried.

    Args: as :class:`RNNTagger`, with ``num_tags = vocab_size``.
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, cell: str = "lstm"):
        super().__init__()
        self.tagger = RNNTagger(vocab_size, embed_size, hidden_size, vocab_size, num_layers=num_layers,
                                bidirectional=bidirectional, cell=cell)

    def forward(self, X: torch.Tensor, state=None):
        """Args: X ``(B, T)``; ``state`` must be ``None``. Returns logits ``(B, T, V)`` and ``None``."""
        if state is not None:
            raise ValueError("SequenceLM carries no state between calls; pass state=None "
                             "(use random, not sequential, minibatches)")
        return self.tagger(X), None


@torch.no_grad()
def rerun_generate(model: nn.Module, vocab, prefix, num_tokens: int, sep: str = "") -> str:
    """Greedy left-to-right continuation that re-runs the model on the whole prefix each step.

    This is the only honest way to sample from a model without a carried
    state, such as a bidirectional one: the token at step t+1 is chosen from
    the logits at step t, computed from tokens ``0..t`` only.

    Args:
        model: maps ``(1, T)`` ids to ``(logits (1, T, V), state)``.
        vocab: a :class:`seqcourse.text.Vocab`.
        prefix: a string (split into characters) or a list of tokens.
        num_tokens: how many tokens to append.
        sep: joins the tokens of the result.
    """
    tokens = list(prefix)
    if not tokens:
        raise ValueError("prefix is empty: give at least one token to condition on")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids = vocab[tokens]
    for _ in range(num_tokens):
        logits, _ = model(torch.tensor([ids], device=device))  # (1, T, V)
        ids.append(int(logits[0, -1].argmax()))
    model.train(was_training)
    return sep.join(vocab.to_tokens(ids))


@torch.no_grad()
def prefix_only_perplexity(model: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    """Perplexity when token t+1 is predicted from tokens ``0..t`` only.

    The model is re-run on every prefix ``X[:, :t+1]`` and only the logits of
    its last position are scored. For a left-to-right model this equals the
    ordinary (teacher-forced) perplexity; for a bidirectional model it is the
    honest number, because the right-to-left direction can no longer read
    the token it must predict.

    Args:
        model: maps ``(B, T)`` ids to ``(logits (B, T, V), state)``.
        X, Y: ``(B, T)`` inputs and next-token targets.
    """
    if X.dim() != 2 or X.shape != Y.shape:
        raise ValueError(f"X and Y must both be (B, T), got {tuple(X.shape)} and {tuple(Y.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    X, Y = X.to(device), Y.to(device)
    total = 0.0
    for t in range(X.shape[1]):
        logits, _ = model(X[:, : t + 1])  # (B, t+1, V)
        total += F.cross_entropy(logits[:, -1], Y[:, t], reduction="sum").item()
    model.train(was_training)
    return math.exp(total / Y.numel())


# ----------------------------------------------------------------------------
# Sequence classification with self-attention
# ----------------------------------------------------------------------------


def make_membership_task(num_sequences: int, length: int = 10, num_symbols: int = 20, seed: int = 0):
    """"Does the query symbol occur in the sequence?", a task that needs a long-range comparison.

    Each sequence is a query token followed by ``length`` distinct symbols
    drawn from ``0..num_symbols-1``. The query is a symbol too, but written
    with its own token id ``num_symbols + s`` so a model can tell it apart
    without positional information. The label is 1 when the query's symbol
    is among the others; with ``length = num_symbols / 2`` the classes are
    balanced. The match may be at any distance from the query.

    Args:
        num_sequences: ``N``.
        length: ``T`` symbols after the query (1..``num_symbols``).
        num_symbols: ``S``; the vocabulary has ``2S`` token ids.
        seed: seeds a private generator.

    Returns:
        ``X`` ``(N, T + 1)`` long tokens (query first) and ``y`` ``(N,)`` long labels.
    """
    if not isinstance(num_sequences, int) or num_sequences < 1:
        raise ValueError(f"num_sequences must be a positive int, got {num_sequences!r}")
    if not isinstance(length, int) or not 1 <= length <= num_symbols:
        raise ValueError(f"length must be an int in 1..num_symbols={num_symbols}, got {length!r}")
    gen = torch.Generator().manual_seed(seed)
    symbols = torch.argsort(torch.rand(num_sequences, num_symbols, generator=gen), dim=1)[:, :length]  # (N, T)
    query = torch.randint(0, num_symbols, (num_sequences,), generator=gen)  # (N,)
    y = (symbols == query[:, None]).any(dim=1).long()  # (N,)
    X = torch.cat([query[:, None] + num_symbols, symbols], dim=1)  # (N, T + 1)
    return X, y


class SelfAttentionClassifier(nn.Module):
    """Embedding -> multi-head self-attention (+ residual) -> mean over positions -> MLP.

    The attention is PyTorch's ``nn.MultiheadAttention``; with
    ``use_attention=False`` the model is the same minus the attention block,
    a bag-of-embeddings baseline.

    Args:
        vocab_size: ``V``.
        embed_dim: model width ``D``.
        num_heads: attention heads (must divide ``D``).
        num_classes: output classes.
        use_attention: include the self-attention block.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, num_heads: int = 2, num_classes: int = 2,
                 use_attention: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True) if use_attention else None
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, X: torch.Tensor, key_padding_mask: torch.Tensor | None = None, return_weights: bool = False):
        """Args: X ``(B, T)`` ids; key_padding_mask ``(B, T)`` bool, True at padding.

        Returns: logits ``(B, C)`` (and head-averaged weights ``(B, T, T)`` if asked).
        """
        if X.dim() != 2:
            raise ValueError(f"X must be (B, T) token ids, got shape {tuple(X.shape)}")
        h = self.embedding(X)  # (B, T, D)
        weights = None
        if self.attention is not None:
            a, weights = self.attention(h, h, h, key_padding_mask=key_padding_mask,
                                        need_weights=return_weights)  # (B, T, D), (B, T, T)
            h = h + a
        if key_padding_mask is None:
            pooled = h.mean(dim=1)  # (B, D)
        else:
            keep = (~key_padding_mask).unsqueeze(-1).float()  # (B, T, 1)
            pooled = (h * keep).sum(1) / keep.sum(1)  # (B, D)
        logits = self.mlp(pooled)  # (B, C)
        return (logits, weights) if return_weights else logits


def train_classifier(model: nn.Module, X, y, *, num_epochs: int = 10, batch_size: int = 128, lr: float = 3e-3,
                     seed: int = 0, device=None) -> dict:
    """Train a sequence classifier ``model(X) -> logits (B, C)`` with Adam; returns ``{"epoch", "loss", "seconds"}``."""
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    device = torch.device(device) if device else next(model.parameters()).device
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    history = {"epoch": [], "loss": [], "seconds": []}
    start = time.perf_counter()
    for epoch in range(1, num_epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(X), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(X[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history["epoch"].append(epoch)
        history["loss"].append(total / len(X))
        history["seconds"].append(time.perf_counter() - start)
    return history


@torch.no_grad()
def classifier_accuracy(model: nn.Module, X, y) -> float:
    """Fraction of sequences whose argmax class equals ``y``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pred = model(X.to(device)).argmax(-1).cpu()  # (N,)
    model.train(was_training)
    return (pred == y).float().mean().item()
