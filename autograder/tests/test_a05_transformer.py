"""Hidden tests of a05_transformer: sinusoidal positional encoding, the causal mask,
masked multi-head attention, a drop-in TransformerEncoderLayer, a decoder-only
language model, its key-value cache and greedy generation.

References are computed here in float64 with PyTorch's own modules
(nn.MultiheadAttention, nn.TransformerEncoderLayer) carrying the same weights as
the student's objects. Every rule of the task text has a test whose answer
changes when the rule is broken (a future token that leaks, a cache read at the
wrong positions, state kept from one call to the next), and every type the text
names is enforced with a message that quotes it.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autograder.api import StudentError, assert_close, check_tensor

F64 = torch.float64
TOL64 = dict(atol=1e-10, rtol=1e-8)
TOL32 = dict(atol=2e-5, rtol=1e-4)
# The language model adds a float32 positional encoding that a correct answer may compute with
# another formula (rounding differences up to ~1e-5); every error these tests look for is O(0.1).
LMTOL = dict(atol=1e-4, rtol=1e-4)


def gpu(fn):
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")(fn)
    return pytest.mark.gpu(fn)


def _sd(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _expect_tensor(x, *, dtype, shape, quote, device=None):
    """A plain tensor of the dtype and shape the task names; the message quotes the task."""
    if type(x) is not torch.Tensor:
        raise AssertionError(f"the task says: {quote}; got a {type(x).__name__}")
    if x.dtype != dtype:
        raise AssertionError(f"the task says: {quote}; got dtype {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise AssertionError(f"the task says: {quote}; got shape {tuple(x.shape)}, expected {tuple(shape)}")
    if device is not None and x.device.type != torch.device(device).type:
        raise AssertionError(f"the task says: {quote}; got a tensor on {x.device}, expected {device}")
    return x


def _randomise(module, device, weight_scale=1.0):
    """Non-trivial weights: random biases and LayerNorm affine parameters, so that a misplaced bias,
    a swapped norm or a forgotten parameter changes the output."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, dtype=p.dtype))
            elif "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, dtype=p.dtype))
            elif p.dim() == 2:
                p.copy_(weight_scale * torch.randn(p.shape, dtype=p.dtype) / math.sqrt(p.shape[1]))
    return module.to(device)


# ----------------------------------------------------------------------------
# Part 1: sinusoidal positional encoding
# ----------------------------------------------------------------------------

PE_QUOTE = "sinusoidal_positional_encoding returns a torch.Tensor of dtype torch.float32, shape (max_len, d_model)"


def _ref_pe(max_len, d_model):
    pe = torch.zeros(max_len, d_model, dtype=F64)
    for col in range(d_model):
        two_i = col - col % 2
        angle = torch.arange(max_len, dtype=F64) / 10000.0 ** (two_i / d_model)
        pe[:, col] = torch.sin(angle) if col % 2 == 0 else torch.cos(angle)
    return pe


def _pe_case(sub, max_len, d_model):
    got = sub.call("sinusoidal_positional_encoding", max_len, d_model)
    _expect_tensor(got, dtype=torch.float32, shape=(max_len, d_model), quote=PE_QUOTE, device="cpu")
    # float32 angles p / 10000^(2i/d) carry a relative error of ~1e-7, i.e. ~1e-5 at p = 60.
    assert_close(got.double(), _ref_pe(max_len, d_model), atol=3e-5, rtol=0,
                 what=f"sinusoidal_positional_encoding({max_len}, {d_model})")


def test_positional_encoding(sub):
    _pe_case(sub, 50, 16)


def test_positional_encoding__odd_width(sub):
    _pe_case(sub, 9, 7)  # the last column is a sine with its own frequency
    _pe_case(sub, 4, 1)  # one column: sin(p)


def test_positional_encoding__single_position(sub):
    _pe_case(sub, 1, 6)  # [0, 1, 0, 1, 0, 1]


def test_positional_encoding__wide(sub):
    _pe_case(sub, 30, 128)  # frequencies down to 10000^(-126/128): exposes i used for 2i


def test_positional_encoding__repeated_calls_in_any_order(sub):
    for max_len, d_model in [(8, 4), (3, 10), (8, 4), (12, 3), (3, 10)]:
        _pe_case(sub, max_len, d_model)


# ----------------------------------------------------------------------------
# Part 2: causal mask
# ----------------------------------------------------------------------------

MASK_QUOTE = "causal_mask(T, device) returns a boolean (torch.bool) (T, T) tensor on device, True where j > i"


def _mask_case(sub, T, device):
    got = sub.call("causal_mask", T, device=device) if device is not None else sub.call("causal_mask", T)
    _expect_tensor(got, dtype=torch.bool, shape=(T, T), quote=MASK_QUOTE, device=device or "cpu")
    want = torch.arange(T)[None, :] > torch.arange(T)[:, None]
    assert got.cpu().tolist() == want.tolist(), f"causal_mask({T}) is wrong: True must mark the keys j > i"


