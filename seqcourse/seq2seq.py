"""Sequence-to-sequence learning: encoder, decoders, training, decoding and BLEU.

Every model here follows one interface (chapter 11)::

    enc_outputs = encoder(X, valid_len)          # X: (B, S) source ids
    state = decoder.init_state(enc_outputs, valid_len)
    logits, state = decoder(Y_in, state)         # Y_in: (B, T) -> logits (B, T, V)

so that training, greedy decoding and beam search are written once and work
for every decoder: the three "where does the context go" variants, the
decoder with additive (Bahdanau) attention and the decoder with
multiplicative (Luong) attention.

Sequences are padded on the right with ``<pad>`` and end with ``<eos>``;
``valid_len`` counts the tokens before the padding (``<eos>`` included).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .text import Vocab, ngrams

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)


# ----------------------------------------------------------------------------
# Data: vocabularies, padding, minibatches
# ----------------------------------------------------------------------------


def build_vocab(token_lists: Sequence[Sequence[str]], min_freq: int = 1) -> Vocab:
    """A :class:`~seqcourse.text.Vocab` with ``<pad>``, ``<bos>``, ``<eos>`` reserved.

    Args:
        token_lists: a list of token lists (characters or words).
        min_freq: rarer tokens map to ``<unk>``.
    """
    if isinstance(token_lists, str) or not all(isinstance(t, (list, tuple)) for t in token_lists):
        raise TypeError("token_lists must be a list of token lists, e.g. [list('abc'), list('de')]")
    return Vocab(token_lists, min_freq=min_freq, reserved_tokens=SPECIALS)


def pad_sequences(token_lists: Sequence[Sequence[str]], vocab: Vocab, max_len: int | None = None,
                  add_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn token lists into one right-padded id tensor.

    Args:
        token_lists: ``N`` token lists.
        vocab: a vocabulary built by :func:`build_vocab`.
        max_len: pad (or truncate) to this length; default: the longest.
        add_eos: append ``<eos>`` to every sequence before padding.

    Returns:
        ``ids`` of shape ``(N, T)`` (long) and ``valid_len`` of shape ``(N,)``.
    """
    for tok in SPECIALS:
        if tok not in vocab:
            raise ValueError(f"vocab lacks {tok!r}; build it with seq2seq.build_vocab")
    seqs = [list(vocab[list(toks)]) + ([vocab[EOS]] if add_eos else []) for toks in token_lists]
    if not seqs:
        raise ValueError("token_lists is empty")
    T = max_len if max_len is not None else max(len(s) for s in seqs)
    seqs = [s[:T] for s in seqs]
    ids = torch.full((len(seqs), T), vocab[PAD], dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    valid_len = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return ids, valid_len


class PairData:
    """A parallel corpus as padded tensors, with vocabularies and a tokeniser.

    Args:
        pairs: ``(source, target)`` strings.
        src_vocab, tgt_vocab: vocabularies; built from ``pairs`` when ``None``.
        tokenize: splits a string into tokens (``list`` for characters,
            ``str.split`` for words).

    Attributes:
        src ``(N, S)``, src_len ``(N,)``, tgt ``(N, T)``, tgt_len ``(N,)``.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], src_vocab: Vocab | None = None,
                 tgt_vocab: Vocab | None = None, tokenize: Callable[[str], list] = list):
        if not pairs or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise ValueError("pairs must be a non-empty list of (source, target) string pairs")
        self.pairs = list(pairs)
        self.tokenize = tokenize
        src_tokens = [tokenize(s) for s, _ in pairs]
        tgt_tokens = [tokenize(t) for _, t in pairs]
        self.src_vocab = src_vocab or build_vocab(src_tokens)
        self.tgt_vocab = tgt_vocab or build_vocab(tgt_tokens)
        self.src, self.src_len = pad_sequences(src_tokens, self.src_vocab)
        self.tgt, self.tgt_len = pad_sequences(tgt_tokens, self.tgt_vocab)

    def __len__(self) -> int:
        return len(self.pairs)

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True):
        """Yield ``(src, src_len, tgt, tgt_len)`` minibatches (the last one may be smaller)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            idx = order[i : i + batch_size]
            yield self.src[idx], self.src_len[idx], self.tgt[idx], self.tgt_len[idx]


# ----------------------------------------------------------------------------
# The encoder-decoder interface
# ----------------------------------------------------------------------------


class Encoder(nn.Module):
    """Reads a padded source batch and returns whatever its decoder needs."""

    def forward(self, X: torch.Tensor, valid_len: torch.Tensor):
        """Args: X ``(B, S)`` ids, valid_len ``(B,)``. Returns ``(outputs, state)``."""
        raise NotImplementedError


class Decoder(nn.Module):
    """Turns the encoder's result into a state, then maps target inputs to logits."""

    def init_state(self, enc_outputs, valid_len: torch.Tensor):
        """Build the decoder's initial state from the encoder's ``(outputs, state)``."""
        raise NotImplementedError

    def forward(self, Y_in: torch.Tensor, state):
        """Args: Y_in ``(B, T)`` ids. Returns ``(logits (B, T, V), new_state)``."""
        raise NotImplementedError

    def reorder_state(self, state, index: torch.Tensor):
        """Pick rows ``index`` of every batched tensor in ``state`` (beam search)."""
        raise NotImplementedError


class EncoderDecoder(nn.Module):
    """An encoder and a decoder behind one ``forward`` for teacher-forced training."""

    def __init__(self, encoder: Encoder, decoder: Decoder):
        super().__init__()
        if not isinstance(encoder, Encoder) or not isinstance(decoder, Decoder):
            raise TypeError("EncoderDecoder needs a seq2seq.Encoder and a seq2seq.Decoder")
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src: torch.Tensor, src_len: torch.Tensor, Y_in: torch.Tensor) -> torch.Tensor:
        """Args: src ``(B, S)``, src_len ``(B,)``, Y_in ``(B, T)``. Returns logits ``(B, T, V)``."""
        enc_outputs = self.encoder(src, src_len)
        state = self.decoder.init_state(enc_outputs, src_len)
        logits, _ = self.decoder(Y_in, state)
        return logits


