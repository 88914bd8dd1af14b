"""Hidden tests of a01_text_and_ngrams: tokeniser, vocabulary, n-grams, add-k bigram model, perplexity.

References are computed here, from the specification in the notebook, with
plain Python loops (counts) and float64 arithmetic (probabilities).
"""

import collections
import math
import re
import unicodedata

import pytest
import torch

from autograder.api import (Ref, StudentError, assert_close, assert_float, assert_list_of, assert_number, assert_type,
                            check_tensor)

# ----------------------------------------------------------------------------- references


def _punct(ch):
    return unicodedata.category(ch).startswith("P")


def ref_tokenize(text, mode):
    if mode == "zh_word":
        return ref_zh_word(text)
    text = text.lower()
    if mode == "char":
        return list(" ".join(text.split()))
    if mode == "word":
        return re.findall(r"[a-z0-9']+", text)
    if mode == "zh_char":
        return [c for c in text if not c.isspace() and not _punct(c)]
    return ref_zh_word(text)


def ref_zh_word(text, lower_first=True):
    """jieba's segmentation, lower-cased; ``lower_first``: of the lower-cased text (else of the text itself)."""
    import jieba

    jieba.setLogLevel(60)
    toks = [t.lower() for t in jieba.lcut(text.lower() if lower_first else text)]
    return [t for t in toks if t.strip() and not all(_punct(c) for c in t.strip())]


def ref_itos(tokens, min_freq=1, reserved=()):
    itos = ["<unk>"]
    for t in reserved:
        if t not in itos:
            itos.append(t)
    counts, first = collections.Counter(tokens), {}
    for i, t in enumerate(tokens):
        first.setdefault(t, i)
    for t in sorted(counts, key=lambda t: (-counts[t], first[t])):
        if counts[t] >= min_freq and t not in itos:
            itos.append(t)
    return itos


def ref_ngrams(tokens, n):
    out = {}
    for i in range(len(tokens) - n + 1):
        g = tuple(tokens[i:i + n])
        out[g] = out.get(g, 0) + 1
    return out


def ref_bigram(ids, V, k):
    c = [[0] * V for _ in range(V)]
    for a, b in zip(ids[:-1], ids[1:]):
        c[a][b] += 1
    P = torch.empty(V, V, dtype=torch.float64)
    for v in range(V):
        den = sum(c[v]) + k * V
        for w in range(V):
            P[v, w] = (c[v][w] + k) / den if den > 0 else 1.0 / V
    return P


def ref_ppl(P, seqs):
    nll, n = 0.0, 0
    for s in seqs:
        for a, b in zip(s[:-1], s[1:]):
            p = float(P[a, b])
            if p == 0.0:
                return math.inf
            nll -= math.log(p)
            n += 1
    return math.exp(nll / n)


def student_ngrams(sub, tokens, n):
    sub.run("ngram_counts", (tokens, n), keep="ngrams")
    rows = sub.call("ngram_table", Ref("ngrams"))
    out = {}
    for gram, count in rows:
        assert tuple(gram) not in out, f"n-gram {tuple(gram)} appears twice"
        out[tuple(gram)] = count
    return out


# ----------------------------------------------------------------------------- Part 1: tokenize_text

EN = "The Time Traveller (for so it will be convenient to speak of him)\n  was expounding a RECONDITE matter to us. Don't  stop; 42 times!\t"
ZH = "我爱自然语言处理。今天天气很好，我们一起去公园散步吧！用PyTorch训练RNN模型。"


def test_tokenize__char(sub):
    got = sub.call("tokenize_text", EN, "char")
    assert got == ref_tokenize(EN, "char"), f"char tokens differ: got {got[:30]}..."


def test_tokenize__word(sub):
    got = sub.call("tokenize_text", EN, "word")
    assert got == ref_tokenize(EN, "word"), f"word tokens differ: got {got}"


