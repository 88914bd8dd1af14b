"""Device selection and seeding."""

import random

import numpy as np
import pytest
import torch

from seqcourse import dates, utils


def test_device_order_and_override(monkeypatch):
    monkeypatch.delenv(utils.DEVICE_ENV, raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert utils.get_device().type == expected
    assert utils.get_device("cpu").type == "cpu"
    monkeypatch.setenv(utils.DEVICE_ENV, "cpu")
    assert utils.get_device().type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_requesting_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        utils.get_device("cuda")


def test_seeding_covers_python_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    utils.seed_everything(7)
    a = draw()
    utils.seed_everything(7)
    assert draw() == a
    g = utils.seed_everything(7)
    assert torch.rand(1, generator=g).item() == torch.rand(1, generator=torch.Generator().manual_seed(7)).item()
    with pytest.raises(ValueError):
        utils.seed_everything(-1)


def test_deterministic_switch():
    try:
        utils.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)


def test_count_parameters():
    assert utils.count_parameters(torch.nn.Linear(3, 2)) == 8


def test_date_pairs_are_deterministic_and_valid():
    a = dates.make_date_pairs(200, seed=3)
    assert a == dates.make_date_pairs(200, seed=3) and a != dates.make_date_pairs(200, seed=4)
    for src, iso in a:
        y, m, d = map(int, iso.split("-"))
        assert 1950 <= y <= 2049 and 1 <= m <= 12 and 1 <= d <= 31
        assert str(d) in src
    assert dates.STYLES["ordinal_of"](__import__("datetime").date(2021, 3, 3)) == "3rd of March 2021"
    assert dates.STYLES["abbr_short_year"](__import__("datetime").date(2021, 3, 3)) == "Mar 3, 21"
    train, val = dates.split_pairs(a)
    assert not {s for s, _ in train} & {s for s, _ in val}
    with pytest.raises(ValueError):
        dates.make_date_pairs(3, styles=["nope"])
