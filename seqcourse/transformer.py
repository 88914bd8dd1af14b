"""The Transformer from scratch: positions, masks, attention, blocks and two models (chapter 13).

The layers keep PyTorch's names (``d_model``, ``nhead``, ``dim_feedforward``,
``norm_first``, ``batch_first``) *and* PyTorch's parameter names, so that the
state dict of ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
loads directly (``layer.load_state_dict(torch_layer.state_dict())``)::

    self_attn.in_proj_weight (3D, D)   self_attn.in_proj_bias (3D,)   # W_q; W_k; W_v stacked
    self_attn.out_proj.{weight, bias}  multihead_attn.* (decoder: cross-attention)
    linear1 (F, D), linear2 (D, F)     norm1, norm2 (, norm3)

Masks follow PyTorch's convention for boolean masks: ``True`` marks a
position that may *not* be attended to. Only ``batch_first=True`` is
supported. Shapes: ``B`` batch, ``T`` query steps, ``S`` key steps, ``D``
model width, ``h`` heads, ``d_h = D / h``, ``V`` vocabulary, ``L`` layers.

Two models are built from the layers: an encoder-decoder with the
:mod:`seqcourse.seq2seq` interface (so that its training loop, greedy
decoding and beam search apply unchanged), and a decoder-only character
language model with the :mod:`seqcourse.lm` interface and a ``generate``
that can use a key-value cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .seq2seq import Decoder, Encoder, EncoderDecoder, _check_batch, sequence_mask

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}

# ----------------------------------------------------------------------------
# Positional information
# ----------------------------------------------------------------------------


def sinusoidal_positional_encoding(max_len: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed encoding of Vaswani et al. (2017), one row per position.

    ``P[t, 2i] = sin(t * w_i)`` and ``P[t, 2i + 1] = cos(t * w_i)`` with
    ``w_i = base ** (-2i / d_model)``: each pair of columns is a clock that
    turns at its own frequency, from one radian per step down to ``1/base``.

    Returns: ``(max_len, d_model)`` float32.
    """
    for name, val in (("max_len", max_len), ("d_model", d_model)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}")
    t = torch.arange(max_len, dtype=torch.float64)[:, None]  # (T, 1)
    freqs = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (D/2,)
    P = torch.zeros(max_len, d_model, dtype=torch.float64)
    P[:, 0::2] = torch.sin(t * freqs)  # (T, D/2)
    P[:, 1::2] = torch.cos(t * freqs)
    return P.float()


