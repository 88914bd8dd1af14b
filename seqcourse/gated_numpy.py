"""LSTM and GRU cells from scratch in NumPy (float64), one named matrix per gate.

The layout here is deliberately *not* PyTorch's.  PyTorch fuses the gates:
``nn.LSTM.weight_ih_l0`` is one ``(4H, I)`` matrix whose row blocks are the
gates ``i, f, g, o``, applied as ``x @ W.T``.  Here every gate has its own
matrices in the row-vector convention, ``x @ W_xi`` with ``W_xi`` of shape
``(I, H)``, and one bias per gate, so that each line of code reads like one
line of the equations::

    i = sigmoid(x @ W_xi + h @ W_hi + b_i)

Shapes: ``B`` batch, ``T`` time steps, ``I`` input features, ``H`` hidden
units.  Sequences are time-major, ``X`` of shape ``(T, B, I)``, as in
``nn.LSTM`` with ``batch_first=False``.

The converters :func:`lstm_params_from_torch` / :func:`lstm_params_to_torch`
(and the GRU twins) move weights between the two layouts, so the NumPy code
can be checked against ``torch.nn`` to rounding error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

LSTM_GATES = ("i", "f", "g", "o")  # order of PyTorch's row blocks in weight_ih_l0
GRU_GATES = ("r", "z", "n")  # order of PyTorch's row blocks in nn.GRU's weight_ih_l0

LSTM_PARAM_NAMES = tuple(f"{w}{g}" for g in LSTM_GATES for w in ("W_x", "W_h", "b_"))
GRU_PARAM_NAMES = ("W_xr", "W_hr", "b_r", "W_xz", "W_hz", "b_z", "W_xn", "W_hn", "b_xn", "b_hn")


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------


def sigmoid(a: np.ndarray) -> np.ndarray:
    """The logistic function, written so that large negative ``a`` does not overflow."""
    a = np.asarray(a, dtype=np.float64)
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    ea = np.exp(a[~pos])
    out[~pos] = ea / (1.0 + ea)
    return out


def _check_params(params, names: tuple[str, ...], kind: str) -> tuple[int, int]:
    """Validate a parameter dict and return ``(input_size, hidden_size)``."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{kind} params must be a dict of NumPy arrays, got {type(params).__name__}")
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"{kind} params lack {missing}; build them with init_{kind}_params "
                         f"or {kind}_params_from_torch")
    first_x = params[names[0]]
    if np.ndim(first_x) != 2:
        raise ValueError(f"{names[0]} must be a 2-D (I, H) matrix, got shape {np.shape(first_x)}")
    input_size, hidden_size = np.shape(first_x)
    for n in names:
        expected = {"W_x": (input_size, hidden_size), "W_h": (hidden_size, hidden_size)}.get(n[:3], (hidden_size,))
        if np.shape(params[n]) != expected:
            raise ValueError(f"{kind} param {n} has shape {np.shape(params[n])}, expected {expected} "
                             f"(weights are (in, out) matrices: x @ W)")
    return input_size, hidden_size