def test_tokenize__default_mode_is_word(sub):
    text = "Hello, World!  It's 2024."
    assert sub.call("tokenize_text", text) == ["hello", "world", "it's", "2024"]


def test_tokenize__zh_char(sub):
    text = ZH + " 　“你好”"
    got = sub.call("tokenize_text", text, "zh_char")
    assert got == ref_tokenize(text, "zh_char"), f"zh_char tokens differ: got {got}"


def _check_zh_word(got, text):
    # Lower-casing before or after the segmentation are both accepted.
    assert got in (ref_zh_word(text, True), ref_zh_word(text, False)), f"zh_word tokens differ: got {got}"


def test_tokenize__zh_word(sub):
    _check_zh_word(sub.call("tokenize_text", ZH, "zh_word"), ZH)


# Whitespace tokens, punctuation-only tokens ("……", "——", "“") and a number with a point ("3.14").
ZH2 = "圆周率约等于3.14，对吧？ 他说：“Hello World”……\n好的 ——  用GPU和CPU都可以。"


def test_tokenize__zh_word_drops_whitespace_and_punctuation_tokens_only(sub):
    got = sub.call("tokenize_text", ZH2, "zh_word")
    _check_zh_word(got, ZH2)
    assert "3.14" in got, "a token that is not only punctuation is kept"


TOKENIZE_TASK = "returns a list of string tokens"


def test_tokenize__returns_a_list_of_str(sub):
    for mode, text in (("char", EN), ("word", EN), ("zh_char", ZH), ("zh_word", ZH)):
        assert_list_of(sub.call("tokenize_text", text, mode), str, task=TOKENIZE_TASK, what=f"tokens in mode {mode!r}")
    assert_list_of(sub.call("tokenize_text", "", "word"), str, task=TOKENIZE_TASK, what="tokens of ''")


def test_tokenize__leading_whitespace_and_non_ascii_letters(sub):
    text = " \t\n  Café NAÏVE   snake_case,well-known\n\n ÀB 12ab  "
    for mode in ("char", "word"):
        got = sub.call("tokenize_text", text, mode)
        assert got == ref_tokenize(text, mode), f"{mode} tokens of {text!r} differ: got {got}"
    for mode in ("char", "word", "zh_char", "zh_word"):
        got = sub.call("tokenize_text", " \t\n  \n", mode)
        assert got == [], f"a text of whitespace only gives [] in mode {mode!r}, got {got}"


def test_tokenize__calls_in_any_order(sub):
    """The same results whatever was tokenised before."""
    for mode, text in (("zh_word", ZH), ("char", EN), ("word", EN), ("zh_char", ZH), ("word", ZH2), ("char", ZH),
                       ("zh_word", ZH2), ("word", EN), ("zh_char", EN)):
        got = sub.call("tokenize_text", text, mode)
        if mode == "zh_word":
            _check_zh_word(got, text)
        else:
            assert got == ref_tokenize(text, mode), f"{mode} tokens differ after other calls: got {got}"


def test_tokenize__empty_and_bad_mode(sub):
    for mode in ("char", "word", "zh_char", "zh_word"):
        assert sub.call("tokenize_text", "", mode) == [], f"'' in mode {mode!r} should give []"
    with pytest.raises(StudentError, match="ValueError") as info:
        sub.call("tokenize_text", "abc", "bpe")
    missing = [m for m in ("char", "word", "zh_char", "zh_word") if m not in str(info.value)]
    assert not missing, f"the ValueError's message should list the valid modes; it lacks {missing}: {info.value}"


# ----------------------------------------------------------------------------- Part 2: Vocabulary

CORPUS = "the cat sat on the mat the dog sat on a log and a cat ran".split() + ["<pad>", "mat"]


def test_vocab__order_min_freq_reserved(sub):
    reserved = ["<pad>", "<bos>", "<eos>"]
    sub.new("Vocabulary", CORPUS, keep="v", min_freq=2, reserved_tokens=reserved)
    assert sub.call("@v.get_itos") == ref_itos(CORPUS, 2, reserved)