def offset_matrix(k: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The linear map that moves a sinusoidal encoding ``k`` positions on.

    ``P[t + k] = P[t] @ M_k`` for every ``t``: ``M_k`` is block diagonal with
    one 2x2 rotation by ``k * w_i`` per frequency, and does not depend on ``t``.

    Returns: ``(d_model, d_model)`` float32.
    """
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}")
    freqs = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (D/2,)
    c, s = torch.cos(k * freqs), torch.sin(k * freqs)
    M = torch.zeros(d_model, d_model, dtype=torch.float64)
    # Row vector [sin, cos] times [[c, -s], [s, c]] = [sin(a + b), cos(a + b)].
    M[0::2, 0::2] = torch.diag(c)
    M[0::2, 1::2] = torch.diag(-s)
    M[1::2, 0::2] = torch.diag(s)
    M[1::2, 1::2] = torch.diag(c)
    return M.float()


class PositionalEncoding(nn.Module):
    """Adds position information to a batch of embeddings.

    Args:
        max_len: longest sequence the module accepts.
        d_model: embedding width ``D``.
        learned: ``False``: the fixed sinusoidal table (a buffer, not saved in
            the state dict); ``True``: a learned ``nn.Embedding(max_len, D)``.
    """

    def __init__(self, max_len: int, d_model: int, learned: bool = False):
        super().__init__()
        self.max_len, self.learned = max_len, learned
        if learned:
            self.embedding = nn.Embedding(max_len, d_model)
        else:
            self.register_buffer("table", sinusoidal_positional_encoding(max_len, d_model), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Args: x ``(B, T, D)``; offset: the position of ``x[:, 0]`` (tokens already cached).

        Returns: ``(B, T, D)``.
        """
        T = x.shape[1]
        if offset + T > self.max_len:
            raise ValueError(f"positions up to {offset + T} requested, but max_len={self.max_len}; "
                             f"build the model with a larger max_len or use shorter sequences")
        if self.learned:
            pos = self.embedding(torch.arange(offset, offset + T, device=x.device))  # (T, D)
        else:
            pos = self.table[offset : offset + T]  # (T, D)
        return x + pos.to(x.dtype)


# ----------------------------------------------------------------------------
# Masks and attention
# ----------------------------------------------------------------------------


def causal_mask(T: int, S: int | None = None, device=None) -> torch.Tensor:
    """Boolean mask ``(T, S)``, True where query ``i`` must not see key ``j``.

    The ``T`` queries are the *last* ``T`` of ``S`` positions (``S - T``
    positions are already in a key-value cache), so query ``i`` sits at
    position ``S - T + i`` and may see keys ``0 .. S - T + i``.
    ``S = None`` means ``S = T`` (no cache).
    """
    S = T if S is None else S
    if not isinstance(T, int) or T < 1 or not isinstance(S, int) or S < T:
        raise ValueError(f"need ints 1 <= T <= S, got T={T!r}, S={S!r}")
    i = torch.arange(T, device=device)[:, None] + (S - T)  # (T, 1) absolute query positions
    j = torch.arange(S, device=device)[None, :]  # (1, S)
    return j > i  # (T, S)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_h)) v, per head.

    Args:
        q ``(B, h, T, d_h)``; k, v ``(B, h, S, d_h)``;
        mask: broadcastable to ``(B, h, T, S)``; bool (True = blocked) or an
            additive float mask (``-inf`` = blocked).

    Returns: output ``(B, h, T, d_h)`` and weights ``(B, h, T, S)``.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, T, S)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            scores = scores + mask
    weights = torch.softmax(scores, dim=-1)  # (B, h, T, S)
    return weights @ v, weights  # (B, h, T, d_h)


class MultiheadAttention(nn.Module):
    """Multi-head attention with PyTorch's parameter names and an optional key-value cache.

    The queries, keys and values are projected by the three row blocks of
    ``in_proj_weight``, split into ``num_heads`` heads of width
    ``embed_dim / num_heads``, attended per head, concatenated, and mixed by
    ``out_proj``.

    Args:
        embed_dim: model width ``D``.
        num_heads: ``h``; must divide ``D``.
        bias: biases in the projections.
        batch_first: must be True (inputs are ``(B, T, D)``).
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = True):
        super().__init__()
        if not batch_first:
            raise ValueError("only batch_first=True is supported: pass (B, T, D) inputs")
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        # As PyTorch: Xavier for the stacked projections, zero biases.
        nn.init.xavier_uniform_(self.in_proj_weight)
        if bias:
            nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, -1).transpose(1, 2)  # (B, T, D) -> (B, h, T, d_h)

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None, past_kv=None):
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query ``(B, T, D)``; key, value ``(B, S, D)``.
            attn_mask: ``(T, S_total)`` bool (True = blocked) or additive float.
            key_padding_mask: ``(B, S_total)`` bool, True at padding.
            past_kv: ``(k, v)`` of earlier calls, each ``(B, h, P, d_h)``; the new
                keys and values are appended, so ``S_total = P + S``.

        Returns:
            output ``(B, T, D)``, weights ``(B, h, T, S_total)`` and the
            key-value cache ``(k, v)`` including this call's keys and values.
        """
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError("query, key and value must be (B, T, D) tensors (batch_first=True)")
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)  # (D, D) each
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q = self._split_heads(F.linear(query, w_q, b_q))  # (B, h, T, d_h)
        k = self._split_heads(F.linear(key, w_k, b_k))  # (B, h, S, d_h)
        v = self._split_heads(F.linear(value, w_v, b_v))  # (B, h, S, d_h)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)  # (B, h, P + S, d_h)
            v = torch.cat([past_kv[1], v], dim=2)
        mask = None
        if attn_mask is not None:
            mask = attn_mask  # (T, S_total) broadcasts over (B, h)
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]  # (B, 1, 1, S_total)
            if mask is None:
                mask = pad
            elif mask.dtype == torch.bool:
                mask = mask | pad
            else:
                mask = mask.masked_fill(pad, float("-inf"))
        out, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, h, T, d_h), (B, h, T, S)
        B, _, T, _ = out.shape
        out = out.transpose(1, 2).reshape(B, T, self.embed_dim)  # (B, T, D): heads side by side
        return self.out_proj(out), weights, (k, v)


