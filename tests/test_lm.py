"""The language model, training loop, perplexity and generation."""

import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from seqcourse import lm, text, utils


def _tiny_corpus():
    vocab = text.Vocab(list("abcd "))
    ids = torch.tensor(vocab[list("abcd " * 60)])
    return vocab, ids


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_rnnlm_shapes(cell):
    model = lm.RNNLM(vocab_size=7, hidden_size=5, num_layers=2, cell=cell, embed_size=3)
    X = torch.randint(0, 7, (2, 4))
    logits, state = model(X)
    assert logits.shape == (2, 4, 7)  # (B, T, V)
    h = state[0] if cell == "lstm" else state
    assert h.shape == (2, 2, 5)  # (num_layers, B, H)
    logits2, _ = model(X, state)
    assert logits2.shape == (2, 4, 7)


def test_rnnlm_errors():
    with pytest.raises(ValueError, match="cell"):
        lm.RNNLM(5, 3, cell="transformer")
    model = lm.RNNLM(5, 3)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        lm.lm_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_perplexity_of_uniform_model_is_vocab_size():
    V = 11
    logits = torch.zeros(4, 6, V)
    Y = torch.randint(0, V, (4, 6))
    assert math.isclose(lm.perplexity(lm.lm_loss(logits, Y).item()), V, rel_tol=1e-6)


def test_training_lowers_perplexity_and_returns_history(device):
    utils.seed_everything(0)
    vocab, ids = _tiny_corpus()
    train, val = text.train_val_split(ids, 0.8)
    model = lm.RNNLM(len(vocab), 32, cell="gru").to(device)
    hist = lm.train_lm(model, text.SeqDataLoader(train, 4, 10), text.SeqDataLoader(val, 2, 10, sequential=True),
                       lr=0.02, num_epochs=15, device=device, progress=False)
    assert set(hist) == {"epoch", "train_ppl", "val_ppl", "seconds", "grad_norm"}
    assert len(hist["epoch"]) == 15
    assert hist["val_ppl"][-1] < 1.5 < len(vocab)  # the corpus is a repeated 5-character cycle
    assert hist["seconds"] == sorted(hist["seconds"])
    ax = lm.plot_history(hist)
    assert ax.get_xlabel() == "epoch" and "perplexity" in ax.get_ylabel()


def test_time_budget_and_sequential_state_carry():
    vocab, ids = _tiny_corpus()
    model = lm.RNNLM(len(vocab), 8, cell="lstm")
    hist = lm.train_lm(model, text.SeqDataLoader(ids, 2, 5, sequential=True), num_epochs=1000,
                       time_budget=0.3, progress=False)
    assert 1 <= len(hist["epoch"]) < 1000


def test_train_errors():
    vocab, ids = _tiny_corpus()
    model = lm.RNNLM(len(vocab), 8)
    with pytest.raises(ValueError, match="optimizer"):
        lm.train_lm(model, text.SeqDataLoader(ids, 2, 5), optimizer="lbfgs")
    with pytest.raises(ValueError, match="empty"):
        lm.plot_history({"epoch": []})


def test_generation_greedy_and_sampled():
    utils.seed_everything(0)
    vocab, ids = _tiny_corpus()
    model = lm.RNNLM(len(vocab), 32, cell="gru")
    lm.train_lm(model, text.SeqDataLoader(ids, 4, 10), lr=0.02, num_epochs=20, progress=False)
    assert lm.generate(model, vocab, "ab", 8) == "abcd abcd "  # prefix + 8 tokens
    g1 = lm.generate(model, vocab, "a", 20, temperature=1.0, generator=torch.Generator().manual_seed(1))
    g2 = lm.generate(model, vocab, "a", 20, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert g1 == g2 and len(g1) == 21
    assert lm.generate(model, vocab, ["a", "b"], 1, sep="+") == "a+b+c"
    with pytest.raises(ValueError, match="prefix"):
        lm.generate(model, vocab, "", 3)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(model, vocab, "a", 3, temperature=-1)


def test_evaluate_perplexity_rejects_empty_loader():
    model = lm.RNNLM(5, 3)
    with pytest.raises(ValueError, match="no batches"):
        lm.evaluate_perplexity(model, [])


def test_detach_state():
    h = torch.ones(2, requires_grad=True) * 2
    assert not lm.detach_state(h).requires_grad
    a, b = lm.detach_state((h, h))
    assert not a.requires_grad and not b.requires_grad
    assert lm.detach_state(None) is None