def test_vocab__defaults_and_ties(sub):
    tokens = list("mississippi river")
    sub.new("Vocabulary", tokens, keep="v")
    assert sub.call("@v.get_itos") == ref_itos(tokens)


def test_vocab__min_freq_is_inclusive(sub):
    tokens = ["x"] * 3 + ["y"] * 2 + ["z"]
    sub.new("Vocabulary", tokens, keep="v", min_freq=2)
    assert sub.call("@v.get_itos") == ["<unk>", "x", "y"]
    sub.new("Vocabulary", tokens, keep="w", min_freq=4)
    assert sub.call("@w.get_itos") == ["<unk>"]


def test_vocab__unk_and_duplicates_in_reserved(sub):
    reserved = ["<pad>", "<unk>", "<pad>", "cat"]
    sub.new("Vocabulary", CORPUS, keep="v", reserved_tokens=reserved)
    itos = sub.call("@v.get_itos")
    assert itos == ref_itos(CORPUS, 1, reserved)
    assert len(set(itos)) == len(itos)


def test_vocab__encode_decode(sub):
    reserved = ["<pad>"]
    sub.new("Vocabulary", CORPUS, keep="v", min_freq=2, reserved_tokens=reserved)
    itos = ref_itos(CORPUS, 2, reserved)
    stoi = {t: i for i, t in enumerate(itos)}
    query = ["the", "zebra", "cat", "<pad>", "log", "sat", "<unk>"]
    assert sub.call("@v.encode", query) == [stoi.get(t, 0) for t in query]
    assert sub.call("@v.token_to_id", "unicorn") == 0
    assert sub.call("@v.token_to_id", "on") == stoi["on"]
    ids = list(range(len(itos)))[::-1]
    assert sub.call("@v.decode", ids) == [itos[i] for i in ids]
    assert sub.call("@v.id_to_token", 0) == "<unk>"


def test_vocab__out_of_range_ids(sub):
    sub.new("Vocabulary", CORPUS, keep="v", min_freq=2)
    n = len(ref_itos(CORPUS, 2))
    assert sub.call("@v.id_to_token", n - 1) == ref_itos(CORPUS, 2)[-1]
    for bad in (n, n + 5, -1):
        with pytest.raises(StudentError, match="IndexError"):
            sub.call("@v.id_to_token", bad)
    with pytest.raises(StudentError, match="IndexError"):
        sub.call("@v.decode", [1, n])


VOCAB_TASK = {"get_itos": "vocab.get_itos() returns the list of all tokens, indexed by id",
              "token_to_id": "vocab.token_to_id(token) returns the id of token (an int)",
              "encode": "vocab.encode(tokens) returns [token_to_id(t) for t in tokens]",
              "decode": "vocab.decode(ids) returns [id_to_token(i) for i in ids]",
              "id_to_token": "vocab.id_to_token(idx) returns the token of id idx"}


def test_vocab__return_types(sub):
    sub.new("Vocabulary", CORPUS, keep="v", min_freq=2, reserved_tokens=["<pad>"])
    n = len(ref_itos(CORPUS, 2, ["<pad>"]))
    assert_list_of(sub.call("@v.get_itos"), str, task=VOCAB_TASK["get_itos"], what="get_itos()", length=n)
    assert_type(sub.call("@v.token_to_id", "the"), int, task=VOCAB_TASK["token_to_id"], what="token_to_id('the')")
    assert_type(sub.call("@v.token_to_id", "zebra"), int, task=VOCAB_TASK["token_to_id"], what="token_to_id('zebra')")
    assert_list_of(sub.call("@v.encode", ["the", "zebra"]), int, task=VOCAB_TASK["encode"], what="encode(...)")
    assert_list_of(sub.call("@v.decode", [0, 1, 2]), str, task=VOCAB_TASK["decode"], what="decode(...)")
    assert_type(sub.call("@v.id_to_token", 1), str, task=VOCAB_TASK["id_to_token"], what="id_to_token(1)")
    assert sub.call("@v.encode", []) == [] and sub.call("@v.decode", []) == [], "encode([]) and decode([]) are []"