# ----------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------


class GRUEncoder(Encoder):
    """Embedding + GRU that stops at each sequence's own last token.

    The sequences are packed (``pack_padded_sequence``), so the returned
    state is the hidden state after the last *valid* token, not after the
    padding.

    Args:
        vocab_size: source vocabulary size.
        embed_size: embedding width ``E``.
        hidden_size: GRU width ``H``.
        num_layers: stacked GRU layers ``L``.
        dropout: dropout between stacked layers.
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size, hidden_size, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, X: torch.Tensor, valid_len: torch.Tensor):
        """Args: X ``(B, S)``, valid_len ``(B,)``.

        Returns: outputs ``(B, S, H)`` (zeros at padded steps) and state ``(L, B, H)``.
        """
        _check_batch(X, valid_len)
        emb = self.embedding(X)  # (B, S, E)
        packed = nn.utils.rnn.pack_padded_sequence(emb, valid_len.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, state = self.rnn(packed)  # state: (L, B, H)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                      total_length=X.shape[1])  # (B, S, H)
        return outputs, state


def _check_batch(X: torch.Tensor, valid_len: torch.Tensor) -> None:
    if X.dim() != 2:
        raise ValueError(f"X must be (B, S) token ids, got shape {tuple(X.shape)}")
    if valid_len.shape != X.shape[:1]:
        raise ValueError(f"valid_len must be (B,) = ({X.shape[0]},), got {tuple(valid_len.shape)}")
    if bool((valid_len < 1).any()) or bool((valid_len > X.shape[1]).any()):
        raise ValueError(f"valid_len must lie in [1, {X.shape[1]}]; got {valid_len.tolist()}")


# ----------------------------------------------------------------------------
# Decoders without attention: where does the context go?
# ----------------------------------------------------------------------------


class ContextDecoder(Decoder):
    """A GRU decoder that receives the context ``c`` (the encoder's last top-layer state).

    Every variant also reads the previous output token: ``y_{t-1}`` is what
    makes the decoder autoregressive.

    Args:
        vocab_size: target vocabulary size ``V``.
        embed_size: embedding width ``E``.
        hidden_size: GRU width ``H`` (must equal the encoder's for ``"init"``/``"both"``).
        num_layers: stacked GRU layers ``L`` (as the encoder's for ``"init"``/``"both"``).
        context: ``"init"`` -- ``c`` is only the initial state;
            ``"input"`` -- a learned initial state, ``c`` concatenated to every input;
            ``"both"`` -- ``c`` is the initial state *and* fed at every step.
    """

    VARIANTS = ("init", "input", "both")

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1,
                 context: str = "both"):
        super().__init__()
        if context not in self.VARIANTS:
            raise ValueError(f"context must be one of {self.VARIANTS}, got {context!r}")
        self.context = context
        self.embedding = nn.Embedding(vocab_size, embed_size)
        input_size = embed_size + (hidden_size if context in ("input", "both") else 0)
        self.rnn = nn.GRU(input_size, hidden_size, num_layers, batch_first=True)
        # The "input" variant starts from its own learned state h'_0.
        self.h0 = nn.Parameter(torch.zeros(num_layers, 1, hidden_size)) if context == "input" else None
        self.head = nn.Linear(hidden_size, vocab_size)

    def init_state(self, enc_outputs, valid_len):
        _, enc_state = enc_outputs  # (L, B, H)
        c = enc_state[-1]  # (B, H): top layer after the last valid source token
        if self.context == "input":
            hidden = self.h0.expand(-1, c.shape[0], -1).contiguous()  # (L, B, H)
        else:
            if enc_state.shape[0] != self.rnn.num_layers or enc_state.shape[2] != self.rnn.hidden_size:
                raise ValueError(
                    f"context={self.context!r} starts from the encoder state {tuple(enc_state.shape)}, "
                    f"so the decoder needs num_layers={enc_state.shape[0]} and hidden_size="
                    f"{enc_state.shape[2]}; match them or use context='input'")
            hidden = enc_state
        return hidden, c

    def forward(self, Y_in, state):
        hidden, c = state
        emb = self.embedding(Y_in)  # (B, T, E)
        if self.context in ("input", "both"):
            ctx = c.unsqueeze(1).expand(-1, Y_in.shape[1], -1)  # (B, T, H)
            emb = torch.cat([emb, ctx], dim=-1)  # (B, T, E + H)
        out, hidden = self.rnn(emb, hidden)  # (B, T, H)
        return self.head(out), (hidden, c)  # (B, T, V)

    def reorder_state(self, state, index):
        hidden, c = state
        return hidden.index_select(1, index), c.index_select(0, index)


# ----------------------------------------------------------------------------
# Additive (Bahdanau) attention
# ----------------------------------------------------------------------------


def sequence_mask(valid_len: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean mask ``(B, max_len)``: True at positions ``< valid_len``."""
    return torch.arange(max_len, device=valid_len.device)[None, :] < valid_len[:, None]  # (B, max_len)


class AdditiveAttention(nn.Module):
    """score(q, k) = w^T tanh(W_q q + W_k k), softmax over the valid keys.

    Args:
        query_size, key_size: widths of queries and keys.
        attn_size: width of the hidden layer inside the score.
    """

    def __init__(self, query_size: int, key_size: int, attn_size: int):
        super().__init__()
        self.W_q = nn.Linear(query_size, attn_size, bias=False)
        self.W_k = nn.Linear(key_size, attn_size, bias=False)
        self.w = nn.Linear(attn_size, 1, bias=False)

    def forward(self, query, proj_keys, values, mask):
        """One query per sequence.

        Args:
            query ``(B, Hq)``; proj_keys ``(B, S, A)`` = ``W_k(keys)``, computed once
            per source; values ``(B, S, Hv)``; mask ``(B, S)`` bool, True at
            valid source positions (see :func:`sequence_mask`).

        Returns: context ``(B, Hv)`` and weights ``(B, S)``.
        """
        feats = torch.tanh(self.W_q(query).unsqueeze(1) + proj_keys)  # (B, S, A)
        scores = self.w(feats).squeeze(-1)  # (B, S)
        # Padded source positions get -inf, hence exactly zero weight.
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, S)
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # (B, 1, S) @ (B, S, Hv) -> (B, Hv)
        return context, weights


class AttentionDecoder(Decoder):
    """A GRU decoder that attends over all encoder outputs at every step.

    At step t the query is the decoder's previous top-layer state
    ``s_{t-1}``; the context ``c_t`` is concatenated to the embedding of
    ``y_{t-1}``.  The weights of the last call are kept in
    ``self.attention_weights`` ``(B, T, S)`` for plotting.

    Args:
        vocab_size, embed_size, hidden_size, num_layers: as :class:`ContextDecoder`.
        attn_size: hidden width of the additive score (default ``hidden_size``).
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1,
                 attn_size: int | None = None):
        super().__init__()
        self.attention = AdditiveAttention(hidden_size, hidden_size, attn_size or hidden_size)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size + hidden_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)
        self.attention_weights = None

    def init_state(self, enc_outputs, valid_len):
        outputs, enc_state = enc_outputs  # (B, S, H), (L, B, H)
        if enc_state.shape[0] != self.rnn.num_layers or enc_state.shape[2] != self.rnn.hidden_size:
            raise ValueError(f"encoder state {tuple(enc_state.shape)} does not match the decoder's "
                             f"(num_layers={self.rnn.num_layers}, hidden_size={self.rnn.hidden_size})")
        proj_keys = self.attention.W_k(outputs)  # (B, S, A), reused at every step
        mask = sequence_mask(valid_len, outputs.shape[1])  # (B, S)
        return outputs, proj_keys, enc_state, mask

    def forward(self, Y_in, state):
        outputs, proj_keys, hidden, mask = state
        emb = self.embedding(Y_in)  # (B, T, E)
        steps, weights = [], []
        for t in range(Y_in.shape[1]):
            context, w = self.attention(hidden[-1], proj_keys, outputs, mask)  # (B, H), (B, S)
            x = torch.cat([emb[:, t], context], dim=-1).unsqueeze(1)  # (B, 1, E + H)
            out, hidden = self.rnn(x, hidden)  # (B, 1, H)
            steps.append(out)
            weights.append(w)
        self.attention_weights = torch.stack(weights, dim=1).detach()  # (B, T, S)
        logits = self.head(torch.cat(steps, dim=1))  # (B, T, V)
        return logits, (outputs, proj_keys, hidden, mask)

    def reorder_state(self, state, index):
        outputs, proj_keys, hidden, mask = state
        return (outputs.index_select(0, index), proj_keys.index_select(0, index),
                hidden.index_select(1, index), mask.index_select(0, index))


# ----------------------------------------------------------------------------
# Multiplicative (Luong) attention
# ----------------------------------------------------------------------------


class MultiplicativeAttention(nn.Module):
    """Luong's scores: ``"dot"`` s^T h, or ``"general"`` s^T W_a h; softmax over the valid keys.

    Args:
        query_size, key_size: widths of queries and keys (equal for ``"dot"``).
        score: ``"dot"`` (no parameters) or ``"general"`` (a learned ``W_a``).
    """

    SCORES = ("dot", "general")

    def __init__(self, query_size: int, key_size: int, score: str = "general"):
        super().__init__()
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {self.SCORES}, got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(f"the dot score needs query_size == key_size, got {query_size} and {key_size}; "
                             f"use score='general'")
        self.score = score
        self.W_a = nn.Linear(key_size, query_size, bias=False) if score == "general" else None

    def forward(self, queries, keys, values, mask):
        """All queries of a sequence at once.

        Args: queries ``(B, T, Hq)``; keys ``(B, S, Hk)``; values ``(B, S, Hv)``;
        mask ``(B, S)`` bool, True at valid source positions.

        Returns: contexts ``(B, T, Hv)`` and weights ``(B, T, S)``.
        """
        proj = keys if self.W_a is None else self.W_a(keys)  # (B, S, Hq)
        scores = torch.bmm(queries, proj.transpose(1, 2))  # (B, T, Hq) @ (B, Hq, S) -> (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        return torch.bmm(weights, values), weights  # (B, T, Hv)


class LuongDecoder(Decoder):
    """A GRU decoder with multiplicative attention queried by the *current* state.

    Bahdanau's decoder queries with ``s_{t-1}`` and feeds the context into the
    GRU; Luong's first updates ``s_t = GRU(e(y_{t-1}), s_{t-1})``, then
    attends with ``s_t`` and predicts from ``tanh(W_c [c_t; s_t])``. Since the
    context no longer enters the recurrence, the GRU runs over the whole
    target in one call and attention is computed for all steps at once.
    The weights of the last call are kept in ``self.attention_weights``
    ``(B, T, S)``.

    Args:
        vocab_size, embed_size, hidden_size, num_layers: as :class:`ContextDecoder`.
        score: ``"dot"`` or ``"general"`` (see :class:`MultiplicativeAttention`).
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int = 1,
                 score: str = "general"):
        super().__init__()
        self.attention = MultiplicativeAttention(hidden_size, hidden_size, score)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size, hidden_size, num_layers, batch_first=True)
        self.W_c = nn.Linear(2 * hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)
        self.attention_weights = None

    def init_state(self, enc_outputs, valid_len):
        outputs, enc_state = enc_outputs  # (B, S, H), (L, B, H)
        if enc_state.shape[0] != self.rnn.num_layers or enc_state.shape[2] != self.rnn.hidden_size:
            raise ValueError(f"encoder state {tuple(enc_state.shape)} does not match the decoder's "
                             f"(num_layers={self.rnn.num_layers}, hidden_size={self.rnn.hidden_size})")
        return outputs, enc_state, sequence_mask(valid_len, outputs.shape[1])

    def forward(self, Y_in, state):
        outputs, hidden, mask = state
        s, hidden = self.rnn(self.embedding(Y_in), hidden)  # (B, T, H): s_1 .. s_T
        context, weights = self.attention(s, outputs, outputs, mask)  # (B, T, H), (B, T, S)
        self.attention_weights = weights.detach()
        h_tilde = torch.tanh(self.W_c(torch.cat([context, s], dim=-1)))  # (B, T, H)
        return self.head(h_tilde), (outputs, hidden, mask)  # (B, T, V)

    def reorder_state(self, state, index):
        outputs, hidden, mask = state
        return outputs.index_select(0, index), hidden.index_select(1, index), mask.index_select(0, index)


