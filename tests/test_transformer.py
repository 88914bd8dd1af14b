"""Tests for seqcourse.transformer: positions, masks, layers against PyTorch, models, KV cache."""

import math

import pytest
import torch
from torch import nn

from seqcourse import seq2seq as s2s
from seqcourse import transformer as tf


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one CPU thread is faster and the timings are steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- positions


def test_sinusoidal_encoding_values():
    P = tf.sinusoidal_positional_encoding(50, 8)
    assert P.shape == (50, 8) and P.dtype == torch.float32
    t, i = 7, 2
    w = 10000.0 ** (-2 * i / 8)
    assert math.isclose(P[t, 2 * i], math.sin(t * w), abs_tol=1e-6)
    assert math.isclose(P[t, 2 * i + 1], math.cos(t * w), abs_tol=1e-6)
    assert torch.allclose(P[0, 0::2], torch.zeros(4)) and torch.allclose(P[0, 1::2], torch.ones(4))
    with pytest.raises(ValueError, match="even"):
        tf.sinusoidal_positional_encoding(10, 7)
    with pytest.raises(ValueError, match="max_len"):
        tf.sinusoidal_positional_encoding(0, 8)


@pytest.mark.parametrize("k", [1, 5, -3])
def test_offset_matrix_moves_every_position(k):
    P = tf.sinusoidal_positional_encoding(40, 16)
    M = tf.offset_matrix(k, 16)
    lo, hi = max(0, -k), min(40, 40 - k)
    assert torch.allclose(P[lo:hi] @ M, P[lo + k : hi + k], atol=1e-5)
    assert torch.allclose(M @ M.T, torch.eye(16), atol=1e-6)  # rotations: orthogonal


def test_positional_encoding_module():
    x = torch.zeros(2, 5, 8)
    pe = tf.PositionalEncoding(10, 8)
    assert torch.allclose(pe(x), tf.sinusoidal_positional_encoding(10, 8)[:5].expand(2, 5, 8))
    assert torch.allclose(pe(x[:, :2], offset=3), pe(x)[:, 3:5])
    assert "table" not in pe.state_dict()  # a fixed table is not a parameter
    learned = tf.PositionalEncoding(10, 8, learned=True)
    assert sum(p.numel() for p in learned.parameters()) == 80
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 11, 8))


# ----------------------------------------------------------------------------- masks and attention


def test_causal_mask():
    m = tf.causal_mask(3)
    assert m.tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    m = tf.causal_mask(2, 4)  # two new queries after two cached positions
    assert m.tolist() == [[False, False, False, True], [False, False, False, False]]
    assert torch.equal(tf.causal_mask(5), nn.Transformer.generate_square_subsequent_mask(5) < 0)
    with pytest.raises(ValueError):
        tf.causal_mask(4, 3)


def test_self_attention_is_permutation_equivariant():
    torch.manual_seed(0)
    mha = tf.MultiheadAttention(8, 2)
    x = torch.randn(1, 6, 8)
    perm = torch.randperm(6)
    out, _, _ = mha(x, x, x)
    out_p, _, _ = mha(x[:, perm], x[:, perm], x[:, perm])
    assert torch.allclose(out_p, out[:, perm], atol=1e-6)


def test_multihead_attention_matches_pytorch():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(12, 3, batch_first=True)
    mine = tf.MultiheadAttention(12, 3)
    mine.load_state_dict(ref.state_dict())
    q, kv = torch.randn(2, 4, 12), torch.randn(2, 5, 12)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    out_ref, w_ref = ref(q, kv, kv, key_padding_mask=pad)
    out, w, _ = mine(q, kv, kv, key_padding_mask=pad)
    assert torch.allclose(out, out_ref, atol=1e-6)
    assert torch.allclose(w.mean(dim=1), w_ref, atol=1e-6)  # PyTorch averages the heads
    with pytest.raises(ValueError, match="divide"):
        tf.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="batch_first"):
        tf.MultiheadAttention(12, 3, batch_first=False)


def test_multihead_attention_cache_equals_full_pass():
    torch.manual_seed(0)
    mha = tf.MultiheadAttention(8, 2)
    x = torch.randn(2, 6, 8)
    full, _, _ = mha(x, x, x, attn_mask=tf.causal_mask(6))
    past, outs = None, []
    for t in range(6):
        out, _, past = mha(x[:, t : t + 1], x[:, t : t + 1], x[:, t : t + 1], past_kv=past)
        outs.append(out)
    assert past[0].shape == (2, 2, 6, 4)
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-6)