def test_vocab__unk_in_text_and_empty_text(sub):
    tokens = ["<unk>", "a", "<unk>", "b", "a", "<unk>"]
    sub.new("Vocabulary", tokens, keep="v", reserved_tokens=["<pad>"])
    assert sub.call("@v.get_itos") == ref_itos(tokens, 1, ["<pad>"]), "'<unk>' in the text must not get a second id"
    sub.new("Vocabulary", [], keep="e", reserved_tokens=["<pad>", "<bos>"])
    assert sub.call("@e.get_itos") == ["<unk>", "<pad>", "<bos>"], "an empty text gives only <unk> and the reserved tokens"
    assert sub.call("@e.encode", ["x", "<bos>"]) == [0, 2]


def test_vocab__calls_do_not_change_the_vocabulary(sub):
    """One vocabulary, used in many orders: unknown tokens never get an id, results never change."""
    sub.new("Vocabulary", CORPUS, keep="v", min_freq=2)
    itos = ref_itos(CORPUS, 2)
    stoi = {t: i for i, t in enumerate(itos)}
    queries = [["zebra", "the", "unicorn"], ["on", "zebra", "sat"], ["unicorn", "unicorn", "cat"]]
    for q in queries + queries[::-1]:
        assert sub.call("@v.encode", q) == [stoi.get(t, 0) for t in q], f"encode({q}) after other calls"
        assert sub.call("@v.token_to_id", "zebra") == 0, "an unknown token stays unknown after it was encoded"
        assert sub.call("@v.get_itos") == itos, "encoding unknown tokens must not add them to the vocabulary"
        ids = list(range(len(itos)))[::-1]
        assert sub.call("@v.decode", ids) == [itos[i] for i in ids]


def test_vocab__index_error_message_names_the_id_and_the_range(sub):
    sub.new("Vocabulary", CORPUS, keep="v", min_freq=2)
    n = len(ref_itos(CORPUS, 2))
    for bad in (n + 7, -3):
        with pytest.raises(StudentError, match="IndexError") as info:
            sub.call("@v.id_to_token", bad)
        msg = str(info.value)
        assert str(bad) in msg and str(n - 1) in msg, \
            f"the IndexError should name the id ({bad}) and the valid range (0 .. {n - 1}): {msg}"


# ----------------------------------------------------------------------------- Part 3: ngram_counts


def test_ngram_counts__bigrams(sub):
    tokens = "to be or not to be that is the question to be".split()
    assert student_ngrams(sub, tokens, 2) == ref_ngrams(tokens, 2)


def test_ngram_counts__unigrams_and_trigrams(sub):
    tokens = list("abracadabra")
    assert student_ngrams(sub, tokens, 1) == ref_ngrams(tokens, 1)
    assert student_ngrams(sub, tokens, 3) == ref_ngrams(tokens, 3)


def test_ngram_counts__int_ids(sub):
    ids = torch.randint(0, 4, (60,)).tolist()
    for n in (2, 4):
        got = student_ngrams(sub, ids, n)
        assert got == ref_ngrams(ids, n)
        assert sum(got.values()) == len(ids) - n + 1


def test_ngram_counts__short_and_exact(sub):
    assert student_ngrams(sub, ["a", "b"], 3) == {}
    assert student_ngrams(sub, [], 1) == {}
    assert student_ngrams(sub, ["a", "b", "c"], 3) == {("a", "b", "c"): 1}


def test_ngram_counts__bad_n(sub):
    for n in (0, -1):
        with pytest.raises(StudentError, match="ValueError"):
            sub.call("ngram_counts", ["a", "b"], n)


