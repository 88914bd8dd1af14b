"""Hidden tests of a03_lstm_gru_cells: LSTM/GRU cells, a sequence wrapper and a
multi-layer bidirectional LSTM, all compared with torch.nn in float64.

References are torch.nn modules whose weights are copied into the student's
modules; gradients come from torch.autograd on the reference.
"""

import math

import pytest
import torch
from torch import nn

from autograder.api import Ref, assert_close, assert_type, check_tensor
from autograder.sandbox.protocol import cudnn_flags

F64 = torch.float64
TOL64 = dict(atol=1e-10, rtol=1e-8)
TOL32 = dict(atol=2e-5, rtol=1e-4)
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def gpu(fn):
    for mark in needs_cuda:
        fn = mark(fn)
    return fn


def _sd(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _strip_l0(sd):
    """nn.LSTM/nn.GRU single-layer names -> cell names (weight_ih_l0 -> weight_ih)."""
    return {k.replace("_l0", ""): v for k, v in sd.items()}


def _ref_backward(outputs, grads, inputs, module):
    """Gradients of sum(<outputs, grads>) w.r.t. inputs and module parameters."""
    params = dict(module.named_parameters())
    got = torch.autograd.grad(outputs, list(inputs) + list(params.values()), grads, allow_unused=True)
    return list(got[: len(inputs)]), dict(zip(params, got[len(inputs):]))


def _check_params(actual: dict, expected: dict, rename=lambda k: k, tol=TOL64):
    for name, g in expected.items():
        key = rename(name)
        assert key in actual, f"no gradient for parameter {key!r} (got {sorted(actual)})"
        assert_close(actual[key], g, what=f"gradient of {key}", **tol)


# ----------------------------------------------------------------------------
# Part 1: LSTM cell
# ----------------------------------------------------------------------------


def _lstm_cell_case(sub, device, B, I, H, bias=True, with_state=True, grads=True):
    ref = nn.LSTMCell(I, H, bias=bias).to(device, F64)
    sub.new("LSTMCell", I, H, bias=bias, keep="cell", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    x = torch.randn(B, I, dtype=F64, device=device)
    hx = (torch.randn(B, H, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device)) if with_state else None
    go = (torch.randn(B, H, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device))
    res = sub.run("@cell", args=(x, hx), grad_wrt=[0] if grads else (), grad_output=go if grads else None,
                  param_grads_of="cell" if grads else None)
    xr = x.clone().requires_grad_(True)
    h_ref, c_ref = ref(xr, hx)
    out = res.value
    assert isinstance(out, tuple) and len(out) == 2, "LSTMCell.forward should return a tuple (h_new, c_new)"
    assert_close(out[0], h_ref.detach(), what="h_new", **TOL64)
    assert_close(out[1], c_ref.detach(), what="c_new", **TOL64)
    if grads:
        (gx,), gp = _ref_backward((h_ref, c_ref), go, [xr], ref)
        assert_close(res.grads[0], gx, what="gradient w.r.t. the input", **TOL64)
        _check_params(res.param_grads, gp)


def test_lstm_cell(sub, device):
    _lstm_cell_case(sub, device, B=4, I=3, H=5)


def test_lstm_cell__zero_state_batch_of_one(sub, device):
    _lstm_cell_case(sub, device, B=1, I=2, H=3, with_state=False)


def test_lstm_cell__no_bias(sub, device):
    _lstm_cell_case(sub, device, B=3, I=4, H=2, bias=False)


def test_lstm_cell__step_function(sub, device):
    B, I, H = 3, 4, 5
    ref = nn.LSTMCell(I, H).to(device, F64)
    w = [p.detach().clone() for p in (ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh)]
    x, h, c = (torch.randn(B, n, dtype=F64, device=device) for n in (I, H, H))
    go = (torch.randn(B, H, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device))
    res = sub.run("lstm_cell_step", args=(x, h, c, *w), grad_wrt=list(range(7)), grad_output=go)
    leaves = [t.clone().requires_grad_(True) for t in (x, h, c, *w)]
    xr, hr, cr, wih, whh, bih, bhh = leaves
    gates = xr @ wih.T + bih + hr @ whh.T + bhh
    i, f, g, o = gates.chunk(4, 1)
    c_new = torch.sigmoid(f) * cr + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    out = res.value
    assert isinstance(out, tuple) and len(out) == 2, "lstm_cell_step should return (h_new, c_new)"
    assert_close(out[0], h_new.detach(), what="h_new", **TOL64)
    assert_close(out[1], c_new.detach(), what="c_new", **TOL64)
    exp_grads = torch.autograd.grad((h_new, c_new), leaves, go)
    for name, got, want in zip(("x", "h", "c", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), res.grads, exp_grads):
        assert_close(got, want, what=f"gradient w.r.t. {name}", **TOL64)


def test_lstm_cell__float32(sub, device):
    B, I, H = 5, 6, 7
    ref = nn.LSTMCell(I, H).to(device, F64)
    sub.new("LSTMCell", I, H, keep="cell32", state_dict={k: v.float() for k, v in _sd(ref).items()}, to_device=device)
    x = torch.randn(B, I, device=device)
    h, c = torch.randn(B, H, device=device), torch.randn(B, H, device=device)
    out = sub.call("@cell32", x, (h, c))
    h_ref, c_ref = ref(x.double(), (h.double(), c.double()))
    assert_close(out[0], h_ref.float().detach(), what="h_new (float32)", **TOL32)
    assert_close(out[1], c_ref.float().detach(), what="c_new (float32)", **TOL32)


def _check_init(sd: dict, expected_shapes: dict, H: int, what: str):
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert got == expected_shapes, f"{what}: parameters {got}, expected {expected_shapes}"
    bound = 1 / math.sqrt(H)
    flat = torch.cat([v.flatten() for v in sd.values()])
    check_tensor(flat, dtype=torch.float32, what=f"{what} parameters")
    assert float(flat.abs().max()) <= bound + 1e-6, f"{what}: parameters exceed 1/sqrt(hidden_size) = {bound:.4f}"
    std = float(flat.std())
    assert 0.8 * bound / math.sqrt(3) < std < 1.2 * bound / math.sqrt(3), \
        f"{what}: parameters are not uniform in [-1/sqrt(H), 1/sqrt(H)] (std {std:.4f})"


def test_lstm_cell__init(sub):
    I, H = 9, 16
    sub.new("LSTMCell", I, H, keep="fresh")
    _check_init(sub.state_dict("fresh"), {k: tuple(v.shape) for k, v in nn.LSTMCell(I, H).state_dict().items()},
                H, "LSTMCell")
    sub.new("LSTMCell", I, H, bias=False, keep="fresh_nb")
    keys = set(sub.state_dict("fresh_nb"))
    assert keys == {"weight_ih", "weight_hh"}, f"LSTMCell(bias=False) has parameters {sorted(keys)}"


def test_lstm_cell__step_function_without_biases(sub):
    B, I, H = 2, 3, 4
    ref = nn.LSTMCell(I, H, bias=False).to(dtype=F64)
    x, h, c = (torch.randn(B, n, dtype=F64) for n in (I, H, H))
    out = sub.call("lstm_cell_step", x, h, c, _sd(ref)["weight_ih"], _sd(ref)["weight_hh"], None, None)
    assert_type(out, tuple, task="computes one step from plain tensors and returns (h_new, c_new)",
                what="lstm_cell_step's result")
    h_ref, c_ref = ref(x, (h, c))
    assert_close(out[0], h_ref.detach(), what="h_new without biases", **TOL64)
    assert_close(out[1], c_ref.detach(), what="c_new without biases", **TOL64)


def test_lstm_cell__every_call_starts_from_its_own_state(sub):
    """One cell, called several times in different orders: hx=None always means zeros."""
    I, H = 3, 4
    ref = nn.LSTMCell(I, H).to(dtype=F64)
    sub.new("LSTMCell", I, H, keep="rcell", state_dict=_sd(ref), to_dtype=F64)
    x1, x2 = torch.randn(2, I, dtype=F64), torch.randn(3, I, dtype=F64)
    hx = (torch.randn(2, H, dtype=F64) * 2, torch.randn(2, H, dtype=F64) * 2)
    for x, state in ((x1, None), (x1, hx), (x1, None), (x2, None), (x1, hx), (x1, None)):
        out = sub.call("@rcell", x, state)
        assert_type(out, tuple, task="forward(input, hx=None) ... returns (h_new, c_new)", what="LSTMCell's result")
        h_ref, c_ref = ref(x, state)
        what = f"(B={x.shape[0]}, hx={'None' if state is None else 'given'}, after other calls)"
        assert_close(out[0], h_ref.detach(), what="h_new " + what, **TOL64)
        assert_close(out[1], c_ref.detach(), what="c_new " + what, **TOL64)


@gpu
def test_lstm_cell__cuda_matches_cpu(sub):
    B, I, H = 8, 5, 6
    ref = nn.LSTMCell(I, H)
    sd = _sd(ref)
    sub.new("LSTMCell", I, H, keep="cpu_cell", state_dict=sd)
    sub.new("LSTMCell", I, H, keep="cuda_cell", state_dict=sd, to_device="cuda")
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    out_cpu = sub.call("@cpu_cell", x, (h, c))
    out_gpu = sub.call("@cuda_cell", x.cuda(), (h.cuda(), c.cuda()))
    for a, b, name in zip(out_gpu, out_cpu, ("h_new", "c_new")):
        check_tensor(a, device="cuda", what=f"{name} on CUDA")
        assert_close(a.cpu(), b, what=f"{name} on CUDA vs CPU", **TOL32)


# ----------------------------------------------------------------------------
# Part 2: GRU cell
# ----------------------------------------------------------------------------


def _gru_cell_case(sub, device, B, I, H, bias=True, with_state=True):
    ref = nn.GRUCell(I, H, bias=bias).to(device, F64)
    sub.new("GRUCell", I, H, bias=bias, keep="gcell", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    x = torch.randn(B, I, dtype=F64, device=device)
    h = torch.randn(B, H, dtype=F64, device=device) if with_state else None
    go = torch.randn(B, H, dtype=F64, device=device)
    res = sub.run("@gcell", args=(x, h), grad_wrt=[0, 1] if with_state else [0], grad_output=go,
                  param_grads_of="gcell")
    xr = x.clone().requires_grad_(True)
    hr = h.clone().requires_grad_(True) if with_state else None
    out_ref = ref(xr, hr)
    assert_close(res.value, out_ref.detach(), what="h_new", **TOL64)
    grads, gp = _ref_backward(out_ref, go, [xr] + ([hr] if with_state else []), ref)
    for got, want, name in zip(res.grads, grads, ("input", "hx")):
        assert_close(got, want, what=f"gradient w.r.t. {name}", **TOL64)
    _check_params(res.param_grads, gp)


def test_gru_cell(sub, device):
    _gru_cell_case(sub, device, B=4, I=3, H=5)


def test_gru_cell__zero_state_batch_of_one(sub, device):
    _gru_cell_case(sub, device, B=1, I=2, H=3, with_state=False)


def test_gru_cell__no_bias(sub, device):
    _gru_cell_case(sub, device, B=3, I=4, H=2, bias=False)


def test_gru_cell__step_function(sub, device):
    B, I, H = 2, 3, 4
    ref = nn.GRUCell(I, H).to(device, F64)
    w = [p.detach().clone() for p in (ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh)]
    x, h = torch.randn(B, I, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device)
    out = sub.call("gru_cell_step", x, h, *w)
    assert_close(out, ref(x, h).detach(), what="gru_cell_step", **TOL64)
    out_nb = sub.call("gru_cell_step", x, h, w[0], w[1], None, None)
    ref_nb = nn.GRUCell(I, H, bias=False).to(device, F64)
    ref_nb.load_state_dict({"weight_ih": w[0], "weight_hh": w[1]})
    assert_close(out_nb, ref_nb(x, h).detach(), what="gru_cell_step without biases", **TOL64)


def test_gru_cell__float32(sub, device):
    B, I, H = 5, 6, 7
    ref = nn.GRUCell(I, H).to(device, F64)
    sub.new("GRUCell", I, H, keep="gcell32", state_dict={k: v.float() for k, v in _sd(ref).items()}, to_device=device)
    x, h = torch.randn(B, I, device=device), torch.randn(B, H, device=device)
    out = sub.call("@gcell32", x, h)
    assert_close(out, ref(x.double(), h.double()).float().detach(), what="h_new (float32)", **TOL32)


def test_gru_cell__init(sub):
    I, H = 9, 16
    sub.new("GRUCell", I, H, keep="gfresh")
    _check_init(sub.state_dict("gfresh"), {k: tuple(v.shape) for k, v in nn.GRUCell(I, H).state_dict().items()},
                H, "GRUCell")


def test_gru_cell__every_call_starts_from_its_own_state(sub):
    I, H = 3, 4
    ref = nn.GRUCell(I, H).to(dtype=F64)
    sub.new("GRUCell", I, H, keep="rgcell", state_dict=_sd(ref), to_dtype=F64)
    x1, x2 = torch.randn(2, I, dtype=F64), torch.randn(3, I, dtype=F64)
    h = torch.randn(2, H, dtype=F64) * 2
    for x, state in ((x1, None), (x1, h), (x1, None), (x2, None), (x1, h), (x1, None)):
        out = sub.call("@rgcell", x, state)
        what = f"h_new (B={x.shape[0]}, hx={'None' if state is None else 'given'}, after other calls)"
        assert_close(out, ref(x, state).detach(), what=what, **TOL64)


@gpu
def test_gru_cell__cuda_matches_cpu(sub):
    B, I, H = 8, 5, 6
    sd = _sd(nn.GRUCell(I, H))
    sub.new("GRUCell", I, H, keep="gcpu", state_dict=sd)
    sub.new("GRUCell", I, H, keep="gcuda", state_dict=sd, to_device="cuda")
    x, h = torch.randn(B, I), torch.randn(B, H)
    a = sub.call("@gcuda", x.cuda(), h.cuda())
    check_tensor(a, device="cuda", what="h_new on CUDA")
    assert_close(a.cpu(), sub.call("@gcpu", x, h), what="h_new on CUDA vs CPU", **TOL32)


# ----------------------------------------------------------------------------
# Part 3: RecurrentLayer
# ----------------------------------------------------------------------------


def _layer(sub, kind, I, H, sd, handle, batch_first, device, dtype=F64):
    sub.new(kind, I, H, keep=handle + "_cell", state_dict=_strip_l0(sd), to_dtype=dtype, to_device=device)
    sub.new("RecurrentLayer", Ref(handle + "_cell"), batch_first=batch_first, keep=handle)


def test_recurrent_layer__lstm_time_major(sub, device):
    T, B, I, H = 6, 3, 4, 5
    ref = nn.LSTM(I, H).to(device, F64)
    _layer(sub, "LSTMCell", I, H, _sd(ref), "ll", False, device)
    x = torch.randn(T, B, I, dtype=F64, device=device)
    h0, c0 = torch.randn(B, H, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device)
    go = (torch.randn(T, B, H, dtype=F64, device=device), (torch.randn(B, H, dtype=F64, device=device),
                                                           torch.randn(B, H, dtype=F64, device=device)))
    res = sub.run("@ll", args=(x, (h0, c0)), grad_wrt=[0], grad_output=go, param_grads_of="ll")
    xr = x.clone().requires_grad_(True)
    out, (hn, cn) = ref(xr, (h0[None], c0[None]))
    value = res.value
    assert isinstance(value, tuple) and len(value) == 2, "RecurrentLayer.forward should return (output, state)"
    assert_close(value[0], out.detach(), what="output", **TOL64)
    assert isinstance(value[1], tuple) and len(value[1]) == 2, "the final state of an LSTM cell is (h, c)"
    assert_close(value[1][0], hn[0].detach(), what="final h", **TOL64)
    assert_close(value[1][1], cn[0].detach(), what="final c", **TOL64)
    (gx,), gp = _ref_backward((out, hn[0], cn[0]), (go[0], *go[1]), [xr], ref)
    assert_close(res.grads[0], gx, what="gradient w.r.t. the input", **TOL64)
    _check_params(res.param_grads, gp, rename=lambda k: "cell." + k.replace("_l0", ""))


def test_recurrent_layer__gru_batch_first(sub, device):
    T, B, I, H = 5, 2, 3, 4
    ref = nn.GRU(I, H, batch_first=True).to(device, F64)
    _layer(sub, "GRUCell", I, H, _sd(ref), "gl", True, device)
    x = torch.randn(B, T, I, dtype=F64, device=device)
    out, hn = sub.call("@gl", x)
    eout, ehn = ref(x)
    assert_close(out, eout.detach(), what="output (batch_first=True)", **TOL64)
    assert_close(hn, ehn[0].detach(), what="final h", **TOL64)


def test_recurrent_layer__gru_state_given(sub, device):
    T, B, I, H = 4, 3, 2, 5
    ref = nn.GRU(I, H).to(device, F64)
    _layer(sub, "GRUCell", I, H, _sd(ref), "gs", False, device)
    x = torch.randn(T, B, I, dtype=F64, device=device)
    h0 = torch.randn(B, H, dtype=F64, device=device)
    go = (torch.randn(T, B, H, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device))
    res = sub.run("@gs", args=(x, h0), grad_wrt=[0, 1], grad_output=go)
    xr, hr = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
    out, hn = ref(xr, hr[None])
    assert_close(res.value[0], out.detach(), what="output", **TOL64)
    assert_close(res.value[1], hn[0].detach(), what="final h", **TOL64)
    gx, gh = torch.autograd.grad((out, hn[0]), (xr, hr), go)
    assert_close(res.grads[0], gx, what="gradient w.r.t. the input", **TOL64)
    assert_close(res.grads[1], gh, what="gradient w.r.t. hx", **TOL64)


def test_recurrent_layer__length_one_batch_of_one(sub, device):
    I, H = 3, 2
    ref = nn.LSTM(I, H, batch_first=True).to(device, F64)
    _layer(sub, "LSTMCell", I, H, _sd(ref), "l1", True, device)
    x = torch.randn(1, 1, I, dtype=F64, device=device)
    out, (h, c) = sub.call("@l1", x)
    eout, (eh, ec) = ref(x)
    assert_close(out, eout.detach(), what="output (T=1, B=1)", **TOL64)
    assert_close(h, eh[0].detach(), what="final h", **TOL64)
    assert_close(c, ec[0].detach(), what="final c", **TOL64)


def test_recurrent_layer__every_call_starts_from_its_own_state(sub):
    """One layer of each kind, called several times in different orders."""
    I, H = 3, 4
    lstm, gru = nn.LSTM(I, H).to(dtype=F64), nn.GRU(I, H).to(dtype=F64)
    _layer(sub, "LSTMCell", I, H, _sd(lstm), "rl", False, "cpu")
    _layer(sub, "GRUCell", I, H, _sd(gru), "rg", False, "cpu")
    x1, x2 = torch.randn(4, 2, I, dtype=F64), torch.randn(3, 3, I, dtype=F64)
    hc = (torch.randn(2, H, dtype=F64) * 2, torch.randn(2, H, dtype=F64) * 2)
    for x, state in ((x1, None), (x1, hc), (x1, None), (x2, None), (x1, hc), (x1, None)):
        got = sub.call("@rl", x, state)
        assert_type(got, tuple, task="returns (output, state)", what="RecurrentLayer's result")
        out, (hn, cn) = lstm(x, None if state is None else (state[0][None], state[1][None]))
        what = f"(LSTM cell, B={x.shape[1]}, hx={'None' if state is None else 'given'}, after other calls)"
        assert_close(got[0], out.detach(), what="output " + what, **TOL64)
        assert_type(got[1], tuple, task="state is the cell's state after the last step, in the cell's own format",
                    what="the final state of an LSTM cell")
        assert_close(got[1][0], hn[0].detach(), what="final h " + what, **TOL64)
        assert_close(got[1][1], cn[0].detach(), what="final c " + what, **TOL64)
        g_state = None if state is None else state[0]
        got = sub.call("@rg", x, g_state)
        out, hn = gru(x, None if g_state is None else g_state[None])
        assert_close(got[0], out.detach(), what="output (GRU cell, after other calls)", **TOL64)
        assert_close(got[1], hn[0].detach(), what="final h (GRU cell, after other calls)", **TOL64)


@gpu
def test_recurrent_layer__cudnn(sub):
    """The student's cells on CUDA against cuDNN's nn.GRU / nn.LSTM."""
    T, B, I, H = 12, 4, 6, 8
    for kind, cls in (("GRUCell", nn.GRU), ("LSTMCell", nn.LSTM)):
        ref = cls(I, H, batch_first=True).cuda()
        handle = "cu_" + kind
        _layer(sub, kind, I, H, _sd(ref), handle, True, "cuda", dtype=torch.float32)
        x = torch.randn(B, T, I, device="cuda")
        out, _ = sub.call("@" + handle, x)
        with cudnn_flags(torch):
            eout, _ = ref(x)
        check_tensor(out, device="cuda", what=f"RecurrentLayer({kind}) output on CUDA")
        assert_close(out, eout.detach(), what=f"RecurrentLayer({kind}) vs cuDNN", **TOL32)


# ----------------------------------------------------------------------------
# Parts 4 and 5: LSTM
# ----------------------------------------------------------------------------


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_lstm_params(sub):
    for i, kw in enumerate([dict(num_layers=2, bidirectional=True), dict(num_layers=3), dict()]):
        sub.new("LSTM", 3, 4, keep=f"p{i}", **kw)
        got = _shapes(sub.state_dict(f"p{i}"))
        want = _shapes(nn.LSTM(3, 4, **kw).state_dict())
        assert got == want, f"LSTM(3, 4, **{kw}) has parameters {got}, expected {want}"


def test_lstm_params__no_bias(sub):
    kw = dict(num_layers=2, bidirectional=True, bias=False)
    sub.new("LSTM", 5, 2, keep="pnb", **kw)
    got = _shapes(sub.state_dict("pnb"))
    want = _shapes(nn.LSTM(5, 2, **kw).state_dict())
    assert got == want, f"LSTM(5, 2, **{kw}) has parameters {got}, expected {want}"


def test_lstm_params__init(sub):
    kw = dict(num_layers=2, bidirectional=True)
    sub.new("LSTM", 5, 16, keep="pinit", **kw)
    _check_init(sub.state_dict("pinit"), _shapes(nn.LSTM(5, 16, **kw).state_dict()), 16, "LSTM")


def _lstm_case(sub, device, T, B, I, H, L, bidirectional, batch_first=False, with_state=True, bias=True,
               grads=False):
    D = 2 if bidirectional else 1
    ref = nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional).to(device, F64)
    sub.new("LSTM", I, H, num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
            keep="lstm", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, dtype=F64, device=device)
    hx = (torch.randn(L * D, B, H, dtype=F64, device=device),
          torch.randn(L * D, B, H, dtype=F64, device=device)) if with_state else None
    out_shape = (B, T, D * H) if batch_first else (T, B, D * H)
    go = (torch.randn(*out_shape, dtype=F64, device=device), (torch.randn(L * D, B, H, dtype=F64, device=device),
                                                              torch.randn(L * D, B, H, dtype=F64, device=device)))
    res = sub.run("@lstm", args=(x, hx), grad_wrt=[0] if grads else (), grad_output=go if grads else None,
                  param_grads_of="lstm" if grads else None)
    xr = x.clone().requires_grad_(True)
    out, (hn, cn) = ref(xr, hx)
    value = res.value
    assert isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], tuple) and len(value[1]) == 2, \
        "LSTM.forward should return output, (h_n, c_n)"
    assert_close(value[0], out.detach(), what="output", **TOL64)
    assert_close(value[1][0], hn.detach(), what="h_n", **TOL64)
    assert_close(value[1][1], cn.detach(), what="c_n", **TOL64)
    if grads:
        (gx,), gp = _ref_backward((out, hn, cn), (go[0], *go[1]), [xr], ref)
        assert_close(res.grads[0], gx, what="gradient w.r.t. the input", **TOL64)
        _check_params(res.param_grads, gp)