# ----------------------------------------------------------------------------
# Training: teacher forcing and a masked loss
# ----------------------------------------------------------------------------


def teacher_forcing_inputs(Y: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``<bos>`` followed by ``Y[:, :-1]``.

    Args: Y ``(B, T)`` target ids (ending in ``<eos>`` and padding).
    Returns: ``(B, T)``.
    """
    if Y.dim() != 2:
        raise ValueError(f"Y must be (B, T) target ids, got shape {tuple(Y.shape)}")
    bos = torch.full_like(Y[:, :1], bos_id)  # (B, 1)
    return torch.cat([bos, Y[:, :-1]], dim=1)  # (B, T)


def masked_cross_entropy(logits: torch.Tensor, Y: torch.Tensor, valid_len: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the valid (non-padding) target tokens only.

    The sum of the per-token losses at valid positions is divided by the
    number of valid tokens, so the result equals the plain mean over the
    same tokens without any padding.

    Args: logits ``(B, T, V)``; Y ``(B, T)``; valid_len ``(B,)``.
    """
    if logits.dim() != 3 or Y.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and Y (B, T); got {tuple(logits.shape)} and {tuple(Y.shape)}")
    if valid_len.shape != Y.shape[:1]:
        raise ValueError(f"valid_len must be (B,) = ({Y.shape[0]},), got {tuple(valid_len.shape)}")
    per_token = F.cross_entropy(logits.transpose(1, 2), Y, reduction="none")  # (B, V, T) vs (B, T) -> (B, T)
    mask = sequence_mask(valid_len, Y.shape[1]).to(per_token.dtype)  # (B, T)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def train_seq2seq(model: EncoderDecoder, data: PairData, *, num_steps: int = 500, batch_size: int = 64,
                  lr: float = 5e-3, max_norm: float | None = 1.0, time_budget: float | None = None,
                  device=None, seed: int = 0) -> dict:
    """Train with teacher forcing, Adam and global-norm clipping.

    Args:
        model: an :class:`EncoderDecoder`.
        data: the training :class:`PairData`.
        num_steps: number of parameter updates (the budget that makes runs comparable).
        batch_size: pairs per update.
        lr: Adam learning rate.
        max_norm: clip the global gradient norm; ``None`` disables.
        time_budget: optional wall-clock cap in seconds (stops early).
        device: default: where the model's parameters are.
        seed: seeds the minibatch order.

    Returns:
        ``{"step", "loss", "seconds"}``: loss averaged over every 20 steps, and the total time.
    """
    if not isinstance(model, EncoderDecoder):
        raise TypeError("train_seq2seq needs a seq2seq.EncoderDecoder")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    device = torch.device(device) if device else next(model.parameters()).device
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bos_id = data.tgt_vocab[BOS]
    history = {"step": [], "loss": [], "seconds": 0.0}
    start, step, window, out_of_time = time.perf_counter(), 0, [], False
    while step < num_steps:
        for src, src_len, tgt, tgt_len in data.batches(batch_size, gen):
            src, src_len, tgt, tgt_len = (t.to(device) for t in (src, src_len, tgt, tgt_len))
            T = int(tgt_len.max())  # drop all-padding columns
            Y = tgt[:, :T]  # (B, T)
            logits = model(src, src_len, teacher_forcing_inputs(Y, bos_id))  # (B, T, V)
            loss = masked_cross_entropy(logits, Y, tgt_len)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
            step += 1
            window.append(loss.item())
            out_of_time = time_budget is not None and time.perf_counter() - start > time_budget
            if len(window) == 20 or step == num_steps or out_of_time:
                history["step"].append(step)
                history["loss"].append(sum(window) / len(window))
                window = []
            if step == num_steps or out_of_time:
                break
        if out_of_time:
            break
    history["seconds"] = time.perf_counter() - start
    model.eval()
    return history


