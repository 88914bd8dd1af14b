"""Tests for seqcourse.gradients: per-step state gradients of torch RNNs."""

import pytest
import torch
from torch import nn

from seqcourse import gradients as gr
from seqcourse import rnn_numpy as rn


def test_state_grad_norms_match_manual_bptt():
    """For a one-layer tanh RNN, dL/dh_t from stepping equals the NumPy BPTT's carried dh."""
    torch.manual_seed(0)
    T, B, I, H = 7, 2, 3, 4
    rnn = nn.RNN(I, H).double()
    X = torch.randn(T, B, I, dtype=torch.float64)
    norms = gr.state_grad_norms(rnn, X)
    # Manual: loss = sum(h_T), so dL/dh_T = 1 and dL/dh_{t-1} = (dL/dh_t * (1 - h_t^2)) @ W_hh.
    Hs, cache = rn.rnn_forward(X.numpy(), None, rn.params_from_torch(rnn))
    W_hh = cache["params"]["W_hh"]
    dh = torch.ones(B, H, dtype=torch.float64).numpy()
    expected = [None] * T
    for t in reversed(range(T)):
        expected[t] = float((dh**2).sum() ** 0.5)
        dh = (dh * (1 - Hs[t] ** 2)) @ W_hh
    assert torch.allclose(norms, torch.tensor(expected, dtype=norms.dtype), atol=1e-10)


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize("batch_first", [False, True])
def test_state_grad_norms_layouts_and_cells(cls, batch_first):
    torch.manual_seed(0)
    rnn = cls(3, 4, num_layers=2, batch_first=batch_first)
    X = torch.randn(2, 6, 3) if batch_first else torch.randn(6, 2, 3)
    norms = gr.state_grad_norms(rnn, X)
    assert norms.shape == (6,)
    assert torch.isfinite(norms).all() and (norms > 0).all()
    # The last step's state gets at least the direct gradient from the loss.
    assert norms[-1] >= (2 * 4) ** 0.5 - 1e-6


def test_state_grad_norms_custom_loss_every_step():
    torch.manual_seed(0)
    rnn = nn.RNN(2, 3)
    X = torch.randn(5, 1, 2)
    norms = gr.state_grad_norms(rnn, X, loss_fn=lambda out: out.sum())
    assert norms.shape == (5,) and (norms > 0).all()


def test_input_grad_norms_match_autograd():
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, batch_first=True)
    X = torch.randn(2, 5, 3, requires_grad=True)
    out, _ = rnn(X)
    out[:, -1].sum().backward()
    expected = X.grad.transpose(0, 1).flatten(1).norm(dim=1)  # (T,)
    got = gr.input_grad_norms(rnn, X.detach())
    assert torch.allclose(got, expected, atol=1e-6)


def test_set_spectral_radius():
    torch.manual_seed(0)
    W = torch.randn(6, 6)
    gr.set_spectral_radius_(W, 0.5)
    assert gr.spectral_radius(W) == pytest.approx(0.5, rel=1e-5)
    rnn = nn.RNN(2, 6)
    gr.set_spectral_radius_(rnn.weight_hh_l0, 3.0)
    assert gr.spectral_radius(rnn.weight_hh_l0) == pytest.approx(3.0, rel=1e-5)


def test_vanishing_vs_exploding_linear_rnn():
    """A linear-ish regime: small radius shrinks the gradient going back, large radius grows it (ReLU)."""
    torch.manual_seed(0)
    T = 30
    small = nn.RNN(4, 16, nonlinearity="relu", bias=False).double()
    big = nn.RNN(4, 16, nonlinearity="relu", bias=False).double()
    with torch.no_grad():
        eye = torch.eye(16, dtype=torch.float64)
        small.weight_hh_l0.copy_(0.5 * eye)
        big.weight_hh_l0.copy_(1.5 * eye)
        small.weight_ih_l0.abs_()
        big.weight_ih_l0.copy_(small.weight_ih_l0)
    X = torch.rand(T, 1, 4, dtype=torch.float64)
    n_small = gr.state_grad_norms(small, X)
    n_big = gr.state_grad_norms(big, X)
    assert n_small[0] / n_small[-1] == pytest.approx(0.5 ** (T - 1), rel=1e-6)
    assert n_big[0] / n_big[-1] == pytest.approx(1.5 ** (T - 1), rel=1e-6)