def test_lstm_forward(sub, device):
    _lstm_case(sub, device, T=5, B=3, I=4, H=6, L=2, bidirectional=True, grads=True)


def test_lstm_forward__batch_first_zero_state(sub, device):
    _lstm_case(sub, device, T=4, B=2, I=3, H=5, L=2, bidirectional=True, batch_first=True, with_state=False)


def test_lstm_forward__three_layers_one_direction(sub, device):
    _lstm_case(sub, device, T=6, B=2, I=3, H=4, L=3, bidirectional=False, grads=True)


def test_lstm_forward__length_one_batch_of_one(sub, device):
    _lstm_case(sub, device, T=1, B=1, I=2, H=3, L=2, bidirectional=True)


def test_lstm_forward__no_bias(sub, device):
    _lstm_case(sub, device, T=3, B=2, I=2, H=3, L=1, bidirectional=True, bias=False)


def test_lstm_forward__float32(sub, device):
    T, B, I, H = 7, 3, 4, 5
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True).to(device, F64)
    sub.new("LSTM", I, H, num_layers=2, bidirectional=True, keep="lstm32",
            state_dict={k: v.float() for k, v in _sd(ref).items()}, to_device=device)
    x = torch.randn(T, B, I, device=device)
    out, (hn, cn) = sub.call("@lstm32", x)
    eout, (ehn, ecn) = ref(x.double())
    assert_close(out, eout.float().detach(), what="output (float32)", **TOL32)
    assert_close(hn, ehn.float().detach(), what="h_n (float32)", **TOL32)
    assert_close(cn, ecn.float().detach(), what="c_n (float32)", **TOL32)


