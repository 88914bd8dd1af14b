"""Tests for seqcourse.seq2seq: data, encoder, decoders, loss, search, BLEU."""

import itertools
import math

import pytest
import torch
from torch import nn

from seqcourse import seq2seq as s2s

@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models run far faster on one CPU thread (no thread synchronisation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PAIRS = [("ab", "x"), ("abc", "xy"), ("c", "yyx"), ("bca", "xyx"), ("a", "y")]


def tiny_model(data, kind="both", H=8, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    enc = s2s.GRUEncoder(len(data.src_vocab), 5, H)
    if kind == "attention":
        dec = s2s.AttentionDecoder(len(data.tgt_vocab), 5, H, attn_size=6)
    elif kind.startswith("luong_"):
        dec = s2s.LuongDecoder(len(data.tgt_vocab), 5, H, score=kind[len("luong_"):])
    else:
        dec = s2s.ContextDecoder(len(data.tgt_vocab), 5, H, context=kind)
    return s2s.EncoderDecoder(enc, dec).to(dtype).eval()


# ----------------------------------------------------------------------------- data


def test_build_vocab_and_pad_sequences():
    vocab = s2s.build_vocab([list("abc"), list("ab")])
    assert vocab.idx_to_token[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]
    ids, valid = s2s.pad_sequences([list("ab"), list("abca")], vocab)
    assert ids.shape == (2, 5) and valid.tolist() == [3, 5]
    assert vocab.to_tokens(ids[0]) == ["a", "b", "<eos>", "<pad>", "<pad>"]
    ids, valid = s2s.pad_sequences([list("ab")], vocab, max_len=2, add_eos=False)
    assert ids.shape == (1, 2) and valid.tolist() == [2]


def test_data_errors():
    with pytest.raises(TypeError, match="token lists"):
        s2s.build_vocab("abc")
    from seqcourse.text import Vocab

    with pytest.raises(ValueError, match="build_vocab"):
        s2s.pad_sequences([["a"]], Vocab([["a"]]))
    with pytest.raises(ValueError, match="pairs"):
        s2s.PairData([])
    with pytest.raises(ValueError, match="batch_size"):
        next(s2s.PairData(PAIRS).batches(0))


def test_pair_data_batches_cover_every_row():
    data = s2s.PairData(PAIRS)
    assert data.src.shape == (5, 4) and data.tgt.shape == (5, 4)
    seen = torch.cat([src[:, 0] * 0 + torch.arange(len(src)) for src, *_ in data.batches(2, shuffle=False)])
    assert len(seen) == 5
    rows = [tuple(r.tolist()) for src, *_ in data.batches(2, torch.Generator().manual_seed(0)) for r in src]
    assert sorted(rows) == sorted(tuple(r.tolist()) for r in data.src)


def test_word_tokeniser():
    data = s2s.PairData([("il est", "he is"), ("elle est", "she is")], tokenize=str.split)
    assert "est" in data.src_vocab and data.src.shape == (2, 3)


# ----------------------------------------------------------------------------- encoder


def test_encoder_state_ignores_padding_float64():
    data = s2s.PairData(PAIRS)
    torch.manual_seed(0)
    enc = s2s.GRUEncoder(len(data.src_vocab), 5, 7, num_layers=2).double()
    outputs, state = enc(data.src, data.src_len)
    assert outputs.shape == (5, 4, 7) and state.shape == (2, 5, 7)
    for i in range(5):
        n = int(data.src_len[i])
        ref_out, ref_state = enc.rnn(enc.embedding(data.src[i : i + 1, :n]))  # no padding at all
        torch.testing.assert_close(state[:, i], ref_state[:, 0], atol=1e-12, rtol=0)
        torch.testing.assert_close(outputs[i, :n], ref_out[0], atol=1e-12, rtol=0)
        assert torch.all(outputs[i, n:] == 0)


def test_encoder_bad_input():
    enc = s2s.GRUEncoder(10, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        enc(torch.zeros(3, dtype=torch.long), torch.tensor([1]))
    with pytest.raises(ValueError, match="valid_len"):
        enc(torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="valid_len"):
        enc(torch.zeros(2, 3, dtype=torch.long), torch.tensor([1]))


# ----------------------------------------------------------------------------- decoders


@pytest.mark.parametrize("kind", ["init", "input", "both", "attention", "luong_dot", "luong_general"])
def test_stepwise_decoding_equals_full_sequence(kind):
    data = s2s.PairData(PAIRS)
    model = tiny_model(data, kind, dtype=torch.float64)
    Y_in = s2s.teacher_forcing_inputs(data.tgt, data.tgt_vocab["<bos>"])
    full = model(data.src, data.src_len, Y_in)  # (B, T, V)
    state = model.decoder.init_state(model.encoder(data.src, data.src_len), data.src_len)
    steps = []
    for t in range(Y_in.shape[1]):
        logits, state = model.decoder(Y_in[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-12, rtol=0)


def test_context_variants_use_the_context_where_they_should():
    data = s2s.PairData(PAIRS)
    Y_in = s2s.teacher_forcing_inputs(data.tgt, 2)
    for kind in ("init", "input", "both"):
        model = tiny_model(data, kind, dtype=torch.float64)
        dec = model.decoder
        hidden, c = dec.init_state(model.encoder(data.src, data.src_len), data.src_len)
        base, _ = dec(Y_in, (hidden, c))
        changed_c, _ = dec(Y_in, (hidden, c + 1.0))
        assert torch.allclose(base, changed_c) == (kind == "init")  # only "init" ignores c as input
        if kind == "input":  # the learned initial state, not the encoder's
            assert torch.equal(hidden, dec.h0.expand(-1, len(PAIRS), -1))


def test_context_decoder_matches_manual_gru_float64():
    data = s2s.PairData(PAIRS)
    model = tiny_model(data, "both", dtype=torch.float64)
    dec = model.decoder
    enc_out = model.encoder(data.src, data.src_len)
    hidden, c = dec.init_state(enc_out, data.src_len)
    Y_in = s2s.teacher_forcing_inputs(data.tgt, 2)
    logits, _ = dec(Y_in, (hidden, c))
    cell = nn.GRUCell(dec.rnn.input_size, dec.rnn.hidden_size).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(dec.rnn, name + "_l0"))
    h = enc_out[1][0]
    for t in range(Y_in.shape[1]):
        h = cell(torch.cat([dec.embedding(Y_in[:, t]), c], dim=-1), h)
        torch.testing.assert_close(dec.head(h), logits[:, t], atol=1e-12, rtol=0)


def test_decoder_errors():
    with pytest.raises(ValueError, match="context"):
        s2s.ContextDecoder(5, 4, 4, context="start")
    data = s2s.PairData(PAIRS)
    enc = s2s.GRUEncoder(len(data.src_vocab), 4, 6)
    enc_out = enc(data.src, data.src_len)
    with pytest.raises(ValueError, match="hidden_size"):
        s2s.ContextDecoder(len(data.tgt_vocab), 4, 8, context="init").init_state(enc_out, data.src_len)
    s2s.ContextDecoder(len(data.tgt_vocab), 4, 8, context="input").init_state(enc_out, data.src_len)
    with pytest.raises(ValueError, match="does not match"):
        s2s.AttentionDecoder(len(data.tgt_vocab), 4, 8).init_state(enc_out, data.src_len)
    with pytest.raises(TypeError, match="Encoder"):
        s2s.EncoderDecoder(nn.Linear(2, 2), s2s.ContextDecoder(5, 4, 4))


# ----------------------------------------------------------------------------- attention


def test_additive_attention_formula_mask_and_gradcheck():
    torch.manual_seed(0)
    att = s2s.AdditiveAttention(3, 4, 5).double()
    q = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    mask = s2s.sequence_mask(torch.tensor([6, 3]), 6)
    context, w = att(q, att.W_k(k), v, mask)
    for b, n in enumerate([6, 3]):
        scores = torch.stack([att.w.weight[0] @ torch.tanh(att.W_q.weight @ q[b] + att.W_k.weight @ k[b, j])
                              for j in range(n)])
        ref_w = torch.softmax(scores, dim=0)
        torch.testing.assert_close(w[b, :n], ref_w, atol=1e-12, rtol=0)
        assert torch.all(w[b, n:] == 0)
        torch.testing.assert_close(context[b], ref_w @ v[b, :n], atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda q, k, v: att(q, att.W_k(k), v, mask), (q, k, v))


def test_attention_weights_recorded_and_rows_sum_to_one():
    data = s2s.PairData(PAIRS)
    model = tiny_model(data, "attention")
    model(data.src, data.src_len, s2s.teacher_forcing_inputs(data.tgt, 2))
    w = model.decoder.attention_weights
    assert w.shape == (5, data.tgt.shape[1], data.src.shape[1])
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:2]))


