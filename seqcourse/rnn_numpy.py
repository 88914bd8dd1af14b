"""A vanilla RNN in NumPy (float64): forward pass, manual BPTT, gradient clipping.

The weights are stored in PyTorch's ``nn.RNN`` layout (``(out, in)``, one
weight matrix per connection, two bias vectors), so they can be copied in
both directions with :func:`params_from_torch`. The book writes row vectors,

    h_t = phi(x_t W_xh + h_{t-1} W_hh + b_h),   W_xh = W_ih.T (I, H),  W_hh = W_hh_torch.T,

so in code the products read ``x_t @ W_ih.T`` and ``h @ W_hh.T``, with
``b_h = b_ih + b_hh``.
Shapes use the book's letters: T time steps, B batch, I input size,
H hidden size.  Everything is seq-first: ``X`` is ``(T, B, I)``.
"""

from __future__ import annotations

import numpy as np

PARAM_NAMES = ("W_ih", "W_hh", "b_ih", "b_hh")
_NONLINEARITIES = ("tanh", "relu")


def _check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu' (as in nn.RNN), got {nonlinearity!r}")


def _check_params(params: dict) -> tuple[int, int]:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict with keys {PARAM_NAMES}, got {type(params).__name__}")
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; build it with init_params() or params_from_torch()")
    H, I = np.shape(params["W_ih"])
    expected = {"W_ih": (H, I), "W_hh": (H, H), "b_ih": (H,), "b_hh": (H,)}
    for name, shape in expected.items():
        if np.shape(params[name]) != shape:
            raise ValueError(f"params[{name!r}] has shape {np.shape(params[name])}, expected {shape} "
                             f"for input_size={I}, hidden_size={H}")
    return I, H


def init_params(input_size: int, hidden_size: int, seed: int = 0) -> dict:
    """Random parameters drawn like PyTorch's: U(-1/sqrt(H), 1/sqrt(H)).

    Returns:
        ``{"W_ih": (H, I), "W_hh": (H, H), "b_ih": (H,), "b_hh": (H,)}``, float64.
    """
    for name, val in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(hidden_size)
    shapes = {"W_ih": (hidden_size, input_size), "W_hh": (hidden_size, hidden_size),
              "b_ih": (hidden_size,), "b_hh": (hidden_size,)}
    return {name: rng.uniform(-k, k, size=shape) for name, shape in shapes.items()}


def params_from_torch(module) -> dict:
    """Copy the layer-0 forward weights of an ``nn.RNN`` or ``nn.RNNCell`` into float64 arrays."""
    sd = {k: v.detach().cpu().double().numpy() for k, v in module.state_dict().items()}
    suffix = "_l0" if "weight_ih_l0" in sd else ""
    if f"weight_ih{suffix}" not in sd:
        raise TypeError(f"expected an nn.RNN or nn.RNNCell, got {type(module).__name__}")
    if f"bias_ih{suffix}" not in sd:
        raise ValueError("the module was built with bias=False; this RNN always has biases (use zeros)")
    return {"W_ih": sd[f"weight_ih{suffix}"], "W_hh": sd[f"weight_hh{suffix}"],
            "b_ih": sd[f"bias_ih{suffix}"], "b_hh": sd[f"bias_hh{suffix}"]}


def rnn_forward(X: np.ndarray, h0: np.ndarray | None, params: dict, nonlinearity: str = "tanh"):
    """Run the RNN over a whole sequence.

    Args:
        X: inputs, ``(T, B, I)``.
        h0: initial state ``(B, H)``, or ``None`` for zeros.
        params: see :func:`init_params`.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``(Hs, cache)``: every hidden state ``Hs`` of shape ``(T, B, H)`` and
        what :func:`rnn_backward` needs.
    """
    _check_nonlinearity(nonlinearity)
    I, H = _check_params(params)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3 or X.shape[2] != I:
        raise ValueError(f"X must be (T, B, I) with I={I}, got shape {X.shape}; "
                         f"add a batch axis with X[:, None] for one sequence")
    T, B, _ = X.shape
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    if h.shape != (B, H):
        raise ValueError(f"h0 must be (B, H) = {(B, H)}, got {h.shape}")
    h_init = h
    Hs = np.empty((T, B, H))
    for t in range(T):
        a = X[t] @ params["W_ih"].T + params["b_ih"] + h @ params["W_hh"].T + params["b_hh"]  # (B, H)
        h = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)
        Hs[t] = h
    cache = {"X": X, "h0": h_init, "Hs": Hs, "params": params, "nonlinearity": nonlinearity}
    return Hs, cache


def rnn_backward(dHs: np.ndarray, cache: dict, dh_last: np.ndarray | None = None):
    """Backpropagation through time for :func:`rnn_forward`.

    Walks the sequence backwards, carrying ``dh``, the total gradient with
    respect to the current state: what reaches ``h_t`` directly from the
    loss (``dHs[t]``) plus what flows back from ``h_{t+1}``.

    Args:
        dHs: ``dL/dHs``, the direct gradient of the loss on each state, ``(T, B, H)``.
        cache: the second result of :func:`rnn_forward`.
        dh_last: optional extra gradient on the last state ``h_T`` (from a loss
            on the final state, or from a later chunk), ``(B, H)``.

    Returns:
        ``(grads, dX, dh0)``: ``grads`` has the keys of ``params``; ``dX`` is
        ``(T, B, I)``; ``dh0`` is ``(B, H)``.
    """
    X, Hs, h0, params = cache["X"], cache["Hs"], cache["h0"], cache["params"]
    T, B, H = Hs.shape
    dHs = np.asarray(dHs, dtype=np.float64)
    if dHs.shape != (T, B, H):
        raise ValueError(f"dHs must have the shape of the states, {(T, B, H)}; got {dHs.shape}")
    grads = {name: np.zeros_like(params[name]) for name in PARAM_NAMES}
    dX = np.empty_like(X)
    dh = np.zeros((B, H)) if dh_last is None else np.array(dh_last, dtype=np.float64)
    for t in reversed(range(T)):
        dh = dh + dHs[t]  # total gradient on h_t
        h_t = Hs[t]
        h_prev = Hs[t - 1] if t > 0 else h0
        # Through the nonlinearity: tanh' = 1 - h^2, relu' = 1[h > 0].
        da = dh * (1.0 - h_t**2) if cache["nonlinearity"] == "tanh" else dh * (h_t > 0)  # (B, H)
        grads["W_ih"] += da.T @ X[t]
        grads["W_hh"] += da.T @ h_prev
        grads["b_ih"] += da.sum(axis=0)
        grads["b_hh"] += da.sum(axis=0)
        dX[t] = da @ params["W_ih"]
        dh = da @ params["W_hh"]  # flows on to h_{t-1}
    return grads, dX, dh


def clip_grad_norm(grads: dict, max_norm: float):
    """Global-norm clipping: ``g <- min(1, max_norm / ||g||) * g``.

    ``||g||`` is the Euclidean norm of all gradients stacked into one vector,
    so every array is scaled by the same factor and the direction of the
    update is kept.

    Args:
        grads: name -> gradient array.
        max_norm: the threshold ``theta > 0``.

    Returns:
        ``(clipped, total_norm)``: new arrays (the inputs are not modified)
        and the norm before clipping.
    """
    if not isinstance(grads, dict) or not grads:
        raise TypeError("grads must be a non-empty dict of name -> array")
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    total_norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in grads.values())))
    scale = min(1.0, max_norm / (total_norm + 1e-6))  # the 1e-6 matches PyTorch's guard
    return {name: g * scale for name, g in grads.items()}, total_norm