def test_causal_mask(sub):
    _mask_case(sub, 6, None)


def test_causal_mask__single_step(sub):
    _mask_case(sub, 1, None)


def test_causal_mask__device(sub, device):
    for T in (4, 1, 9):
        _mask_case(sub, T, device)


# ----------------------------------------------------------------------------
# Part 3: multi-head attention with a padding mask and an attention mask
# ----------------------------------------------------------------------------


def _causal(T, device="cpu"):
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


def _ref_mha(E, h, bias, device):
    ref = nn.MultiheadAttention(E, h, bias=bias, batch_first=True).to(device, F64)
    with torch.no_grad():  # non-zero biases, so that misplaced biases show
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_()
    return ref


def _mha_check(sub, handle, ref, q, k, v, kpm, attn_mask, grads):
    B, Tq, E = q.shape
    Tk = k.shape[1]
    go = (torch.randn(B, Tq, E, dtype=F64, device=q.device), torch.randn(B, Tq, Tk, dtype=F64, device=q.device))
    kwargs = {}
    if kpm is not None:
        kwargs["key_padding_mask"] = kpm
    if attn_mask is not None:
        kwargs["attn_mask"] = attn_mask
    res = sub.run(f"@{handle}", args=(q, k, v), kwargs=kwargs, grad_wrt=[0, 1, 2] if grads else (),
                  grad_output=go if grads else None, param_grads_of=handle if grads else None)
    assert isinstance(res.value, tuple) and len(res.value) == 2, \
        "the task says: forward returns (attn_output, attn_weights)"
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, w = ref(*leaves, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=True, average_attn_weights=True)
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
    return res.value


def _mha_case(sub, device, B, Tq, Tk, E, h, kpm=None, attn_mask=None, bias=True, self_attention=False, grads=False):
    ref = _ref_mha(E, h, bias, device)
    sub.new("MultiHeadAttention", E, h, bias=bias, keep="mha", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    q = torch.randn(B, Tq, E, dtype=F64, device=device)
    k = q if self_attention else torch.randn(B, Tk, E, dtype=F64, device=device)
    v = q if self_attention else torch.randn(B, Tk, E, dtype=F64, device=device)
    kpm = kpm.to(device) if kpm is not None else None
    attn_mask = attn_mask.to(device) if attn_mask is not None else None
    return _mha_check(sub, "mha", ref, q, k, v, kpm, attn_mask, grads)


def test_multi_head_attention(sub, device):
    """Causal self-attention with padding at the end of one sequence, with gradients."""
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] * 6])
    _mha_case(sub, device, B=3, Tq=6, Tk=6, E=12, h=3, kpm=kpm, attn_mask=_causal(6), self_attention=True,
              grads=True)


def test_multi_head_attention__attention_mask_only(sub, device):
    """A general (Tq, Tk) mask on cross-attention (Tq != Tk), every row keeping at least one key."""
    Tq, Tk = 4, 7
    mask = torch.rand(Tq, Tk) < 0.5
    mask[torch.arange(Tq), torch.randint(Tk, (Tq,))] = False
    _mha_case(sub, device, B=2, Tq=Tq, Tk=Tk, E=8, h=2, attn_mask=mask, grads=True)


def test_multi_head_attention__both_masks_combine(sub, device):
    """A key is ignored when either mask says so (padding anywhere, not only at the end)."""
    Tq, Tk = 5, 6
    attn_mask = torch.zeros(Tq, Tk, dtype=torch.bool)
    attn_mask[:, 0] = True  # key 0 is hidden from every query by the attention mask
    attn_mask[2, 1:4] = True
    kpm = torch.tensor([[False, False, True, False, True, False], [False, True, False, False, False, True]])
    _mha_case(sub, device, B=2, Tq=Tq, Tk=Tk, E=8, h=4, kpm=kpm, attn_mask=attn_mask)