@pytest.mark.parametrize("score", ["dot", "general"])
def test_multiplicative_attention_formula_mask_and_gradcheck(score):
    torch.manual_seed(0)
    att = s2s.MultiplicativeAttention(4, 4, score).double()
    q = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    mask = s2s.sequence_mask(torch.tensor([6, 3]), 6)
    context, w = att(q, k, v, mask)
    W = torch.eye(4, dtype=torch.float64) if score == "dot" else att.W_a.weight  # (Hq, Hk)
    for b, n in enumerate([6, 3]):
        for t in range(3):
            ref_w = torch.softmax(torch.stack([q[b, t] @ W @ k[b, j] for j in range(n)]), dim=0)
            torch.testing.assert_close(w[b, t, :n], ref_w, atol=1e-12, rtol=0)
            torch.testing.assert_close(context[b, t], ref_w @ v[b, :n], atol=1e-12, rtol=0)
        assert torch.all(w[b, :, n:] == 0)
    assert torch.autograd.gradcheck(lambda q, k, v: att(q, k, v, mask), (q, k, v))
    if score == "dot":
        assert not list(att.parameters())
        with pytest.raises(ValueError, match="general"):
            s2s.MultiplicativeAttention(4, 5, "dot")
    with pytest.raises(ValueError, match="score"):
        s2s.MultiplicativeAttention(4, 4, "concat")