def test_float_additive_mask_equals_bool_mask():
    torch.manual_seed(0)
    mha = tf.MultiheadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    a, _, _ = mha(x, x, x, attn_mask=tf.causal_mask(5), key_padding_mask=pad)
    b, _, _ = mha(x, x, x, attn_mask=nn.Transformer.generate_square_subsequent_mask(5), key_padding_mask=pad)
    assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- layers vs PyTorch


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("mask", ["none", "causal", "padding"])
def test_encoder_layer_matches_pytorch(norm_first, mask):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    mine = tf.TransformerEncoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first)
    mine.load_state_dict(ref.state_dict())  # same names, no key mapping
    x = torch.randn(3, 7, 16)
    pad = torch.tensor([[False] * 7, [False] * 5 + [True] * 2, [False] * 3 + [True] * 4])
    kw = {"none": {}, "causal": {"src_mask": tf.causal_mask(7)}, "padding": {"src_key_padding_mask": pad}}[mask]
    valid = ~pad if mask == "padding" else torch.ones(3, 7, dtype=torch.bool)
    for train in (True, False):  # eval mode lets PyTorch take its fused fast path
        ref.train(train)
        mine.train(train)
        with torch.no_grad():
            assert torch.allclose(mine(x, **kw)[valid], ref(x, **kw)[valid], atol=1e-6)
    x.requires_grad_(True)
    mine(x, **kw)[valid].sum().backward()
    g_mine = x.grad.clone()
    x.grad = None
    ref(x, **kw)[valid].sum().backward()
    assert torch.allclose(g_mine, x.grad, atol=1e-5)
    for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_pytorch(norm_first):
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    mine = tf.TransformerDecoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first)
    mine.load_state_dict(ref.state_dict())
    tgt, memory = torch.randn(3, 6, 16), torch.randn(3, 5, 16)
    mem_pad = torch.tensor([[False] * 5, [False] * 4 + [True], [False] * 2 + [True] * 3])
    kw = dict(tgt_mask=tf.causal_mask(6), memory_key_padding_mask=mem_pad)
    assert torch.allclose(mine(tgt, memory, **kw), ref(tgt, memory, **kw), atol=1e-6)
    assert torch.allclose(mine(tgt, memory, tgt_is_causal=True, memory_key_padding_mask=mem_pad),
                          ref(tgt, memory, **kw), atol=1e-6)
    assert mine.cross_weights.shape == (3, 4, 6, 5)
    assert float(mine.cross_weights[2, :, :, 2:].abs().max()) == 0.0  # padding gets no weight


def test_layers_reject_bad_arguments():
    with pytest.raises(ValueError, match="batch_first"):
        tf.TransformerEncoderLayer(16, 4, batch_first=False)
    with pytest.raises(ValueError, match="activation"):
        tf.TransformerDecoderLayer(16, 4, activation="tanh")


@pytest.mark.parametrize("norm_first", [False, True])
def test_gelu_layer_matches_pytorch(norm_first):
    torch.manual_seed(1)
    ref = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=True,
                                     norm_first=norm_first)
    mine = tf.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", norm_first=norm_first)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 8)
    assert torch.allclose(mine(x), ref(x), atol=1e-6)


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_gradcheck(norm_first):
    torch.manual_seed(0)
    enc = tf.TransformerEncoderLayer(4, 2, 6, dropout=0.0, norm_first=norm_first).double()
    dec = tf.TransformerDecoderLayer(4, 2, 6, dropout=0.0, norm_first=norm_first).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mem = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    mask = tf.causal_mask(3)
    assert torch.autograd.gradcheck(lambda a: enc(a, src_mask=mask), (x,))
    assert torch.autograd.gradcheck(lambda a, m: dec(a, m, tgt_mask=mask), (x, mem))


def test_attention_gradcheck():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = tf.causal_mask(3)
    assert torch.autograd.gradcheck(lambda a, b, c: tf.scaled_dot_product_attention(a, b, c, mask)[0], (q, k, v))


# ----------------------------------------------------------------------------- models


PAIRS = [("ab", "x"), ("abc", "xy"), ("c", "yyx"), ("bca", "xyx"), ("a", "y")]


def test_seq2seq_transformer_incremental_equals_teacher_forced():
    data = s2s.PairData(PAIRS)
    torch.manual_seed(0)
    model = tf.transformer_seq2seq(len(data.src_vocab), len(data.tgt_vocab), d_model=8, nhead=2,
                                   num_layers=2, dim_feedforward=16, max_len=16).eval()
    src, src_len, tgt = data.src, data.src_len, data.tgt
    Y_in = s2s.teacher_forcing_inputs(tgt, data.tgt_vocab["<bos>"])  # (B, T)
    with torch.no_grad():
        full = model(src, src_len, Y_in)  # (B, T, V)
        dec = model.decoder
        state = dec.init_state(model.encoder(src, src_len), src_len)
        steps = []
        for t in range(Y_in.shape[1]):
            logits, state = dec(Y_in[:, t : t + 1], state)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    assert dec.attention_weights.shape == (len(PAIRS), 1, src.shape[1])
    # Greedy and beam search run through the shared seq2seq code.
    ids, lp, attn = s2s.greedy_decode(model, src, src_len, data.tgt_vocab["<bos>"], data.tgt_vocab["<eos>"], 5)
    assert len(ids) == len(PAIRS) and attn.shape[0] == len(PAIRS)
    beams = s2s.beam_search(model, src[1], int(src_len[1]), data.tgt_vocab["<bos>"], data.tgt_vocab["<eos>"],
                            beam_size=3, max_len=5)
    assert len(beams) == 3


