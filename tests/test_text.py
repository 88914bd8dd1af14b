"""Tokenisers, the vocabulary and minibatch partitioning."""

import pytest
import torch

from seqcourse import text


def test_char_and_word_tokens():
    assert text.tokenize("Hi, you!", "char") == list("hi you")
    assert text.tokenize("The Time-Machine, 1895.", "word") == ["the", "time", "machine"]
    with pytest.raises(ValueError, match="'char' or 'word'"):
        text.tokenize("abc", "byte")


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_empty_text_is_rejected(bad):
    with pytest.raises(ValueError, match="empty"):
        text.tokenize(bad)
    with pytest.raises(ValueError, match="empty"):
        text.tokenize_chinese(bad)


def test_non_string_text_is_rejected():
    with pytest.raises(TypeError, match="str"):
        text.tokenize(["a", "b"])


def test_chinese_tokens():
    assert text.tokenize_chinese("我爱深度学习", mode="word") == ["我", "爱", "深度", "学习"]
    assert text.tokenize_chinese("床前明月光，疑是地上霜。", mode="char") == list("床前明月光疑是地上霜")
    assert "，" in text.tokenize_chinese("床前，明月", mode="char", keep_punct=True)
    with pytest.raises(ValueError, match="mode"):
        text.tokenize_chinese("你好", mode="pinyin")


def test_ngrams():
    assert text.ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert text.ngrams(["a"], 2) == []
    with pytest.raises(ValueError):
        text.ngrams(["a"], 0)


def test_vocab_order_reserved_and_min_freq():
    tokens = list("aaabbc")
    vocab = text.Vocab(tokens, min_freq=2, reserved_tokens=["<pad>", "<bos>"])
    assert vocab.idx_to_token == ["<unk>", "<pad>", "<bos>", "a", "b"]
    assert vocab["a"] == 3 and vocab[["b", "a"]] == [4, 3]
    assert vocab["c"] == vocab.unk == 0  # below min_freq -> <unk>
    assert vocab["never seen"] == 0
    assert vocab.to_tokens([3, 4]) == ["a", "b"]
    assert vocab.to_tokens(torch.tensor([4, 0])) == ["b", "<unk>"]
    assert vocab.token_freqs[0] == ("a", 3)
    assert len(vocab) == 5 and "a" in vocab and "c" not in vocab


def test_vocab_ties_are_deterministic_and_nested_lists_flatten():
    v = text.Vocab([["b", "a"], ["a", "b"]])
    assert v.idx_to_token == ["<unk>", "a", "b"]


def test_vocab_errors():
    with pytest.raises(ValueError, match="min_freq"):
        text.Vocab(["a"], min_freq=-1)
    with pytest.raises(ValueError, match="duplicates"):
        text.Vocab(["a"], reserved_tokens=["<pad>", "<pad>"])
    with pytest.raises(TypeError):
        text.Vocab([1, 2])
    v = text.Vocab(["a"])
    with pytest.raises(ValueError, match="out of range"):
        v.to_tokens(7)
    with pytest.raises(TypeError):
        v[3]
    with pytest.raises(ValueError, match="1-D"):
        v.to_tokens(torch.zeros(2, 2, dtype=torch.long))


def _windows(batches):
    return [(X.clone(), Y.clone()) for X, Y in batches]


def test_random_batches_shapes_shift_and_no_overlap():
    corpus = torch.arange(100)
    g = torch.Generator().manual_seed(0)
    batches = _windows(text.random_batches(corpus, batch_size=3, num_steps=5, generator=g))
    assert batches, "no batches"
    starts = []
    for X, Y in batches:
        assert X.shape == Y.shape == (3, 5)
        assert torch.equal(Y, X + 1)  # the corpus is 0..99 so the shift is +1
        assert torch.equal(X[:, 1:], X[:, :-1] + 1)  # each row is a contiguous window
        starts += X[:, 0].tolist()
    starts.sort()
    assert all(b - a >= 5 for a, b in zip(starts, starts[1:]))  # windows do not overlap


def test_sequential_batches_continue_each_row():
    corpus = torch.arange(200)
    g = torch.Generator().manual_seed(1)
    batches = _windows(text.sequential_batches(corpus, batch_size=4, num_steps=6, generator=g))
    for (X0, _), (X1, _) in zip(batches, batches[1:]):
        assert torch.equal(X1[:, 0], X0[:, -1] + 1)  # row b of batch k+1 continues row b of batch k
    for X, Y in batches:
        assert torch.equal(Y, X + 1)


def test_partitioning_errors():
    with pytest.raises(ValueError, match="num_steps"):
        list(text.random_batches(torch.arange(10), 2, 10))
    with pytest.raises(ValueError, match="1-D"):
        list(text.random_batches(torch.zeros(3, 4, dtype=torch.long), 2, 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(text.sequential_batches(torch.arange(10), 0, 2))
    with pytest.raises(ValueError, match="too short"):
        list(text.sequential_batches(torch.arange(12), 6, 3))


def test_loader_is_reiterable_and_reproducible():
    a = text.SeqDataLoader(torch.arange(300), 4, 5, seed=3)
    b = text.SeqDataLoader(torch.arange(300), 4, 5, seed=3)
    first = [X for X, _ in a]
    assert [X for X, _ in a] and all(torch.equal(x, y) for x, y in zip(first, [X for X, _ in b]))
    assert len(a) == len(first) or abs(len(a) - len(first)) <= 1


def test_train_val_split():
    tr, va = text.train_val_split(torch.arange(10), 0.9)
    assert tr.tolist() == list(range(9)) and va.tolist() == [9]
    with pytest.raises(ValueError):
        text.train_val_split(torch.arange(10), 1.0)