def test_luong_queries_with_the_current_state():
    """Luong attends with s_t (after reading y_{t-1}); Bahdanau with s_{t-1}."""
    data = s2s.PairData(PAIRS)
    model = tiny_model(data, "luong_dot", dtype=torch.float64)
    dec = model.decoder
    outputs, hidden, mask = dec.init_state(model.encoder(data.src, data.src_len), data.src_len)
    Y_in = s2s.teacher_forcing_inputs(data.tgt, data.tgt_vocab["<bos>"])
    logits, _ = dec(Y_in[:, :1], (outputs, hidden, mask))
    s_1, _ = dec.rnn(dec.embedding(Y_in[:, :1]), hidden)  # (B, 1, H): the state after y_0
    scores = (s_1 @ outputs.transpose(1, 2)).masked_fill(~mask[:, None], float("-inf"))  # (B, 1, S)
    torch.testing.assert_close(dec.attention_weights, torch.softmax(scores, dim=-1), atol=1e-12, rtol=0)
    context = torch.softmax(scores, dim=-1) @ outputs  # (B, 1, H)
    expected = dec.head(torch.tanh(dec.W_c(torch.cat([context, s_1], dim=-1))))
    torch.testing.assert_close(logits, expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="does not match"):
        s2s.LuongDecoder(len(data.tgt_vocab), 4, 9).init_state((outputs, hidden), data.src_len)


# ----------------------------------------------------------------------------- loss


def test_teacher_forcing_inputs():
    Y = torch.tensor([[5, 6, 3, 1]])
    assert s2s.teacher_forcing_inputs(Y, 2).tolist() == [[2, 5, 6, 3]]
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        s2s.teacher_forcing_inputs(torch.tensor([1, 2]), 2)


def test_masked_cross_entropy_equals_unpadded_mean_and_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    Y = torch.randint(0, 7, (3, 5))
    valid = torch.tensor([5, 1, 3])
    loss = s2s.masked_cross_entropy(logits, Y, valid)
    ref = nn.functional.cross_entropy(torch.cat([logits[i, : valid[i]] for i in range(3)]),
                                      torch.cat([Y[i, : valid[i]] for i in range(3)]))
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda z: s2s.masked_cross_entropy(z, Y, valid), (logits,))
    loss.backward()
    assert torch.all(logits.grad[1, 1:] == 0)  # padding gets no gradient


def test_masked_cross_entropy_errors():
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        s2s.masked_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="valid_len"):
        s2s.masked_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.tensor([1]))


# ----------------------------------------------------------------------------- training


def test_train_seq2seq_learns_a_tiny_task():
    data = s2s.PairData(PAIRS)
    model = tiny_model(data, "attention", H=16)
    hist = s2s.train_seq2seq(model, data, num_steps=60, batch_size=5, lr=3e-2)
    assert hist["step"][-1] == 60 and hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert s2s.evaluate(model, PAIRS, data, max_len=5)["exact_match"] == 1.0
    with pytest.raises(TypeError, match="EncoderDecoder"):
        s2s.train_seq2seq(nn.Linear(2, 2), data)
    with pytest.raises(ValueError, match="num_steps"):
        s2s.train_seq2seq(model, data, num_steps=0)


def test_train_respects_time_budget():
    data = s2s.PairData(PAIRS)
    hist = s2s.train_seq2seq(tiny_model(data), data, num_steps=10_000, batch_size=2, time_budget=0.0)
    assert hist["step"][-1] == 1


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("kind", ["both", "attention", "luong_general"])
def test_greedy_equals_beam_of_one_and_log_probs_agree(kind):
    data = s2s.PairData(PAIRS)
    model = tiny_model(data, kind, dtype=torch.float64, seed=3)
    bos, eos = data.tgt_vocab["<bos>"], data.tgt_vocab["<eos>"]
    tokens, lp, _ = s2s.greedy_decode(model, data.src, data.src_len, bos, eos, max_len=6)
    for i in range(len(PAIRS)):
        (b_tokens, b_lp, _), = s2s.beam_search(model, data.src[i], int(data.src_len[i]), bos, eos,
                                              beam_size=1, max_len=6)
        assert b_tokens == tokens[i] and math.isclose(b_lp, float(lp[i]), abs_tol=1e-9)
    # Rescore by teacher forcing: the tokens, plus <eos> where the search emitted it.
    outputs = [data.tgt_vocab.to_tokens(t) + (["<eos>"] if len(t) < 6 else []) for t in tokens]
    tgt, tgt_len = s2s.pad_sequences(outputs, data.tgt_vocab, add_eos=False)
    rescored = s2s.sequence_log_prob(model, data.src, data.src_len, tgt, tgt_len, bos)
    torch.testing.assert_close(rescored, lp, atol=1e-9, rtol=0)