def test_bad_inputs():
    with pytest.raises(TypeError, match="nn.RNN"):
        gr.state_grad_norms(nn.Linear(2, 2), torch.randn(3, 1, 2))
    with pytest.raises(ValueError, match="bidirectional"):
        gr.state_grad_norms(nn.RNN(2, 3, bidirectional=True), torch.randn(3, 1, 2))
    with pytest.raises(ValueError, match="3-D"):
        gr.state_grad_norms(nn.RNN(2, 3), torch.randn(3, 2))
    with pytest.raises(ValueError, match="3-D"):
        gr.input_grad_norms(nn.RNN(2, 3), torch.randn(3, 2))
    with pytest.raises(ValueError, match="scalar"):
        gr.state_grad_norms(nn.RNN(2, 3), torch.randn(3, 1, 2), loss_fn=lambda out: out)
    with pytest.raises(ValueError, match="square"):
        gr.set_spectral_radius_(torch.randn(3, 4), 1.0)
    with pytest.raises(ValueError, match="positive"):
        gr.set_spectral_radius_(torch.randn(3, 3), -1.0)
    with pytest.raises(ValueError, match="radius 0"):
        gr.set_spectral_radius_(torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="square"):
        gr.spectral_radius(torch.randn(2, 3))


def test_scale_grad_keeps_the_value_and_scales_the_gradient():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = gr.scale_grad(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 0.25, dtype=torch.float64))


def test_recurrent_weight_grad_full_truncated_and_randomised():
    torch.manual_seed(0)
    T, B, I, H = 12, 3, 4, 5
    rnn = torch.nn.RNN(I, H).double()
    X = torch.randn(T, B, I, dtype=torch.float64)
    # all ones: full BPTT, the gradient autograd gives for the whole sequence at once
    full = gr.recurrent_weight_grad(rnn, X, [1.0] * T)
    out, _ = rnn(X)
    (ref,) = torch.autograd.grad(out[-1].sum(), rnn.weight_hh_l0)
    assert torch.allclose(full, ref, atol=1e-12)
    # a zero at step T - k + 1 keeps only the last k steps: the same as running the last k steps from h_{T-k}
    k = 3
    truncated = gr.recurrent_weight_grad(rnn, X, [1.0] * (T - k) + [0.0] + [1.0] * (k - 1))
    # the zero detaches the state after T - k steps: only the last k steps pass a gradient
    _, h_prev = rnn(X[:T - k])
    out_k, _ = rnn(X[T - k:], h_prev.detach())
    (ref_k,) = torch.autograd.grad(out_k[-1].sum(), rnn.weight_hh_l0)
    assert torch.allclose(truncated, ref_k, atol=1e-12)
    assert not torch.allclose(truncated, full)
    # randomised truncation: the exact expectation over all keep/cut patterns of two steps equals full BPTT
    p = 0.5
    T2 = 2
    X2 = X[:T2]
    full2 = gr.recurrent_weight_grad(rnn, X2, [1.0, 1.0])
    expectation = sum(
        (p if a else 1 - p) * (p if b else 1 - p) * gr.recurrent_weight_grad(rnn, X2, [a / p, b / p])
        for a in (0, 1) for b in (0, 1))
    assert torch.allclose(expectation, full2, atol=1e-12)
    with pytest.raises(ValueError, match="factors"):
        gr.recurrent_weight_grad(rnn, X, [1.0])
    with pytest.raises(TypeError, match="nn.RNN"):
        gr.recurrent_weight_grad(torch.nn.GRU(I, H), X, [1.0] * T)