def test_lstm_forward__two_layers_no_bias_batch_first_with_state(sub):
    _lstm_case(sub, "cpu", T=3, B=2, I=3, H=2, L=2, bidirectional=True, batch_first=True, bias=False)


def test_lstm_forward__every_call_starts_from_its_own_state(sub):
    I, H, L = 3, 4, 2
    ref = nn.LSTM(I, H, num_layers=L, bidirectional=True).to(dtype=F64)
    sub.new("LSTM", I, H, num_layers=L, bidirectional=True, keep="rlstm", state_dict=_sd(ref), to_dtype=F64)
    x1, x2 = torch.randn(4, 2, I, dtype=F64), torch.randn(2, 3, I, dtype=F64)
    hx = (torch.randn(2 * L, 2, H, dtype=F64), torch.randn(2 * L, 2, H, dtype=F64))
    for x, state in ((x1, None), (x1, hx), (x1, None), (x2, None), (x1, hx), (x1, None)):
        got = sub.call("@rlstm", x, state)
        out, (hn, cn) = ref(x, state)
        what = f"(B={x.shape[1]}, hx={'None' if state is None else 'given'}, after other calls)"
        assert_close(got[0], out.detach(), what="output " + what, **TOL64)
        assert_close(got[1][0], hn.detach(), what="h_n " + what, **TOL64)
        assert_close(got[1][1], cn.detach(), what="c_n " + what, **TOL64)


