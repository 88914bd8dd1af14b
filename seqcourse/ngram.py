"""Counting n-grams, add-k and Kneser–Ney n-gram language models, and Zipf's law.

An n-gram model makes the Markov assumption of order ``n - 1``: the next token
depends only on the previous ``n - 1`` tokens,

    P(x_t | x_1, ..., x_{t-1})  ~=  P(x_t | x_{t-n+1}, ..., x_{t-1}),

and estimates each conditional by counting, with ``k`` pseudo-counts added to
every cell ("add-k" smoothing; ``k = 1`` is Laplace's add-one):

    P(w | c) = (count(c, w) + k) / (count(c) + k * V).

Here ``count(c)`` is the number of times ``c`` is followed by some token, so the
``V`` probabilities of each context sum to exactly one.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence

import torch

from .lm import perplexity as _exp_perplexity
from .text import Vocab


def count_ngrams(tokens: Sequence, n: int) -> collections.Counter:
    """How often each contiguous n-gram occurs in ``tokens``.

    Args:
        tokens: a flat list of ``L`` tokens (strings or ids).
        n: the n-gram length, ``1 <= n``.

    Returns:
        A ``Counter`` from n-tuples to counts; the counts sum to ``L - n + 1``.
    """
    if isinstance(tokens, str):
        raise TypeError("tokens must be a list of tokens, not a str; tokenise the text first "
                        "(e.g. seqcourse.text.tokenize(text, 'char'))")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    tokens = list(tokens)
    # zip of n shifted views yields the same tuples as seqcourse.text.ngrams, without a Python loop
    return collections.Counter(zip(*(tokens[i:] for i in range(n))))


class NGramLM:
    """An n-gram language model with add-k smoothing over a fixed vocabulary.

    The model stores the counts of every order ``1 .. n``.  A token with fewer
    than ``n - 1`` tokens before it (the start of a text) is predicted from the
    context it has, so every token of a text is scored and models of
    different orders are compared on the same tokens.

    Args:
        n: order of the model (1 unigram, 2 bigram, 3 trigram, ...).
        k: pseudo-count added to every (context, token) cell; ``k = 0`` gives
            the unsmoothed maximum-likelihood model.
        vocab: a :class:`seqcourse.text.Vocab`; its ``V = len(vocab)``
            entries (``<unk>`` included) are the model's outcomes.  Tokens not
            in it count as ``<unk>``.  ``None``: built from the tokens given
            to :meth:`fit`.
    """

    def __init__(self, n: int, k: float = 1.0, vocab: Vocab | None = None):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int (1 = unigram, 2 = bigram, ...), got {n!r}")
        if vocab is not None and not isinstance(vocab, Vocab):
            raise TypeError(f"vocab must be a seqcourse.text.Vocab or None, got {type(vocab).__name__}")
        self.n, self.k, self.vocab = n, k, vocab
        # next_counts[c] = Counter of the ids that followed context c (a tuple of
        # 0 .. n-1 ids); the empty context () holds the unigram counts.
        self.next_counts: dict[tuple, collections.Counter] = {}
        self.context_totals: dict[tuple, int] = {}

    @property
    def k(self) -> float:
        """The pseudo-count.  It is used only when probabilities are computed,
        so it can be changed after :meth:`fit` without counting again."""
        return self._k

    @k.setter
    def k(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"k must be a non-negative number of pseudo-counts, got {value!r}")
        self._k = float(value)

    # ------------------------------------------------------------------ fitting

    def _ids(self, tokens) -> list[int]:
        if isinstance(tokens, str):
            raise TypeError("tokens must be a list of tokens, not a str; tokenise the text first")
        tokens = list(tokens)
        if tokens and not isinstance(tokens[0], str):
            raise TypeError(f"tokens must be strings, got {type(tokens[0]).__name__}")
        return self.vocab[tokens]

    def fit(self, tokens: Sequence[str]) -> "NGramLM":
        """Count every n-gram of order ``1 .. n`` in a flat list of tokens.

        Returns ``self``, so ``NGramLM(2).fit(tokens)`` reads naturally.
        """
        if isinstance(tokens, str):
            raise TypeError("tokens must be a list of tokens, not a str; tokenise the text first")
        tokens = list(tokens)
        if self.vocab is None:
            self.vocab = Vocab(tokens)
        ids = self._ids(tokens)
        if len(ids) < self.n:
            raise ValueError(f"need at least n={self.n} tokens to fit, got {len(ids)}")
        self.next_counts, self.context_totals = {}, {}
        for order in range(1, self.n + 1):
            # Count the distinct n-grams first (fast), then file each under its context.
            for gram, count in count_ngrams(ids, order).items():
                self.next_counts.setdefault(gram[:-1], collections.Counter())[gram[-1]] = count
        self.context_totals = {c: sum(cnt.values()) for c, cnt in self.next_counts.items()}
        return self

    def _check_fitted(self):
        if not self.next_counts:
            raise ValueError("the model is not fitted yet; call fit(tokens) first")

    def _context(self, context: Sequence[int]) -> tuple:
        # Markov assumption: keep only the last n - 1 ids.
        keep = self.n - 1
        return tuple(context[max(0, len(context) - keep):]) if keep else ()

    # -------------------------------------------------------------- probabilities

    def _log_prob_ids(self, nxt: int, context: tuple) -> float:
        V = len(self.vocab)
        total = self.context_totals.get(context, 0)
        count = self.next_counts[context][nxt] if total else 0
        num, den = count + self.k, total + self.k * V
        if num == 0:  # k = 0 and an unseen event (or unseen context): probability 0
            return -math.inf
        return math.log(num / den)

    def log_prob(self, token: str, context: Sequence[str] = ()) -> float:
        """Natural log of ``P(token | context)``; only the last ``n - 1`` context tokens matter.

        With ``k = 0`` an n-gram (or a context) never seen in training gets
        probability 0, i.e. ``-inf``.
        """
        self._check_fitted()
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        return self._log_prob_ids(self.vocab[token], self._context(self._ids(context)))

    def prob(self, token: str, context: Sequence[str] = ()) -> float:
        """``P(token | context)``, see :meth:`log_prob`."""
        return math.exp(self.log_prob(token, context))

    def distribution(self, context: Sequence[str] = ()) -> torch.Tensor:
        """The next-token distribution after ``context``: a ``(V,)`` float64 tensor summing to 1."""
        self._check_fitted()
        return self._distribution_ids(self._context(self._ids(context)))

    def _distribution_ids(self, context: tuple) -> torch.Tensor:
        V = len(self.vocab)
        total = self.context_totals.get(context, 0)
        if total + self.k * V == 0:
            raise ValueError(f"context {self.vocab.to_tokens(list(context))} never occurred in training and "
                             f"k=0, so P(. | context) is undefined; use k > 0")
        probs = torch.full((V,), self.k, dtype=torch.float64)  # (V,)
        for nxt, count in self.next_counts.get(context, {}).items():
            probs[nxt] += count
        return probs / (total + self.k * V)

    # --------------------------------------------------------------- evaluation

    def sequence_log_prob(self, tokens: Sequence[str]) -> float:
        """``log P(x_1, ..., x_L)``: the sum of ``log P(x_t | previous n - 1 tokens)`` in nats.

        The ``t``-th token is predicted from the (at most ``n - 1``) tokens
        before it, so the first tokens use shorter contexts.
        """
        self._check_fitted()
        ids = self._ids(tokens)
        if not ids:
            raise ValueError("tokens is empty; there is nothing to score")
        return sum(self._log_prob_ids(nxt, self._context(ids[max(0, t - self.n + 1):t]))
                   for t, nxt in enumerate(ids))

    def token_log_probs(self, ids: Sequence[int]) -> list[float]:
        """``log P(ids[t] | ids[:t])`` for ``t = 1 .. N-1``, from token ids.

        The interface of :func:`seqcourse.lm.heldout_perplexity`: like a
        neural model, the first token is context only, so n-gram and neural
        models are scored on the same ``N - 1`` predictions.
        """
        self._check_fitted()
        ids = [int(i) for i in ids]
        V = len(self.vocab)
        if any(not 0 <= i < V for i in ids):
            raise ValueError(f"token ids must lie in [0, {V}) for this model's vocabulary")
        return [self._log_prob_ids(ids[t], self._context(ids[max(0, t - self.n + 1):t]))
                for t in range(1, len(ids))]

    def cross_entropy(self, tokens: Sequence[str]) -> float:
        """Mean negative log-likelihood in nats per token: ``-sequence_log_prob(tokens) / L``."""
        return -self.sequence_log_prob(tokens) / len(tokens)

    def perplexity(self, tokens: Sequence[str]) -> float:
        """``exp(cross_entropy(tokens))``; ``inf`` if some token has probability 0."""
        ce = self.cross_entropy(tokens)
        return math.inf if math.isinf(ce) else _exp_perplexity(ce)

    # ----------------------------------------------------------------- sampling

    def sample(self, num_tokens: int, prefix: Sequence[str] = (),
               generator: torch.Generator | None = None) -> list[str]:
        """Draw ``num_tokens`` tokens one at a time after ``prefix``.

        Returns ``prefix`` followed by the sampled tokens.  Pass a seeded
        ``torch.Generator`` for reproducible samples.  With ``k = 0``, a
        context never seen in training is shortened until it was seen.
        """
        self._check_fitted()
        if not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"num_tokens must be a non-negative int, got {num_tokens!r}")
        ids = self._ids(prefix)
        for _ in range(num_tokens):
            context = self._context(ids)
            # With k = 0 a context that was never followed by a token (e.g. the
            # last token of the training text) has no distribution: shorten it.
            while self.k == 0 and context not in self.context_totals:
                context = context[1:]
            probs = self._distribution_ids(context)  # (V,)
            ids.append(int(torch.multinomial(probs, 1, generator=generator)))
        return self.vocab.to_tokens(ids)

    def __repr__(self) -> str:
        V = len(self.vocab) if self.vocab is not None else None
        return f"NGramLM(n={self.n}, k={self.k:g}, V={V}, contexts={len(self.next_counts)})"


class KneserNeyLM(NGramLM):
    """An interpolated Kneser–Ney n-gram model (Chen & Goodman, 1999).

    Every order subtracts a fixed discount ``D`` from each seen count and
    gives the mass it freed to the next lower order, recursively down to a
    uniform distribution over the ``V`` vocabulary entries::

        P(w | c) = max(N(c, w) - D, 0) / N(c)  +  D * T(c) / N(c) * P(w | c')

    where ``c'`` drops the oldest token of ``c`` and ``T(c)`` is the number of
    distinct tokens seen after ``c``. For the highest order ``N`` is the
    ordinary count; for the lower orders it is the *continuation count*, the
    number of distinct tokens seen *before* ``(c, w)``: a lower order is only
    consulted when the longer context is rare, so it should rank a word by
    how many contexts it completes, not by how often it occurs ("Francisco"
    is frequent, but almost always after "San"). A context never seen falls
    through to the next lower order. Each distribution sums to 1.

    Args:
        n: order of the model.
        discount: ``D`` in ``(0, 1]``.
        vocab: as in :class:`NGramLM`.
    """

    def __init__(self, n: int, discount: float = 0.75, vocab: Vocab | None = None):
        super().__init__(n, k=0.0, vocab=vocab)
        if isinstance(discount, bool) or not isinstance(discount, (int, float)) or not 0 < discount <= 1:
            raise ValueError(f"discount must be a number in (0, 1], got {discount!r}")
        self.discount = float(discount)
        # tables[m] maps a context of m ids to (Counter of next ids, their total, distinct next ids)
        self.tables: list[dict[tuple, tuple]] = []

    def fit(self, tokens: Sequence[str]) -> "KneserNeyLM":
        """Count, then derive the continuation counts of the lower orders."""
        super().fit(tokens)
        continuation: dict[tuple, collections.Counter] = {}
        for context, followers in self.next_counts.items():
            if len(context) == 0:
                continue
            # each n-gram (x, c..., w) adds one distinct left neighbour x to (c..., w)
            for w in followers:
                continuation.setdefault(context[1:], collections.Counter())[w] += 1
        self.tables = [{} for _ in range(self.n)]
        for context, followers in self.next_counts.items():
            counts = followers if len(context) == self.n - 1 else continuation.get(context)
            if counts:
                self.tables[len(context)][context] = (counts, sum(counts.values()), len(counts))
        return self

    def _log_prob_ids(self, nxt: int, context: tuple) -> float:
        p, D = 1.0 / len(self.vocab), self.discount
        for m in range(len(context) + 1):  # from the empty context up to the full one
            entry = self.tables[m].get(context[len(context) - m:])
            if entry is None:  # context never seen: keep the lower-order estimate
                continue
            counts, total, types = entry
            p = max(counts.get(nxt, 0) - D, 0.0) / total + D * types / total * p
        return math.log(p)

    def _distribution_ids(self, context: tuple) -> torch.Tensor:
        V, D = len(self.vocab), self.discount
        probs = torch.full((V,), 1.0 / V, dtype=torch.float64)  # (V,)
        for m in range(len(context) + 1):
            entry = self.tables[m].get(context[len(context) - m:])
            if entry is None:
                continue
            counts, total, types = entry
            probs = probs * (D * types / total)
            idx = torch.tensor(list(counts.keys()))
            probs[idx] += (torch.tensor(list(counts.values()), dtype=torch.float64) - D) / total
        return probs

    def __repr__(self) -> str:
        V = len(self.vocab) if self.vocab is not None else None
        return f"KneserNeyLM(n={self.n}, discount={self.discount:g}, V={V})"


def fit_zipf(counts, min_rank: int = 1, max_rank: int | None = None) -> tuple[float, float]:
    """Least-squares fit of ``log f = log c - s log r`` over ranks ``min_rank .. max_rank``.

    Args:
        counts: a ``Counter`` (or any iterable of frequencies) of token counts.
        min_rank, max_rank: the 1-based rank range to fit (``max_rank=None``:
            the last rank).

    Returns:
        ``(s, log_c)``: the Zipf exponent ``s`` (the negated slope on a log-log
        plot) and the intercept, natural logs.
    """
    freqs = sorted(counts.values() if isinstance(counts, Mapping) else counts, reverse=True)
    max_rank = len(freqs) if max_rank is None else max_rank
    if not 1 <= min_rank < max_rank <= len(freqs):
        raise ValueError(f"need 1 <= min_rank < max_rank <= {len(freqs)} (number of types), "
                         f"got min_rank={min_rank}, max_rank={max_rank}")
    ranks = torch.arange(min_rank, max_rank + 1, dtype=torch.float64)  # (R,)
    f = torch.tensor(freqs[min_rank - 1:max_rank], dtype=torch.float64)  # (R,)
    A = torch.stack([torch.ones_like(ranks), ranks.log()], dim=1)  # (R, 2)
    coef = torch.linalg.lstsq(A, f.log()[:, None]).solution[:, 0]  # (2,)
    return -float(coef[1]), float(coef[0])