def _as_batch(name: str, a, shape_tail: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != shape_tail:
        raise ValueError(f"{name} must have shape (B, {shape_tail}), got {a.shape}")
    return a


def _as_sequence(X, input_size: int) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or X.shape[2] != input_size:
        raise ValueError(f"X must be time-major with shape (T, B, {input_size}), got {X.shape}; "
                         f"transpose a batch-first array with X.transpose(1, 0, 2)")
    if X.shape[0] == 0:
        raise ValueError("X has no time steps (T = 0)")
    return X


# ----------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, shape, hidden_size: int) -> np.ndarray:
    # PyTorch's default for recurrent layers: U(-1/sqrt(H), 1/sqrt(H)).
    bound = 1.0 / np.sqrt(hidden_size)
    return rng.uniform(-bound, bound, size=shape)


def _check_sizes(input_size, hidden_size) -> None:
    for name, val in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")


def init_lstm_params(input_size: int, hidden_size: int, rng: np.random.Generator | None = None
                     ) -> dict[str, np.ndarray]:
    """Random LSTM parameters, one named array per gate.

    Returns a dict with, for each gate ``q`` in ``i, f, g, o``: ``W_xq``
    ``(I, H)``, ``W_hq`` ``(H, H)`` and ``b_q`` ``(H,)``.
    """
    _check_sizes(input_size, hidden_size)
    rng = rng if rng is not None else np.random.default_rng(0)
    params = {}
    for q in LSTM_GATES:
        params[f"W_x{q}"] = _uniform(rng, (input_size, hidden_size), hidden_size)
        params[f"W_h{q}"] = _uniform(rng, (hidden_size, hidden_size), hidden_size)
        params[f"b_{q}"] = _uniform(rng, (hidden_size,), hidden_size)
    return params


def init_gru_params(input_size: int, hidden_size: int, rng: np.random.Generator | None = None
                    ) -> dict[str, np.ndarray]:
    """Random GRU parameters, one named array per gate.

    Returns ``W_xr, W_xz, W_xn`` ``(I, H)``, ``W_hr, W_hz, W_hn`` ``(H, H)``
    and the biases ``b_r, b_z, b_xn, b_hn`` ``(H,)``.  The candidate has two
    biases because the reset gate multiplies ``h @ W_hn + b_hn`` only.
    """
    _check_sizes(input_size, hidden_size)
    rng = rng if rng is not None else np.random.default_rng(0)
    params = {}
    for n in GRU_PARAM_NAMES:
        shape = {"W_x": (input_size, hidden_size), "W_h": (hidden_size, hidden_size)}.get(n[:3], (hidden_size,))
        params[n] = _uniform(rng, shape, hidden_size)
    return params


# ----------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------


def lstm_cell(x, state, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step.

    Args:
        x: input at this step, ``(B, I)``.
        state: ``(h, c)``, each ``(B, H)``.
        params: dict from :func:`init_lstm_params` or :func:`lstm_params_from_torch`.

    Returns:
        The new ``(h, c)``, each ``(B, H)``.
    """
    I, H = _check_params(params, LSTM_PARAM_NAMES, "lstm")
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError("state must be a pair (h, c) of (B, H) arrays")
    x = _as_batch("x", x, I)
    h, c = _as_batch("h", state[0], H), _as_batch("c", state[1], H)
    p = params
    i = sigmoid(x @ p["W_xi"] + h @ p["W_hi"] + p["b_i"])  # input gate: how much of g to write
    f = sigmoid(x @ p["W_xf"] + h @ p["W_hf"] + p["b_f"])  # forget gate: how much of c to keep
    g = np.tanh(x @ p["W_xg"] + h @ p["W_hg"] + p["b_g"])  # candidate cell content
    o = sigmoid(x @ p["W_xo"] + h @ p["W_ho"] + p["b_o"])  # output gate: how much of c to show
    c_new = f * c + i * g  # the INPUT gate scales the candidate; o plays no part here
    h_new = o * np.tanh(c_new)
    return h_new, c_new


def lstm_forward(X, params: dict, state=None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Run :func:`lstm_cell` over a whole sequence.

    Args:
        X: inputs ``(T, B, I)``, time-major.
        params: LSTM parameter dict.
        state: initial ``(h0, c0)``, each ``(B, H)``; zeros when ``None``.

    Returns:
        ``outputs`` ``(T, B, H)`` (the ``h`` of every step) and the final
        ``(h_T, c_T)``, each ``(B, H)``.
    """
    I, H = _check_params(params, LSTM_PARAM_NAMES, "lstm")
    X = _as_sequence(X, I)
    if state is None:
        state = (np.zeros((X.shape[1], H)), np.zeros((X.shape[1], H)))
    outputs = []
    for x in X:  # x: (B, I)
        state = lstm_cell(x, state, params)
        outputs.append(state[0])
    return np.stack(outputs), state  # (T, B, H)


# ----------------------------------------------------------------------------
# GRU
# ----------------------------------------------------------------------------


def gru_cell(x, h, params: dict, reset: str = "after", z_weights: str = "old") -> np.ndarray:
    """One GRU step.

    Args:
        x: input at this step, ``(B, I)``.
        h: previous hidden state, ``(B, H)``.
        params: dict from :func:`init_gru_params` or :func:`gru_params_from_torch`.
        reset: where the reset gate acts.  ``"after"`` (PyTorch, cuDNN):
            ``n = tanh(x W_xn + b_xn + r * (h W_hn + b_hn))``.  ``"before"``
            (the form of many textbooks): ``n = tanh(x W_xn + b_xn + (r * h) W_hn + b_hn)``.
            The two are different functions of the same weights.
        z_weights: which term the update gate multiplies.  ``"old"``
            (PyTorch): ``h' = z * h + (1 - z) * n``.  ``"new"``:
            ``h' = (1 - z) * h + z * n``.  They are the same model up to
            ``z -> 1 - z`` (see :func:`flip_update_gate`).

    Returns:
        The new hidden state ``(B, H)``.
    """
    I, H = _check_params(params, GRU_PARAM_NAMES, "gru")
    if reset not in ("after", "before"):
        raise ValueError(f"reset must be 'after' (PyTorch) or 'before', got {reset!r}")
    if z_weights not in ("old", "new"):
        raise ValueError(f"z_weights must be 'old' (PyTorch) or 'new', got {z_weights!r}")
    x, h = _as_batch("x", x, I), _as_batch("h", h, H)
    p = params
    r = sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])  # reset gate
    z = sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])  # update gate
    if reset == "after":
        n = np.tanh(x @ p["W_xn"] + p["b_xn"] + r * (h @ p["W_hn"] + p["b_hn"]))
    else:
        n = np.tanh(x @ p["W_xn"] + p["b_xn"] + (r * h) @ p["W_hn"] + p["b_hn"])
    if z_weights == "old":
        return z * h + (1.0 - z) * n
    return (1.0 - z) * h + z * n


