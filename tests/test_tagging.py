"""Tests for seqcourse.tagging."""

import pytest
import torch
from torch import nn

from seqcourse import tagging, text


def _vocab(corpus):
    return text.Vocab([w for toks, _ in corpus for w in toks])


def test_saw_corpus_is_deterministic_and_right_context_decides():
    a = tagging.make_saw_corpus(50, length=10, seed=3)
    assert a == tagging.make_saw_corpus(50, length=10, seed=3)
    assert a != tagging.make_saw_corpus(50, length=10, seed=4)
    for toks, tags in a:
        assert len(toks) == len(tags) == 10
        for i, (w, t) in enumerate(zip(toks, tags)):
            if w == "saw":
                assert t == ("VERB" if toks[i + 1] in tagging.VERB_CUES else "NOUN")
                assert toks[i + 1] in tagging.VERB_CUES + tagging.NOUN_CUES
            else:
                assert t == "OTHER"


def test_saw_corpus_bad_input():
    with pytest.raises(ValueError, match="length"):
        tagging.make_saw_corpus(3, length=1)
    with pytest.raises(ValueError, match="saw_prob"):
        tagging.make_saw_corpus(3, saw_prob=0.0)
    with pytest.raises(ValueError, match="num_sentences"):
        tagging.make_saw_corpus(0)


def test_encode_tagged_pads_and_checks():
    corpus = [(["i", "saw", "a"], ["OTHER", "VERB", "OTHER"]), (["saw", "."], ["NOUN", "OTHER"])]
    X, Y, L = tagging.encode_tagged(corpus, _vocab(corpus))
    assert X.shape == Y.shape == (2, 3) and L.tolist() == [3, 2]
    assert Y[1, 2] == tagging.IGNORE_INDEX and Y[0, 1] == tagging.TAGS.index("VERB")
    with pytest.raises(ValueError, match="tags"):
        tagging.encode_tagged([(["a", "b"], ["OTHER"])], _vocab(corpus))
    with pytest.raises(ValueError, match="not in the tag set"):
        tagging.encode_tagged([(["a"], ["ADJ"])], _vocab(corpus))
    with pytest.raises(ValueError, match="empty"):
        tagging.encode_tagged([], _vocab(corpus))


def test_tagger_bidirectional_matches_nn_lstm_slices():
    torch.manual_seed(0)
    m = tagging.RNNTagger(10, 4, 5, 3, num_layers=2, bidirectional=True).double()
    X = torch.randint(0, 10, (3, 7))
    logits = m(X)
    assert logits.shape == (3, 7, 3)
    out, (h_n, _) = m.rnn(m.embedding(X))
    assert torch.allclose(logits, m.head(out))
    assert torch.equal(out[:, -1, :5], h_n[-2]) and torch.equal(out[:, 0, 5:], h_n[-1])


def test_tagger_packing_equals_unpadded_run():
    torch.manual_seed(0)
    m = tagging.RNNTagger(10, 4, 5, 3, bidirectional=True).double()
    X = torch.randint(1, 10, (2, 6))
    X[1, 4:] = 0
    lengths = torch.tensor([6, 4])
    packed = m(X, lengths)
    alone = m(X[1:, :4])
    assert torch.allclose(packed[1, :4], alone[0], atol=1e-12)
    assert not torch.allclose(m(X)[1, :4], alone[0])  # without packing the padding leaks in backwards


def test_tagger_gradcheck():
    torch.manual_seed(0)
    m = tagging.RNNTagger(6, 3, 2, 2, bidirectional=True, cell="gru").double()
    X = torch.randint(0, 6, (2, 4))
    emb = m.embedding(X).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: m.head(m.rnn(e)[0]), (emb,))


def test_tagger_bad_input():
    with pytest.raises(ValueError, match="cell"):
        tagging.RNNTagger(5, 2, 2, 2, cell="transformer")
    with pytest.raises(ValueError, match="num_layers"):
        tagging.RNNTagger(5, 2, 2, 2, dropout=0.5)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        tagging.RNNTagger(5, 2, 2, 2)(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        tagging.tagging_loss(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long))