def test_multi_head_attention__causal_mask_blocks_the_future(sub, device):
    """Changing the inputs at positions >= t leaves the outputs before t unchanged, and changes them after."""
    B, T, E, h, t = 2, 7, 8, 2, 4
    ref = _ref_mha(E, h, True, device)
    sub.new("MultiHeadAttention", E, h, keep="mha", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    x = torch.randn(B, T, E, dtype=F64, device=device)
    x2 = x.clone()
    x2[:, t:] = torch.randn(B, T - t, E, dtype=F64, device=device)
    mask = _causal(T, device)
    out1, w1 = sub.call("@mha", x, x, x, attn_mask=mask)
    out2, w2 = sub.call("@mha", x2, x2, x2, attn_mask=mask)
    check_tensor(out1, shape=(B, T, E), dtype=F64, what="attn_output")
    check_tensor(out2, shape=(B, T, E), dtype=F64, what="attn_output")
    assert_close(out2[:, :t], out1[:, :t], what="outputs before the changed positions (a future input leaks)", **TOL64)
    assert not torch.allclose(out2[:, t:], out1[:, t:]), "outputs at the changed positions should change"
    assert bool((w1[:, _causal(T, device)] == 0).all()), "weights above the diagonal must be exactly 0"
    want, _ = ref(x2, x2, x2, attn_mask=mask)
    assert_close(out2, want.detach(), what="attn_output", **TOL64)


def test_multi_head_attention__no_bias(sub, device):
    _mha_case(sub, device, B=2, Tq=5, Tk=5, E=6, h=3, attn_mask=_causal(5), bias=False, self_attention=True)


def test_multi_head_attention__length_one(sub, device):
    _mha_case(sub, device, B=1, Tq=1, Tk=1, E=4, h=2, attn_mask=_causal(1), kpm=torch.tensor([[False]]),
              self_attention=True)


def test_multi_head_attention__same_object_repeated_calls(sub, device):
    """One module called with different masks and lengths, in an order that would expose any state
    (a cached mask, projections or a length) kept from an earlier call."""
    E, h = 8, 2
    ref = _ref_mha(E, h, True, device)
    sub.new("MultiHeadAttention", E, h, keep="mha_r", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    for B, T, kind in [(2, 5, "causal"), (3, 3, None), (2, 5, "padding"), (1, 8, "causal"), (2, 5, None)]:
        x = torch.randn(B, T, E, dtype=F64, device=device)
        kpm = None
        if kind == "padding":
            kpm = torch.zeros(B, T, dtype=torch.bool, device=device)
            kpm[0, -2:] = True
        attn_mask = _causal(T, device) if kind == "causal" else None
        _mha_check(sub, "mha_r", ref, x, x, x, kpm, attn_mask, grads=False)


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
        w = sd["in_proj_weight"]
        assert float(w.abs().max()) <= bound + 1e-6 and float(w.std()) > bound / 4, \
            "in_proj_weight is not xavier-uniform"


@gpu
def test_multi_head_attention__cuda_float32(sub):
    """float32 on CUDA against nn.MultiheadAttention on CUDA and against itself on the CPU."""
    B, T, E, h = 4, 7, 16, 4
    ref = nn.MultiheadAttention(E, h, batch_first=True).cuda()
    sd = _sd(ref)
    sub.new("MultiHeadAttention", E, h, keep="mha_cuda", state_dict=sd, to_device="cuda")
    sub.new("MultiHeadAttention", E, h, keep="mha_cpu", state_dict={k: v.cpu() for k, v in sd.items()})
    x = torch.randn(B, T, E, device="cuda")
    kpm = torch.zeros(B, T, dtype=torch.bool, device="cuda")
    kpm[1, 5:] = True
    mask = _causal(T, "cuda")
    out, w = sub.call("@mha_cuda", x, x, x, key_padding_mask=kpm, attn_mask=mask)
    check_tensor(out, device="cuda", what="attn_output on CUDA")
    eout, ew = ref(x, x, x, key_padding_mask=kpm, attn_mask=mask)
    assert_close(out, eout.detach(), what="attn_output vs nn.MultiheadAttention on CUDA", **TOL32)
    assert_close(w, ew.detach(), what="attn_weights vs nn.MultiheadAttention on CUDA", **TOL32)
    out_cpu, _ = sub.call("@mha_cpu", x.cpu(), x.cpu(), x.cpu(), key_padding_mask=kpm.cpu(), attn_mask=mask.cpu())
    assert_close(out.cpu(), out_cpu, what="attn_output on CUDA vs CPU", **TOL32)


# ----------------------------------------------------------------------------
# Part 4: the encoder layer, a drop-in for nn.TransformerEncoderLayer
# ----------------------------------------------------------------------------

LAYER_QUOTE = "forward returns the output (B, T, D) (a tensor, not a tuple)"


def _ref_layer(D, h, ff, norm_first, eps, device, dtype=F64):
    ref = nn.TransformerEncoderLayer(D, h, ff, dropout=0.0, activation="relu", layer_norm_eps=eps,
                                     batch_first=True, norm_first=norm_first).to(dtype=dtype)
    ref = _randomise(ref, device)
    return ref.train()  # the reference path, never the inference fast path


def _layer_check(sub, handle, ref, x, src_mask, kpm, grads, tol=TOL64):
    B, T, D = x.shape
    go = torch.randn(B, T, D, dtype=x.dtype, device=x.device)
    kwargs = {}
    if src_mask is not None:
        kwargs["src_mask"] = src_mask
    if kpm is not None:
        kwargs["src_key_padding_mask"] = kpm
    res = sub.run(f"@{handle}", args=(x,), kwargs=kwargs, grad_wrt=[0] if grads else (),
                  grad_output=go if grads else None, param_grads_of=handle if grads else None)
    _expect_tensor(res.value, dtype=x.dtype, shape=(B, T, D), quote=LAYER_QUOTE)
    xr = x.clone().requires_grad_(True)
    want = ref(xr, src_mask=src_mask, src_key_padding_mask=kpm)
    assert_close(res.value, want.detach(), what="layer output", **tol)
    if grads:
        params = dict(ref.named_parameters())
        got = torch.autograd.grad(want, [xr] + list(params.values()), go)
        assert_close(res.grads[0], got[0], what="gradient w.r.t. src", **tol)
        for name, r in zip(params, got[1:]):
            assert name in res.param_grads, f"no gradient for parameter {name}"
            assert_close(res.param_grads[name], r, what=f"gradient of {name}", **tol)


def _layer_case(sub, device, *, norm_first, B=2, T=5, D=8, h=2, ff=16, eps=1e-5, mask="causal", kpm=None,
                grads=True, dtype=F64):
    ref = _ref_layer(D, h, ff, norm_first, eps, device, dtype)
    sub.new("TransformerEncoderLayer", D, h, ff, norm_first=norm_first, layer_norm_eps=eps, keep="layer",
            state_dict=_sd(ref), to_dtype=dtype, to_device=device)
    x = torch.randn(B, T, D, dtype=dtype, device=device)
    src_mask = _causal(T, device) if mask == "causal" else None
    kpm = kpm.to(device) if kpm is not None else None
    _layer_check(sub, "layer", ref, x, src_mask, kpm, grads, tol=TOL64 if dtype == F64 else TOL32)


def test_encoder_layer(sub, device):
    """Post-norm (the default), causal mask, outputs and every gradient."""
    _layer_case(sub, device, norm_first=False, B=3, T=6, D=12, h=3, ff=20)


def test_encoder_layer__pre_norm(sub, device):
    _layer_case(sub, device, norm_first=True, B=3, T=6, D=12, h=3, ff=20)


def test_encoder_layer__padding_mask(sub, device):
    kpm = torch.tensor([[False] * 5, [False, False, False, True, True]])
    for nf in (False, True):
        _layer_case(sub, device, norm_first=nf, mask=None, kpm=kpm, grads=False)


def test_encoder_layer__both_masks(sub, device):
    kpm = torch.tensor([[False, False, True, False, False, False], [False] * 4 + [True] * 2])
    for nf in (False, True):
        _layer_case(sub, device, norm_first=nf, T=6, kpm=kpm, grads=nf)


def test_encoder_layer__layer_norm_eps(sub, device):
    """A large eps changes LayerNorm's output visibly: it must reach both norms."""
    for nf in (False, True):
        _layer_case(sub, device, norm_first=nf, eps=0.5, mask=None, grads=False)


def test_encoder_layer__no_mask_default_width(sub, device):
    """dim_feedforward left at its default (2048)."""
    D, h = 8, 4
    ref = _ref_layer(D, h, 2048, False, 1e-5, device)
    sub.new("TransformerEncoderLayer", D, h, keep="layer_d", state_dict=_sd(ref), to_dtype=F64, to_device=device)
    _layer_check(sub, "layer_d", ref, torch.randn(2, 4, D, dtype=F64, device=device), None, None, grads=False)


def test_encoder_layer__length_one_batch_of_one(sub, device):
    for nf in (False, True):
        _layer_case(sub, device, norm_first=nf, B=1, T=1, D=6, h=2, ff=4)


def test_encoder_layer__float32(sub, device):
    for nf in (False, True):
        _layer_case(sub, device, norm_first=nf, B=2, T=7, D=16, h=4, ff=32, dtype=torch.float32, grads=False)


def test_encoder_layer__same_object_repeated_calls(sub, device):
    """One layer of each kind called with different masks and lengths, in an order that exposes state
    kept from an earlier call."""
    D, h, ff = 8, 2, 12
    for nf in (True, False):
        ref = _ref_layer(D, h, ff, nf, 1e-5, device)
        sub.new("TransformerEncoderLayer", D, h, ff, norm_first=nf, keep=f"layer_r{nf}", state_dict=_sd(ref),
                to_dtype=F64, to_device=device)
        for B, T, kind in [(2, 5, "causal"), (1, 3, None), (2, 5, "padding"), (3, 2, "causal"), (2, 5, None)]:
            kpm = None
            if kind == "padding":
                kpm = torch.zeros(B, T, dtype=torch.bool, device=device)
                kpm[1, -1] = True
            _layer_check(sub, f"layer_r{nf}", ref, torch.randn(B, T, D, dtype=F64, device=device),
                         _causal(T, device) if kind == "causal" else None, kpm, grads=False)


def test_encoder_layer__state_dict_both_ways(sub):
    """PyTorch's weights load into the student's layer (strictly) and the student's into PyTorch's."""
    for i, nf in enumerate((False, True)):
        ref = nn.TransformerEncoderLayer(12, 3, 24, dropout=0.0, batch_first=True, norm_first=nf)
        sub.new("TransformerEncoderLayer", 12, 3, 24, norm_first=nf, keep=f"layer_sd{i}")
        sd = sub.state_dict(f"layer_sd{i}")
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in sd.items()}
        assert got == want, f"TransformerEncoderLayer(12, 3, 24) has parameters {got}, expected {want}"
        ref.load_state_dict(sd, strict=True)
        ref.train()
        x = torch.randn(2, 4, 12)
        out = sub.call(f"@layer_sd{i}", x, src_mask=_causal(4))
        _expect_tensor(out, dtype=torch.float32, shape=(2, 4, 12), quote=LAYER_QUOTE)
        assert_close(out, ref(x, src_mask=_causal(4)).detach(), what="output with the student's own initial weights",
                     **TOL32)


# ----------------------------------------------------------------------------
# Parts 5-7: the decoder-only language model, its cache and generation
# ----------------------------------------------------------------------------

V_, D_, H_, L_, FF_, MAXLEN_ = 13, 16, 4, 2, 24, 32


class _RefLM(nn.Module):
    """The model the task describes, built from PyTorch's layers, with the same parameter names."""

    def __init__(self, V, D, h, L, ff, max_len):
        super().__init__()
        self.embedding = nn.Embedding(V, D)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(D, h, ff, dropout=0.0, batch_first=True,
                                                                norm_first=True) for _ in range(L)])
        self.norm = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V)
        self.h = h
        # Part 1's float32 encoding, as the student's model holds it.
        self.register_buffer("pe", _ref_pe(max_len, D).float(), persistent=False)

    def forward(self, ids, positions=None):
        """Logits (B, T, V) and the per-layer (K, V) of every position, each (B, h, T, d).

        ``positions`` overrides the positions whose encodings are added (a deliberately wrong
        model uses it to show that a test would notice)."""
        B, T = ids.shape
        pos = torch.arange(T, device=ids.device) if positions is None else positions
        x = self.embedding(ids) + self.pe[pos].to(self.embedding.weight.dtype)  # (B, T, D)
        mask = _causal(T, ids.device)
        kv = []
        for layer in self.layers:
            a = layer.self_attn
            D = x.shape[-1]
            d = D // self.h
            n = layer.norm1(x)
            k = F.linear(n, a.in_proj_weight[D : 2 * D], a.in_proj_bias[D : 2 * D])
            v = F.linear(n, a.in_proj_weight[2 * D :], a.in_proj_bias[2 * D :])
            kv.append(tuple(t.view(B, T, self.h, d).transpose(1, 2) for t in (k, v)))
            x = layer(x, src_mask=mask)
        return self.lm_head(self.norm(x)), kv


