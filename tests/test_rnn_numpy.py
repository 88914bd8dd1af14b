"""Tests for seqcourse.rnn_numpy: forward and BPTT against PyTorch (float64)."""

import numpy as np
import pytest
import torch
from torch import nn

from seqcourse import rnn_numpy as rn

T, B, I, H = 6, 3, 4, 5


def _torch_rnn(nonlinearity="tanh"):
    torch.manual_seed(0)
    return nn.RNN(I, H, nonlinearity=nonlinearity).double()


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_forward_matches_nn_rnn(nonlinearity):
    rnn = _torch_rnn(nonlinearity)
    X = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    out, hn = rnn(X, h0)
    Hs, _ = rn.rnn_forward(X.numpy(), h0[0].numpy(), rn.params_from_torch(rnn), nonlinearity)
    np.testing.assert_allclose(Hs, out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(Hs[-1], hn[0].detach().numpy(), atol=1e-12)


def test_forward_matches_rnn_cell_and_zero_state():
    torch.manual_seed(1)
    cell = nn.RNNCell(I, H).double()
    X = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.zeros(B, H, dtype=torch.float64)
    for t in range(T):
        h = cell(X[t], h)
    Hs, _ = rn.rnn_forward(X.numpy(), None, rn.params_from_torch(cell))
    np.testing.assert_allclose(Hs[-1], h.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_bptt_matches_autograd(nonlinearity):
    rnn = _torch_rnn(nonlinearity)
    X = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    G = torch.randn(T, B, H, dtype=torch.float64)  # upstream gradient on every state
    g_last = torch.randn(B, H, dtype=torch.float64)  # extra gradient on h_T
    out, hn = rnn(X, h0)
    ((out * G).sum() + (hn[0] * g_last).sum()).backward()

    Hs, cache = rn.rnn_forward(X.detach().numpy(), h0[0].detach().numpy(), rn.params_from_torch(rnn), nonlinearity)
    grads, dX, dh0 = rn.rnn_backward(G.numpy(), cache, dh_last=g_last.numpy())
    np.testing.assert_allclose(grads["W_ih"], rnn.weight_ih_l0.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(grads["W_hh"], rnn.weight_hh_l0.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(grads["b_ih"], rnn.bias_ih_l0.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(grads["b_hh"], rnn.bias_hh_l0.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(dX, X.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(dh0, h0.grad[0].numpy(), atol=1e-10)


class _NumpyRNN(torch.autograd.Function):
    """Wraps the NumPy forward/backward so that gradcheck can test the manual BPTT."""

    @staticmethod
    def forward(ctx, X, h0, W_ih, W_hh, b_ih, b_hh):
        params = {"W_ih": W_ih.numpy(), "W_hh": W_hh.numpy(), "b_ih": b_ih.numpy(), "b_hh": b_hh.numpy()}
        Hs, cache = rn.rnn_forward(X.numpy(), h0.numpy(), params)
        ctx.cache = cache
        return torch.from_numpy(Hs)

    @staticmethod
    def backward(ctx, dHs):
        grads, dX, dh0 = rn.rnn_backward(dHs.numpy(), ctx.cache)
        return (torch.from_numpy(dX), torch.from_numpy(dh0),
                *(torch.from_numpy(grads[k]) for k in rn.PARAM_NAMES))


def test_gradcheck_manual_bptt():
    p = rn.init_params(3, 4, seed=2)
    args = [torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)]
    args += [torch.from_numpy(p[k]) for k in rn.PARAM_NAMES]
    args = [a.requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(_NumpyRNN.apply, args, eps=1e-6, atol=1e-6)


def test_init_params_shapes_and_range():
    p = rn.init_params(I, H, seed=0)
    assert p["W_ih"].shape == (H, I) and p["W_hh"].shape == (H, H)
    assert p["b_ih"].shape == (H,) and p["b_hh"].shape == (H,)
    assert all(np.abs(v).max() <= 1 / np.sqrt(H) for v in p.values())


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(3, 4)) * 10, "b": rng.normal(size=(5,)) * 10}
    tensors = [torch.tensor(g, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    total_t = nn.utils.clip_grad_norm_(tensors, max_norm=1.0)
    clipped, total = rn.clip_grad_norm(grads, 1.0)
    assert total == pytest.approx(float(total_t), rel=1e-12)
    for t, name in zip(tensors, grads):
        np.testing.assert_allclose(clipped[name], t.grad.numpy(), atol=1e-12)
    # Direction kept, norm capped, inputs untouched.
    norm = np.sqrt(sum((c**2).sum() for c in clipped.values()))
    assert norm == pytest.approx(1.0, abs=1e-5)
    assert np.abs(grads["a"]).max() > 1.0
    # Small gradients are left alone.
    small, _ = rn.clip_grad_norm({"a": np.full(3, 0.1)}, 1.0)
    np.testing.assert_allclose(small["a"], 0.1)


def test_bad_inputs():
    p = rn.init_params(I, H)
    with pytest.raises(ValueError, match="nonlinearity"):
        rn.rnn_forward(np.zeros((T, B, I)), None, p, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"\(T, B, I\)"):
        rn.rnn_forward(np.zeros((T, I)), None, p)
    with pytest.raises(ValueError, match="h0"):
        rn.rnn_forward(np.zeros((T, B, I)), np.zeros((1, B, H)), p)
    with pytest.raises(ValueError, match="missing"):
        rn.rnn_forward(np.zeros((T, B, I)), None, {"W_ih": p["W_ih"]})
    with pytest.raises(TypeError, match="dict"):
        rn.rnn_forward(np.zeros((T, B, I)), None, [p["W_ih"]])
    with pytest.raises(ValueError, match="shape"):
        rn.rnn_forward(np.zeros((T, B, I)), None, {**p, "W_hh": np.zeros((H, H + 1))})
    _, cache = rn.rnn_forward(np.zeros((T, B, I)), None, p)
    with pytest.raises(ValueError, match="dHs"):
        rn.rnn_backward(np.zeros((T, B, H + 1)), cache)
    with pytest.raises(ValueError, match="max_norm"):
        rn.clip_grad_norm({"a": np.ones(2)}, 0.0)
    with pytest.raises(TypeError, match="grads"):
        rn.clip_grad_norm([np.ones(2)], 1.0)
    with pytest.raises(ValueError, match="positive int"):
        rn.init_params(0, H)
    with pytest.raises(TypeError, match="nn.RNN"):
        rn.params_from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bias=False"):
        rn.params_from_torch(nn.RNN(2, 3, bias=False))
