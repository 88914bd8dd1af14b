"""NumPy LSTM/GRU cells against torch.nn in float64."""

import numpy as np
import pytest
import torch
from torch import nn

from seqcourse import gated_numpy as gn

T, B, I, H = 7, 3, 5, 4


@pytest.fixture
def X():
    return np.random.default_rng(1).normal(size=(T, B, I))


def _lstm(**kw):
    torch.manual_seed(0)
    return nn.LSTM(I, H, **kw).double()


def _gru(**kw):
    torch.manual_seed(0)
    return nn.GRU(I, H, **kw).double()


def test_sigmoid_is_stable_and_correct():
    a = np.array([-1000.0, -3.0, 0.0, 2.5, 1000.0])
    with np.errstate(over="raise", invalid="raise"):
        s = gn.sigmoid(a)
    np.testing.assert_allclose(s, torch.sigmoid(torch.tensor(a)).numpy(), atol=1e-15)


def test_init_shapes_and_names():
    p = gn.init_lstm_params(I, H)
    assert set(p) == set(gn.LSTM_PARAM_NAMES)
    assert p["W_xi"].shape == (I, H) and p["W_hf"].shape == (H, H) and p["b_o"].shape == (H,)
    g = gn.init_gru_params(I, H)
    assert list(g) == list(gn.GRU_PARAM_NAMES)
    assert g["W_xn"].shape == (I, H) and g["b_hn"].shape == (H,)
    assert np.abs(p["W_hi"]).max() <= 1 / np.sqrt(H)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_init_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="positive int"):
        gn.init_lstm_params(bad, H)
    with pytest.raises(ValueError, match="positive int"):
        gn.init_gru_params(I, bad)


def test_lstm_forward_matches_torch(X):
    lstm = _lstm()
    params = gn.lstm_params_from_torch(lstm)
    rng = np.random.default_rng(2)
    h0, c0 = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    out, (hT, cT) = gn.lstm_forward(X, params, (h0, c0))
    with torch.no_grad():
        ref, (hn, cn) = lstm(torch.tensor(X), (torch.tensor(h0)[None], torch.tensor(c0)[None]))
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-10)
    np.testing.assert_allclose(hT, hn[0].numpy(), atol=1e-10)
    np.testing.assert_allclose(cT, cn[0].numpy(), atol=1e-10)


def test_lstm_cell_equals_one_step_and_default_state(X):
    params = gn.init_lstm_params(I, H)
    out, (h, c) = gn.lstm_forward(X[:1], params)
    h1, c1 = gn.lstm_cell(X[0], (np.zeros((B, H)), np.zeros((B, H))), params)
    np.testing.assert_array_equal(out[0], h1)
    np.testing.assert_array_equal(c, c1)


def test_lstm_two_layers_and_bidirectional_match_torch(X):
    lstm = _lstm(num_layers=2, bidirectional=True)
    with torch.no_grad():
        ref, (hn, cn) = lstm(torch.tensor(X))  # ref: (T, B, 2H)
    layer0 = []
    for reverse in (False, True):
        xs = X[::-1] if reverse else X
        out, _ = gn.lstm_forward(xs, gn.lstm_params_from_torch(lstm, 0, reverse))
        layer0.append(out[::-1] if reverse else out)
    x1 = np.concatenate(layer0, axis=-1)  # (T, B, 2H)
    fwd, (h_f, _) = gn.lstm_forward(x1, gn.lstm_params_from_torch(lstm.state_dict(), 1, False))
    bwd, (h_b, _) = gn.lstm_forward(x1[::-1], gn.lstm_params_from_torch(lstm, 1, True))
    np.testing.assert_allclose(np.concatenate([fwd, bwd[::-1]], -1), ref.numpy(), atol=1e-10)
    hn = hn.view(2, 2, B, H)  # (L, directions, B, H)
    np.testing.assert_allclose(hn[1, 0].numpy(), h_f, atol=1e-10)
    np.testing.assert_allclose(hn[1, 1].numpy(), h_b, atol=1e-10)


def test_lstm_round_trip_to_torch(X):
    params = gn.init_lstm_params(I, H, np.random.default_rng(3))
    lstm = _lstm()
    gn.lstm_params_to_torch(params, lstm)
    back = gn.lstm_params_from_torch(lstm)
    for k in gn.LSTM_PARAM_NAMES:
        np.testing.assert_allclose(back[k], params[k], atol=1e-15)
    with torch.no_grad():
        ref, _ = lstm(torch.tensor(X))
    np.testing.assert_allclose(gn.lstm_forward(X, params)[0], ref.numpy(), atol=1e-10)


@pytest.mark.parametrize("convention", ["old", "new"])
def test_gru_forward_matches_torch(X, convention):
    gru = _gru()
    params = gn.gru_params_from_torch(gru)
    if convention == "new":  # the other convention on flipped weights is the same function
        params = gn.flip_update_gate(params)
    h0 = np.random.default_rng(4).normal(size=(B, H))
    out, hT = gn.gru_forward(X, params, h0, z_weights=convention)
    with torch.no_grad():
        ref, hn = gru(torch.tensor(X), torch.tensor(h0)[None])
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-10)
    np.testing.assert_allclose(hT, hn[0].numpy(), atol=1e-10)


