"""Tests for seqcourse.attention_numpy: every function against PyTorch in float64."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqcourse import attention_numpy as attn


def test_softmax_matches_torch_and_is_stable():
    x = np.random.default_rng(0).normal(size=(3, 4, 5)) * 50
    assert np.allclose(attn.softmax(x), torch.softmax(torch.tensor(x), -1).numpy(), atol=1e-12)
    assert np.isfinite(attn.softmax(np.array([1e4, 0.0]))).all()


def test_masked_softmax_exact_zeros_and_per_query_lengths():
    s = np.random.default_rng(1).normal(size=(2, 3, 5))
    w = attn.masked_softmax(s, np.array([2, 5]))
    assert (w[0, :, 2:] == 0).all() and np.allclose(w.sum(-1), 1)
    ref = torch.softmax(torch.tensor(s[0, :, :2]), -1).numpy()
    assert np.allclose(w[0, :, :2], ref, atol=1e-12)
    w2 = attn.masked_softmax(s, np.array([[1, 2, 3], [5, 4, 3]]))
    assert (w2[0, 0, 1:] == 0).all() and (w2[1, 2, 3:] == 0).all()
    assert np.allclose(attn.masked_softmax(s), attn.softmax(s))


def test_masked_softmax_bad_input():
    s = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match="valid lengths"):
        attn.masked_softmax(s, np.array([0, 2]))
    with pytest.raises(TypeError, match="integers"):
        attn.masked_softmax(s, np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="3 dimensions"):
        attn.masked_softmax(np.zeros((3, 5)), np.array([1, 2, 3]))


def test_additive_attention_matches_torch():
    rng = np.random.default_rng(2)
    q, k, v = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 4, 7))
    W_q, W_k, w_v = rng.normal(size=(5, 8)), rng.normal(size=(6, 8)), rng.normal(size=8)
    lens = np.array([4, 2])
    out, w = attn.additive_attention(q, k, v, W_q, W_k, w_v, lens)
    tq, tk, tv = map(torch.tensor, (q, k, v))
    # the same computation with torch.nn.Linear layers, as a student would write it
    lq, lk, lv = nn.Linear(5, 8, bias=False).double(), nn.Linear(6, 8, bias=False).double(), nn.Linear(8, 1, bias=False).double()
    with torch.no_grad():
        lq.weight.copy_(torch.tensor(W_q.T)); lk.weight.copy_(torch.tensor(W_k.T)); lv.weight.copy_(torch.tensor(w_v[None]))
    scores = lv(torch.tanh(lq(tq).unsqueeze(2) + lk(tk).unsqueeze(1))).squeeze(-1)
    scores = scores.masked_fill(torch.arange(4)[None, None, :] >= torch.tensor(lens)[:, None, None], float("-inf"))
    ref_w = torch.softmax(scores, -1)
    assert np.allclose(w, ref_w.detach().numpy(), atol=1e-12)
    assert np.allclose(out, (ref_w @ tv).detach().numpy(), atol=1e-12)


def test_additive_attention_shape_errors():
    with pytest.raises(ValueError, match="same"):
        attn.additive_attention(np.zeros((1, 1, 2)), np.zeros((1, 3, 2)), np.zeros((1, 4, 2)),
                                np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3))


def test_scaled_dot_product_matches_torch_sdpa():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 4))
    lens = np.array([5, 3])
    out, w = attn.scaled_dot_product_attention(q, k, v, valid_lens=lens)
    mask = torch.arange(5)[None, None, :] < torch.tensor(lens)[:, None, None]
    ref = F.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)), attn_mask=mask)
    assert np.abs(out - ref.numpy()).max() < 1e-6
    _, w_raw = attn.scaled_dot_product_attention(q, k, v, scale=False)
    assert np.allclose(w_raw, attn.softmax(q @ k.transpose(0, 2, 1)))
    with pytest.raises(ValueError, match="feature size"):
        attn.scaled_dot_product_attention(q, k[..., :4], v)


def test_split_merge_heads_roundtrip_and_error():
    x = np.arange(2 * 3 * 8, dtype=float).reshape(2, 3, 8)
    heads = attn.split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 2)
    assert np.array_equal(heads[0, 1, 0], x[0, 0, 2:4])
    assert np.array_equal(attn.merge_heads(heads), x)
    with pytest.raises(ValueError, match="divisible"):
        attn.split_heads(x, 3)


@pytest.mark.parametrize("bias", [True, False])
def test_multi_head_attention_matches_torch(bias):
    torch.manual_seed(0)
    B, Tq, Tk, D, h = 3, 4, 6, 12, 3
    mha = nn.MultiheadAttention(D, h, batch_first=True, bias=bias).double().eval()
    q, kv = torch.randn(B, Tq, D, dtype=torch.float64), torch.randn(B, Tk, D, dtype=torch.float64)
    kpm = torch.arange(Tk)[None, :] >= torch.tensor([6, 3, 1])[:, None]
    out, w = mha(q, kv, kv, key_padding_mask=kpm)
    params = attn.mha_params_from_torch(mha)
    out_np, w_np = attn.multi_head_attention(q.numpy(), kv.numpy(), kv.numpy(), params, h, kpm.numpy())
    assert np.abs(out_np - out.detach().numpy()).max() < 1e-6
    assert np.abs(w_np.mean(1) - w.detach().numpy()).max() < 1e-6
    _, w_heads = mha(q, kv, kv, key_padding_mask=kpm, average_attn_weights=False)
    assert np.abs(w_np - w_heads.detach().numpy()).max() < 1e-6
    assert (w_np[2, :, :, 1:] == 0).all()


def test_multi_head_attention_bad_input():
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    params = attn.mha_params_from_torch(mha)
    x = np.zeros((1, 3, 4))
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn.multi_head_attention(x, x, x, params, 2, key_padding_mask=np.zeros((1, 2), bool))
    with pytest.raises(ValueError, match="mha_params_from_torch"):
        attn.multi_head_attention(x, x, x, {"W_q": 0}, 2)
    with pytest.raises(ValueError, match="kdim"):
        attn.mha_params_from_torch(nn.MultiheadAttention(4, 2, kdim=3, vdim=3))


def test_softmax_where_rejects_fully_masked_row():
    with pytest.raises(ValueError, match="at least one valid key"):
        attn.softmax_where(np.zeros((2, 3)), np.array([[True, False, False], [False, False, False]]))


def test_softmax_jacobian_matches_autograd():
    z = torch.randn(5, dtype=torch.float64)
    ref = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z)
    got = attn.softmax_jacobian(torch.softmax(z, -1).numpy())
    assert np.allclose(got, ref.numpy(), atol=1e-12)
    batch = attn.softmax_jacobian(np.full((3, 4), 0.25))
    assert batch.shape == (3, 4, 4)