@gpu
def test_lstm_forward__cudnn(sub):
    """The student's LSTM on CUDA against cuDNN's nn.LSTM, and against itself on the CPU."""
    T, B, I, H = 10, 4, 6, 8
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True).cuda()
    sd = _sd(ref)
    sub.new("LSTM", I, H, num_layers=2, bidirectional=True, keep="lstm_cuda", state_dict=sd, to_device="cuda")
    sub.new("LSTM", I, H, num_layers=2, bidirectional=True, keep="lstm_cpu", state_dict={k: v.cpu() for k, v in sd.items()})
    x = torch.randn(T, B, I, device="cuda")
    out, (hn, cn) = sub.call("@lstm_cuda", x)
    with cudnn_flags(torch):
        eout, (ehn, ecn) = ref(x)
    check_tensor(out, device="cuda", what="output on CUDA")
    assert_close(out, eout.detach(), what="output vs cuDNN", **TOL32)
    assert_close(hn, ehn.detach(), what="h_n vs cuDNN", **TOL32)
    assert_close(cn, ecn.detach(), what="c_n vs cuDNN", **TOL32)
    out_cpu, _ = sub.call("@lstm_cpu", x.cpu())
    assert_close(out.cpu(), out_cpu, what="output on CUDA vs CPU", **TOL32)


