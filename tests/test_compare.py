"""Parameter-count formula and timed training."""

import numpy as np
import pytest
import torch
from torch import nn

from seqcourse import compare
from seqcourse.lm import RNNLM
from seqcourse.text import SeqDataLoader

T, B, I, H = 6, 3, 4, 5


@pytest.mark.parametrize("cell,cls", [("rnn", nn.RNN), ("gru", nn.GRU), ("lstm", nn.LSTM)])
@pytest.mark.parametrize("sizes", [(1, 1), (28, 128), (300, 64)])
def test_param_count_formula_matches_modules(cell, cls, sizes):
    i, h = sizes
    assert compare.rnn_param_count(cell, i, h) == sum(p.numel() for p in cls(i, h).parameters())


def test_param_count_bad_input():
    with pytest.raises(ValueError, match="cell must be"):
        compare.rnn_param_count("transformer", 3, 4)
    with pytest.raises(ValueError, match="hidden_size"):
        compare.rnn_param_count("gru", 3, 0)


def test_cpu_threads_restores():
    old = torch.get_num_threads()
    with compare.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
    with pytest.raises(ValueError, match="positive int"):
        with compare.cpu_threads(0):
            pass


def test_counting_loader_forwards_sequential():
    loader = SeqDataLoader(torch.arange(200) % 7, 2, 5, sequential=True)
    counting = compare.CountingLoader(loader)
    assert counting.sequential and len(counting) == len(loader)
    n = sum(1 for _ in counting)
    assert counting.count == n > 0


def test_train_for_seconds_counts_updates():
    torch.manual_seed(0)
    corpus = torch.arange(600) % 7
    model = RNNLM(7, 8, cell="gru")
    hist = compare.train_for_seconds(model, SeqDataLoader(corpus, 4, 8), SeqDataLoader(corpus, 4, 8),
                                     seconds=0.3, threads=1)
    assert hist["updates"] >= 1 and len(hist["val_ppl"]) == len(hist["epoch"]) >= 1
    assert hist["wall_seconds"] >= 0.3
    assert np.isfinite(hist["val_ppl"][-1])
    with pytest.raises(ValueError, match="seconds"):
        compare.train_for_seconds(model, SeqDataLoader(corpus, 4, 8), None, seconds=0)