def test_wide_beam_is_exact_search():
    """With a beam wider than the number of prefixes, beam search finds the best sequence."""
    data = s2s.PairData(PAIRS)
    model = tiny_model(data, "attention", dtype=torch.float64, seed=1)
    bos, eos = data.tgt_vocab["<bos>"], data.tgt_vocab["<eos>"]
    V, max_len = len(data.tgt_vocab), 3
    src, n = data.src[1], int(data.src_len[1])
    best_lp = -math.inf
    for length in range(max_len):  # every sequence of 0..2 tokens followed by <eos>
        for seq in itertools.product([t for t in range(V) if t != eos], repeat=length):
            tgt = torch.tensor([list(seq) + [eos]])
            lp = float(s2s.sequence_log_prob(model, src[None], torch.tensor([n]), tgt,
                                             torch.tensor([length + 1]), bos))
            best_lp = max(best_lp, lp)
    results = s2s.beam_search(model, src, n, bos, eos, beam_size=V**max_len, max_len=max_len)
    finished = [r for r in results if len(r[0]) < max_len]
    assert math.isclose(finished[0][1], best_lp, abs_tol=1e-9)
    assert all(a[2] >= b[2] for a, b in zip(results, results[1:]))  # sorted best first


def test_search_errors():
    data = s2s.PairData(PAIRS)
    model = tiny_model(data)
    with pytest.raises(ValueError, match="one sequence"):
        s2s.beam_search(model, data.src, 3, 2, 3)
    with pytest.raises(ValueError, match="beam_size"):
        s2s.beam_search(model, data.src[0], 3, 2, 3, beam_size=0)


def test_translate_with_beam(device):
    data = s2s.PairData(PAIRS)
    model = tiny_model(data).to(device)
    out_greedy = s2s.translate(model, ["ab", "c"], data, max_len=4)
    out_beam = s2s.translate(model, ["ab", "c"], data, max_len=4, beam_size=3)
    assert len(out_greedy) == len(out_beam) == 2 and all(isinstance(s, str) for s in out_beam)
    res = s2s.evaluate(model, PAIRS, data, max_len=4)
    assert set(res) == {"exact_match", "bleu", "predictions"} and 0 <= res["bleu"] <= 1


# ----------------------------------------------------------------------------- metrics


def test_bleu_hand_examples():
    ref = "the cat sat on the mat".split()
    pred = "the the cat sat on the mat".split()
    assert [s2s.ngram_matches(pred, ref, n) for n in (1, 2, 3, 4)] == [(6, 7), (5, 6), (4, 5), (3, 4)]
    expected = (6 / 7) ** 0.5 * (5 / 6) ** 0.25 * (4 / 5) ** 0.125 * (3 / 4) ** 0.0625
    assert math.isclose(s2s.bleu(pred, ref), expected)
    assert math.isclose(s2s.bleu("the cat sat".split(), ref), math.exp(-1))
    assert s2s.bleu(ref, ref) == 1.0
    assert s2s.bleu([], ref) == 0.0
    assert s2s.bleu(list("2021-03-04"), list("2021-03-03")) < 1.0
    assert math.isclose(s2s.bleu(["a", "b"], ["a", "b"], max_n=4), 1.0)  # orders > 2 skipped


def test_bleu_errors():
    with pytest.raises(TypeError, match="token lists"):
        s2s.bleu("abc", ["a"])
    with pytest.raises(ValueError, match="empty"):
        s2s.bleu(["a"], [])
    with pytest.raises(ValueError, match="max_n"):
        s2s.bleu(["a"], ["a"], max_n=0)


def test_exact_match():
    assert s2s.exact_match(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="as many"):
        s2s.exact_match(["a"], ["a", "b"])


def test_plot_attention_checks_shape():
    import matplotlib

    matplotlib.use("Agg")
    ax = s2s.plot_attention(torch.rand(2, 3), list("ab "), ["x", "<eos>"])
    assert ax.get_xlabel() == "source token"
    with pytest.raises(ValueError, match="len"):
        s2s.plot_attention(torch.rand(3, 3), list("abc"), ["x"])
