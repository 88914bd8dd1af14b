"""Word embeddings: similarity search, skip-gram with negative sampling, GloVe loading.

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
        t: the threshold (1e-4 in the word2vec paper for large corpora).
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
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SkipGramNS(vocab_size, embed_size).to(device)
    noise = noise_distribution(counts, vocab_size).float()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"epoch": [], "loss": [], "seconds": [], "pairs": []}
    start = time.perf_counter()
    for epoch in range(1, num_epochs + 1):
        centers, contexts = skipgram_pairs(sentences, max_window, seed=seed + epoch)
        if len(centers) == 0:
            raise ValueError("no (center, context) pairs: sentences need at least two tokens each")
        negatives = torch.multinomial(noise, len(centers) * num_negatives, replacement=True,
                                      generator=gen).view(-1, num_negatives)  # (P, K)
        total, count = 0.0, 0
        for idx in torch.randperm(len(centers), generator=gen).split(batch_size):
            loss = model(centers[idx].to(device), contexts[idx].to(device), negatives[idx].to(device))
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