def test_seq2seq_transformer_learns_a_tiny_task():
    data = s2s.PairData(PAIRS)
    torch.manual_seed(0)
    model = tf.transformer_seq2seq(len(data.src_vocab), len(data.tgt_vocab), d_model=16, nhead=2,
                                   num_layers=1, dim_feedforward=32, max_len=16)
    hist = s2s.train_seq2seq(model, data, num_steps=80, batch_size=5, lr=2e-2)
    assert hist["loss"][-1] < 0.05
    assert s2s.evaluate(model, PAIRS, data, max_len=6)["exact_match"] == 1.0


def test_transformer_lm_interface_and_causality():
    torch.manual_seed(0)
    model = tf.TransformerLM(11, d_model=8, nhead=2, num_layers=2, dim_feedforward=16, max_len=12).eval()
    X = torch.randint(0, 11, (3, 10))
    logits, state = model(X)
    assert logits.shape == (3, 10, 11) and state is None
    X2 = X.clone()
    X2[:, 6:] = (X2[:, 6:] + 1) % 11  # change the future
    with torch.no_grad():
        assert torch.allclose(model(X2)[0][:, :6], logits[:, :6], atol=1e-6)
    leaky = tf.TransformerLM(11, d_model=8, nhead=2, num_layers=2, dim_feedforward=16, max_len=12, causal=False)
    leaky.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(leaky(X2)[0][:, :6], leaky(X)[0][:, :6], atol=1e-4)
    with pytest.raises(ValueError, match="state"):
        model(X, state=torch.zeros(1))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize("learned", [True, False])
@pytest.mark.parametrize("norm_first", [True, False])
def test_generate_with_cache_equals_without(learned, norm_first):
    torch.manual_seed(0)
    model = tf.TransformerLM(13, d_model=16, nhead=4, num_layers=2, dim_feedforward=32, max_len=40,
                             learned_positions=learned, norm_first=norm_first)
    prefix = torch.randint(0, 13, (2, 4))
    a = model.generate(prefix, 30, use_cache=True)
    b = model.generate(prefix, 30, use_cache=False)
    assert a.shape == (2, 34) and torch.equal(a, b) and torch.equal(a[:, :4], prefix)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = model.generate(prefix[0], 20, use_cache=True, temperature=1.0, generator=g1)
    s2 = model.generate(prefix[0], 20, use_cache=False, temperature=1.0, generator=g2)
    assert s1.shape == (24,) and torch.equal(s1, s2)
    # The cached logits equal the full pass.
    logits, past = model.step(a[:, :10])
    pieces = [logits]
    for t in range(10, 34):
        logits, past = model.step(a[:, t : t + 1], past)
        pieces.append(logits)
    with torch.no_grad():
        assert torch.allclose(torch.cat(pieces, dim=1), model(a)[0], atol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        model.generate(prefix, 37)


def test_transformer_lm_trains_with_train_lm():
    from seqcourse import lm

    torch.manual_seed(0)
    corpus = torch.tensor([0, 1, 2, 3, 4] * 60)
    loader = [(corpus[i : i + 16].view(1, 16), corpus[i + 1 : i + 17].view(1, 16)) for i in range(0, 240, 16)]
    model = tf.TransformerLM(5, d_model=16, nhead=2, num_layers=1, dim_feedforward=32, max_len=16)
    hist = lm.train_lm(model, loader, loader, lr=1e-2, num_epochs=8, progress=False)
    assert hist["val_ppl"][-1] < 1.2  # a period-5 sequence is predictable


def test_models_run_on_device(device):
    """The cache, the masks and the positions are created on the model's device."""
    torch.manual_seed(0)
    model = tf.TransformerLM(9, d_model=8, nhead=2, num_layers=1, dim_feedforward=16, max_len=20).to(device)
    prefix = torch.randint(0, 9, (2, 3), device=device)
    out = model.generate(prefix, 10, use_cache=True)
    assert out.device.type == torch.device(device).type
    assert torch.equal(out, model.generate(prefix, 10, use_cache=False))
    data = s2s.PairData(PAIRS)
    s2s_model = tf.transformer_seq2seq(len(data.src_vocab), len(data.tgt_vocab), d_model=8, nhead=2,
                                       num_layers=1, dim_feedforward=16, max_len=16).to(device)
    ids, _, _ = s2s.greedy_decode(s2s_model, data.src.to(device), data.src_len.to(device),
                                  data.tgt_vocab["<bos>"], data.tgt_vocab["<eos>"], 4)
    assert len(ids) == len(PAIRS)
