"""Tests for seqcourse.ngram: counting, add-k n-gram models, perplexity, sampling, Zipf fits."""

import collections
import math

import pytest
import torch

from seqcourse.ngram import NGramLM, count_ngrams, fit_zipf
from seqcourse.text import Vocab

TOKENS = list("abracadabra alakazam")


def test_count_ngrams_counts_and_total():
    counts = count_ngrams(TOKENS, 2)
    assert counts[("a", "b")] == 2 and counts[("r", "a")] == 2
    assert sum(counts.values()) == len(TOKENS) - 1
    assert count_ngrams(TOKENS, 1) == collections.Counter((t,) for t in TOKENS)
    assert count_ngrams(["x", "y"], 3) == collections.Counter()


def test_count_ngrams_bad_input():
    with pytest.raises(TypeError, match="tokenise"):
        count_ngrams("abc", 2)
    with pytest.raises(ValueError, match="positive"):
        count_ngrams(TOKENS, 0)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("k", [0.5, 1.0])
def test_distribution_sums_to_one_for_every_context(n, k):
    model = NGramLM(n, k).fit(TOKENS)
    V = len(model.vocab)
    contexts = [(), ("a",), ("z",), ("a", "b"), ("q", "q"), ("<unk>",)]
    for context in contexts:
        probs = model.distribution(context)
        assert probs.shape == (V,)
        assert torch.isclose(probs.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
        # prob() agrees with the vector, token by token
        for token in model.vocab.idx_to_token:
            assert math.isclose(model.prob(token, context), float(probs[model.vocab[token]]), rel_tol=1e-12)


def test_add_k_formula_by_hand():
    k = 0.3
    model = NGramLM(2, k).fit(TOKENS)
    V = len(model.vocab)
    bigrams = count_ngrams(TOKENS, 2)
    after_a = sum(c for (first, _), c in bigrams.items() if first == "a")
    assert math.isclose(model.prob("b", ["a"]), (bigrams[("a", "b")] + k) / (after_a + k * V))
    assert math.isclose(model.prob("z", ["b"]), (0 + k) / (2 + k * V))  # "bz" never occurs
    # only the last n - 1 tokens of the context matter (Markov assumption)
    assert model.prob("b", ["z", "z", "a"]) == model.prob("b", ["a"])
    # an unseen context gives the uniform distribution
    assert math.isclose(model.prob("a", ["<unk>"]), 1 / V)
    unigram = NGramLM(1, k).fit(TOKENS)
    assert math.isclose(unigram.prob("a"), (TOKENS.count("a") + k) / (len(TOKENS) + k * V))


def test_changing_k_after_fit_equals_refitting():
    model = NGramLM(2, k=1.0).fit(TOKENS)
    model.k = 0.25
    refit = NGramLM(2, k=0.25).fit(TOKENS)
    assert model.perplexity(list("abracadabra")) == refit.perplexity(list("abracadabra"))
    with pytest.raises(ValueError, match="non-negative"):
        model.k = -0.5


def test_count_ngrams_matches_text_ngrams():
    from seqcourse.text import ngrams

    for n in (1, 2, 3, 5):
        assert count_ngrams(TOKENS, n) == collections.Counter(ngrams(TOKENS, n))


def test_unsmoothed_model_is_the_mle_and_gives_inf_perplexity():
    model = NGramLM(2, k=0).fit(TOKENS)
    assert math.isclose(model.prob("b", ["a"]), 2 / TOKENS[:-1].count("a"))
    assert model.log_prob("z", ["b"]) == -math.inf
    assert model.perplexity(list("abz")) == math.inf
    with pytest.raises(ValueError, match="undefined"):
        model.distribution(["<unk>"])


def test_uniform_model_has_perplexity_V():
    vocab = Vocab(TOKENS)
    V = len(vocab)
    # with k huge the counts are negligible: every distribution is uniform
    model = NGramLM(2, k=1e12, vocab=vocab).fit(TOKENS)
    assert math.isclose(model.perplexity(list("zzzabc")), V, rel_tol=1e-6)
    # a unigram model of a text in which every type occurs equally often is exactly uniform
    balanced = [t for t in vocab.idx_to_token]  # "<unk>" included, once each
    model = NGramLM(1, k=0, vocab=vocab).fit(balanced)
    assert math.isclose(model.perplexity(list("banana")), V, rel_tol=1e-12)


def test_perplexity_is_exp_of_mean_cross_entropy():
    model = NGramLM(3, k=0.5).fit(TOKENS)
    text = list("abra kadabra")
    by_hand = [-model.log_prob(t, text[:i]) for i, t in enumerate(text)]
    ce = model.cross_entropy(text)
    assert math.isclose(ce, sum(by_hand) / len(text), rel_tol=1e-12)
    assert math.isclose(model.sequence_log_prob(text), -sum(by_hand), rel_tol=1e-12)
    assert math.isclose(model.perplexity(text), math.exp(ce), rel_tol=1e-12)


def test_lower_orders_score_the_first_tokens():
    model = NGramLM(3, k=1).fit(TOKENS)
    unigram = NGramLM(1, k=1, vocab=model.vocab).fit(TOKENS)
    bigram = NGramLM(2, k=1, vocab=model.vocab).fit(TOKENS)
    # the first token has no context: the trigram model uses its unigram counts
    assert model.log_prob("a") == unigram.log_prob("a")
    assert model.log_prob("b", ["a"]) == bigram.log_prob("b", ["a"])


def test_chain_rule_telescopes_for_a_long_enough_context():
    # With k = 0 and n at least the length of the string, the product of the
    # conditionals is count(string) / count(first token) * P(first token).
    text = list("the cat sat on the mat")
    model = NGramLM(5, k=0).fit(text)
    s = list("the ")
    joint = math.exp(sum(model.log_prob(t, s[:i]) for i, t in enumerate(s)))
    assert math.isclose(joint, count_ngrams(text, 1)[("t",)] / len(text) * 2 / 4)


def test_out_of_vocabulary_tokens_are_unk():
    vocab = Vocab(TOKENS)
    model = NGramLM(1, k=1, vocab=vocab).fit(TOKENS + ["é"])  # "é" counts as <unk>
    assert model.next_counts[()][vocab.unk] == 1
    assert model.prob("ü") == model.prob("<unk>")


def test_sample_is_reproducible_and_follows_seen_bigrams():
    model = NGramLM(2, k=0).fit(TOKENS)
    a = model.sample(30, ["a"], generator=torch.Generator().manual_seed(0))
    b = model.sample(30, ["a"], generator=torch.Generator().manual_seed(0))
    assert a == b and len(a) == 31 and a[0] == "a"
    seen = count_ngrams(TOKENS, 2)
    # every pair was seen in training, except after the dead end "m" (the last
    # token, never followed by anything), where sampling backs off to unigrams
    assert all(pair in seen for pair in zip(a, a[1:]) if pair[0] != "m")


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive int"):
        NGramLM(0)
    with pytest.raises(ValueError, match="non-negative"):
        NGramLM(2, k=-1)
    with pytest.raises(TypeError, match="Vocab"):
        NGramLM(2, vocab=["a", "b"])
    with pytest.raises(ValueError, match="not fitted"):
        NGramLM(2).perplexity(["a"])
    model = NGramLM(2).fit(TOKENS)
    with pytest.raises(TypeError, match="tokenise"):
        model.perplexity("abc")
    with pytest.raises(TypeError, match="tokenise"):
        NGramLM(2).fit("abc")
    with pytest.raises(ValueError, match="at least"):
        NGramLM(3).fit(["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        model.perplexity([])
    with pytest.raises(ValueError, match="num_tokens"):
        model.sample(-1)
    with pytest.raises(TypeError, match="strings"):
        model.perplexity([1, 2])


def test_fit_zipf_recovers_the_exponent():
    counts = {f"w{r}": 1e6 * r ** -1.2 for r in range(1, 501)}
    s, log_c = fit_zipf(counts)
    assert math.isclose(s, 1.2, rel_tol=1e-9) and math.isclose(log_c, math.log(1e6), rel_tol=1e-9)
    s, _ = fit_zipf(list(counts.values()), min_rank=10, max_rank=100)
    assert math.isclose(s, 1.2, rel_tol=1e-9)
    with pytest.raises(ValueError, match="min_rank"):
        fit_zipf(counts, min_rank=10, max_rank=5)


# ---------------------------------------------------------------- Kneser–Ney


def test_kneser_ney_distributions_sum_to_one():
    from seqcourse.ngram import KneserNeyLM

    vocab = Vocab(TOKENS + ["z"])  # "z" never occurs in the fitted text
    for n in (1, 2, 3):
        model = KneserNeyLM(n, discount=0.75, vocab=vocab).fit(TOKENS)
        for context in ([], ["a"], ["b", "r"], ["z", "z"], ["r", "a"]):
            probs = model.distribution(context)  # (V,)
            assert probs.shape == (len(vocab),)
            assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-12)
            assert (probs > 0).all()  # every entry, "z" and <unk> included, stays possible
            # the scalar and the vectorised paths agree
            for tok in ("a", "b", "z"):
                assert math.isclose(model.prob(tok, context), probs[vocab[tok]].item(), rel_tol=1e-12)


def test_kneser_ney_bigram_by_hand():
    from seqcourse.ngram import KneserNeyLM

    text = list("abab")
    vocab = Vocab(text)  # <unk>, a, b: V = 3
    model = KneserNeyLM(2, discount=0.5, vocab=vocab).fit(text)
    # bigrams: ab x2, ba x1. Continuation counts of the unigram level: a after {b} -> 1, b after {a} -> 1.
    p_uni_b = (1 - 0.5) / 2 + 0.5 * 2 / 2 * (1 / 3)
    assert math.isclose(model.prob("b", []), p_uni_b)
    # P(b | a) = (2 - 0.5) / 2 + 0.5 * 1 / 2 * P_uni(b)
    assert math.isclose(model.prob("b", ["a"]), 1.5 / 2 + 0.25 * p_uni_b)
    # an unseen context falls back to the lower order
    assert math.isclose(model.prob("b", ["<unk>"]), p_uni_b)


def test_kneser_ney_beats_add_one_on_held_out_words():
    from seqcourse.ngram import KneserNeyLM

    words = ("the cat sat on the mat and the dog sat on the log while the cat ran "
             "to the dog and the dog ran to the mat").split()
    vocab = Vocab(words)
    held_out = "the dog sat on the mat".split()
    kn = KneserNeyLM(2, vocab=vocab).fit(words)
    add_one = NGramLM(2, k=1, vocab=vocab).fit(words)
    assert kn.perplexity(held_out) < add_one.perplexity(held_out)


def test_token_log_probs_scores_every_token_after_the_first():
    from seqcourse.ngram import KneserNeyLM

    for model in (NGramLM(3, k=0.5).fit(TOKENS), KneserNeyLM(3).fit(TOKENS)):
        ids = model.vocab[list("abracadabra")]
        scores = model.token_log_probs(ids)
        assert len(scores) == len(ids) - 1
        by_hand = [model.log_prob(model.vocab.to_tokens(i), model.vocab.to_tokens(ids[:t]))
                   for t, i in enumerate(ids) if t > 0]
        assert scores == by_hand
        with pytest.raises(ValueError, match="token ids"):
            model.token_log_probs([0, 10_000])


def test_kneser_ney_bad_discount():
    from seqcourse.ngram import KneserNeyLM

    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="discount"):
            KneserNeyLM(2, discount=bad)