def gru_forward(X, params: dict, h0=None, reset: str = "after", z_weights: str = "old"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`gru_cell` over a whole sequence.

    Args:
        X: inputs ``(T, B, I)``, time-major.
        params: GRU parameter dict.
        h0: initial state ``(B, H)``; zeros when ``None``.
        reset, z_weights: as in :func:`gru_cell`.

    Returns:
        ``outputs`` ``(T, B, H)`` and the final state ``h_T`` ``(B, H)``.
    """
    I, H = _check_params(params, GRU_PARAM_NAMES, "gru")
    X = _as_sequence(X, I)
    h = np.zeros((X.shape[1], H)) if h0 is None else h0
    outputs = []
    for x in X:  # x: (B, I)
        h = gru_cell(x, h, params, reset=reset, z_weights=z_weights)
        outputs.append(h)
    return np.stack(outputs), h  # (T, B, H)


def flip_update_gate(params: dict) -> dict:
    """Parameters for the other update convention: negate the z-gate weights and bias.

    Since ``1 - sigmoid(a) = sigmoid(-a)``, negating everything that feeds
    the update gate turns ``z`` into ``1 - z``; a GRU run with
    ``z_weights="new"`` on the flipped parameters equals one run with
    ``z_weights="old"`` on the originals (and vice versa).
    """
    _check_params(params, GRU_PARAM_NAMES, "gru")
    flipped = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    for k in ("W_xz", "W_hz", "b_z"):
        flipped[k] = -flipped[k]
    return flipped


# ----------------------------------------------------------------------------
# Converters to and from torch.nn
# ----------------------------------------------------------------------------


def _state_dict(module_or_state) -> Mapping:
    if isinstance(module_or_state, Mapping):
        return module_or_state
    if hasattr(module_or_state, "state_dict"):
        return module_or_state.state_dict()
    raise TypeError(f"expected an nn.LSTM/nn.GRU or its state_dict, got {type(module_or_state).__name__}")


def _fused(sd: Mapping, layer: int, reverse: bool, num_gates: int, kind: str):
    """Fetch PyTorch's four fused tensors of one layer as float64 NumPy arrays."""
    if not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = [f"weight_ih{suffix}", f"weight_hh{suffix}", f"bias_ih{suffix}", f"bias_hh{suffix}"]
    missing = [n for n in names if n not in sd]
    if missing:
        raise ValueError(f"state_dict has no {missing}: check layer/reverse, and note that "
                         f"bias=False and proj_size>0 {kind} modules are not supported")
    w_ih, w_hh, b_ih, b_hh = (sd[n].detach().cpu().double().numpy() for n in names)
    if w_ih.shape[0] % num_gates or w_ih.shape[0] // num_gates != w_hh.shape[1]:
        raise ValueError(f"weight_ih{suffix} has shape {w_ih.shape}; this is not an {kind} layer "
                         f"({num_gates} gates expected)")
    return w_ih, w_hh, b_ih, b_hh


def lstm_params_from_torch(module_or_state, layer: int = 0, reverse: bool = False) -> dict[str, np.ndarray]:
    """Copy one layer of an ``nn.LSTM`` into the per-gate NumPy layout.

    PyTorch stores ``weight_ih_l{k}`` ``(4H, I)``, ``weight_hh_l{k}`` ``(4H, H)``
    and two biases ``(4H,)``, with row blocks in the gate order ``i, f, g, o``.
    Block ``q`` is transposed to ``W_xq`` ``(I, H)`` / ``W_hq`` ``(H, H)``, and
    the two biases are summed (they always appear added together).

    Args:
        module_or_state: an ``nn.LSTM`` or its ``state_dict()``.
        layer: which layer ``k`` to copy.
        reverse: copy the backward direction of a bidirectional LSTM.
    """
    w_ih, w_hh, b_ih, b_hh = _fused(_state_dict(module_or_state), layer, reverse, 4, "LSTM")
    H = w_hh.shape[1]
    params = {}
    for k, q in enumerate(LSTM_GATES):
        rows = slice(k * H, (k + 1) * H)  # block k of the fused matrices
        params[f"W_x{q}"] = w_ih[rows].T.copy()  # (I, H)
        params[f"W_h{q}"] = w_hh[rows].T.copy()  # (H, H)
        params[f"b_{q}"] = b_ih[rows] + b_hh[rows]  # (H,)
    return params


def lstm_params_to_torch(params: dict, module, layer: int = 0, reverse: bool = False) -> None:
    """Write per-gate NumPy parameters into one layer of an ``nn.LSTM`` (in place).

    The whole bias goes into ``bias_ih``; ``bias_hh`` is set to zero.
    """
    _write_torch(params, module, layer, reverse, LSTM_GATES, "lstm")


def gru_params_from_torch(module_or_state, layer: int = 0, reverse: bool = False) -> dict[str, np.ndarray]:
    """Copy one layer of an ``nn.GRU`` into the per-gate NumPy layout.

    PyTorch's row blocks are in the order ``r, z, n``.  The ``r`` and ``z``
    biases are summed; the candidate keeps two biases, ``b_xn`` (from
    ``bias_ih``) and ``b_hn`` (from ``bias_hh``), because the reset gate
    multiplies ``h @ W_hn + b_hn`` only.

    Args:
        module_or_state: an ``nn.GRU`` or its ``state_dict()``.
        layer: which layer to copy.
        reverse: copy the backward direction of a bidirectional GRU.
    """
    w_ih, w_hh, b_ih, b_hh = _fused(_state_dict(module_or_state), layer, reverse, 3, "GRU")
    H = w_hh.shape[1]
    blocks = {q: slice(k * H, (k + 1) * H) for k, q in enumerate(GRU_GATES)}
    params = {}
    for q in GRU_GATES:
        params[f"W_x{q}"] = w_ih[blocks[q]].T.copy()  # (I, H)
        params[f"W_h{q}"] = w_hh[blocks[q]].T.copy()  # (H, H)
    for q in ("r", "z"):
        params[f"b_{q}"] = b_ih[blocks[q]] + b_hh[blocks[q]]  # (H,)
    params["b_xn"] = b_ih[blocks["n"]].copy()
    params["b_hn"] = b_hh[blocks["n"]].copy()
    return {n: params[n] for n in GRU_PARAM_NAMES}


def gru_params_to_torch(params: dict, module, layer: int = 0, reverse: bool = False) -> None:
    """Write per-gate NumPy parameters into one layer of an ``nn.GRU`` (in place)."""
    _write_torch(params, module, layer, reverse, GRU_GATES, "gru")


def _write_torch(params, module, layer, reverse, gates, kind) -> None:
    import torch

    names = LSTM_PARAM_NAMES if kind == "lstm" else GRU_PARAM_NAMES
    I, H = _check_params(params, names, kind)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be an nn.{kind.upper()}, got {type(module).__name__}")
    w_ih, w_hh, _, _ = _fused(module.state_dict(), layer, reverse, len(gates), kind.upper())
    if w_ih.shape != (len(gates) * H, I) or w_hh.shape != (len(gates) * H, H):
        raise ValueError(f"params are for input_size={I}, hidden_size={H}, but layer {layer} of the "
                         f"module has weight_ih {w_ih.shape}; build the module with matching sizes")
    new_ih = np.concatenate([params[f"W_x{q}"].T for q in gates])  # (G*H, I)
    new_hh = np.concatenate([params[f"W_h{q}"].T for q in gates])  # (G*H, H)
    if kind == "lstm":
        new_b_ih = np.concatenate([params[f"b_{q}"] for q in gates])
        new_b_hh = np.zeros_like(new_b_ih)
    else:
        new_b_ih = np.concatenate([params["b_r"], params["b_z"], params["b_xn"]])
        new_b_hh = np.concatenate([np.zeros(H), np.zeros(H), params["b_hn"]])
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    with torch.no_grad():
        for name, value in (("weight_ih", new_ih), ("weight_hh", new_hh),
                            ("bias_ih", new_b_ih), ("bias_hh", new_b_hh)):
            target = getattr(module, name + suffix)
            target.copy_(torch.as_tensor(value, dtype=target.dtype, device=target.device))
