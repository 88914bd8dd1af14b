"""Hidden tests of a04_attention_seq2seq: masked softmax, additive, scaled dot-product
and multi-head attention, a Bahdanau decoder step, greedy decoding, BLEU, and a
date-normalisation model trained to an exact-match threshold.

References are computed here in float64 (torch.nn.MultiheadAttention with copied
weights, explicit formulas, hand-computed BLEU values).
"""

import math

import pytest
import torch
from torch import nn

from autograder.api import Ref, assert_close, assert_list_of, assert_number, assert_type, check_tensor

F64 = torch.float64
TOL64 = dict(atol=1e-10, rtol=1e-8)
TOL32 = dict(atol=2e-5, rtol=1e-4)
PAD, BOS, EOS = 0, 1, 2


def gpu(fn):
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")(fn)
    return pytest.mark.gpu(fn)


def _sd(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _mask(valid_lens, B, Tq, Tk, device):
    keys = torch.arange(Tk, device=device)
    if valid_lens is None:
        return torch.ones(B, Tq, Tk, dtype=torch.bool, device=device)
    vl = valid_lens.to(device)
    if vl.dim() == 1:
        vl = vl[:, None].expand(B, Tq)
    return keys[None, None, :] < vl[:, :, None]


def _ref_masked_softmax(scores, valid_lens):
    B, Tq, Tk = scores.shape
    keep = _mask(valid_lens, B, Tq, Tk, scores.device)
    w = torch.softmax(scores.masked_fill(~keep, -1e300), dim=-1)
    return w * keep


# ----------------------------------------------------------------------------
# Part 1: masked softmax
# ----------------------------------------------------------------------------


def _softmax_case(sub, device, B, Tq, Tk, valid_lens, dtype=F64, scale=1.0, grads=True):
    scores = (torch.randn(B, Tq, Tk, dtype=F64) * scale).to(device)
    go = torch.randn(B, Tq, Tk, dtype=F64, device=device)
    vl = valid_lens.to(device) if valid_lens is not None else None
    res = sub.run("masked_softmax", args=(scores.to(dtype), vl), grad_wrt=[0] if grads else (),
                  grad_output=go.to(dtype) if grads else None)
    sr = scores.clone().requires_grad_(True)
    want = _ref_masked_softmax(sr, vl)
    tol = TOL64 if dtype == F64 else TOL32
    assert_close(res.value, want.detach().to(dtype), what="masked_softmax weights", **tol)
    keep = _mask(vl, B, Tq, Tk, device)
    assert bool((res.value[~keep] == 0).all()), "masked positions must have weight exactly 0"
    if grads:
        (g,) = torch.autograd.grad(want, sr, go)
        assert_close(res.grads[0], g.to(dtype), what="gradient w.r.t. scores", **tol)


def test_masked_softmax(sub, device):
    _softmax_case(sub, device, 3, 4, 5, torch.tensor([5, 2, 1]))


def test_masked_softmax__per_query_lengths(sub, device):
    _softmax_case(sub, device, 2, 5, 6, torch.randint(1, 7, (2, 5)))


def test_masked_softmax__no_mask(sub, device):
    _softmax_case(sub, device, 2, 3, 4, None)


def test_masked_softmax__empty_rows_are_zero(sub, device):
    _softmax_case(sub, device, 3, 2, 4, torch.tensor([0, 3, 4]))
    _softmax_case(sub, device, 2, 3, 4, torch.tensor([[0, 1, 4], [2, 0, 0]]))


def test_masked_softmax__float32_large_scores_float_lengths(sub, device):
    _softmax_case(sub, device, 2, 3, 7, torch.tensor([6.0, 2.0]), dtype=torch.float32, scale=60.0, grads=False)


def test_masked_softmax__batch_of_one_single_key(sub, device):
    _softmax_case(sub, device, 1, 1, 1, torch.tensor([1]))


def test_masked_softmax__calls_in_any_order(sub):
    """The same scores with other lengths, and the other way round: nothing carries over between calls."""
    scores = torch.randn(2, 3, 4, dtype=F64)
    for vl in (torch.tensor([4, 1]), None, torch.tensor([[1, 2, 3], [4, 0, 2]]), torch.tensor([2.0, 3.0]),
               torch.tensor([4, 1])):
        got = sub.call("masked_softmax", scores, vl)
        assert_close(got, _ref_masked_softmax(scores, vl), what=f"weights for valid_lens={vl} after other calls", **TOL64)


# ----------------------------------------------------------------------------
# Part 2: additive attention
# ----------------------------------------------------------------------------


def _additive_ref(sd, q, k, v, valid_lens):
    feats = torch.tanh((q @ sd["W_q.weight"].T).unsqueeze(2) + (k @ sd["W_k.weight"].T).unsqueeze(1))
    scores = (feats @ sd["w_v.weight"].T).squeeze(-1)
    w = _ref_masked_softmax(scores, valid_lens)
    return w @ v, w


def _additive_case(sub, device, B, Tq, Tk, kdim, qdim, A, Dv, valid_lens, grads=True):
    sd = {"W_k.weight": torch.randn(A, kdim, dtype=F64, device=device) / math.sqrt(kdim),
          "W_q.weight": torch.randn(A, qdim, dtype=F64, device=device) / math.sqrt(qdim),
          "w_v.weight": torch.randn(1, A, dtype=F64, device=device)}
    sub.new("AdditiveAttention", kdim, qdim, A, keep="add", state_dict=sd, to_dtype=F64, to_device=device)
    q = torch.randn(B, Tq, qdim, dtype=F64, device=device)
    k = torch.randn(B, Tk, kdim, dtype=F64, device=device)
    v = torch.randn(B, Tk, Dv, dtype=F64, device=device)
    vl = valid_lens.to(device) if valid_lens is not None else None
    go = (torch.randn(B, Tq, Dv, dtype=F64, device=device), torch.zeros(B, Tq, Tk, dtype=F64, device=device))
    res = sub.run("@add", args=(q, k, v, vl), grad_wrt=[0, 1, 2] if grads else (),
                  grad_output=go if grads else None, param_grads_of="add" if grads else None)
    assert isinstance(res.value, tuple) and len(res.value) == 2, "AdditiveAttention should return (output, weights)"
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    params = {n: p.clone().requires_grad_(True) for n, p in sd.items()}
    out, w = _additive_ref(params, *leaves, vl)
    assert_close(res.value[0], out.detach(), what="output", **TOL64)
    assert_close(res.value[1], w.detach(), what="weights", **TOL64)
    if grads:
        got = torch.autograd.grad(out, leaves + list(params.values()), go[0])
        for name, g, r in zip(("queries", "keys", "values"), res.grads, got[:3]):
            assert_close(g, r, what=f"gradient w.r.t. {name}", **TOL64)
        for (name, _), r in zip(params.items(), got[3:]):
            assert name in res.param_grads, f"no gradient for parameter {name}"
            assert_close(res.param_grads[name], r, what=f"gradient of {name}", **TOL64)


def test_additive_attention(sub, device):
    _additive_case(sub, device, B=2, Tq=3, Tk=4, kdim=5, qdim=4, A=6, Dv=3, valid_lens=torch.tensor([4, 2]))


def test_additive_attention__no_mask_batch_of_one(sub, device):
    _additive_case(sub, device, B=1, Tq=1, Tk=3, kdim=2, qdim=3, A=4, Dv=2, valid_lens=None)


def test_additive_attention__per_query_lengths(sub, device):
    _additive_case(sub, device, B=2, Tq=3, Tk=5, kdim=3, qdim=3, A=4, Dv=2,
                   valid_lens=torch.tensor([[1, 3, 5], [2, 2, 4]]), grads=False)


def test_additive_attention__calls_in_any_order(sub):
    kdim, qdim, A, Dv = 3, 2, 4, 2
    sd = {"W_k.weight": torch.randn(A, kdim, dtype=F64), "W_q.weight": torch.randn(A, qdim, dtype=F64),
          "w_v.weight": torch.randn(1, A, dtype=F64)}
    sub.new("AdditiveAttention", kdim, qdim, A, keep="add2", state_dict=sd, to_dtype=F64)
    cases = []
    for B, Tq, Tk, vl in ((2, 3, 4, torch.tensor([4, 2])), (1, 2, 5, None), (2, 1, 3, torch.tensor([[1], [3]]))):
        cases.append((torch.randn(B, Tq, qdim, dtype=F64), torch.randn(B, Tk, kdim, dtype=F64),
                      torch.randn(B, Tk, Dv, dtype=F64), vl))
    for q, k, v, vl in cases + cases[::-1]:
        got = sub.call("@add2", q, k, v, vl)
        assert_type(got, tuple, task="It returns a tuple (output, weights)", what="AdditiveAttention's result")
        out, w = _additive_ref(sd, q, k, v, vl)
        assert_close(got[0], out, what="output after other calls", **TOL64)
        assert_close(got[1], w, what="weights after other calls", **TOL64)


# ----------------------------------------------------------------------------
# Part 3: scaled dot-product attention
# ----------------------------------------------------------------------------


def _sdpa_case(sub, device, B, Tq, Tk, d, Dv, valid_lens, grads=True):
    Q = torch.randn(B, Tq, d, dtype=F64, device=device)
    K = torch.randn(B, Tk, d, dtype=F64, device=device)
    V = torch.randn(B, Tk, Dv, dtype=F64, device=device)
    vl = valid_lens.to(device) if valid_lens is not None else None
    go = (torch.randn(B, Tq, Dv, dtype=F64, device=device), torch.randn(B, Tq, Tk, dtype=F64, device=device))
    res = sub.run("scaled_dot_product_attention", args=(Q, K, V, vl), grad_wrt=[0, 1, 2] if grads else (),
                  grad_output=go if grads else None)
    assert isinstance(res.value, tuple) and len(res.value) == 2, "should return (output, weights)"
    leaves = [t.clone().requires_grad_(True) for t in (Q, K, V)]
    w = _ref_masked_softmax(leaves[0] @ leaves[1].transpose(1, 2) / math.sqrt(d), vl)
    out = w @ leaves[2]
    assert_close(res.value[0], out.detach(), what="output", **TOL64)
    assert_close(res.value[1], w.detach(), what="weights", **TOL64)
    if grads:
        got = torch.autograd.grad((out, w), leaves, go)
        for name, g, r in zip("QKV", res.grads, got):
            assert_close(g, r, what=f"gradient w.r.t. {name}", **TOL64)


def test_scaled_dot_product_attention(sub, device):
    _sdpa_case(sub, device, B=2, Tq=3, Tk=5, d=8, Dv=6, valid_lens=torch.tensor([5, 3]))


def test_scaled_dot_product_attention__matches_torch_without_mask(sub, device):
    Q, K, V = (torch.randn(3, n, 16, dtype=F64, device=device) for n in (4, 6, 6))
    out, w = sub.call("scaled_dot_product_attention", Q, K, V)
    assert_close(out, torch.nn.functional.scaled_dot_product_attention(Q, K, V), what="output", **TOL64)


def test_scaled_dot_product_attention__all_but_one_masked(sub, device):
    B, Tq, Tk, d, Dv = 3, 4, 5, 4, 3
    Q, K, V = (torch.randn(B, n, m, dtype=F64, device=device) for n, m in ((Tq, d), (Tk, d), (Tk, Dv)))
    out, w = sub.call("scaled_dot_product_attention", Q, K, V, torch.ones(B, dtype=torch.long, device=device))
    assert_close(out, V[:, :1].expand(B, Tq, Dv).contiguous(), what="output with a single valid key", **TOL64)
    onehot = torch.zeros(B, Tq, Tk, dtype=F64, device=device)
    onehot[..., 0] = 1
    assert_close(w, onehot, what="weights with a single valid key", **TOL64)


def test_scaled_dot_product_attention__per_query_lengths(sub, device):
    _sdpa_case(sub, device, B=2, Tq=3, Tk=4, d=3, Dv=2, valid_lens=torch.tensor([[1, 2, 4], [3, 3, 1]]), grads=False)


# ----------------------------------------------------------------------------
# Part 4: multi-head attention
# ----------------------------------------------------------------------------


def _mha_case(sub, device, B, Tq, Tk, E, h, mask, bias=True, self_attention=False, grads=False):
    ref = nn.MultiheadAttention(E, h, bias=bias, batch_first=True).to(device, F64)
    with torch.no_grad():  # non-zero biases, so that misplaced biases show
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_()
    sub.new("MultiHeadAttention", E, h, bias=bias, keep="mha", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    q = torch.randn(B, Tq, E, dtype=F64, device=device)
    k = q if self_attention else torch.randn(B, Tk, E, dtype=F64, device=device)
    v = q if self_attention else torch.randn(B, Tk, E, dtype=F64, device=device)
    mask = mask.to(device) if mask is not None else None
    go = (torch.randn(B, Tq, E, dtype=F64, device=device), torch.randn(B, Tq, Tk, dtype=F64, device=device))
    res = sub.run("@mha", args=(q, k, v), kwargs={"key_padding_mask": mask}, grad_wrt=[0, 1, 2] if grads else (),
                  grad_output=go if grads else None, param_grads_of="mha" if grads else None)
    assert isinstance(res.value, tuple) and len(res.value) == 2, "should return (attn_output, attn_weights)"
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, w = ref(*leaves, key_padding_mask=mask, need_weights=True, average_attn_weights=True)
    assert_close(res.value[0], out.detach(), what="attn_output", **TOL64)
    assert_close(res.value[1], w.detach(), what="attn_weights (averaged over heads)", **TOL64)
    if grads:
        params = dict(ref.named_parameters())
        got = torch.autograd.grad((out, w), leaves + list(params.values()), go)
        for name, g, r in zip(("query", "key", "value"), res.grads, got[:3]):
            assert_close(g, r, what=f"gradient w.r.t. {name}", **TOL64)
        for name, r in zip(params, got[3:]):
            assert name in res.param_grads, f"no gradient for parameter {name}"
            assert_close(res.param_grads[name], r, what=f"gradient of {name}", **TOL64)


def test_multi_head_attention(sub, device):
    mask = torch.tensor([[False] * 5, [False, False, False, True, True], [True, False, True, False, False]])
    _mha_case(sub, device, B=3, Tq=4, Tk=5, E=12, h=3, mask=mask, grads=True)


def test_multi_head_attention__self_attention_no_mask(sub, device):
    _mha_case(sub, device, B=2, Tq=6, Tk=6, E=8, h=4, mask=None, self_attention=True)


def test_multi_head_attention__all_but_one_key_masked(sub, device):
    B, Tk = 3, 6
    mask = torch.ones(B, Tk, dtype=torch.bool)
    mask[torch.arange(B), torch.randint(Tk, (B,))] = False
    _mha_case(sub, device, B=B, Tq=2, Tk=Tk, E=8, h=2, mask=mask)


def test_multi_head_attention__no_bias(sub, device):
    _mha_case(sub, device, B=2, Tq=3, Tk=4, E=6, h=2, mask=torch.tensor([[False] * 4, [False, True, False, True]]),
              bias=False)


def test_multi_head_attention__batch_of_one_single_query(sub, device):
    _mha_case(sub, device, B=1, Tq=1, Tk=3, E=4, h=1, mask=None)


def test_multi_head_attention__parameters(sub):
    for i, (E, h, bias) in enumerate([(12, 3, True), (8, 2, False)]):
        sub.new("MultiHeadAttention", E, h, bias=bias, keep=f"mp{i}")
        sd = sub.state_dict(f"mp{i}")
        want = {k: tuple(v.shape) for k, v in nn.MultiheadAttention(E, h, bias=bias, batch_first=True).state_dict().items()}
        got = {k: tuple(v.shape) for k, v in sd.items()}
        assert got == want, f"MultiHeadAttention({E}, {h}, bias={bias}) has parameters {got}, expected {want}"
        if bias:
            assert bool((sd["in_proj_bias"] == 0).all()) and bool((sd["out_proj.bias"] == 0).all()), \
                "biases should start at zero"
        bound = math.sqrt(6 / (E + 3 * E))
        assert float(sd["in_proj_weight"].abs().max()) <= bound + 1e-6, "in_proj_weight is not xavier-uniform"


def test_multi_head_attention__calls_in_any_order(sub):
    E, h = 8, 2
    ref = nn.MultiheadAttention(E, h, batch_first=True).to(dtype=F64)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_()
    sub.new("MultiHeadAttention", E, h, keep="mha2", state_dict=_sd(ref), to_dtype=F64)
    q1, kv1 = torch.randn(2, 3, E, dtype=F64), torch.randn(2, 4, E, dtype=F64)
    q2, kv2 = torch.randn(1, 5, E, dtype=F64), torch.randn(1, 2, E, dtype=F64)
    kv3 = torch.randn(2, 4, E, dtype=F64)  # the same shapes as kv1, other values
    m1 = torch.tensor([[False, True, False, False], [False, False, True, True]])
    for q, kv, m in ((q1, kv1, m1), (q2, kv2, None), (q1, kv1, None), (q1, kv3, m1), (q2, kv2, torch.tensor([[True, False]])),
                     (q1, kv1, m1)):
        got = sub.call("@mha2", q, kv, kv, key_padding_mask=m)
        assert_type(got, tuple, task="Return (attn_output, attn_weights)", what="MultiHeadAttention's result")
        out, w = ref(q, kv, kv, key_padding_mask=m, need_weights=True, average_attn_weights=True)
        assert_close(got[0], out.detach(), what="attn_output after other calls", **TOL64)
        assert_close(got[1], w.detach(), what="attn_weights after other calls", **TOL64)


@gpu
def test_multi_head_attention__cuda(sub):
    """The student's MHA on CUDA against nn.MultiheadAttention on CUDA and against itself on the CPU."""
    B, Tq, Tk, E, h = 4, 5, 7, 16, 4
    ref = nn.MultiheadAttention(E, h, batch_first=True).cuda()
    sd = _sd(ref)
    sub.new("MultiHeadAttention", E, h, keep="mha_cuda", state_dict=sd, to_device="cuda")
    sub.new("MultiHeadAttention", E, h, keep="mha_cpu", state_dict={k: v.cpu() for k, v in sd.items()})
    q, k, v = (torch.randn(B, n, E, device="cuda") for n in (Tq, Tk, Tk))
    mask = torch.zeros(B, Tk, dtype=torch.bool, device="cuda")
    mask[1, 3:] = True
    out, w = sub.call("@mha_cuda", q, k, v, key_padding_mask=mask)
    check_tensor(out, device="cuda", what="attn_output on CUDA")
    eout, ew = ref(q, k, v, key_padding_mask=mask)
    assert_close(out, eout.detach(), what="attn_output vs nn.MultiheadAttention on CUDA", **TOL32)
    assert_close(w, ew.detach(), what="attn_weights vs nn.MultiheadAttention on CUDA", **TOL32)
    out_cpu, _ = sub.call("@mha_cpu", q.cpu(), k.cpu(), v.cpu(), key_padding_mask=mask.cpu())
    assert_close(out.cpu(), out_cpu, what="attn_output on CUDA vs CPU", **TOL32)


# ----------------------------------------------------------------------------
# Part 5: decoder step
# ----------------------------------------------------------------------------


def _decoder_sd(V, E, H, device):
    def r(*shape, scale=1.0):
        return torch.randn(*shape, dtype=F64, device=device) * scale
    s = 1 / math.sqrt(H)
    return {
        "embedding.weight": r(V, E),
        "attention.W_k.weight": r(H, H, scale=s), "attention.W_q.weight": r(H, H, scale=s),
        "attention.w_v.weight": r(1, H),
        "rnn.weight_ih": r(3 * H, E + H, scale=s), "rnn.weight_hh": r(3 * H, H, scale=s),
        "rnn.bias_ih": r(3 * H, scale=s), "rnn.bias_hh": r(3 * H, scale=s),
        "dense.weight": r(V, H, scale=s), "dense.bias": r(V, scale=s),
    }


def _gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    H = h.shape[1]
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    r = torch.sigmoid(gi[:, :H] + gh[:, :H])
    z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h


def _decoder_step_ref(p, y_prev, state, enc_outputs, valid_lens, prefix="decoder."):
    g = lambda name: p[prefix + name]  # noqa: E731
    att = {"W_q.weight": g("attention.W_q.weight"), "W_k.weight": g("attention.W_k.weight"),
           "w_v.weight": g("attention.w_v.weight")}
    context, w = _additive_ref(att, state.unsqueeze(1), enc_outputs, enc_outputs, valid_lens)
    x = torch.cat([g("embedding.weight")[y_prev], context.squeeze(1)], dim=-1)
    new = _gru_cell(x, state, g("rnn.weight_ih"), g("rnn.weight_hh"), g("rnn.bias_ih"), g("rnn.bias_hh"))
    return new @ g("dense.weight").T + g("dense.bias"), new, w.squeeze(1)


def _decoder_case(sub, device, B, S, V, E, H, grads=True):
    sd = _decoder_sd(V, E, H, device)
    sub.new("BahdanauDecoder", V, E, H, keep="dec", state_dict=sd, to_dtype=F64, to_device=device)
    y_prev = torch.randint(V, (B,), device=device)
    state = torch.randn(B, H, dtype=F64, device=device)
    enc = torch.randn(B, S, H, dtype=F64, device=device)
    lens = torch.randint(1, S + 1, (B,), device=device)
    go = (torch.randn(B, V, dtype=F64, device=device), torch.randn(B, H, dtype=F64, device=device),
          torch.randn(B, S, dtype=F64, device=device))
    res = sub.run("@dec", args=(y_prev, state, enc, lens), grad_wrt=[1, 2] if grads else (),
                  grad_output=go if grads else None, param_grads_of="dec" if grads else None)
    assert isinstance(res.value, tuple) and len(res.value) == 3, "the decoder should return (logits, state, weights)"
    params = {n: t.clone().requires_grad_(True) for n, t in sd.items()}
    sr, er = state.clone().requires_grad_(True), enc.clone().requires_grad_(True)
    logits, new, w = _decoder_step_ref(params, y_prev, sr, er, lens, prefix="")
    assert_close(res.value[0], logits.detach(), what="logits", **TOL64)
    assert_close(res.value[1], new.detach(), what="new state", **TOL64)
    assert_close(res.value[2], w.detach(), what="attention weights", **TOL64)
    if grads:
        got = torch.autograd.grad((logits, new, w), [sr, er] + list(params.values()), go)
        assert_close(res.grads[0], got[0], what="gradient w.r.t. the state", **TOL64)
        assert_close(res.grads[1], got[1], what="gradient w.r.t. enc_outputs", **TOL64)
        for name, r in zip(params, got[2:]):
            assert name in res.param_grads, f"no gradient for parameter {name}"
            assert_close(res.param_grads[name], r, what=f"gradient of {name}", **TOL64)


def test_decoder_step(sub, device):
    _decoder_case(sub, device, B=3, S=6, V=7, E=4, H=5)


def test_decoder_step__batch_of_one_source_of_one(sub, device):
    _decoder_case(sub, device, B=1, S=1, V=5, E=3, H=2)


def test_decoder_step__calls_in_any_order(sub):
    V, E, H = 6, 3, 4
    sd = _decoder_sd(V, E, H, "cpu")
    sub.new("BahdanauDecoder", V, E, H, keep="dec2", state_dict=sd, to_dtype=F64)
    cases = []
    for B, S in ((2, 5), (3, 2), (1, 4)):
        cases.append((torch.randint(V, (B,)), torch.randn(B, H, dtype=F64), torch.randn(B, S, H, dtype=F64),
                      torch.randint(1, S + 1, (B,))))
    for y, state, enc, lens in cases + cases[::-1]:
        got = sub.call("@dec2", y, state, enc, lens)
        assert_type(got, tuple, task="Return (logits, new_state, weights)", what="the decoder's result")
        want = _decoder_step_ref(sd, y, state, enc, lens, prefix="")
        for name, g, w in zip(("logits", "new state", "attention weights"), got, want):
            assert_close(g, w.detach(), what=f"{name} after other calls", **TOL64)


# ----------------------------------------------------------------------------
# Part 6: greedy decoding
# ----------------------------------------------------------------------------

SRC_V, TGT_V, EMB, HID = 12, 9, 4, 6


def _model_sd(device):
    def r(*shape, scale=1.0):
        return torch.randn(*shape, dtype=F64, device=device) * scale
    s = 1 / math.sqrt(HID)
    sd = {"src_embedding.weight": r(SRC_V, EMB),
          "encoder.weight_ih_l0": r(3 * HID, EMB, scale=s), "encoder.weight_hh_l0": r(3 * HID, HID, scale=s),
          "encoder.bias_ih_l0": r(3 * HID, scale=s), "encoder.bias_hh_l0": r(3 * HID, scale=s)}
    dec = _decoder_sd(TGT_V, EMB, HID, device)
    dec["dense.weight"] = dec["dense.weight"] * 6  # confident predictions: no near-ties
    dec["dense.bias"][PAD] = dec["dense.bias"][BOS] = -50.0  # never predicted, as in a trained model
    sd.update({"decoder." + k: v for k, v in dec.items()})
    return sd


def _encode_ref(sd, src, lens):
    gru = nn.GRU(EMB, HID, batch_first=True).to(src.device, F64)
    gru.load_state_dict({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")})
    emb = sd["src_embedding.weight"][src]
    B = src.shape[0]
    outs = torch.zeros(B, src.shape[1], HID, dtype=F64, device=src.device)
    last = torch.zeros(B, HID, dtype=F64, device=src.device)
    for b in range(B):  # one sequence at a time, exactly its valid part
        n = int(lens[b])
        o, hn = gru(emb[b : b + 1, :n])
        outs[b, :n] = o[0]
        last[b] = hn[0, 0]
    return outs, last


@torch.no_grad()
def _greedy_ref(sd, src, lens, max_len):
    enc, state = _encode_ref(sd, src, lens)
    B = src.shape[0]
    y = torch.full((B,), BOS, dtype=torch.long, device=src.device)
    out, done = [[] for _ in range(B)], [False] * B
    for _ in range(max_len):
        logits, state, _ = _decoder_step_ref(sd, y, state, enc, lens)
        y = logits.argmax(-1)
        for b, t in enumerate(y.tolist()):
            if not done[b]:
                if t == EOS:
                    done[b] = True
                else:
                    out[b].append(t)
    return out


def _source_batch(B, S, device):
    lens = torch.randint(1, S + 1, (B,))
    lens[0] = S
    src = torch.randint(3, SRC_V, (B, S))
    src[torch.arange(S)[None, :] >= lens[:, None]] = PAD
    return src.to(device), lens.to(device)


def _greedy_case(sub, device, B, S, max_len, sd, src=None):
    sub.new("Seq2SeqAttention", SRC_V, TGT_V, EMB, HID, keep="s2s", state_dict=sd, to_dtype=F64, to_device=device)
    src, lens = src if src is not None else _source_batch(B, S, device)
    got = sub.call("greedy_decode", Ref("s2s"), src, lens, max_len=max_len)
    want = _greedy_ref(sd, src, lens, max_len)
    assert isinstance(got, list) and len(got) == B and all(isinstance(g, list) for g in got), \
        "greedy_decode should return a list of B lists of ints"
    assert all(type(t) is int for g in got for t in g), "token ids should be Python ints"
    assert got == want, f"greedy_decode returned {got}, expected {want}"


def test_greedy_decode(sub, device):
    B, S, max_len = 8, 7, 6
    sd = _model_sd(device)
    src = _source_batch(B, S, device)
    # Raise the <eos> logit until some (not all) outputs stop early, so stopping is exercised.
    for eos_bias in torch.arange(0.0, 12.0, 0.25).tolist():
        trial = {k: v.clone() for k, v in sd.items()}
        trial["decoder.dense.bias"][EOS] += eos_bias
        lengths = [len(w) for w in _greedy_ref(trial, *src, max_len)]
        if min(lengths) < max_len and max(lengths) == max_len and max(lengths) > 0:
            break
    else:
        raise RuntimeError("test setup: no <eos> bias gives outputs of mixed lengths")
    _greedy_case(sub, device, B, S, max_len, trial, src=src)


def test_greedy_decode__stops_at_first_eos(sub, device):
    sd = _model_sd(device)
    sd["decoder.dense.weight"].zero_()
    sd["decoder.dense.bias"].zero_()
    sd["decoder.dense.bias"][EOS] = 1.0
    _greedy_case(sub, device, B=3, S=4, max_len=5, sd=sd)  # every output is empty


def test_greedy_decode__never_stops(sub, device):
    sd = _model_sd(device)
    sd["decoder.dense.weight"].zero_()
    sd["decoder.dense.bias"].zero_()
    sd["decoder.dense.bias"][5] = 1.0
    _greedy_case(sub, device, B=2, S=3, max_len=4, sd=sd)  # [5, 5, 5, 5] each


@torch.no_grad()
def _argmax_streams(sd, src, lens, max_len):
    """The argmax token of every sequence at every step, ignoring <eos> (feeding back each argmax)."""
    enc, state = _encode_ref(sd, src, lens)
    y = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
    steps = []
    for _ in range(max_len):
        logits, state, _ = _decoder_step_ref(sd, y, state, enc, lens)
        y = logits.argmax(-1)
        steps.append(y.tolist())
    return [list(col) for col in zip(*steps)]  # (B, max_len)


def _writes_after_eos(streams, max_len):
    """Whether some sequence would emit a non-<eos> token after its first <eos>, while others still run."""
    ends = [s.index(EOS) if EOS in s else max_len for s in streams]
    last_step = min(max(ends), max_len - 1)  # the loop runs at least until every sequence has ended
    return any(EOS in s and any(t != EOS for t in s[ends[b] + 1 : last_step + 1]) for b, s in enumerate(streams))


def test_greedy_decode__nothing_after_eos(sub, device):
    """A sequence that has emitted <eos> gets no more tokens, even when the model goes on writing."""
    B, S, max_len = 6, 6, 8
    sd = _model_sd(device)
    src = _source_batch(B, S, device)
    for eos_bias in torch.arange(0.0, 12.0, 0.25).tolist():
        trial = {k: v.clone() for k, v in sd.items()}
        trial["decoder.dense.bias"][EOS] += eos_bias
        streams = _argmax_streams(trial, *src, max_len)
        lengths = [s.index(EOS) if EOS in s else max_len for s in streams]  # the lengths greedy decoding gives
        if _writes_after_eos(streams, max_len) and max(lengths) == max_len:
            break
    else:
        raise RuntimeError("test setup: no <eos> bias makes a finished sequence write on while another runs")
    assert _writes_after_eos(streams, max_len) and min(lengths) < max_len  # the property this case is for
    _greedy_case(sub, device, B, S, max_len, trial, src=src)


def test_greedy_decode__max_len_zero_and_repeated_calls(sub):
    sd = _model_sd("cpu")
    sub.new("Seq2SeqAttention", SRC_V, TGT_V, EMB, HID, keep="s2s2", state_dict=sd, to_dtype=F64)
    a, b = _source_batch(3, 5, "cpu"), _source_batch(2, 3, "cpu")
    got = sub.call("greedy_decode", Ref("s2s2"), *a, max_len=0)
    assert got == [[], [], []], f"max_len=0 allows no token: expected [[], [], []], got {got}"
    for (src, lens), max_len in ((a, 4), (b, 6), (a, 4), (b, 2), (a, 6)):
        got = sub.call("greedy_decode", Ref("s2s2"), src, lens, max_len=max_len)
        assert_list_of(got, list, task="Return a Python list of B lists of int token ids", what="greedy_decode's result",
                       length=src.shape[0])
        assert got == _greedy_ref(sd, src, lens, max_len), f"greedy_decode after other calls returned {got}"


def test_greedy_decode__batch_of_one(sub, device):
    _greedy_case(sub, device, B=1, S=1, max_len=5, sd=_model_sd(device))


# ----------------------------------------------------------------------------
# Part 7: BLEU, against values computed by hand
# ----------------------------------------------------------------------------


def _bleu(sub, cand, ref, max_n, expected, what):
    got = sub.call("bleu", list(cand), list(ref), max_n=max_n)
    assert type(got) is float, f"bleu should return a Python float, got {type(got).__name__}"
    assert_number(got, expected, atol=1e-9, rtol=1e-9, what=what)


def test_bleu(sub):
    cand, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    _bleu(sub, ref, ref, 4, 1.0, "BLEU of the reference itself")
    # p1 = 5/6, p2 = 3/5, p3 = 1/4: (5/6 * 3/5 * 1/4) ** (1/3) = 0.125 ** (1/3) = 0.5
    _bleu(sub, cand, ref, 3, 0.5, "BLEU-3 of 'the cat sat on the mat'")
    _bleu(sub, cand, ref, 4, 0.0, "BLEU-4 without matching 4-grams")


def test_bleu__dates(sub):
    # p_n = 9/10, 8/9, 7/8, 6/7: the product telescopes to 6/10.
    _bleu(sub, "2021-03-04", "2021-03-03", 4, 0.6 ** 0.25, "BLEU of '2021-03-04' vs '2021-03-03'")


def test_bleu__brevity_penalty(sub):
    # c = 2, r = 6, p1 = p2 = 1: BP = exp(1 - 6/2).
    _bleu(sub, "the cat".split(), "the cat sat on the mat".split(), 2, math.exp(-2), "BLEU of a short candidate")
    # c = 9, r = 10 (one character dropped): p1 = 1, p2 = 7/8; BP = exp(1 - 10/9)
    _bleu(sub, "2021-0303", "2021-03-03", 2, math.exp(1 - 10 / 9) * math.sqrt(7 / 8), "BLEU of '2021-0303'")


def test_bleu__clipping_and_long_candidates(sub):
    _bleu(sub, "the the the the".split(), "the cat the mat".split(), 1, 0.5, "clipped unigram precision")
    # c = 6 > r = 4: no penalty; p1 = 4/6, p2 = 3/5.
    _bleu(sub, "abcdef", "abcd", 2, math.sqrt(4 / 6 * 3 / 5), "BLEU of a long candidate")


def test_bleu__empty_and_too_short(sub):
    _bleu(sub, [], "abc", 4, 0.0, "BLEU of an empty candidate")
    _bleu(sub, "ab", "ab", 4, 0.0, "BLEU-4 of a 2-token candidate")
    _bleu(sub, "ab", "ab", 2, 1.0, "BLEU-2 of a 2-token exact match")


def test_bleu__default_max_n_and_repeated_calls(sub):
    cand, ref = list("2021-03-04"), list("2021-03-03")
    got = sub.call("bleu", cand, ref)
    assert_type(got, float, task="returns a Python float", what="bleu(...) with the default max_n")
    assert_number(got, 0.6 ** 0.25, atol=1e-9, rtol=1e-9, what="BLEU with the default max_n=4")
    for c, r, n, want in ((cand, ref, 4, 0.6 ** 0.25), ("the the the the".split(), "the cat the mat".split(), 1, 0.5),
                          (cand, ref, 4, 0.6 ** 0.25), ([], ref, 2, 0.0), (cand, ref, 4, 0.6 ** 0.25)):
        _bleu(sub, c, r, n, want, "BLEU after other calls")


# ----------------------------------------------------------------------------
# Part 8: training to a threshold
# ----------------------------------------------------------------------------

SRC_ITOS = ["<pad>", "<bos>", "<eos>"] + list(" ,./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
TGT_ITOS = ["<pad>", "<bos>", "<eos>"] + list("-0123456789")


def _encode(strings):
    stoi = {c: i for i, c in enumerate(SRC_ITOS)}
    seqs = [[stoi[c] for c in s] + [EOS] for s in strings]
    S = max(map(len, seqs))
    ids = torch.full((len(seqs), S), PAD, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


def test_train_dates(sub):
    from seqcourse.dates import make_date_pairs, split_pairs

    pairs = make_date_pairs(1200, seed=2024, styles=["us_slash", "day_month_year"])
    train, held_out = split_pairs(pairs, val_frac=1 / 6)
    sub.run("train_date_model", args=(train,), kwargs={"num_steps": 150, "seed": 0}, keep="dates")
    src, lens = _encode([s for s, _ in held_out])
    ids = sub.call("greedy_decode", Ref("dates"), src, lens, max_len=12)
    assert isinstance(ids, list) and len(ids) == len(held_out), "greedy_decode should return one id list per source"
    preds = ["".join(TGT_ITOS[i] if 0 <= i < len(TGT_ITOS) else "?" for i in row) for row in ids]
    em = sum(p == t for p, (_, t) in zip(preds, held_out)) / len(held_out)
    assert em >= 0.7, f"exact match {em:.3f} on {len(held_out)} held-out dates is below 0.7 (e.g. {preds[:3]})"


# The process of train_date_model. The task leaves the sizes, the optimiser, the
# learning rate and the batch size to the student, so the reference here is not a
# whole loop but the first update: with num_steps=0 the function returns the
# untrained model (its weights depend on the seed only), with num_steps=1 the
# same model after one update. On a training set of one repeated pair, every
# minibatch is the same whatever the batch size and the random stream, and the
# first step of Adam, SGD or RMSprop moves every weight against the sign of the
# gradient of the task's loss, computed here in float64 from the same weights.

MODEL_KEYS = {"src_embedding.weight", "encoder.weight_ih_l0", "encoder.weight_hh_l0", "encoder.bias_ih_l0",
              "encoder.bias_hh_l0", "decoder.embedding.weight", "decoder.attention.W_k.weight",
              "decoder.attention.W_q.weight", "decoder.attention.w_v.weight", "decoder.rnn.weight_ih",
              "decoder.rnn.weight_hh", "decoder.rnn.bias_ih", "decoder.rnn.bias_hh", "decoder.dense.weight",
              "decoder.dense.bias"}
TRAIN_TASK = ("build a Seq2SeqAttention ..., train it with teacher forcing on train_pairs ... for exactly "
              "num_steps parameter updates, and return the trained model (on the CPU, in eval mode)")


def _trained_sd(sub, pairs, num_steps, seed, keep):
    sub.run("train_date_model", args=(pairs,), kwargs={"num_steps": num_steps, "seed": seed}, keep=keep)
    sd = sub.state_dict(keep)
    assert set(sd) == MODEL_KEYS, f"the returned model should be a Seq2SeqAttention, got parameters {sorted(sd)}"
    for name, v in sd.items():
        check_tensor(v, device="cpu", what=f"{name} of the returned model")
    return sd


def _encode_strings(strings, itos):
    stoi = {c: i for i, c in enumerate(itos)}
    seqs = [[stoi[c] for c in s] + [EOS] for s in strings]
    S = max(map(len, seqs))
    ids = torch.full((len(seqs), S), PAD, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) for s in seqs])


def _teacher_forcing_grads(sd, pairs, ignore_pad=True):
    """Gradients of the mean cross-entropy of teacher forcing on ``pairs`` (one batch), in float64."""
    p = {k: v.double().clone().requires_grad_(True) for k, v in sd.items()}
    src, lens = _encode_strings([s for s, _ in pairs], SRC_ITOS)
    tgt, _ = _encode_strings([t for _, t in pairs], TGT_ITOS)
    B, S = src.shape
    H = p["encoder.weight_hh_l0"].shape[1]
    emb = p["src_embedding.weight"][src]  # (B, S, E)
    h, outs = torch.zeros(B, H, dtype=F64), []
    for t in range(S):  # a GRU over each source's valid part; zeros beyond it, as pad_packed_sequence gives
        new = _gru_cell(emb[:, t], h, p["encoder.weight_ih_l0"], p["encoder.weight_hh_l0"],
                        p["encoder.bias_ih_l0"], p["encoder.bias_hh_l0"])
        valid = (t < lens)[:, None]
        h = torch.where(valid, new, h)
        outs.append(torch.where(valid, new, torch.zeros_like(new)))
    enc, state = torch.stack(outs, dim=1), h
    tgt_in = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)  # (B, T): <bos> + shifted
    logits = []
    for t in range(tgt.shape[1]):
        step, state, _ = _decoder_step_ref(p, tgt_in[:, t], state, enc, lens)
        logits.append(step)
    logits = torch.stack(logits, dim=1)  # (B, T, V)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                       ignore_index=PAD if ignore_pad else -100)
    grads = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
    return {k: torch.zeros_like(p[k]) if g is None else g for k, g in zip(p, grads)}


def test_train_dates__num_steps_zero_is_the_untrained_model(sub):
    pairs = [("7 March 2021", "2021-03-07"), ("12/25/1999", "1999-12-25")] * 8
    sd = _trained_sd(sub, pairs, 0, 3, "untrained")
    again = _trained_sd(sub, pairs, 0, 3, "untrained_again")
    other = _trained_sd(sub, pairs, 0, 4, "untrained_other_seed")
    for name in MODEL_KEYS:
        assert torch.equal(sd[name], again[name]), f"two calls with the same seed give different {name}"
    assert any(not torch.equal(sd[n], other[n]) for n in MODEL_KEYS), "seed=3 and seed=4 give the same model"
    bound = 1 / math.sqrt(sd["encoder.weight_hh_l0"].shape[1])
    for name in MODEL_KEYS - {"src_embedding.weight", "decoder.embedding.weight"}:
        worst = float(sd[name].abs().max())
        assert worst <= bound + 1e-6, (f"with num_steps=0 the model must be untrained (default initialisation, "
                                       f"|w| <= 1/sqrt(H) = {bound:.4f}), but {name} reaches {worst:.4f}")


def test_train_dates__first_update_follows_the_teacher_forcing_gradient(sub):
    pair = ("7 March 2021", "2021-03-07")
    sd0 = _trained_sd(sub, [pair] * 64, 0, 0, "step0")
    sd1 = _trained_sd(sub, [pair] * 64, 1, 0, "step1")
    assert {k: v.shape for k, v in sd0.items()} == {k: v.shape for k, v in sd1.items()}
    grads = _teacher_forcing_grads(sd0, [pair])
    delta = torch.cat([(sd0[k].double() - sd1[k].double()).flatten() for k in sorted(MODEL_KEYS)])
    g = torch.cat([grads[k].flatten() for k in sorted(MODEL_KEYS)])
    assert bool((delta != 0).any()), "num_steps=1 left the model unchanged: exactly one update was expected"
    big = g.abs() > 1e-3 * g.abs().max()
    assert int(big.sum()) > 100  # the property this case relies on: many weights with a clear gradient
    agree = float((torch.sign(delta[big]) == torch.sign(g[big])).double().mean())
    assert agree >= 0.9, (f"the first update moves only {100 * agree:.0f}% of the weights against the gradient of the "
                          f"task's loss (teacher forcing: decoder input <bos> + target[:-1], cross-entropy over every "
                          f"target token including <eos>)")


def test_train_dates__padding_is_ignored(sub):
    # A 1-character and a 10-character target: in a batch with both, the short one is padded with 9 <pad>.
    pairs = [("3/7/2021", "1"), ("7 March 2021", "2021-03-07")]
    sd0 = _trained_sd(sub, pairs * 32, 0, 0, "pad0")
    sd1 = _trained_sd(sub, pairs * 32, 1, 0, "pad1")
    right = float(_teacher_forcing_grads(sd0, pairs)["decoder.dense.bias"][PAD])
    wrong = float(_teacher_forcing_grads(sd0, pairs, ignore_pad=False)["decoder.dense.bias"][PAD])
    assert right > 0 > wrong  # the property this case relies on: only a loss on <pad> raises the <pad> logit
    moved = float(sd0["decoder.dense.bias"][PAD].double() - sd1["decoder.dense.bias"][PAD].double())
    assert moved > 0, "after one update the <pad> logit went up: <pad> targets are not ignored in the loss"
