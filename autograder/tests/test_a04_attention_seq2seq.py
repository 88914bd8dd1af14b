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

from autograder.api import Ref, assert_close, assert_number, check_tensor

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
