"""Attention in plain numpy (float64), written to be read line by line.

Conventions: vectors are rows, so a projection is ``X @ W`` with ``W`` of
shape ``(in, out)``. Batched arrays are ``(B, T, D)``: ``B`` sequences,
``T`` positions, ``D`` features. Queries have ``Tq`` positions and keys /
values ``Tk`` positions. Masks say which keys a query may look at.

These functions are references for understanding and for checking other
implementations; the trainable models of the course use PyTorch.
"""

from __future__ import annotations

import numpy as np


def _f64(x, name: str, ndim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def softmax(scores, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (the maximum is subtracted first)."""
    scores = _f64(scores, "scores")
    z = scores - scores.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_where(scores, keep) -> np.ndarray:
    """Softmax over the last axis, restricted to the positions where ``keep`` is True.

    Args:
        scores: ``(..., Tk)`` attention scores.
        keep: boolean array broadcastable to ``scores``.

    Returns:
        Weights of the same shape; every position with ``keep=False`` is
        exactly 0 (its score is replaced by ``-inf`` and ``exp(-inf) = 0``).
    """
    scores = _f64(scores, "scores")
    keep = np.broadcast_to(np.asarray(keep, dtype=bool), scores.shape)
    if not keep.any(axis=-1).all():
        raise ValueError("some query may look at no key at all (a row of the mask is all False); "
                         "every query needs at least one valid key")
    return softmax(np.where(keep, scores, -np.inf))


def length_mask(valid_lens, num_keys: int) -> np.ndarray:
    """Boolean mask ``(..., Tk)``: key ``j`` is kept when ``j < valid_len``.

    Args:
        valid_lens: ``(B,)`` (one length per sequence) or ``(B, Tq)`` (one per query).
        num_keys: ``Tk``.

    Returns:
        ``(B, 1, Tk)`` for ``(B,)`` lengths, ``(B, Tq, Tk)`` for ``(B, Tq)`` lengths.
    """
    valid_lens = np.asarray(valid_lens)
    if not np.issubdtype(valid_lens.dtype, np.integer):
        raise TypeError(f"valid_lens must hold integers, got dtype {valid_lens.dtype}")
    if valid_lens.ndim == 1:
        valid_lens = valid_lens[:, None]  # (B, 1)
    elif valid_lens.ndim != 2:
        raise ValueError(f"valid_lens must be (B,) or (B, Tq), got shape {valid_lens.shape}")
    if (valid_lens < 1).any() or (valid_lens > num_keys).any():
        raise ValueError(f"valid lengths must lie in 1..{num_keys}, got {valid_lens.ravel().tolist()}")
    return np.arange(num_keys) < valid_lens[..., None]  # (B, Tq or 1, Tk)


def masked_softmax(scores, valid_lens=None) -> np.ndarray:
    """Softmax over keys that ignores padding.

    Args:
        scores: ``(B, Tq, Tk)``.
        valid_lens: ``None`` (no padding), ``(B,)`` or ``(B, Tq)`` integers.

    Returns:
        ``(B, Tq, Tk)`` weights; keys at or beyond the valid length get exactly 0.
    """
    scores = _f64(scores, "scores", 3)
    if valid_lens is None:
        return softmax(scores)
    return softmax_where(scores, length_mask(valid_lens, scores.shape[-1]))


def additive_attention(queries, keys, values, W_q, W_k, w_v, valid_lens=None):
    """Additive ("concat") attention: ``score(q, k) = w_v · tanh(q W_q + k W_k)``.

    Args:
        queries: ``(B, Tq, Dq)``.
        keys: ``(B, Tk, Dk)``.
        values: ``(B, Tk, Dv)``.
        W_q: ``(Dq, A)``, W_k: ``(Dk, A)``, w_v: ``(A,)`` with ``A`` the attention width.
        valid_lens: optional ``(B,)`` or ``(B, Tq)`` valid key counts.

    Returns:
        ``(output (B, Tq, Dv), weights (B, Tq, Tk))``.
    """
    queries = _f64(queries, "queries", 3)
    keys = _f64(keys, "keys", 3)
    values = _f64(values, "values", 3)
    if keys.shape[:2] != values.shape[:2] or queries.shape[0] != keys.shape[0]:
        raise ValueError(f"keys and values need the same (B, Tk) and queries the same B; got "
                         f"{queries.shape}, {keys.shape}, {values.shape}")
    qp = queries @ W_q  # (B, Tq, A)
    kp = keys @ W_k  # (B, Tk, A)
    features = np.tanh(qp[:, :, None, :] + kp[:, None, :, :])  # (B, Tq, 1, A) + (B, 1, Tk, A) -> (B, Tq, Tk, A)
    scores = features @ np.asarray(w_v, dtype=np.float64)  # (B, Tq, Tk)
    weights = masked_softmax(scores, valid_lens)  # (B, Tq, Tk)
    return weights @ values, weights  # (B, Tq, Dv), (B, Tq, Tk)


def scaled_dot_product_attention(queries, keys, values, valid_lens=None, keep=None, scale: bool = True):
    """``softmax(Q K^T / sqrt(d)) V``, with optional padding masks.

    Args:
        queries: ``(..., Tq, d)``; keys: ``(..., Tk, d)``; values: ``(..., Tk, Dv)``.
        valid_lens: optional ``(B,)`` or ``(B, Tq)`` valid key counts (3-D inputs only).
        keep: optional boolean mask broadcastable to ``(..., Tq, Tk)``; False hides a key.
        scale: divide the scores by ``sqrt(d)`` (set False only to see why it is needed).

    Returns:
        ``(output (..., Tq, Dv), weights (..., Tq, Tk))``.
    """
    queries, keys, values = (_f64(a, n) for a, n in ((queries, "queries"), (keys, "keys"), (values, "values")))
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"queries and keys need the same feature size d, got {queries.shape[-1]} and {keys.shape[-1]}")
    scores = queries @ np.swapaxes(keys, -1, -2)  # (..., Tq, d) @ (..., d, Tk) -> (..., Tq, Tk)
    if scale:
        scores = scores / np.sqrt(queries.shape[-1])
    mask = np.ones(scores.shape, dtype=bool)
    if valid_lens is not None:
        if scores.ndim != 3:
            raise ValueError("valid_lens works with (B, T, d) inputs; use keep= for other shapes")
        mask = mask & length_mask(valid_lens, scores.shape[-1])
    if keep is not None:
        mask = mask & np.asarray(keep, dtype=bool)
    weights = softmax_where(scores, mask)  # (..., Tq, Tk)
    return weights @ values, weights  # (..., Tq, Dv)


def split_heads(X, num_heads: int) -> np.ndarray:
    """``(B, T, D)`` -> ``(B, h, T, D/h)``: head ``i`` gets features ``i*D/h .. (i+1)*D/h``."""
    X = _f64(X, "X", 3)
    B, T, D = X.shape
    if D % num_heads:
        raise ValueError(f"model width {D} is not divisible by num_heads={num_heads}; pick a divisor of {D}")
    return X.reshape(B, T, num_heads, D // num_heads).transpose(0, 2, 1, 3)  # (B, T, h, D/h) -> (B, h, T, D/h)


def merge_heads(X) -> np.ndarray:
    """``(B, h, T, D/h)`` -> ``(B, T, D)``, the inverse of :func:`split_heads`."""
    X = _f64(X, "X", 4)
    B, h, T, Dh = X.shape
    return X.transpose(0, 2, 1, 3).reshape(B, T, h * Dh)  # (B, T, h, D/h) -> (B, T, D)


def mha_params_from_torch(mha) -> dict:
    """Copy the weights of a ``torch.nn.MultiheadAttention`` into float64 arrays, in row-vector layout.

    PyTorch stores ``in_proj_weight`` ``(3D, D)`` with rows ``[W_q; W_k; W_v]``
    and computes ``x @ W.T``; here the blocks are transposed once so that the
    numpy code reads ``x @ W``.

    Returns:
        ``{"W_q", "W_k", "W_v", "W_o"}`` each ``(D, D)`` and ``{"b_q", "b_k", "b_v", "b_o"}`` each ``(D,)``.
    """
    if getattr(mha, "in_proj_weight", None) is None:
        raise ValueError("this MultiheadAttention has separate q/k/v weights (kdim/vdim set); "
                         "build it with kdim = vdim = embed_dim")
    W = mha.in_proj_weight.detach().double().cpu().numpy()  # (3D, D)
    D = W.shape[1]
    if mha.in_proj_bias is not None:
        b = mha.in_proj_bias.detach().double().cpu().numpy()  # (3D,)
    else:
        b = np.zeros(3 * D)
    bo = mha.out_proj.bias
    return {
        "W_q": W[:D].T, "W_k": W[D:2 * D].T, "W_v": W[2 * D:].T,  # each (D, D), row-vector layout
        "b_q": b[:D], "b_k": b[D:2 * D], "b_v": b[2 * D:],
        "W_o": mha.out_proj.weight.detach().double().cpu().numpy().T,  # (D, D)
        "b_o": np.zeros(D) if bo is None else bo.detach().double().cpu().numpy(),
    }


def multi_head_attention(query, key, value, params: dict, num_heads: int, key_padding_mask=None):
    """Multi-head attention with the same arithmetic as ``nn.MultiheadAttention(batch_first=True)``.

    Args:
        query: ``(B, Tq, D)``; key, value: ``(B, Tk, D)``.
        params: projections as returned by :func:`mha_params_from_torch`.
        num_heads: ``h``; each head works in ``D/h`` dimensions.
        key_padding_mask: optional ``(B, Tk)`` bool, True marks padding to ignore
            (PyTorch's convention).

    Returns:
        ``(output (B, Tq, D), weights (B, h, Tq, Tk))``; PyTorch's default
        returned weights are ``weights.mean(axis=1)``.
    """
    query, key, value = _f64(query, "query", 3), _f64(key, "key", 3), _f64(value, "value", 3)
    missing = {"W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o"} - set(params)
    if missing:
        raise ValueError(f"params lacks {sorted(missing)}; build it with mha_params_from_torch")
    Q = split_heads(query @ params["W_q"] + params["b_q"], num_heads)  # (B, h, Tq, D/h)
    K = split_heads(key @ params["W_k"] + params["b_k"], num_heads)  # (B, h, Tk, D/h)
    V = split_heads(value @ params["W_v"] + params["b_v"], num_heads)  # (B, h, Tk, D/h)
    keep = None
    if key_padding_mask is not None:
        kpm = np.asarray(key_padding_mask, dtype=bool)
        if kpm.shape != (key.shape[0], key.shape[1]):
            raise ValueError(f"key_padding_mask must be (B, Tk) = {key.shape[:2]}, got {kpm.shape}")
        keep = ~kpm[:, None, None, :]  # (B, 1, 1, Tk)
    heads, weights = scaled_dot_product_attention(Q, K, V, keep=keep)  # (B, h, Tq, D/h), (B, h, Tq, Tk)
    out = merge_heads(heads) @ params["W_o"] + params["b_o"]  # (B, Tq, D)
    return out, weights


def softmax_jacobian(p) -> np.ndarray:
    """Jacobian of softmax at output ``p`` ``(..., n)``: ``diag(p) - p p^T``; returns ``(..., n, n)``.

    Its size tells how much gradient flows back through the softmax; it
    vanishes when ``p`` is one-hot (a saturated softmax).
    """
    p = _f64(p, "p")
    return p[..., :, None] * np.eye(p.shape[-1]) - p[..., :, None] * p[..., None, :]  # (..., n, n)