@torch.no_grad()
def sequence_log_prob(model: EncoderDecoder, src: torch.Tensor, src_len: torch.Tensor, tgt: torch.Tensor,
                      tgt_len: torch.Tensor, bos_id: int) -> torch.Tensor:
    """log P(target | source) under the model, summed over the valid target tokens.

    Args: src ``(B, S)``, src_len ``(B,)``, tgt ``(B, T)`` (ending in ``<eos>``), tgt_len ``(B,)``.
    Returns: ``(B,)``.
    """
    logits = model(src, src_len, teacher_forcing_inputs(tgt, bos_id))  # (B, T, V)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (logp * sequence_mask(tgt_len, tgt.shape[1])).sum(dim=1)


# ----------------------------------------------------------------------------
# Decoding: greedy and beam search
# ----------------------------------------------------------------------------


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast before log_softmax; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, src: torch.Tensor, src_len: torch.Tensor, bos_id: int, eos_id: int,
                  max_len: int = 20):
    """Pick the most probable token at every step, for a whole batch at once.

    Args: src ``(B, S)``, src_len ``(B,)``; ``max_len`` caps the output length.

    Returns:
        ``(tokens, log_probs, attention)``: a list of ``B`` id lists (without
        ``<eos>``), their total log-probabilities ``(B,)`` (``<eos>`` included),
        and the attention weights ``(B, T, S)`` or ``None``.
    """
    _check_batch(src, src_len)
    model.eval()
    dec = model.decoder
    state = dec.init_state(model.encoder(src, src_len), src_len)
    B = src.shape[0]
    y = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    total = None
    out, attn = [], []
    for _ in range(max_len):
        logits, state = dec(y, state)  # (B, 1, V)
        logp = torch.log_softmax(_at_least_float32(logits[:, -1]), dim=-1)  # (B, V)
        y = logp.argmax(dim=-1, keepdim=True)  # (B, 1)
        step_lp = torch.where(done, torch.zeros_like(logp[:, 0]), logp.gather(1, y).squeeze(1))  # (B,)
        total = step_lp if total is None else total + step_lp
        out.append(torch.where(done[:, None], torch.full_like(y, eos_id), y))  # (B, 1)
        if getattr(dec, "attention_weights", None) is not None:
            attn.append(dec.attention_weights[:, -1])  # (B, S)
        done |= y.squeeze(1) == eos_id
        if bool(done.all()):
            break
    ids = torch.cat(out, dim=1).tolist()  # (B, T) as lists
    tokens = [row[: row.index(eos_id)] if eos_id in row else row for row in ids]
    attention = torch.stack(attn, dim=1) if attn else None  # (B, T, S)
    return tokens, total, attention