def _ref_lm(device, dtype=F64, max_len=MAXLEN_, head_scale=3.0):
    with torch.random.fork_rng(devices=[]):  # the same weights in every test; the test's own stream untouched
        torch.manual_seed(1234)
        ref = _RefLM(V_, D_, H_, L_, FF_, max_len).to(dtype)
        _randomise(ref, "cpu")
        with torch.no_grad():
            # Token embeddings as large as the positional encodings, so that greedy continuations of a
            # random model vary instead of settling on one token; confident predictions: no near-ties.
            ref.embedding.weight.normal_(0.0, 4.0)
            ref.lm_head.weight.mul_(head_scale)
    return ref.to(device).train()


def _new_lm(sub, ref, device, keep="lm", dtype=F64):
    sub.new("CausalLM", V_, d_model=D_, nhead=H_, num_layers=L_, dim_feedforward=FF_, max_len=ref.pe.shape[0],
            keep=keep, state_dict=_sd(ref), to_dtype=dtype, to_device=device)


def _ids(B, T, device):
    return torch.randint(V_, (B, T), device=device)


# -- Part 5: forward -----------------------------------------------------------


def _lm_check(sub, handle, ref, ids, grads=False):
    B, T = ids.shape
    go = torch.randn(B, T, V_, dtype=F64, device=ids.device)
    res = sub.run(f"@{handle}", args=(ids,), grad_output=go if grads else None, param_grads_of=handle if grads else None)
    _expect_tensor(res.value, dtype=ref.lm_head.weight.dtype, shape=(B, T, V_), quote="forward(ids) returns logits (B, T, V)")
    want, _ = ref(ids)
    assert_close(res.value, want.detach(), what="logits", **LMTOL)
    if grads:
        params = dict(ref.named_parameters())
        got = torch.autograd.grad(want, list(params.values()), go)
        for name, r in zip(params, got):
            assert name in res.param_grads, f"no gradient for parameter {name}"
            assert_close(res.param_grads[name], r, what=f"gradient of {name}", **LMTOL)