def test_bidirectional_tagger_learns_saw_and_unidirectional_does_not():
    torch.manual_seed(0)
    train = tagging.make_saw_corpus(600, length=10, seed=0)
    test = tagging.make_saw_corpus(100, length=8, seed=1)
    v = _vocab(train)
    X, Y, _ = tagging.encode_tagged(train, v)
    Xt, Yt, _ = tagging.encode_tagged(test, v)
    saw = Xt == v["saw"]
    acc = {}
    for bi in (False, True):
        torch.manual_seed(0)
        m = tagging.RNNTagger(len(v), 8, 16, 3, bidirectional=bi)
        hist = tagging.train_tagger(m, X, Y, num_epochs=8, batch_size=50, lr=1e-2)
        assert len(hist["loss"]) == 8
        acc[bi] = tagging.tag_accuracy(m, Xt, Yt, where=saw)
    assert acc[True] > 0.95 and acc[False] < 0.7


def test_sequence_lm_and_rerun_generate():
    torch.manual_seed(0)
    v = text.Vocab(list("abc "))
    m = tagging.SequenceLM(len(v), 4, 8, bidirectional=True)
    logits, state = m(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, len(v)) and state is None
    with pytest.raises(ValueError, match="state=None"):
        m(torch.zeros(2, 5, dtype=torch.long), state=torch.zeros(1))
    out = tagging.rerun_generate(m, v, "ab", 4)
    assert len(out) == 6 and out.startswith("ab")
    with pytest.raises(ValueError, match="prefix"):
        tagging.rerun_generate(m, v, "", 3)


def test_prefix_only_perplexity_equals_teacher_forcing_for_causal_model():
    torch.manual_seed(0)
    m = tagging.SequenceLM(7, 4, 8, bidirectional=False).double()
    X, Y = torch.randint(0, 7, (3, 6)), torch.randint(0, 7, (3, 6))
    logits, _ = m(X)
    full = torch.exp(nn.functional.cross_entropy(logits.reshape(-1, 7), Y.reshape(-1))).item()
    assert tagging.prefix_only_perplexity(m, X, Y) == pytest.approx(full, rel=1e-9)
    mb = tagging.SequenceLM(7, 4, 8, bidirectional=True).double()
    lb, _ = mb(X)
    full_b = torch.exp(nn.functional.cross_entropy(lb.reshape(-1, 7), Y.reshape(-1))).item()
    assert tagging.prefix_only_perplexity(mb, X, Y) != pytest.approx(full_b, rel=1e-6)
    with pytest.raises(ValueError, match="both be"):
        tagging.prefix_only_perplexity(m, X, Y[:, :3])


def test_membership_task_labels_and_errors():
    X, y = tagging.make_membership_task(200, length=5, num_symbols=10, seed=0)
    assert X.shape == (200, 6) and (X[:, 0] >= 10).all() and (X[:, 1:] < 10).all()
    assert torch.equal(y, (X[:, 1:] == (X[:, :1] - 10)).any(1).long())
    assert all(len(set(row.tolist())) == 5 for row in X[:, 1:])
    X2, _ = tagging.make_membership_task(200, length=5, num_symbols=10, seed=0)
    assert torch.equal(X, X2)
    with pytest.raises(ValueError, match="length"):
        tagging.make_membership_task(3, length=11, num_symbols=10)


def test_self_attention_classifier_shapes_padding_and_training():
    torch.manual_seed(0)
    m = tagging.SelfAttentionClassifier(40, embed_dim=8, num_heads=2)
    X, y = tagging.make_membership_task(64, length=10, num_symbols=20, seed=0)
    logits, w = m(X, return_weights=True)
    assert logits.shape == (64, 2) and w.shape == (64, 11, 11)
    # padding: appending padded positions does not change the result
    Xp = torch.cat([X, torch.zeros(64, 3, dtype=torch.long)], 1)
    kpm = torch.zeros(64, 14, dtype=torch.bool)
    kpm[:, 11:] = True
    assert torch.allclose(m.eval()(Xp, key_padding_mask=kpm), m(X), atol=1e-5)
    hist = tagging.train_classifier(m, X, y, num_epochs=2)
    assert len(hist["loss"]) == 2 and 0 <= tagging.classifier_accuracy(m, X, y) <= 1
    with pytest.raises(ValueError, match="divisible"):
        tagging.SelfAttentionClassifier(10, embed_dim=6, num_heads=4)
    with pytest.raises(ValueError, match="rows"):
        tagging.train_classifier(m, X, y[:3])