@torch.no_grad()
def beam_search(model: EncoderDecoder, src: torch.Tensor, src_len: int, bos_id: int, eos_id: int,
                beam_size: int = 4, max_len: int = 20, alpha: float = 0.0) -> list[tuple[list[int], float, float]]:
    """Beam search for one source sequence.

    At every step all one-token extensions of the live prefixes are ranked
    by log-probability and the best ``beam_size - len(finished)`` are kept;
    a kept extension that ends in ``<eos>`` is finished and leaves the beam.
    So exactly ``beam_size`` hypotheses come out, and ``beam_size=1`` is
    greedy search.  They are ranked by ``log P / length**alpha``
    (``alpha = 0``: plain log-probability; the length counts ``<eos>``).

    Args:
        src: ``(S,)`` source ids of one sequence; src_len its valid length.

    Returns:
        ``(tokens, log_prob, score)`` tuples, best first; tokens exclude
        ``<eos>``. Prefixes still live after ``max_len`` steps are included
        unfinished.
    """
    if src.dim() != 1:
        raise ValueError(f"beam_search decodes one sequence: src must be (S,), got {tuple(src.shape)}")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    model.eval()
    dec = model.decoder
    src_len_t = torch.tensor([int(src_len)], device=src.device)
    state = dec.init_state(model.encoder(src.unsqueeze(0), src_len_t), src_len_t)  # batch of 1
    alive = [([], 0.0)]  # (tokens, log_prob) of live prefixes, one state row each
    finished = []
    for _ in range(max_len):
        last = torch.tensor([[toks[-1] if toks else bos_id] for toks, _ in alive], device=src.device)  # (K, 1)
        logits, state = dec(last, state)  # (K, 1, V)
        logp = torch.log_softmax(_at_least_float32(logits[:, -1]), dim=-1)  # (K, V)
        prefix_lp = torch.tensor([lp for _, lp in alive], dtype=logp.dtype, device=src.device)  # (K,)
        cand = logp + prefix_lp[:, None]  # (K, V)
        V = cand.shape[1]
        top = cand.flatten().topk(min(beam_size - len(finished), cand.numel()))
        new_alive, rows = [], []
        for value, flat in zip(top.values.tolist(), top.indices.tolist()):
            row, tok = divmod(flat, V)
            if tok == eos_id:
                finished.append((alive[row][0], value))
            else:
                new_alive.append((alive[row][0] + [tok], value))
                rows.append(row)
        alive = new_alive
        if not alive:
            break
        state = dec.reorder_state(state, torch.tensor(rows, device=src.device))
    results = [(toks, lp, lp / (len(toks) + 1) ** alpha) for toks, lp in finished]
    results += [(toks, lp, lp / len(toks) ** alpha) for toks, lp in alive]  # unfinished at max_len
    return sorted(results, key=lambda r: -r[2])


