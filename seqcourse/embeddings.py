"""Word embeddings: similarity search, skip-gram and CBOW with negative sampling, the GloVe objective.

Embedding matrices here are ``(V, E)`` tensors (row ``i`` is the vector of
token ``i``) paired with a :class:`seqcourse.text.Vocab` or a list of tokens.
"""

from __future__ import annotations

import math
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqcourse.data import Dataset, data_dir, sha1_of

GLOVE_6B_50D = Dataset(
    "glove.6B.50d.zip",
    "http://d2l-data.s3-accelerate.amazonaws.com/glove.6B.50d.zip",
    "0b8703943ccdb6eb788e6f091b8946e82231bc4d",
)
"""d2l's repackaging of the 50-dimensional GloVe vectors trained on 6B tokens (400k words)."""


# ----------------------------------------------------------------------------
# Similarity
# ----------------------------------------------------------------------------


def _as_matrix(emb) -> torch.Tensor:
    emb = torch.as_tensor(emb)
    if emb.dim() != 2:
        raise ValueError(f"embeddings must be a (V, E) matrix, got shape {tuple(emb.shape)}")
    return emb.float() if not emb.is_floating_point() else emb


def _token_ids(tokens, words):
    if hasattr(tokens, "token_to_idx"):
        lookup = tokens.token_to_idx
    else:
        lookup = {t: i for i, t in enumerate(tokens)}
    missing = [w for w in words if w not in lookup]
    if missing:
        raise ValueError(f"words {missing} are not in the vocabulary; pick words that are")
    return [lookup[w] for w in words]


def _idx_to_token(tokens):
    return tokens.idx_to_token if hasattr(tokens, "idx_to_token") else list(tokens)