def test_causal_lm(sub, device):
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    _lm_check(sub, "lm", ref, _ids(3, 9, device), grads=True)


def test_causal_lm__no_look_ahead(sub, device):
    """The logits at position t depend on the tokens 0..t only, and do depend on token t."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    ids = _ids(2, 10, device)
    t = 6
    ids2 = ids.clone()
    ids2[:, t:] = (ids2[:, t:] + 1 + torch.randint(V_ - 1, ids2[:, t:].shape, device=device)) % V_
    a = sub.call("@lm", ids)
    b = sub.call("@lm", ids2)
    check_tensor(a, shape=(2, 10, V_), dtype=F64, what="logits")
    check_tensor(b, shape=(2, 10, V_), dtype=F64, what="logits")
    assert_close(b[:, :t], a[:, :t], what="logits before the changed tokens (a future token leaks)", **TOL64)
    assert (b[:, t] - a[:, t]).abs().max() > 1e-3, "the logits at a changed position should change"
    assert_close(b, ref(ids2)[0].detach(), what="logits", **LMTOL)


def test_causal_lm__positions_matter(sub, device):
    """A sequence of one repeated token: only the positional encoding tells the positions apart."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    ids = torch.full((1, 12), 5, device=device)
    want = ref(ids)[0].detach()
    assert (want[0, 1:] - want[0, :1]).abs().max() > 1e-2, "test setup: positions should change the logits"
    _lm_check(sub, "lm", ref, ids)


