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


# ------------------------------------------------- the deterministic evaluator


def _scratch_nll(model, ids):
    """Reference: one forward pass over the whole stream, batch 1, no chunks."""
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])  # (1, N-1, V)
        return torch.nn.functional.cross_entropy(logits[0].double(), ids[1:], reduction="sum").item()


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_heldout_nll_counts_every_prediction_and_matches_one_pass(cell):
    torch.manual_seed(0)
    V = 7
    model = lm.RNNLM(V, 5, cell=cell, embed_size=4)
    for N in (2, 3, 50, 101):
        ids = torch.randint(0, V, (N,))
        for batch_size, num_steps in [(1, 7), (1, 200), (3, 4), (8, 5), (64, 3)]:
            total, count = lm.heldout_nll(model, ids, num_steps=num_steps, batch_size=batch_size)
            assert count == N - 1  # nothing dropped, whatever B and T
            if batch_size == 1:  # one stream with the state carried: the same as one long pass
                assert math.isclose(total, _scratch_nll(model, ids), rel_tol=1e-5)
    # deterministic: the same number twice
    ids = torch.randint(0, V, (40,))
    assert lm.heldout_perplexity(model, ids, batch_size=4, num_steps=5) == \
        lm.heldout_perplexity(model, ids, batch_size=4, num_steps=5)


def test_heldout_perplexity_of_ngram_models_scores_n_minus_1_tokens():
    from seqcourse.ngram import KneserNeyLM, NGramLM

    vocab, ids = _tiny_corpus()
    tokens = vocab.to_tokens(ids)
    for model in (NGramLM(2, k=1, vocab=vocab).fit(tokens), KneserNeyLM(3, vocab=vocab).fit(tokens)):
        held = ids[:30]
        total, count = lm.heldout_nll(model, held)
        assert count == len(held) - 1
        by_hand = -sum(model.log_prob(tokens[t], tokens[:t]) for t in range(1, 30))
        assert math.isclose(total, by_hand, rel_tol=1e-12)
        assert math.isclose(lm.heldout_perplexity(model, held), math.exp(by_hand / 29), rel_tol=1e-12)
    # a zero-probability token gives an infinite perplexity, not an error
    mle = NGramLM(2, k=0, vocab=vocab).fit(tokens)
    assert lm.heldout_perplexity(mle, vocab[list("aa")]) == math.inf


def test_evaluate_perplexity_of_a_seq_loader_is_deterministic_and_complete():
    vocab, ids = _tiny_corpus()
    torch.manual_seed(0)
    model = lm.RNNLM(len(vocab), 6)
    loader = text.SeqDataLoader(ids[:77], 4, 5, sequential=True, seed=0)
    a, b = lm.evaluate_perplexity(model, loader), lm.evaluate_perplexity(model, loader)
    assert a == b == lm.heldout_perplexity(model, ids[:77], num_steps=5, batch_size=4)


def test_heldout_errors():
    model = lm.RNNLM(5, 3)
    with pytest.raises(ValueError, match="at least 2"):
        lm.heldout_perplexity(model, [1])
    with pytest.raises(ValueError, match="1-D"):
        lm.heldout_perplexity(model, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_steps"):
        lm.heldout_perplexity(model, [1, 2, 3], num_steps=0)
    with pytest.raises(TypeError, match="n-gram"):
        lm.heldout_perplexity(object(), [1, 2, 3])


# --------------------------------------------- fixed-window LM and weight tying


def test_fixed_window_lm_sees_exactly_its_window():
    torch.manual_seed(0)
    V, n = 6, 3
    model = lm.FixedWindowLM(V, context_size=n, embed_size=4, hidden_size=8)
    X = torch.randint(0, V, (2, 10))
    logits, state = model(X)
    assert logits.shape == (2, 10, V) and torch.equal(state, X[:, -n:])
    # changing a token more than n - 1 steps before t leaves the prediction at t unchanged
    X2 = X.clone()
    X2[:, 2] = (X2[:, 2] + 1) % V
    logits2, _ = model(X2)
    assert torch.equal(logits[:, n + 2:], logits2[:, n + 2:])
    assert not torch.allclose(logits[:, 2:n + 2], logits2[:, 2:n + 2])
    # reading in two chunks with the state carried equals one pass
    a, s = model(X[:, :4])
    b, _ = model(X[:, 4:], s)
    assert torch.allclose(torch.cat([a, b], 1), logits, atol=1e-6)
    # against a by-hand MLP on one window, with the weights of the module
    window = X[0, 5 - n + 1:6]  # the n tokens ending at t = 5
    e = model.embedding.weight[window].reshape(-1)  # (n*E,)
    o = torch.tanh(e @ model.hidden.weight.T + model.hidden.bias) @ model.head.weight.T + model.head.bias
    assert torch.allclose(o, logits[0, 5], atol=1e-6)
    with pytest.raises(ValueError, match="context_size"):
        lm.FixedWindowLM(V, 0, 4, 8)


def test_fixed_window_lm_trains():
    utils.seed_everything(0)
    vocab, ids = _tiny_corpus()
    model = lm.FixedWindowLM(len(vocab), 2, 8, 16)
    lm.train_lm(model, text.SeqDataLoader(ids, 4, 10), lr=0.02, num_epochs=10, progress=False)
    assert lm.heldout_perplexity(model, ids[:50]) < 1.5  # a 5-cycle needs one token of context


def test_weight_tying_shares_one_matrix():
    untied = lm.RNNLM(11, 6, embed_size=6)
    tied = lm.RNNLM(11, 6, embed_size=6, tie_weights=True)
    assert tied.head.weight is tied.embedding.weight
    assert utils.count_parameters(untied) - utils.count_parameters(tied) == 11 * 6
    logits, _ = tied(torch.randint(0, 11, (2, 3)))
    logits.sum().backward()
    assert tied.embedding.weight.grad is not None
    with pytest.raises(ValueError, match="tie_weights"):
        lm.RNNLM(11, 6, embed_size=4, tie_weights=True)