# ----------------------------------------------------------------------------
# Evaluation: BLEU and exact match
# ----------------------------------------------------------------------------


def ngram_matches(pred_tokens: Sequence[str], ref_tokens: Sequence[str], n: int) -> tuple[int, int]:
    """Clipped n-gram matches and the number of predicted n-grams.

    A predicted n-gram counts at most as often as it occurs in the reference.
    """
    pred = collections.Counter(ngrams(list(pred_tokens), n))
    ref = collections.Counter(ngrams(list(ref_tokens), n))
    matches = sum(min(count, ref[g]) for g, count in pred.items())
    return matches, sum(pred.values())


def bleu(pred_tokens: Sequence[str], ref_tokens: Sequence[str], max_n: int = 4) -> float:
    """BLEU of one prediction against one reference.

    ``exp(min(0, 1 - len_ref / len_pred)) * prod_n p_n ** (1 / 2**n)`` for
    ``n = 1 .. max_n``, where ``p_n`` is the clipped n-gram precision.  The
    exponents ``1 / 2**n`` shrink with ``n``, and ``p_n <= 1``, so a given
    precision costs less at a long order than at a short one: long n-grams,
    which are harder to match, count less in the product.  Orders longer than
    the prediction have no n-grams and are skipped.

    Args:
        pred_tokens, ref_tokens: token lists (characters or words).
        max_n: longest n-gram order.
    """
    if isinstance(pred_tokens, str) or isinstance(ref_tokens, str):
        raise TypeError("bleu takes token lists; split strings first, e.g. list('2021-03-03') or s.split()")
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be a positive int, got {max_n!r}")
    len_pred, len_ref = len(pred_tokens), len(ref_tokens)
    if len_ref == 0:
        raise ValueError("the reference is empty; BLEU needs at least one reference token")
    if len_pred == 0:
        return 0.0
    score = math.exp(min(0.0, 1 - len_ref / len_pred))
    for n in range(1, min(max_n, len_pred) + 1):
        matches, total = ngram_matches(pred_tokens, ref_tokens, n)
        score *= (matches / total) ** (0.5**n)
    return score


