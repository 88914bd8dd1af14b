"""Tokenisers, a vocabulary, and minibatch partitioning of a token corpus."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Iterator, Sequence

import torch


# ----------------------------------------------------------------------------
# Tokenisers
# ----------------------------------------------------------------------------


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty (or only whitespace); there is nothing to tokenise")
    return text


def normalize_english(text: str) -> str:
    """Lower-case and replace every run of non-letters by one space."""
    return re.sub(r"[^A-Za-z]+", " ", _check_text(text)).lower().strip()


def tokenize(text: str, token: str = "char") -> list[str]:
    """Split English text into character or word tokens.

    The text is first normalised with :func:`normalize_english`, so the
    character vocabulary is the 26 letters plus the space.

    Args:
        text: the raw text.
        token: ``"char"`` or ``"word"``.
    """
    clean = normalize_english(text)
    if token == "char":
        return list(clean)
    if token == "word":
        return clean.split()
    raise ValueError(f"token must be 'char' or 'word', got {token!r}")


_CJK_PUNCT = re.compile(r"[\s，。！？、；：「」『』（）()《》“”‘’·…—,.!?;:]+")


def tokenize_chinese(text: str, mode: str = "word", keep_punct: bool = False) -> list[str]:
    """Split Chinese text into words (with jieba) or single characters.

    Args:
        text: Chinese text.
        mode: ``"word"`` for jieba's precise-mode segmentation, ``"char"``
            for one token per character.
        keep_punct: keep punctuation tokens (dropped by default).
    """
    _check_text(text)
    if mode == "char":
        tokens = list(text)
    elif mode == "word":
        import jieba  # lazy: jieba builds its dictionary on first use

        jieba.setLogLevel(60)  # silence the "Building prefix dict" banner
        tokens = jieba.lcut(text)
    else:
        raise ValueError(f"mode must be 'word' or 'char', got {mode!r}")
    if not keep_punct:
        tokens = [t for t in tokens if not _CJK_PUNCT.fullmatch(t)]
    return tokens


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of a token list, as tuples."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# ----------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------


class Vocab:
    """A frequency-sorted mapping between tokens and integer indices.

    Index 0 is always ``<unk>``; the reserved tokens follow, then every
    token seen at least ``min_freq`` times, most frequent first (ties broken
    alphabetically, so the order is deterministic).  Looking up a token that
    is not in the vocabulary returns the index of ``<unk>``.

    Args:
        tokens: a flat list of tokens, or a list of token lists.
        min_freq: drop tokens seen fewer times than this.
        reserved_tokens: tokens such as ``<pad>``, ``<bos>``, ``<eos>`` that
            get indices right after ``<unk>``.
    """

    unk_token = "<unk>"

    def __init__(self, tokens: Iterable = (), min_freq: int = 1, reserved_tokens: Sequence[str] = ()):
        if not isinstance(min_freq, int) or min_freq < 0:
            raise ValueError(f"min_freq must be a non-negative int, got {min_freq!r}")
        tokens = list(tokens)
        if tokens and isinstance(tokens[0], (list, tuple)):
            tokens = [tok for line in tokens for tok in line]
        for tok in tokens[:1]:
            if not isinstance(tok, str):
                raise TypeError(f"tokens must be strings, got {type(tok).__name__}")
        counter = collections.Counter(tokens)
        self.token_freqs: list[tuple[str, int]] = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        specials = [self.unk_token] + [t for t in reserved_tokens if t != self.unk_token]
        if len(set(specials)) != len(specials):
            raise ValueError(f"reserved_tokens has duplicates: {list(reserved_tokens)}")
        self.idx_to_token: list[str] = specials + [
            tok for tok, freq in self.token_freqs if freq >= min_freq and tok not in specials
        ]
        self.token_to_idx: dict[str, int] = {tok: i for i, tok in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    @property
    def unk(self) -> int:
        """Index of ``<unk>`` (always 0)."""
        return 0

    def __getitem__(self, tokens):
        """Token -> index, or a (nested) list of tokens -> list of indices."""
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        if isinstance(tokens, (list, tuple)):
            return [self.__getitem__(t) for t in tokens]
        raise TypeError(f"look up a str or a list of str, got {type(tokens).__name__}")

    def to_tokens(self, indices):
        """Index -> token, or a list / 1-D tensor of indices -> list of tokens."""
        if isinstance(indices, torch.Tensor):
            if indices.dim() > 1:
                raise ValueError(f"to_tokens takes a 0-D or 1-D tensor, got shape {tuple(indices.shape)}")
            indices = indices.tolist()
        if isinstance(indices, int):
            if not 0 <= indices < len(self):
                raise ValueError(f"index {indices} is out of range for a vocabulary of {len(self)}")
            return self.idx_to_token[indices]
        return [self.to_tokens(int(i)) for i in indices]


# ----------------------------------------------------------------------------
# Minibatch partitioning
# ----------------------------------------------------------------------------


def _as_corpus(corpus) -> torch.Tensor:
    corpus = torch.as_tensor(corpus, dtype=torch.long)
    if corpus.dim() != 1:
        raise ValueError(f"corpus must be a 1-D sequence of token ids, got shape {tuple(corpus.shape)}")
    return corpus


def _check_steps(n: int, batch_size: int, num_steps: int) -> None:
    for name, val in (("batch_size", batch_size), ("num_steps", num_steps)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if num_steps >= n:
        raise ValueError(
            f"num_steps={num_steps} is not shorter than the corpus ({n} tokens): "
            f"each example needs num_steps + 1 tokens; use a smaller num_steps"
        )


def random_batches(corpus, batch_size: int, num_steps: int, generator: torch.Generator | None = None
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random partitioning: non-overlapping windows, shuffled.

    A random offset in ``[0, num_steps)`` is dropped from the front, the rest
    is cut into windows of ``num_steps`` tokens, and windows are dealt into
    minibatches in a random order.  Neighbouring rows of one batch are not
    neighbours in the text, so the hidden state must be reset per batch.

    Yields:
        ``(X, Y)``, both ``(B, T)`` long tensors, ``Y`` shifted by one token.
    """
    corpus = _as_corpus(corpus)
    _check_steps(len(corpus), batch_size, num_steps)
    offset = int(torch.randint(0, num_steps, (1,), generator=generator))
    corpus = corpus[offset:]
    num_windows = (len(corpus) - 1) // num_steps
    starts = torch.arange(num_windows) * num_steps
    starts = starts[torch.randperm(num_windows, generator=generator)]
    for i in range(0, num_windows - batch_size + 1, batch_size):
        idx = starts[i : i + batch_size, None] + torch.arange(num_steps)  # (B, T)
        yield corpus[idx], corpus[idx + 1]