def test_ngram_counts__calls_in_any_order(sub):
    """Counts never accumulate from one call to the next."""
    a, b = list("abcabca"), [3, 1, 3, 1, 2]
    for tokens, n in ((a, 2), (b, 2), (a, 2), (a, 1), (b, 3), (a, 2)):
        assert student_ngrams(sub, tokens, n) == ref_ngrams(tokens, n), f"counts of {tokens} (n={n}) after other calls"


# ----------------------------------------------------------------------------- Part 4: bigram_probs


def _check_probs(sub, ids, V, k, device):
    got = sub.call("bigram_probs", torch.tensor(ids, dtype=torch.long, device=device), V, k)
    check_tensor(got, shape=(V, V), dtype=torch.float64, device=device, what="bigram_probs")
    assert_close(got, ref_bigram(ids, V, k).to(device), atol=1e-12, rtol=1e-10, what="bigram_probs")


def test_bigram_probs__add_one(sub, device):
    V = 7
    ids = torch.randint(0, V - 1, (80,)).tolist()  # id V-1 never occurs: its row is uniform
    _check_probs(sub, ids, V, 1.0, device)


def test_bigram_probs__fractional_k(sub, device):
    V = 9
    ids = torch.randint(0, V, (50,)).tolist()
    _check_probs(sub, ids, V, 0.25, device)


def test_bigram_probs__unsmoothed(sub, device):
    V = 6
    ids = [0, 1, 2, 1, 2, 3, 1, 0, 0, 4]  # 5 is never a context, 4 only ends the text
    _check_probs(sub, ids, V, 0.0, device)


def test_bigram_probs__rows_sum_to_one(sub, device):
    V = 12
    ids = torch.randint(0, V, (200,), device=device)
    for k in (0.0, 0.5, 3.0):
        P = sub.call("bigram_probs", ids, V, k)
        check_tensor(P, shape=(V, V), dtype=torch.float64, device=device, what="bigram_probs")
        assert_close(P.sum(dim=1), torch.ones(V, dtype=torch.float64, device=device), atol=1e-12,
                     what=f"row sums for k={k}")


def test_bigram_probs__single_token(sub, device):
    _check_probs(sub, [2], 4, 1.0, device)
    _check_probs(sub, [2], 4, 0.0, device)


def test_bigram_probs__empty_text(sub, device):
    _check_probs(sub, [], 3, 1.0, device)
    _check_probs(sub, [], 3, 0.0, device)


def test_bigram_probs__calls_in_any_order(sub):
    a, b = torch.randint(0, 5, (30,)).tolist(), torch.randint(0, 5, (12,)).tolist()
    for ids, k in ((a, 1.0), (b, 0.5), (a, 1.0), (b, 0.0), (a, 2)):
        _check_probs(sub, ids, 5, k, "cpu")


def test_bigram_probs__negative_k(sub, device):
    with pytest.raises(StudentError, match="ValueError"):
        sub.call("bigram_probs", torch.tensor([0, 1, 0], device=device), 2, -0.5)


# ----------------------------------------------------------------------------- Part 5: bigram_perplexity


def _rand_probs(V, device, zeros=False):
    P = torch.rand(V, V, dtype=torch.float64) + 0.05
    if zeros:
        P[torch.rand(V, V) < 0.3] = 0.0
        P[:, 0] += 0.1  # keep every row non-empty
    return (P / P.sum(dim=1, keepdim=True)).to(device)


PPL_TASK = "returns, as a Python float, the exponential of the mean negative natural log-likelihood"


def _seqs(lengths, V, device):
    return [torch.randint(0, V, (L,), device=device) for L in lengths]


def test_perplexity__one_sequence(sub, device):
    V = 8
    P = _rand_probs(V, device)
    seqs = _seqs([40], V, device)
    got = sub.call("bigram_perplexity", P, seqs)
    assert_float(got, ref_ppl(P.cpu(), [s.tolist() for s in seqs]), task=PPL_TASK, rtol=1e-9, what="perplexity")


