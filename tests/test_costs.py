"""Tests for seqcourse.costs: counts, layers, timing, fits and memory."""

import math

import pytest
import torch

from seqcourse import costs


def test_multiply_adds():
    assert costs.multiply_adds("cnn", 10, 4, kernel_size=3) == 3 * 10 * 16
    assert costs.multiply_adds("rnn", 10, 4) == 2 * 10 * 16
    assert costs.multiply_adds("attention", 10, 4) == 4 * 10 * 16 + 2 * 100 * 4
    with pytest.raises(ValueError, match="kind"):
        costs.multiply_adds("lstm", 4, 4)
    with pytest.raises(ValueError, match="positive"):
        costs.multiply_adds("rnn", 0, 4)


def test_rnn_count_matches_its_parameters():
    layer = costs.make_layer("rnn", 6)
    weights = layer.weight_ih_l0.numel() + layer.weight_hh_l0.numel()  # one multiply-add per weight per step
    assert costs.multiply_adds("rnn", 5, 6) == 5 * weights


@pytest.mark.parametrize("kind", costs.KINDS)
def test_layers_keep_the_shape(kind, device):
    layer = costs.make_layer(kind, 8, device=device)
    X = torch.randn(2, 11, 8, device=device)
    with torch.no_grad():
        Y = costs.apply_layer(kind, layer, X)
    assert Y.shape == (2, 11, 8) and not layer.training


def test_layer_errors():
    with pytest.raises(ValueError, match="odd"):
        costs.make_layer("cnn", 4, kernel_size=2)
    with pytest.raises(ValueError, match=r"\(B, n, d\)"):
        costs.apply_layer("cnn", costs.make_layer("cnn", 4), torch.randn(4, 4))


def test_time_call_and_grid(device):
    t = costs.time_call(lambda: torch.randn(64, 64) @ torch.randn(64, 64), device, repeats=3, warmup=1)
    assert t >= 0
    rows = costs.measure_grid(costs.KINDS, [8, 16], [4], batch_size=2, device=device, repeats=2)
    assert len(rows) == 6 and set(rows[0]) == {"kind", "n", "d", "seconds", "min_seconds"}
    assert all(r["min_seconds"] <= r["seconds"] for r in rows)
    assert costs.time_layer("rnn", 8, 4, device=device, repeats=1, warmup=0) >= 0
    with pytest.raises(ValueError, match="repeats"):
        costs.time_call(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="repeats"):
        costs.measure_grid(["rnn"], [4], [4], repeats=0)


def test_loglog_slope():
    xs = [1, 2, 4, 8]
    assert math.isclose(costs.loglog_slope(xs, [3 * x**2 for x in xs]), 2.0)
    assert math.isclose(costs.loglog_slope(xs, [5.0] * 4), 0.0, abs_tol=1e-12)
    with pytest.raises(ValueError, match="two or more"):
        costs.loglog_slope([1], [1])
    with pytest.raises(ValueError, match="positive"):
        costs.loglog_slope([1, 2], [0, 1])
    with pytest.raises(ValueError, match="distinct"):
        costs.loglog_slope([2, 2], [1, 3])


def test_crossover():
    xs = [10, 50, 200, 1000]
    quad = [x**2 for x in xs]
    lin = [100 * x for x in xs]
    assert math.isclose(costs.crossover(xs, quad, lin), 100.0)
    assert costs.crossover(xs, lin, quad) is None  # lin starts above quad
    assert costs.crossover(xs, [1] * 4, [2] * 4) is None
    with pytest.raises(ValueError, match="same length"):
        costs.crossover([1, 2], [1], [1, 2])


def test_peak_memory_measures_allocations(device):
    n = 1 << 20  # 4 MiB of float32

    def fn():
        a = torch.ones(n, device=device)
        b = a * 2  # a second 4 MiB tensor alive at the same time
        return float(b[0])

    peak = costs.peak_memory(fn, device)
    assert 2 * 4 * n <= peak < 4 * 4 * n


def test_peak_memory_of_attention_weights_grows_quadratically():
    layer = costs.make_layer("attention", 16)
    peaks = []
    with torch.no_grad():
        for n in (256, 512):
            X = torch.randn(1, n, 16)
            peaks.append(costs.peak_memory(lambda: layer(X, X, X, need_weights=True)))
    assert peaks[1] / peaks[0] > 3.0