# ----------------------------------------------------------------------------
# The blocks
# ----------------------------------------------------------------------------


def _check_layer_args(d_model, nhead, activation, batch_first):
    if not batch_first:
        raise ValueError("only batch_first=True is supported: pass (B, T, D) inputs")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if not isinstance(d_model, int) or not isinstance(nhead, int) or d_model < 1 or nhead < 1:
        raise ValueError(f"d_model and nhead must be positive ints, got {d_model!r} and {nhead!r}")


class TransformerEncoderLayer(nn.Module):
    """Self-attention and a position-wise feed-forward network, each with a residual and LayerNorm.

    A drop-in for ``nn.TransformerEncoderLayer(..., batch_first=True)``: same
    arguments, same parameter names, same output. ``norm_first=False``
    (post-norm, the original) normalises *after* each residual addition;
    ``norm_first=True`` (pre-norm) normalises the input of each sub-layer
    and leaves the residual path untouched.

    Args:
        d_model: width ``D``. nhead: heads ``h``. dim_feedforward: hidden width ``F`` of the FFN.
        dropout: on the attention output, inside the FFN and on the FFN output.
        activation: ``"relu"`` or ``"gelu"``. layer_norm_eps: LayerNorm's epsilon.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True):
        super().__init__()
        _check_layer_args(d_model, nhead, activation, batch_first)
        self.norm_first, self.activation = norm_first, activation
        self.self_attn = MultiheadAttention(d_model, nhead, bias=bias)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same two-layer MLP at every position: ``(B, T, D) -> (B, T, F) -> (B, T, D)``."""
        return self.linear2(self.dropout(_ACTIVATIONS[self.activation](self.linear1(x))))

    def forward_with_cache(self, x, attn_mask=None, key_padding_mask=None, past_kv=None):
        """One layer on ``x`` ``(B, T, D)``; returns ``(B, T, D)`` and the self-attention cache."""
        if self.norm_first:
            a, _, kv = self.self_attn(*(self.norm1(x),) * 3, attn_mask, key_padding_mask, past_kv)
            x = x + self.dropout1(a)  # the residual path carries x unchanged
            x = x + self.dropout2(self.feed_forward(self.norm2(x)))
        else:
            a, _, kv = self.self_attn(x, x, x, attn_mask, key_padding_mask, past_kv)
            x = self.norm1(x + self.dropout1(a))  # normalise the sum
            x = self.norm2(x + self.dropout2(self.feed_forward(x)))
        return x, kv

    def forward(self, src: torch.Tensor, src_mask=None, src_key_padding_mask=None,
                is_causal: bool = False) -> torch.Tensor:
        """Args as ``nn.TransformerEncoderLayer``: src ``(B, T, D)``, src_mask ``(T, T)``,
        src_key_padding_mask ``(B, T)``; ``is_causal=True`` without a mask builds the causal one.

        Returns: ``(B, T, D)``.
        """
        if is_causal and src_mask is None:
            src_mask = causal_mask(src.shape[1], device=src.device)
        return self.forward_with_cache(src, src_mask, src_key_padding_mask)[0]


class TransformerDecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder's memory, and an FFN.

    A drop-in for ``nn.TransformerDecoderLayer(..., batch_first=True)``;
    arguments as :class:`TransformerEncoderLayer`. The queries of the
    cross-attention come from the decoder, its keys and values from the
    memory. The last cross-attention weights ``(B, h, T, S)`` are kept in
    ``self.cross_weights`` for plotting.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True):
        super().__init__()
        _check_layer_args(d_model, nhead, activation, batch_first)
        self.norm_first, self.activation = norm_first, activation
        self.self_attn = MultiheadAttention(d_model, nhead, bias=bias)
        self.multihead_attn = MultiheadAttention(d_model, nhead, bias=bias)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.cross_weights = None

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D) -> (B, T, F) -> (B, T, D)``, the same MLP at every position."""
        return self.linear2(self.dropout(_ACTIVATIONS[self.activation](self.linear1(x))))

    def _cross(self, x, memory, memory_mask, memory_key_padding_mask):
        out, weights, _ = self.multihead_attn(x, memory, memory, memory_mask, memory_key_padding_mask)
        self.cross_weights = weights.detach()  # (B, h, T, S)
        return out

    def forward_with_cache(self, x, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                           memory_key_padding_mask=None, past_kv=None):
        """One layer on ``x`` ``(B, T, D)`` given ``memory`` ``(B, S, D)``.

        Returns ``(B, T, D)`` and the self-attention cache (the memory's keys
        and values are recomputed: the memory is short here).
        """
        if self.norm_first:
            h = self.norm1(x)
            a, _, kv = self.self_attn(h, h, h, tgt_mask, tgt_key_padding_mask, past_kv)
            x = x + self.dropout1(a)
            x = x + self.dropout2(self._cross(self.norm2(x), memory, memory_mask, memory_key_padding_mask))
            x = x + self.dropout3(self.feed_forward(self.norm3(x)))
        else:
            a, _, kv = self.self_attn(x, x, x, tgt_mask, tgt_key_padding_mask, past_kv)
            x = self.norm1(x + self.dropout1(a))
            x = self.norm2(x + self.dropout2(self._cross(x, memory, memory_mask, memory_key_padding_mask)))
            x = self.norm3(x + self.dropout3(self.feed_forward(x)))
        return x, kv

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> torch.Tensor:
        """Args as ``nn.TransformerDecoderLayer``: tgt ``(B, T, D)``, memory ``(B, S, D)``,
        tgt_mask ``(T, T)``, memory_mask ``(T, S)``, padding masks ``(B, T)`` / ``(B, S)``.

        Returns: ``(B, T, D)``.
        """
        if tgt_is_causal and tgt_mask is None:
            tgt_mask = causal_mask(tgt.shape[1], device=tgt.device)
        if memory_is_causal and memory_mask is None:
            memory_mask = causal_mask(tgt.shape[1], memory.shape[1], device=tgt.device)
        return self.forward_with_cache(tgt, memory, tgt_mask, memory_mask, tgt_key_padding_mask,
                                       memory_key_padding_mask)[0]


# ----------------------------------------------------------------------------
# An encoder-decoder with the seq2seq interface
# ----------------------------------------------------------------------------


class TransformerSeq2SeqEncoder(Encoder):
    """Token embedding + sinusoidal positions + ``num_layers`` encoder layers.

    ``nn.Embedding`` starts at unit variance, the scale of the encoding's
    entries, so the embedding is not multiplied by ``sqrt(D)`` as in the
    original paper (a factor that suits embeddings initialised with variance
    ``1/D``; with unit variance it would drown the positions).

    Returns the memory ``(B, S, D)`` and the source padding mask ``(B, S)``
    (True at padding), which the decoder's cross-attention needs.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 128, dropout: float = 0.0, norm_first: bool = True, max_len: int = 64):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(max_len, d_model)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, norm_first=norm_first)
            for _ in range(num_layers))
        # Pre-norm leaves the residual stream unnormalised: normalise it once at the end.
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()

    def forward(self, X, valid_len):
        """Args: X ``(B, S)``, valid_len ``(B,)``. Returns ``(memory (B, S, D), pad_mask (B, S))``."""
        _check_batch(X, valid_len)
        pad_mask = ~sequence_mask(valid_len, X.shape[1])  # (B, S), True at padding
        x = self.pos(self.embedding(X))  # (B, S, D)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad_mask)
        return self.norm(x), pad_mask