def exact_match(preds: Sequence, refs: Sequence) -> float:
    """Fraction of predictions identical to their reference."""
    if len(preds) != len(refs) or not refs:
        raise ValueError(f"need as many predictions as references (> 0), got {len(preds)} and {len(refs)}")
    return sum(p == r for p, r in zip(preds, refs)) / len(refs)


def translate(model: EncoderDecoder, sources: Sequence[str], data: PairData, max_len: int = 20,
              beam_size: int = 1, batch_size: int = 512) -> list[str]:
    """Translate source strings with greedy search (``beam_size=1``) or beam search.

    Tokens are joined with ``""`` for a character tokeniser (``list``) and
    ``" "`` otherwise.
    """
    device = next(model.parameters()).device
    sep = "" if data.tokenize is list else " "
    tgt_vocab = data.tgt_vocab
    bos_id, eos_id = tgt_vocab[BOS], tgt_vocab[EOS]
    src, src_len = pad_sequences([data.tokenize(s) for s in sources], data.src_vocab)
    src, src_len = src.to(device), src_len.to(device)
    results = []
    for i in range(0, len(sources), batch_size):
        s, sl = src[i : i + batch_size], src_len[i : i + batch_size]
        if beam_size == 1:
            ids, _, _ = greedy_decode(model, s, sl, bos_id, eos_id, max_len)
        else:
            ids = [beam_search(model, row, int(n), bos_id, eos_id, beam_size, max_len)[0][0]
                   for row, n in zip(s, sl)]
        results += [sep.join(tgt_vocab.to_tokens(row)) for row in ids]
    return results