# ----------------------------------------------------------------------------
# Part 6: gate trace
# ----------------------------------------------------------------------------


def _trace_ref(ref, x, hx):
    T, B, _ = x.shape
    H = ref.hidden_size
    h, c = hx if hx is not None else (x.new_zeros(B, H), x.new_zeros(B, H))
    out = {k: [] for k in "ifgohc"}
    for t in range(T):
        a = x[t] @ ref.weight_ih.T + h @ ref.weight_hh.T
        if ref.bias:
            a = a + ref.bias_ih + ref.bias_hh
        i, f, g, o = a.chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        for k, v in zip("ifgohc", (i, f, g, o, h, c)):
            out[k].append(v)
    return {k: torch.stack(v).detach() for k, v in out.items()}


def _trace_case(sub, device, T, B, I, H, bias=True, with_state=True):
    ref = nn.LSTMCell(I, H, bias=bias).to(device, F64)
    sub.new("LSTMCell", I, H, bias=bias, keep="tcell", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    x = torch.randn(T, B, I, dtype=F64, device=device)
    hx = (torch.randn(B, H, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device)) if with_state else None
    got = sub.call("lstm_gate_trace", Ref("tcell"), x, hx)
    want = _trace_ref(ref, x, hx)
    assert isinstance(got, dict) and set(got) == set(want), \
        f"lstm_gate_trace should return a dict with keys {sorted(want)}, got {sorted(got) if isinstance(got, dict) else type(got).__name__}"
    for k in "ifgohc":
        assert_close(got[k], want[k], what=f'trace["{k}"]', **TOL64)


def test_lstm_gate_trace(sub, device):
    _trace_case(sub, device, T=6, B=3, I=2, H=4)


def test_lstm_gate_trace__zero_state_length_one(sub, device):
    _trace_case(sub, device, T=1, B=1, I=3, H=2, with_state=False)


def test_lstm_gate_trace__no_bias(sub, device):
    _trace_case(sub, device, T=4, B=2, I=3, H=3, bias=False)


def test_lstm_gate_trace__calls_in_any_order(sub):
    I, H = 2, 3
    ref = nn.LSTMCell(I, H).to(dtype=F64)
    sub.new("LSTMCell", I, H, keep="tc2", state_dict=_sd(ref), to_dtype=F64)
    x1, x2 = torch.randn(3, 2, I, dtype=F64), torch.randn(2, 1, I, dtype=F64)
    hx = (torch.randn(2, H, dtype=F64), torch.randn(2, H, dtype=F64))
    for x, state in ((x1, hx), (x1, None), (x2, None), (x1, hx)):
        got = sub.call("lstm_gate_trace", Ref("tc2"), x, state)
        assert_type(got, dict, task="returns a dict of (T, B, H) tensors", what="lstm_gate_trace's result")
        want = _trace_ref(ref, x, state)
        for k in "ifgohc":
            assert_close(got[k], want[k], what=f'trace["{k}"] after other calls', **TOL64)