def test_perplexity__pooled_over_sequences_of_different_lengths(sub, device):
    V = 6
    P = _rand_probs(V, device)
    seqs = _seqs([3, 50, 7, 2], V, device)
    got = sub.call("bigram_perplexity", P, seqs)
    assert_float(got, ref_ppl(P.cpu(), [s.tolist() for s in seqs]), task=PPL_TASK, rtol=1e-9, what="perplexity")


def test_perplexity__uniform_model_gives_V(sub, device):
    V = 11
    P = torch.full((V, V), 1.0 / V, dtype=torch.float64, device=device)
    got = sub.call("bigram_perplexity", P, _seqs([5, 9], V, device))
    assert_float(got, float(V), task=PPL_TASK, rtol=1e-9, what="perplexity of a uniform model")


def test_perplexity__short_sequences_are_skipped(sub, device):
    V = 5
    P = _rand_probs(V, device)
    seqs = _seqs([1, 6, 0, 1, 4], V, device)
    got = sub.call("bigram_perplexity", P, seqs)
    assert_float(got, ref_ppl(P.cpu(), [s.tolist() for s in seqs]), task=PPL_TASK, rtol=1e-9, what="perplexity")
    with pytest.raises(StudentError, match="ValueError"):
        sub.call("bigram_perplexity", P, _seqs([1, 0], V, device))
    with pytest.raises(StudentError, match="ValueError"):
        sub.call("bigram_perplexity", P, [])


def test_perplexity__calls_in_any_order(sub):
    V = 6
    P, Q = _rand_probs(V, "cpu"), _rand_probs(V, "cpu", zeros=True)
    a, b = _seqs([9, 4], V, "cpu"), _seqs([2, 7, 3], V, "cpu")
    for probs, seqs in ((P, a), (P, b), (Q, a), (P, a), (P, a + b), (P, b)):
        got = sub.call("bigram_perplexity", probs, seqs)
        assert_float(got, ref_ppl(probs, [x.tolist() for x in seqs]), task=PPL_TASK, rtol=1e-9,
                     what="perplexity after other calls")


def test_perplexity__zero_probability_is_infinite(sub, device):
    V = 4
    P = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                      [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64, device=device)
    seqs = [torch.tensor([0, 1, 2, 3, 0], device=device), torch.tensor([2, 1, 3], device=device)]
    got = sub.call("bigram_perplexity", P, seqs)
    assert_float(got, math.inf, task=PPL_TASK, what="perplexity with a zero-probability bigram")
    finite = [torch.tensor([0, 1, 2, 3, 0], device=device)]
    assert_float(sub.call("bigram_perplexity", P, finite), ref_ppl(P.cpu(), [[0, 1, 2, 3, 0]]), task=PPL_TASK, rtol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_bigram_probs__cuda_matches_cpu(sub):
    V = 10
    ids = torch.randint(0, V, (300,))
    P_cpu = sub.call("bigram_probs", ids, V, 0.5)
    P_gpu = sub.call("bigram_probs", ids.cuda(), V, 0.5)
    check_tensor(P_gpu, shape=(V, V), dtype=torch.float64, device="cuda", what="bigram_probs on CUDA")
    assert_close(P_gpu.cpu(), P_cpu, atol=1e-12, rtol=1e-10, what="bigram_probs on CUDA vs CPU")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_perplexity__cuda_matches_cpu(sub):
    V = 10
    P = _rand_probs(V, "cpu")
    held = [torch.randint(0, V, (60,)), torch.randint(0, V, (25,))]
    a = sub.call("bigram_perplexity", P, held)
    b = sub.call("bigram_perplexity", P.cuda(), [h.cuda() for h in held])
    assert_number(b, float(a), rtol=1e-9, what="perplexity on CUDA vs CPU")