def sequential_batches(corpus, batch_size: int, num_steps: int, generator: torch.Generator | None = None
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential partitioning: row ``b`` of batch ``k+1`` continues row ``b`` of batch ``k``.

    The corpus (after a random offset) is split into ``batch_size`` long
    streams side by side; each minibatch takes the next ``num_steps`` tokens
    of every stream.  The hidden state can therefore be carried across
    minibatches (detached, for truncated BPTT).

    Yields:
        ``(X, Y)``, both ``(B, T)`` long tensors.
    """
    corpus = _as_corpus(corpus)
    _check_steps(len(corpus), batch_size, num_steps)
    offset = int(torch.randint(0, num_steps, (1,), generator=generator))
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    if num_tokens // batch_size < num_steps:
        raise ValueError(
            f"corpus of {len(corpus)} tokens is too short for batch_size={batch_size} "
            f"streams of num_steps={num_steps}; use a smaller batch_size or num_steps"
        )
    xs = corpus[offset : offset + num_tokens].reshape(batch_size, -1)  # (B, N/B)
    ys = corpus[offset + 1 : offset + 1 + num_tokens].reshape(batch_size, -1)  # (B, N/B)
    for i in range(0, xs.shape[1] - num_steps + 1, num_steps):
        yield xs[:, i : i + num_steps], ys[:, i : i + num_steps]


class SeqDataLoader:
    """A re-iterable loader over a token corpus (a new random offset each epoch).

    Args:
        corpus: 1-D token ids.
        batch_size, num_steps: minibatch shape ``(B, T)``.
        sequential: sequential partitioning (state may be carried) instead of
            random partitioning.
        seed: seeds the loader's own generator, so epochs are reproducible.
    """

    def __init__(self, corpus, batch_size: int, num_steps: int, sequential: bool = False, seed: int = 0):
        self.corpus = _as_corpus(corpus)
        _check_steps(len(self.corpus), batch_size, num_steps)
        self.batch_size, self.num_steps, self.sequential = batch_size, num_steps, sequential
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        fn = sequential_batches if self.sequential else random_batches
        return fn(self.corpus, self.batch_size, self.num_steps, self.generator)

    def __len__(self) -> int:
        return max(0, (len(self.corpus) - self.num_steps) // (self.batch_size * self.num_steps))


def train_val_split(corpus, train_frac: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D corpus into its first ``train_frac`` and the rest (no shuffling)."""
    corpus = _as_corpus(corpus)
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    cut = int(len(corpus) * train_frac)
    return corpus[:cut], corpus[cut:]