class TransformerSeq2SeqDecoder(Decoder):
    """Embedding + positions + ``num_layers`` decoder layers + a linear head.

    The state is ``(memory, pad_mask, caches)``: ``caches`` holds every
    layer's self-attention keys and values so far, so the decoder can be
    called on a whole teacher-forced target (training) or one token at a
    time (greedy and beam search) with the same results. The cross-attention
    weights of the last layer, averaged over heads, are kept in
    ``self.attention_weights`` ``(B, T, S)``.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 128, dropout: float = 0.0, norm_first: bool = True, max_len: int = 64):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(max_len, d_model)
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, norm_first=norm_first)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.head = nn.Linear(d_model, vocab_size)
        self.attention_weights = None

    def init_state(self, enc_outputs, valid_len):
        memory, pad_mask = enc_outputs
        return memory, pad_mask, [None] * len(self.layers)

    def forward(self, Y_in, state):
        memory, pad_mask, caches = state
        P = 0 if caches[0] is None else caches[0][0].shape[2]  # tokens already decoded
        T = Y_in.shape[1]
        x = self.pos(self.embedding(Y_in), offset=P)  # (B, T, D)
        mask = causal_mask(T, P + T, device=Y_in.device)  # (T, P + T)
        new_caches = []
        for layer, past in zip(self.layers, caches):
            x, kv = layer.forward_with_cache(x, memory, tgt_mask=mask, memory_key_padding_mask=pad_mask,
                                             past_kv=past)
            new_caches.append(kv)
        self.attention_weights = self.layers[-1].cross_weights.mean(dim=1)  # (B, T, S)
        return self.head(self.norm(x)), (memory, pad_mask, new_caches)  # (B, T, V)

    def reorder_state(self, state, index):
        memory, pad_mask, caches = state
        caches = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                  for kv in caches]
        return memory.index_select(0, index), pad_mask.index_select(0, index), caches


def transformer_seq2seq(src_vocab_size: int, tgt_vocab_size: int, d_model: int = 64, nhead: int = 4,
                        num_layers: int = 2, dim_feedforward: int = 128, dropout: float = 0.0,
                        norm_first: bool = True, max_len: int = 64) -> EncoderDecoder:
    """A Transformer encoder-decoder behind :class:`seqcourse.seq2seq.EncoderDecoder`."""
    kw = dict(d_model=d_model, nhead=nhead, num_layers=num_layers, dim_feedforward=dim_feedforward,
              dropout=dropout, norm_first=norm_first, max_len=max_len)
    return EncoderDecoder(TransformerSeq2SeqEncoder(src_vocab_size, **kw),
                          TransformerSeq2SeqDecoder(tgt_vocab_size, **kw))


# ----------------------------------------------------------------------------
# A decoder-only language model
# ----------------------------------------------------------------------------


class TransformerLM(nn.Module):
    """A GPT-style character model: embedding + positions + causal encoder layers + head.

    Follows the :mod:`seqcourse.lm` interface, ``logits, state = model(X, state)``,
    with ``state`` always ``None``: a Transformer carries no state between
    windows; it sees at most ``max_len`` tokens.

    Args:
        vocab_size: ``V``. d_model, nhead, num_layers, dim_feedforward, dropout, norm_first:
            as :class:`TransformerEncoderLayer` (``num_layers`` = ``L``).
        max_len: longest context.
        learned_positions: learned position embeddings (True) or the sinusoidal table.
        causal: apply the causal mask. ``False`` lets every position see the
            future; only for showing what goes wrong.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, nhead: int = 4, num_layers: int = 2,
                 dim_feedforward: int = 256, dropout: float = 0.0, norm_first: bool = True,
                 max_len: int = 128, learned_positions: bool = True, causal: bool = True):
        super().__init__()
        self.vocab_size, self.max_len, self.causal = vocab_size, max_len, causal
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(max_len, d_model, learned=learned_positions)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, norm_first=norm_first)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.head = nn.Linear(d_model, vocab_size)

    def step(self, X: torch.Tensor, past=None):
        """Logits for ``X`` ``(B, T)`` given the cache ``past`` (a list of per-layer ``(k, v)`` or None).

        Returns: logits ``(B, T, V)`` and the cache extended by ``X``.
        """
        if X.dim() != 2:
            raise ValueError(f"X must be (B, T) token ids, got shape {tuple(X.shape)}")
        past = past or [None] * len(self.layers)
        P = 0 if past[0] is None else past[0][0].shape[2]
        T = X.shape[1]
        x = self.pos(self.embedding(X), offset=P)  # (B, T, D)
        mask = causal_mask(T, P + T, device=X.device) if self.causal else None  # (T, P + T)
        present = []
        for layer, kv in zip(self.layers, past):
            x, kv = layer.forward_with_cache(x, attn_mask=mask, past_kv=kv)
            present.append(kv)
        return self.head(self.norm(x)), present  # (B, T, V)

    def forward(self, X: torch.Tensor, state=None):
        """Args: X ``(B, T)``; state: must be None. Returns logits ``(B, T, V)`` and ``None``."""
        if state is not None:
            raise ValueError("TransformerLM carries no state between calls; pass state=None "
                             "(use step(X, past) for a key-value cache)")
        return self.step(X)[0], None

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, num_tokens: int, use_cache: bool = True,
                 temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``prefix`` by ``num_tokens`` tokens.

        With ``use_cache`` each new token runs through the network alone,
        attending to the cached keys and values of all earlier tokens; without
        it, the whole sequence so far is run again at every step. Both give
        the same tokens.

        Args:
            prefix: ``(T,)`` or ``(B, T)`` token ids, ``T >= 1``.
            num_tokens: tokens to add; ``T + num_tokens <= max_len``.
            temperature: 0 is greedy; otherwise sample from ``softmax(logits / temperature)``.

        Returns: ``(B, T + num_tokens)`` (or ``(T + num_tokens,)`` for a 1-D prefix).
        """
        squeeze = prefix.dim() == 1
        ids = prefix.unsqueeze(0) if squeeze else prefix  # (B, T)
        if ids.dim() != 2 or ids.shape[1] < 1:
            raise ValueError(f"prefix must be (T,) or (B, T) with T >= 1, got shape {tuple(prefix.shape)}")
        if ids.shape[1] + num_tokens > self.max_len:
            raise ValueError(f"prefix ({ids.shape[1]}) + num_tokens ({num_tokens}) exceeds max_len="
                             f"{self.max_len}; generate fewer tokens or build a longer model")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        was_training = self.training
        self.eval()
        logits, past = self.step(ids)  # (B, T, V): the prefix in one call
        for i in range(num_tokens):
            last = logits[:, -1]  # (B, V)
            if temperature == 0:
                nxt = last.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                probs = torch.softmax(last.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)  # (B, 1)
            ids = torch.cat([ids, nxt], dim=1)  # (B, T + 1)
            if i == num_tokens - 1:
                break  # no logits needed after the last token
            if use_cache:
                logits, past = self.step(nxt, past)  # one new query; keys and values from the cache
            else:
                logits, _ = self.step(ids)  # recompute every position
        self.train(was_training)
        return ids.squeeze(0) if squeeze else ids