def cosine_similarity(query: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between a vector ``(E,)`` and every row of ``emb`` ``(V, E)``; returns ``(V,)``."""
    emb = _as_matrix(emb)
    query = torch.as_tensor(query, dtype=emb.dtype)
    if query.shape != emb.shape[1:]:
        raise ValueError(f"query must have shape ({emb.shape[1]},) to match emb, got {tuple(query.shape)}")
    return emb @ query / (emb.norm(dim=1) * query.norm()).clamp_min(1e-12)  # (V,)


def euclidean_distance(query: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between a vector ``(E,)`` and every row of ``emb`` ``(V, E)``; returns ``(V,)``."""
    emb = _as_matrix(emb)
    query = torch.as_tensor(query, dtype=emb.dtype)
    if query.shape != emb.shape[1:]:
        raise ValueError(f"query must have shape ({emb.shape[1]},) to match emb, got {tuple(query.shape)}")
    return (emb - query).norm(dim=1)  # (V,)


def nearest(query, emb, tokens, k: int = 5, metric: str = "cosine", exclude=()) -> list[tuple[str, float]]:
    """The ``k`` tokens closest to ``query``.

    Args:
        query: a word (looked up in ``tokens``) or a vector ``(E,)``.
        emb: ``(V, E)`` embedding matrix.
        tokens: a ``Vocab`` or a list of ``V`` tokens, aligned with ``emb``.
        k: how many neighbours.
        metric: ``"cosine"`` (higher is closer) or ``"euclidean"`` (lower is closer).
        exclude: words never returned (a word query always excludes itself).

    Returns:
        ``[(token, score), ...]``, closest first.
    """
    emb = _as_matrix(emb)
    idx_to_token = _idx_to_token(tokens)
    if len(idx_to_token) != emb.shape[0]:
        raise ValueError(f"{len(idx_to_token)} tokens but {emb.shape[0]} embedding rows; they must be aligned")
    exclude = list(exclude)
    if isinstance(query, str):
        exclude.append(query)
        query = emb[_token_ids(tokens, [query])[0]]
    if metric == "cosine":
        scores, sign = cosine_similarity(query, emb), -1.0
    elif metric == "euclidean":
        scores, sign = euclidean_distance(query, emb), 1.0
    else:
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    order = torch.argsort(sign * scores)
    skip = set(_token_ids(tokens, exclude)) if exclude else set()
    out = []
    for i in order.tolist():
        if i in skip:
            continue
        out.append((idx_to_token[i], float(scores[i])))
        if len(out) == k:
            break
    return out


def analogy(a: str, b: str, c: str, emb, tokens, k: int = 1, metric: str = "cosine"):
    """Solve ``a : b :: c : ?`` by the vector ``e_b - e_a + e_c`` (e.g. man : woman :: king : queen).

    The three input words are excluded from the answers, as is customary.
    Returns the ``k`` best ``(token, score)`` pairs.
    """
    emb = _as_matrix(emb)
    ia, ib, ic = _token_ids(tokens, [a, b, c])
    target = emb[ib] - emb[ia] + emb[ic]  # (E,)
    return nearest(target, emb, tokens, k=k, metric=metric, exclude=[a, b, c])


def neighbour_overlap(a: list, b: list) -> float:
    """Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of two neighbour lists (tokens or ``(token, score)`` pairs)."""
    sa = {x[0] if isinstance(x, tuple) else x for x in a}
    sb = {x[0] if isinstance(x, tuple) else x for x in b}
    if not sa and not sb:
        raise ValueError("both neighbour lists are empty; there is nothing to compare")
    return len(sa & sb) / len(sa | sb)


def pca_2d(emb) -> np.ndarray:
    """Project the rows of ``emb`` ``(N, E)`` onto their first two principal components; returns ``(N, 2)``.

    Plain numpy SVD of the centred matrix, so no extra library is needed.
    """
    X = np.asarray(torch.as_tensor(emb).detach().cpu(), dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"need a (N, E) matrix with N >= 2 rows, got shape {X.shape}")
    X = X - X.mean(axis=0, keepdims=True)  # (N, E)
    _, _, Vt = np.linalg.svd(X, full_matrices=False)  # Vt: (min(N, E), E)
    return X @ Vt[:2].T  # (N, 2)


# ----------------------------------------------------------------------------
# Skip-gram with negative sampling
# ----------------------------------------------------------------------------


def subsample(corpus: list[int], counts: Counter | dict, t: float = 1e-4, seed: int = 0) -> list[int]:
    """Randomly drop frequent tokens (word2vec's subsampling).

    Token ``w`` with relative frequency ``f(w)`` is kept with probability
    ``min(1, sqrt(t / f(w)))``, so "the" and "and" lose most occurrences and
    rare words keep all of theirs.

    Args:
        corpus: token ids.
        counts: id -> count over the corpus.
        t: the threshold. The word2vec paper suggests values around 1e-5 for
            corpora of billions of words; d2l uses 1e-4; tiny corpora need larger ones.
        seed: seeds the private generator.
    """
    if t <= 0:
        raise ValueError(f"t must be positive, got {t}")
    total = sum(counts.values())
    if total == 0:
        raise ValueError("counts are all zero; count the corpus first")
    rng = np.random.default_rng(seed)
    u = rng.random(len(corpus))
    return [w for w, r in zip(corpus, u) if r < math.sqrt(t / (counts[w] / total))]


def skipgram_pairs(sentences: list[list[int]], max_window: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All (center, context) pairs, with a random window size per center.

    As in word2vec, each center draws a window size ``w`` uniformly from
    ``1..max_window`` and pairs with the ``w`` tokens on each side, so close
    neighbours are paired more often than far ones.

    Args:
        sentences: lists of token ids; windows never cross a sentence boundary.
        max_window: the largest window size.
        seed: seeds the private generator.

    Returns:
        ``centers`` ``(P,)`` and ``contexts`` ``(P,)`` long tensors.
    """
    if not isinstance(max_window, int) or max_window < 1:
        raise ValueError(f"max_window must be a positive int, got {max_window!r}")
    rng = np.random.default_rng(seed)
    centers, contexts = [], []
    for sent in sentences:
        n = len(sent)
        sizes = rng.integers(1, max_window + 1, size=n)
        for i, w in enumerate(sizes):
            for j in range(max(0, i - w), min(n, i + w + 1)):
                if j != i:
                    centers.append(sent[i])
                    contexts.append(sent[j])
    return torch.tensor(centers, dtype=torch.long), torch.tensor(contexts, dtype=torch.long)


def noise_distribution(counts: Counter | dict, vocab_size: int, power: float = 0.75) -> torch.Tensor:
    """Negative-sampling distribution ``P(w) ∝ count(w)^power`` over ids ``0..V-1``; returns ``(V,)``."""
    weights = torch.zeros(vocab_size, dtype=torch.float64)
    for w, c in counts.items():
        if not 0 <= w < vocab_size:
            raise ValueError(f"id {w} in counts is outside 0..{vocab_size - 1}; pass the right vocab_size")
        weights[w] = float(c) ** power
    if weights.sum() == 0:
        raise ValueError("counts are all zero; count the corpus first")
    return weights / weights.sum()


class SkipGramNS(nn.Module):
    """Skip-gram with negative sampling: two embedding tables, one dot product.

    ``center_emb`` (the vectors one keeps) embeds the center word;
    ``context_emb`` embeds context and noise words. The score of a pair is
    the dot product of the two vectors.

    Args:
        vocab_size: ``V``.
        embed_size: ``E``.
    """

    def __init__(self, vocab_size: int, embed_size: int):
        super().__init__()
        self.center_emb = nn.Embedding(vocab_size, embed_size)
        self.context_emb = nn.Embedding(vocab_size, embed_size)
        # word2vec's initialisation: small random centers, zero contexts.
        nn.init.uniform_(self.center_emb.weight, -0.5 / embed_size, 0.5 / embed_size)
        nn.init.zeros_(self.context_emb.weight)

    def forward(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Mean negative-sampling loss.

        Args:
            centers: ``(B,)`` center ids.
            contexts: ``(B,)`` observed context ids.
            negatives: ``(B, K)`` noise ids.

        Returns:
            scalar ``-log σ(u_o·v_c) - Σ_k log σ(-u_k·v_c)``, averaged over the batch.
        """
        if centers.dim() != 1 or contexts.shape != centers.shape or negatives.dim() != 2 \
                or negatives.shape[0] != centers.shape[0]:
            raise ValueError(f"expected centers (B,), contexts (B,), negatives (B, K); got "
                             f"{tuple(centers.shape)}, {tuple(contexts.shape)}, {tuple(negatives.shape)}")
        v = self.center_emb(centers)  # (B, E)
        pos = (self.context_emb(contexts) * v).sum(-1)  # (B,)
        neg = torch.bmm(self.context_emb(negatives), v.unsqueeze(2)).squeeze(2)  # (B, K, E) @ (B, E, 1) -> (B, K)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()


def _fit_negative_sampling(model: nn.Module, make_examples, counts, vocab_size: int, *, num_negatives: int,
                           num_epochs: int, batch_size: int, lr: float, seed: int, device, time_budget):
    """The training loop shared by skip-gram and CBOW.

    ``make_examples(epoch)`` returns tensors whose first dimension indexes
    examples (``P``); each example gets ``num_negatives`` noise words, and the
    model is called as ``model(*example_tensors, negatives)``.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = noise_distribution(counts, vocab_size).float()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"epoch": [], "loss": [], "seconds": [], "pairs": []}
    start = time.perf_counter()
    for epoch in range(1, num_epochs + 1):
        examples = make_examples(epoch)
        P = len(examples[0])
        if P == 0:
            raise ValueError("no training examples: sentences need at least two tokens each")
        negatives = torch.multinomial(noise, P * num_negatives, replacement=True,
                                      generator=gen).view(-1, num_negatives)  # (P, K)
        total, count = 0.0, 0
        for idx in torch.randperm(P, generator=gen).split(batch_size):
            loss = model(*(t[idx].to(device) for t in examples), negatives[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history["epoch"].append(epoch)
        history["loss"].append(total / count)
        history["pairs"].append(count)
        history["seconds"].append(time.perf_counter() - start)
        if time_budget is not None and history["seconds"][-1] > time_budget:
            break
    return history


def train_skipgram(sentences: list[list[int]], vocab_size: int, counts, *, embed_size: int = 50,
                   max_window: int = 5, num_negatives: int = 5, num_epochs: int = 5, batch_size: int = 1024,
                   lr: float = 5e-3, seed: int = 0, device=None, time_budget: float | None = None):
    """Train :class:`SkipGramNS` with Adam.

    Args:
        sentences: lists of token ids (already subsampled if wanted).
        vocab_size: ``V``.
        counts: id -> count, for the noise distribution (counted before subsampling).
        embed_size, max_window, num_negatives: model and data hyper-parameters.
        num_epochs, batch_size, lr: optimisation.
        seed: seeds the pairs, the noise samples and the initialisation.
        device: where to train (default CPU).
        time_budget: optional wall-clock budget in seconds.

    Returns:
        The trained model and ``{"epoch", "loss", "seconds", "pairs"}``.
    """
    device = torch.device(device) if device else torch.device("cpu")
    torch.manual_seed(seed)
    model = SkipGramNS(vocab_size, embed_size).to(device)
    history = _fit_negative_sampling(
        model, lambda epoch: skipgram_pairs(sentences, max_window, seed=seed + epoch), counts, vocab_size,
        num_negatives=num_negatives, num_epochs=num_epochs, batch_size=batch_size, lr=lr, seed=seed,
        device=device, time_budget=time_budget)
    return model, history


# ----------------------------------------------------------------------------
# CBOW with negative sampling
# ----------------------------------------------------------------------------


def cbow_examples(sentences: list[list[int]], max_window: int = 5, seed: int = 0):
    """(context window, center) examples for CBOW, with a random window size per center.

    Each center draws ``w`` uniformly from ``1..max_window`` (as in
    :func:`skipgram_pairs`) and its context is the ``w`` tokens on each side,
    fewer at a sentence boundary. Contexts are padded to ``2 * max_window``
    columns; ``mask`` marks the real ones.

    Args:
        sentences: lists of token ids; windows never cross a sentence boundary.
        max_window: the largest window size.
        seed: seeds the private generator.

    Returns:
        ``contexts`` ``(P, 2W)`` long (0 where padded), ``mask`` ``(P, 2W)``
        float (1 for a real context word) and ``centers`` ``(P,)`` long.
        Centers without any context word (one-token sentences) are skipped.
    """
    if not isinstance(max_window, int) or max_window < 1:
        raise ValueError(f"max_window must be a positive int, got {max_window!r}")
    rng = np.random.default_rng(seed)
    width = 2 * max_window
    contexts, masks, centers = [], [], []
    for sent in sentences:
        n = len(sent)
        sizes = rng.integers(1, max_window + 1, size=n)
        for i, w in enumerate(sizes):
            ctx = [sent[j] for j in range(max(0, i - w), min(n, i + w + 1)) if j != i]
            if not ctx:
                continue
            contexts.append(ctx + [0] * (width - len(ctx)))
            masks.append([1.0] * len(ctx) + [0.0] * (width - len(ctx)))
            centers.append(sent[i])
    return (torch.tensor(contexts, dtype=torch.long).view(-1, width),
            torch.tensor(masks, dtype=torch.float32).view(-1, width),
            torch.tensor(centers, dtype=torch.long))


class CBOWNS(nn.Module):
    """Continuous bag of words with negative sampling.

    The mirror image of skip-gram: the *average* of the context words'
    vectors predicts the center word. ``context_emb`` (the vectors one keeps)
    embeds the context words; ``center_emb`` embeds the center and noise words.

    Args:
        vocab_size: ``V``.
        embed_size: ``E``.
    """

    def __init__(self, vocab_size: int, embed_size: int):
        super().__init__()
        self.context_emb = nn.Embedding(vocab_size, embed_size)
        self.center_emb = nn.Embedding(vocab_size, embed_size)
        # word2vec's initialisation: small random inputs, zero outputs.
        nn.init.uniform_(self.context_emb.weight, -0.5 / embed_size, 0.5 / embed_size)
        nn.init.zeros_(self.center_emb.weight)

    def forward(self, contexts: torch.Tensor, mask: torch.Tensor, centers: torch.Tensor,
                negatives: torch.Tensor) -> torch.Tensor:
        """Mean negative-sampling loss.

        Args:
            contexts: ``(B, 2W)`` context ids (any id where ``mask`` is 0).
            mask: ``(B, 2W)``, 1 for a real context word, 0 for padding.
            centers: ``(B,)`` center ids, the words to predict.
            negatives: ``(B, K)`` noise ids.

        Returns:
            scalar ``-log σ(u_c·h) - Σ_k log σ(-u_k·h)``, averaged over the
            batch, where ``h`` is the mean of the context vectors.
        """
        if contexts.dim() != 2 or mask.shape != contexts.shape or centers.shape != contexts.shape[:1] \
                or negatives.dim() != 2 or negatives.shape[0] != centers.shape[0]:
            raise ValueError(f"expected contexts (B, 2W), mask (B, 2W), centers (B,), negatives (B, K); got "
                             f"{tuple(contexts.shape)}, {tuple(mask.shape)}, {tuple(centers.shape)}, "
                             f"{tuple(negatives.shape)}")
        n_ctx = mask.sum(1, keepdim=True)  # (B, 1)
        if (n_ctx == 0).any():
            raise ValueError("every example needs at least one context word (a row of mask is all zeros)")
        h = (self.context_emb(contexts) * mask.unsqueeze(2)).sum(1) / n_ctx  # (B, 2W, E) -> (B, E)
        pos = (self.center_emb(centers) * h).sum(-1)  # (B,)
        neg = torch.bmm(self.center_emb(negatives), h.unsqueeze(2)).squeeze(2)  # (B, K, E) @ (B, E, 1) -> (B, K)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()


def train_cbow(sentences: list[list[int]], vocab_size: int, counts, *, embed_size: int = 50,
               max_window: int = 5, num_negatives: int = 5, num_epochs: int = 5, batch_size: int = 1024,
               lr: float = 5e-3, seed: int = 0, device=None, time_budget: float | None = None):
    """Train :class:`CBOWNS` with Adam; the arguments are those of :func:`train_skipgram`.

    Returns:
        The trained model and ``{"epoch", "loss", "seconds", "pairs"}`` (here
        ``pairs`` counts (context window, center) examples).
    """
    device = torch.device(device) if device else torch.device("cpu")
    torch.manual_seed(seed)
    model = CBOWNS(vocab_size, embed_size).to(device)
    history = _fit_negative_sampling(
        model, lambda epoch: cbow_examples(sentences, max_window, seed=seed + epoch), counts, vocab_size,
        num_negatives=num_negatives, num_epochs=num_epochs, batch_size=batch_size, lr=lr, seed=seed,
        device=device, time_budget=time_budget)
    return model, history


# ----------------------------------------------------------------------------
# The GloVe objective: weighted least squares on log co-occurrence counts
# ----------------------------------------------------------------------------


def cooccurrence_counts(sentences: list[list[int]], vocab_size: int, window: int = 5) -> torch.Tensor:
    """Distance-weighted co-occurrence counts ``X``, as GloVe builds them; returns ``(V, V)``.

    Two tokens ``d`` positions apart (``1 <= d <= window``, within a sentence)
    add ``1 / d`` to ``X[i, j]`` and to ``X[j, i]``, so ``X`` is symmetric.
    Dense, so meant for small vocabularies (``V`` in the thousands).

    Args:
        sentences: lists of token ids in ``0..V-1``.
        vocab_size: ``V``.
        window: the largest distance counted.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    X = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    for sent in sentences:
        ids = torch.as_tensor(sent, dtype=torch.long)
        if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"token ids must lie in 0..{vocab_size - 1}; pass the right vocab_size")
        for d in range(1, min(window, len(ids) - 1) + 1):
            left, right = ids[:-d], ids[d:]  # all pairs at distance d
            w = torch.full((len(left),), 1.0 / d, dtype=torch.float64)
            X.index_put_((left, right), w, accumulate=True)
            X.index_put_((right, left), w, accumulate=True)
    return X


def glove_weight(x: torch.Tensor, x_max: float = 100.0, alpha: float = 0.75) -> torch.Tensor:
    """GloVe's weighting ``f(x) = min(1, (x / x_max) ** alpha)``: rare pairs count less, frequent ones are capped."""
    return (x / x_max).pow(alpha).clamp(max=1.0)


class GloVe(nn.Module):
    """The GloVe model: ``w_i · w̃_j + b_i + b̃_j`` should equal ``log X_ij``.

    Args:
        vocab_size: ``V``.
        embed_size: ``E``.
    """

    def __init__(self, vocab_size: int, embed_size: int):
        super().__init__()
        self.center_emb = nn.Embedding(vocab_size, embed_size)
        self.context_emb = nn.Embedding(vocab_size, embed_size)
        self.center_bias = nn.Embedding(vocab_size, 1)
        self.context_bias = nn.Embedding(vocab_size, 1)
        for emb in (self.center_emb, self.context_emb):
            nn.init.uniform_(emb.weight, -0.5 / embed_size, 0.5 / embed_size)
        for b in (self.center_bias, self.context_bias):
            nn.init.zeros_(b.weight)

    def forward(self, i: torch.Tensor, j: torch.Tensor, x: torch.Tensor, x_max: float = 100.0,
                alpha: float = 0.75) -> torch.Tensor:
        """Weighted squared error, averaged over the batch of non-zero entries.

        Args:
            i, j: ``(B,)`` row and column ids of non-zero entries of ``X``.
            x: ``(B,)`` their counts ``X_ij > 0``.

        Returns:
            scalar ``mean f(X_ij) (w_i·w̃_j + b_i + b̃_j - log X_ij)^2``.
        """
        if i.dim() != 1 or j.shape != i.shape or x.shape != i.shape:
            raise ValueError(f"expected i, j, x all of shape (B,); got {tuple(i.shape)}, {tuple(j.shape)}, "
                             f"{tuple(x.shape)}")
        if (x <= 0).any():
            raise ValueError("GloVe is fitted to non-zero counts only; drop the entries with X_ij = 0")
        pred = (self.center_emb(i) * self.context_emb(j)).sum(-1) \
            + self.center_bias(i).squeeze(-1) + self.context_bias(j).squeeze(-1)  # (B,)
        return (glove_weight(x, x_max, alpha) * (pred - torch.log(x)) ** 2).mean()

    def vectors(self) -> torch.Tensor:
        """The word vectors GloVe reports, ``W + W̃`` (both tables see the same data); ``(V, E)``."""
        return (self.center_emb.weight + self.context_emb.weight).detach()


def train_glove(X: torch.Tensor, *, embed_size: int = 50, num_epochs: int = 20, batch_size: int = 4096,
                lr: float = 0.05, x_max: float = 100.0, alpha: float = 0.75, seed: int = 0, device=None):
    """Fit :class:`GloVe` to the non-zero entries of a co-occurrence matrix with AdaGrad (as the paper does).

    Args:
        X: ``(V, V)`` co-occurrence counts, e.g. from :func:`cooccurrence_counts`.
        embed_size: ``E``.
        num_epochs, batch_size, lr: optimisation (each epoch visits every non-zero entry once).
        x_max, alpha: the weighting function :func:`glove_weight`.
        seed: seeds the initialisation and the order of the entries.
        device: where to train (default CPU).

    Returns:
        The trained model and ``{"epoch", "loss", "seconds", "entries"}``.
    """
    X = torch.as_tensor(X)
    if X.dim() != 2 or X.shape[0] != X.shape[1]:
        raise ValueError(f"X must be a square (V, V) matrix, got shape {tuple(X.shape)}")
    device = torch.device(device) if device else torch.device("cpu")
    i, j = torch.nonzero(X > 0, as_tuple=True)  # (N,), (N,)
    if len(i) == 0:
        raise ValueError("X has no non-zero entry; count a corpus first")
    x = X[i, j].float()  # (N,)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GloVe(X.shape[0], embed_size).to(device)
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    history = {"epoch": [], "loss": [], "seconds": [], "entries": []}
    start = time.perf_counter()
    for epoch in range(1, num_epochs + 1):
        total = 0.0
        for idx in torch.randperm(len(i), generator=gen).split(batch_size):
            loss = model(i[idx].to(device), j[idx].to(device), x[idx].to(device), x_max, alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history["epoch"].append(epoch)
        history["loss"].append(total / len(i))
        history["entries"].append(len(i))
        history["seconds"].append(time.perf_counter() - start)
    return model, history


# ----------------------------------------------------------------------------
# Pretrained GloVe (only when the file is already on disk)
# ----------------------------------------------------------------------------


def glove_path() -> Path:
    """Where the GloVe zip is expected: ``<data dir>/glove.6B.50d.zip``."""
    return data_dir() / GLOVE_6B_50D.filename


def load_glove(path: str | Path | None = None, max_words: int | None = None, check_sha1: bool = True):
    """Read GloVe vectors from a local file; never downloads.

    Args:
        path: a ``.zip`` holding one ``*.txt`` member (d2l's packaging holds
            ``glove.6B.50d/vec.txt``) or a plain ``.txt`` file with lines
            ``word v1 v2 ... vE``. Default: :func:`glove_path`.
        max_words: read only the first (most frequent) words.
        check_sha1: for the official zip, verify its SHA-1 first.

    Returns:
        ``(tokens, vectors)``: a list of ``V`` words and a ``(V, E)`` float tensor.

    Raises:
        FileNotFoundError: the file is not there; the message says where to get it.
    """
    path = Path(path) if path is not None else glove_path()
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist. The course does not download it for you: fetch "
            f"{GLOVE_6B_50D.url} (SHA-1 {GLOVE_6B_50D.sha1}, about 69 MB) into {data_dir()}"
        )
    if check_sha1 and path.name == GLOVE_6B_50D.filename:
        digest = sha1_of(path)
        if digest != GLOVE_6B_50D.sha1:
            raise ValueError(f"{path} has SHA-1 {digest}, expected {GLOVE_6B_50D.sha1}; delete it and fetch it again")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".txt")]
            if len(members) != 1:
                raise ValueError(f"{path} should hold exactly one .txt file, found {members}")
            lines = zf.read(members[0]).decode("utf-8").splitlines()
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
    tokens, rows = [], []
    for lineno, line in enumerate(lines, 1):
        parts = line.rstrip().split(" ")
        if len(parts) < 3:  # a header line (as in fastText files) or a blank line
            continue
        if rows and len(parts) - 1 != len(rows[0]):
            raise ValueError(f"{path} line {lineno} has {len(parts) - 1} numbers, expected {len(rows[0])}")
        tokens.append(parts[0])
        rows.append([float(x) for x in parts[1:]])
        if max_words is not None and len(tokens) >= max_words:
            break
    if not rows:
        raise ValueError(f"{path} holds no vectors")
    return tokens, torch.tensor(rows, dtype=torch.float32)