def evaluate(model: EncoderDecoder, pairs: Sequence[tuple[str, str]], data: PairData, max_len: int = 20,
             beam_size: int = 1) -> dict:
    """Exact match and mean BLEU (over the data's tokens) of ``model`` on ``pairs``.

    Returns ``{"exact_match", "bleu", "predictions"}``.
    """
    if not pairs:
        raise ValueError("pairs is empty; nothing to evaluate")
    preds = translate(model, [s for s, _ in pairs], data, max_len=max_len, beam_size=beam_size)
    refs = [t for _, t in pairs]
    split = data.tokenize
    scores = [bleu(split(p), split(r)) for p, r in zip(preds, refs)]
    return {"exact_match": exact_match(preds, refs), "bleu": sum(scores) / len(scores), "predictions": preds}


def plot_attention(weights: torch.Tensor, src_tokens: Sequence[str], out_tokens: Sequence[str], ax=None):
    """Heatmap of attention weights ``(T_out, S)``: source on x, output on y."""
    import matplotlib.pyplot as plt

    w = torch.as_tensor(weights).detach().cpu()
    if w.dim() != 2 or w.shape != (len(out_tokens), len(src_tokens)):
        raise ValueError(f"weights must be (len(out_tokens), len(src_tokens)) = "
                         f"({len(out_tokens)}, {len(src_tokens)}), got {tuple(w.shape)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.22 * len(src_tokens) + 1.5, 0.25 * len(out_tokens) + 1.2))
    im = ax.imshow(w.numpy(), cmap="viridis", aspect="auto", vmin=0.0)
    ax.set_xticks(range(len(src_tokens)), ["_" if t == " " else t for t in src_tokens])
    for label in ax.get_xticklabels():  # keep <eos> and words from overlapping
        label.set_rotation(90 if len(label.get_text()) > 1 else 0)
    ax.set_yticks(range(len(out_tokens)), list(out_tokens))
    ax.set_xlabel("source token")
    ax.set_ylabel("output token")
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, label="attention weight")
    return ax