def test_causal_lm__length_one_and_max_len(sub, device):
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    _lm_check(sub, "lm", ref, _ids(2, 1, device))
    _lm_check(sub, "lm", ref, _ids(1, MAXLEN_, device))


def test_causal_lm__same_object_repeated_calls(sub, device):
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    a, b, c = _ids(2, 5, device), _ids(1, 11, device), _ids(3, 2, device)
    for ids in (a, b, a, c, b):
        _lm_check(sub, "lm", ref, ids)


def test_causal_lm__parameters(sub):
    sub.new("CausalLM", V_, d_model=D_, nhead=H_, num_layers=3, dim_feedforward=FF_, max_len=MAXLEN_, keep="lm_p")
    sd = sub.state_dict("lm_p")
    want = {k: tuple(v.shape) for k, v in _RefLM(V_, D_, H_, 3, FF_, MAXLEN_).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert set(got) == set(want), (f"CausalLM's state_dict should hold exactly {sorted(want)}; these differ: "
                                   f"{sorted(set(got) ^ set(want))} (the positional encoding is not in it)")
    assert got == want, f"CausalLM parameters have shapes {got}, expected {want}"


def test_causal_lm__float32(sub, device):
    ref = _ref_lm(device, dtype=torch.float32)
    _new_lm(sub, ref, device, dtype=torch.float32)
    ids = _ids(2, 8, device)
    out = sub.call("@lm", ids)
    _expect_tensor(out, dtype=torch.float32, shape=(2, 8, V_), quote="forward(ids) returns logits (B, T, V)")
    assert_close(out, ref(ids)[0].detach(), what="logits in float32", atol=2e-4, rtol=1e-4)


# -- Part 6: forward_with_cache ---------------------------------------------------

CACHE_QUOTE = ("forward_with_cache returns (logits, new_cache), new_cache a list with one pair (K, V) per layer, "
               "each (B, nhead, t + T, d)")


def _check_cache(cache, want, B, n, what="new_cache"):
    if not isinstance(cache, (list, tuple)) or len(cache) != len(want):
        raise AssertionError(f"the task says: {CACHE_QUOTE}; got {type(cache).__name__}"
                             + (f" of length {len(cache)}" if isinstance(cache, (list, tuple)) else ""))
    for layer, (pair, (k, v)) in enumerate(zip(cache, want)):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise AssertionError(f"the task says: {CACHE_QUOTE}; layer {layer} holds a {type(pair).__name__}")
        for name, got, ref in (("K", pair[0], k), ("V", pair[1], v)):
            _expect_tensor(got, dtype=ref.dtype, shape=(B, H_, n, D_ // H_), quote=CACHE_QUOTE)
            assert_close(got, ref.detach(), what=f"{what}: layer {layer} {name}", **LMTOL)


def _cache_step(sub, handle, ref, ids_all, t, T, cache):
    """Feed tokens t..t+T-1 of ids_all with ``cache`` (harness-made, or the student's own); check; return
    the student's new cache."""
    B = ids_all.shape[0]
    args = (ids_all[:, t : t + T],) if cache is None else (ids_all[:, t : t + T], cache)
    out = sub.call(f"@{handle}.forward_with_cache", *args)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AssertionError(f"the task says: {CACHE_QUOTE}; got a {type(out).__name__}")
    logits, new_cache = out
    want_logits, want_kv = ref(ids_all[:, : t + T])
    _expect_tensor(logits, dtype=F64, shape=(B, T, V_), quote="forward_with_cache returns logits (B, T, V)")
    assert_close(logits, want_logits[:, t:].detach(), what=f"logits of positions {t}..{t + T - 1}", **LMTOL)
    _check_cache(new_cache, want_kv, B, t + T)
    return new_cache


def _harness_cache(ref, ids_all, t):
    """The exact cache of the first t positions, made here: the student's code must read it."""
    _, kv = ref(ids_all[:, :t])
    return [(k.detach().clone(), v.detach().clone()) for k, v in kv]


def test_kv_cache(sub, device):
    """A prompt without a cache, then one token with a cache made by the harness."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    ids = _ids(2, 8, device)
    _cache_step(sub, "lm", ref, ids, 0, 6, None)
    _cache_step(sub, "lm", ref, ids, 7, 1, _harness_cache(ref, ids, 7))


def test_kv_cache__reads_the_given_cache(sub, device):
    """The new token's logits depend on the cached keys and values: a cache of another prefix gives
    other logits, which must be that prefix's."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    a = _ids(2, 6, device)
    b = a.clone()
    b[:, :5] = _ids(2, 5, device)  # same last token, different prefix
    la, _ = ref(a)
    lb, _ = ref(b)
    assert (la[:, -1] - lb[:, -1]).abs().max() > 1e-2, "test setup: the prefix should matter"
    _cache_step(sub, "lm", ref, a, 5, 1, _harness_cache(ref, a, 5))
    _cache_step(sub, "lm", ref, b, 5, 1, _harness_cache(ref, b, 5))


def test_kv_cache__chunk_after_a_cache(sub, device):
    """Several new tokens at once after a cache: query t+i sees the cache and the new keys up to t+i."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    ids = _ids(3, 9, device)
    _cache_step(sub, "lm", ref, ids, 4, 3, _harness_cache(ref, ids, 4))
    _cache_step(sub, "lm", ref, ids, 1, 8, _harness_cache(ref, ids, 1))


def test_kv_cache__own_cache_token_by_token(sub, device):
    """Length-1 prompt, then the student's own cache, one token at a time and then a chunk."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    ids = _ids(2, 10, device)
    cache = _cache_step(sub, "lm", ref, ids, 0, 1, None)
    for t in range(1, 6):
        cache = _cache_step(sub, "lm", ref, ids, t, 1, cache)
    _cache_step(sub, "lm", ref, ids, 6, 4, cache)


def test_kv_cache__last_position(sub, device):
    """The last allowed position (t + T = max_len) gets the last positional encoding."""
    ref = _ref_lm(device, max_len=12)
    _new_lm(sub, ref, device)
    ids = _ids(1, 12, device)
    _cache_step(sub, "lm", ref, ids, 11, 1, _harness_cache(ref, ids, 11))
    _cache_step(sub, "lm", ref, ids, 0, 12, None)


def test_kv_cache__interleaved_sequences(sub, device):
    """Two generations in flight on one model, their caches used alternately: nothing may be kept on
    the model between calls."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    a, b = _ids(2, 7, device), _ids(1, 9, device)
    ca = _cache_step(sub, "lm", ref, a, 0, 3, None)
    cb = _cache_step(sub, "lm", ref, b, 0, 5, None)
    ca = _cache_step(sub, "lm", ref, a, 3, 1, ca)
    cb = _cache_step(sub, "lm", ref, b, 5, 2, cb)
    ca = _cache_step(sub, "lm", ref, a, 4, 3, ca)
    _cache_step(sub, "lm", ref, b, 7, 1, cb)


# -- Part 7: generate ------------------------------------------------------------

GEN_QUOTE = "generate returns a torch.long tensor (B, T + max_new_tokens) on the device of ids, the prompt first"


@torch.no_grad()
def _greedy_ref(ref, ids, n, wrong_positions=False):
    """Greedy continuation by recomputing the whole sequence, and the smallest top-1/top-2 logit gap.

    ``wrong_positions``: a cache bug that restarts the positions at 0 for every new token."""
    out, gap = ids.clone(), float("inf")
    for step in range(n):
        if wrong_positions and step > 0:
            pos = torch.cat([torch.arange(ids.shape[1], device=ids.device),
                             torch.zeros(step, dtype=torch.long, device=ids.device)])
            logits, _ = ref(out, positions=pos)
        else:
            logits, _ = ref(out)
        top = logits[:, -1].topk(2, dim=-1).values
        gap = min(gap, float((top[:, 0] - top[:, 1]).min()))
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out, gap


def _pick_prompt(ref, B, T, n, device, min_gap=1e-3, tries=30):
    """A random prompt whose greedy continuation has every property a test relies on (asserted):
    no near-tie, several distinct new tokens, and a continuation that a cache restarting the
    positions at 0 would get wrong."""
    for _ in range(tries):
        prompt = _ids(B, T, device)
        want, gap = _greedy_ref(ref, prompt, n)
        if n == 0:
            return prompt, want
        varied = len(set(want[:, T:].flatten().tolist())) >= min(4, n)
        exposes = n < 2 or not torch.equal(_greedy_ref(ref, prompt, n, wrong_positions=True)[0], want)
        if gap > min_gap and varied and exposes:
            return prompt, want
    raise RuntimeError("test setup: no prompt with a clear, varied greedy continuation")


def _generate_case(sub, handle, prompt, want, use_cache):
    B, T = prompt.shape
    n = want.shape[1] - T
    got = sub.call(f"@{handle}.generate", prompt, n, use_cache=use_cache)
    _expect_tensor(got, dtype=torch.long, shape=(B, T + n), quote=GEN_QUOTE, device=prompt.device.type)
    assert torch.equal(got[:, :T].cpu(), prompt.cpu()), "the returned tensor should start with the prompt"
    assert torch.equal(got.cpu(), want.cpu()), \
        f"generate(use_cache={use_cache}) wrote {got[:, T:].tolist()}, expected {want[:, T:].tolist()}"


def test_generate(sub, device):
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    prompt, want = _pick_prompt(ref, 3, 5, 12, device)
    for use_cache in (True, False):
        _generate_case(sub, "lm", prompt, want, use_cache)


def test_generate__length_one_prompt(sub, device):
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    prompt, want = _pick_prompt(ref, 2, 1, 14, device)
    for use_cache in (True, False):
        _generate_case(sub, "lm", prompt, want, use_cache)


def test_generate__long_prompt_up_to_max_len(sub, device):
    """A prompt of 22 tokens and 10 new ones: exactly max_len (32) in total."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    prompt, want = _pick_prompt(ref, 2, 22, MAXLEN_ - 22, device)
    for use_cache in (True, False):
        _generate_case(sub, "lm", prompt, want, use_cache)


def test_generate__zero_and_one_new_tokens(sub, device):
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    for n in (0, 1):
        prompt, want = _pick_prompt(ref, 2, 4, n, device)
        for use_cache in (True, False):
            _generate_case(sub, "lm", prompt, want, use_cache)


def test_generate__too_long_raises(sub):
    ref = _ref_lm("cpu")
    _new_lm(sub, ref, "cpu")
    for use_cache in (True, False):
        with pytest.raises(StudentError, match="ValueError"):
            sub.call("@lm.generate", _ids(1, 20, "cpu"), MAXLEN_ - 20 + 1, use_cache=use_cache)
    with pytest.raises(StudentError, match="ValueError"):
        sub.call("@lm.generate", _ids(1, MAXLEN_, "cpu"), 1)


def test_generate__default_uses_cache_and_matches(sub):
    """generate(ids, n) with the default use_cache."""
    ref = _ref_lm("cpu")
    _new_lm(sub, ref, "cpu")
    prompt, want = _pick_prompt(ref, 2, 3, 9, "cpu")
    got = sub.call("@lm.generate", prompt, 9)
    _expect_tensor(got, dtype=torch.long, shape=(2, 12), quote=GEN_QUOTE, device="cpu")
    assert torch.equal(got, want), f"generate wrote {got[:, 3:].tolist()}, expected {want[:, 3:].tolist()}"


def test_generate__repeated_calls_in_any_order(sub, device):
    """One model, several prompts of different lengths and batch sizes, with and without the cache, in
    an order that exposes anything kept from an earlier call."""
    ref = _ref_lm(device)
    _new_lm(sub, ref, device)
    a, b, c = _pick_prompt(ref, 2, 6, 8, device), _pick_prompt(ref, 1, 2, 12, device), _pick_prompt(ref, 2, 9, 5, device)
    for (prompt, want), use_cache in [(a, True), (b, True), (a, False), (c, True), (b, False), (a, True), (c, True)]:
        _generate_case(sub, "lm", prompt, want, use_cache)


def test_generate__float32_cache_matches_no_cache(sub, device):
    """In float32 the two paths round differently; the tokens must still agree (the reference has no
    near-tie)."""
    ref = _ref_lm(device, dtype=torch.float32)
    _new_lm(sub, ref, device, keep="lm32", dtype=torch.float32)
    prompt, want = _pick_prompt(ref, 2, 4, 14, device, min_gap=2e-2)
    for use_cache in (True, False):
        _generate_case(sub, "lm32", prompt, want, use_cache)