def test_gru_bidirectional_layer_matches_torch(X):
    gru = _gru(bidirectional=True)
    with torch.no_grad():
        ref, _ = gru(torch.tensor(X))  # (T, B, 2H)
    bwd, _ = gn.gru_forward(X[::-1], gn.gru_params_from_torch(gru, reverse=True))
    np.testing.assert_allclose(bwd[::-1], ref[..., H:].numpy(), atol=1e-10)


def test_gru_reset_before_is_a_different_function(X):
    params = gn.init_gru_params(I, H)
    after, _ = gn.gru_forward(X, params, reset="after")
    before, _ = gn.gru_forward(X, params, reset="before")
    assert np.abs(after - before).max() > 1e-3
    # With r forced to 1 (huge reset bias) the two placements agree.
    params["b_r"] = np.full(H, 50.0)
    a, _ = gn.gru_forward(X, params, reset="after")
    b, _ = gn.gru_forward(X, params, reset="before")
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_flip_update_gate_does_not_modify_input():
    params = gn.init_gru_params(I, H)
    before = {k: v.copy() for k, v in params.items()}
    flipped = gn.flip_update_gate(params)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    np.testing.assert_array_equal(flipped["W_hz"], -params["W_hz"])
    np.testing.assert_array_equal(flipped["W_xr"], params["W_xr"])


def test_gru_round_trip_to_torch(X):
    params = gn.init_gru_params(I, H, np.random.default_rng(5))
    gru = _gru()
    gn.gru_params_to_torch(params, gru)
    with torch.no_grad():
        ref, _ = gru(torch.tensor(X))
    np.testing.assert_allclose(gn.gru_forward(X, params)[0], ref.numpy(), atol=1e-10)


def test_float32_module_converts_to_float64():
    torch.manual_seed(0)
    p = gn.lstm_params_from_torch(nn.LSTM(I, H))
    assert all(v.dtype == np.float64 for v in p.values())


# ---------------------------------------------------------------- bad input


def test_bad_params_are_named():
    params = gn.init_lstm_params(I, H)
    del params["b_f"]
    with pytest.raises(ValueError, match="b_f"):
        gn.lstm_cell(np.zeros((B, I)), (np.zeros((B, H)), np.zeros((B, H))), params)
    params = gn.init_lstm_params(I, H)
    params["W_hg"] = params["W_hg"].T[:, :2]
    with pytest.raises(ValueError, match="W_hg"):
        gn.lstm_forward(np.zeros((T, B, I)), params)
    with pytest.raises(TypeError, match="dict"):
        gn.gru_cell(np.zeros((B, I)), np.zeros((B, H)), [1, 2])


def test_bad_shapes_say_what_to_do():
    p = gn.init_lstm_params(I, H)
    with pytest.raises(ValueError, match=r"\(T, B, 5\)"):
        gn.lstm_forward(np.zeros((B, I)), p)
    with pytest.raises(ValueError, match="x must have shape"):
        gn.lstm_cell(np.zeros((B, I + 1)), (np.zeros((B, H)), np.zeros((B, H))), p)
    with pytest.raises(TypeError, match=r"pair \(h, c\)"):
        gn.lstm_cell(np.zeros((B, I)), np.zeros((B, H)), p)
    g = gn.init_gru_params(I, H)
    with pytest.raises(ValueError, match="h must have shape"):
        gn.gru_cell(np.zeros((B, I)), np.zeros((B, H + 1)), g)
    with pytest.raises(ValueError, match="T = 0"):
        gn.gru_forward(np.zeros((0, B, I)), g)


def test_bad_options():
    g = gn.init_gru_params(I, H)
    with pytest.raises(ValueError, match="reset"):
        gn.gru_cell(np.zeros((B, I)), np.zeros((B, H)), g, reset="middle")
    with pytest.raises(ValueError, match="z_weights"):
        gn.gru_cell(np.zeros((B, I)), np.zeros((B, H)), g, z_weights="both")


def test_converter_errors():
    with pytest.raises(ValueError, match="weight_ih_l1"):
        gn.lstm_params_from_torch(_lstm(), layer=1)
    with pytest.raises(ValueError, match="bias=False"):
        gn.gru_params_from_torch(nn.GRU(I, H, bias=False))
    with pytest.raises(ValueError, match="not an LSTM layer"):
        gn.lstm_params_from_torch(_gru())
    with pytest.raises(TypeError, match="state_dict"):
        gn.lstm_params_from_torch("lstm")
    with pytest.raises(ValueError, match="hidden_size=4"):
        gn.lstm_params_to_torch(gn.init_lstm_params(I, H), nn.LSTM(I, H + 1))
    with pytest.raises(TypeError, match="nn.GRU"):
        gn.gru_params_to_torch(gn.init_gru_params(I, H), {"weight_ih_l0": None})


def test_converters_work_with_module_on_device(device, X):
    # Weights are read back to the CPU as float64 and written in the module's dtype/device.
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H).to(device)
    params = gn.lstm_params_from_torch(lstm)
    gn.lstm_params_to_torch(params, lstm)
    assert lstm.weight_ih_l0.device.type == device and lstm.bias_hh_l0.abs().max() == 0
    with torch.no_grad():
        ref, _ = lstm(torch.tensor(X, dtype=torch.float32, device=device))
    np.testing.assert_allclose(gn.lstm_forward(X, params)[0], ref.cpu().numpy(), atol=1e-5)
