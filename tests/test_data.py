"""The offline-first data layer: verified copies, checksums, clear errors."""

import hashlib
import os

import pytest

from seqcourse import data


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """A registry entry whose 'real' URL is a local file, and an empty data dir."""
    payload = b"a tiny corpus\n"
    src = tmp_path / "remote.txt"
    src.write_bytes(payload)
    ds = data.Dataset("tiny.txt", src.as_uri(), hashlib.sha1(payload).hexdigest())
    monkeypatch.setitem(data.DATASETS, "tiny", ds)
    home = tmp_path / "data"
    monkeypatch.setenv(data.DATA_ENV, str(home))
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    return ds, home, payload


def test_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_dir() == tmp_path.resolve()
    monkeypatch.delenv(data.DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.data_dir() == tmp_path / "cache" / "seqcourse"


def test_verified_copy_is_used_without_download(fake_dataset, monkeypatch):
    ds, home, payload = fake_dataset
    home.mkdir()
    (home / ds.filename).write_bytes(payload)

    def no_network(*a, **k):
        raise AssertionError("must not download when a verified copy exists")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    assert data.fetch("tiny").read_bytes() == payload


def test_missing_file_is_downloaded_and_verified(fake_dataset):
    ds, home, payload = fake_dataset
    path = data.fetch("tiny")
    assert path == home / ds.filename and path.read_bytes() == payload
    assert not [p for p in home.iterdir() if p.name.endswith(".part")]


def test_bad_hash_on_disk_is_rejected_and_kept(fake_dataset):
    ds, home, _ = fake_dataset
    home.mkdir()
    (home / ds.filename).write_bytes(b"tampered")
    with pytest.raises(data.ChecksumError, match="SHA-1") as err:
        data.fetch("tiny")
    assert "delete it" in str(err.value)
    assert (home / ds.filename).read_bytes() == b"tampered"  # nothing is lost


def test_bad_download_is_discarded(fake_dataset, monkeypatch):
    ds, home, _ = fake_dataset
    monkeypatch.setitem(data.DATASETS, "tiny", data.Dataset(ds.filename, ds.url, "0" * 40))
    with pytest.raises(data.ChecksumError, match="discarded"):
        data.fetch("tiny")
    assert not (home / ds.filename).exists()
    assert list(home.iterdir()) == []


def test_missing_file_offline_names_file_url_and_variable(fake_dataset, monkeypatch):
    ds, home, _ = fake_dataset
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(data.DataError) as err:
        data.fetch("tiny")
    msg = str(err.value)
    assert ds.filename in msg and ds.url in msg and data.DATA_ENV in msg


def test_network_failure_gives_the_same_clear_error(fake_dataset, monkeypatch):
    ds, home, _ = fake_dataset
    monkeypatch.setitem(data.DATASETS, "tiny", data.Dataset(ds.filename, "http://127.0.0.1:9/none", ds.sha1))
    with pytest.raises(data.DataError) as err:
        data.fetch("tiny", timeout=2)
    assert "http://127.0.0.1:9/none" in str(err.value) and data.DATA_ENV in str(err.value)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="known"):
        data.fetch("nope")


def test_real_datasets_are_verified_in_the_mirror():
    for name, ds in data.DATASETS.items():
        assert data.sha1_of(data.fetch(name)) == ds.sha1


def test_time_machine_and_d2l_use_the_data_layer(tmp_path, monkeypatch):
    text = data.load_time_machine()
    assert text.startswith("The Time Machine") and len(text) == 178979
    monkeypatch.chdir(tmp_path)  # d2l's default ../data would be relative to here
    tm = data.d2l_time_machine(batch_size=2, num_steps=5)
    assert len(tm.vocab) == 28
    assert not (tmp_path.parent / "data").exists() or not any((tmp_path.parent / "data").iterdir())


def test_tang_poems_are_stripped_of_notes():
    poems = data.load_tang_poems()
    assert len(poems) == 320
    lines = [line for p in poems for line in p["lines"]]
    assert not any(ch in line for line in lines for ch in "()（）")
    first = next(p for p in poems if p["title"] == "送别" or "王孙归不归" in "".join(p["lines"]))
    assert all("一作" not in line for line in first["lines"])
    assert data.strip_editorial_notes("春草明年绿，王孙归不归？(明年 一作：年年)") == "春草明年绿，王孙归不归？"
    assert data.strip_editorial_notes("功盖三分国，名成八阵图。（名成 一作：名高）") == "功盖三分国，名成八阵图。"


def test_fr_en_pairs():
    pairs = data.load_fr_en()
    assert len(pairs) == 20 and pairs[0] == ("elle est vieille .", "she is old .")


def test_import_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    code = (
        "import os, random, torch, numpy as np, matplotlib as mpl\n"
        "before = (torch.initial_seed(), mpl.rcParams['axes.grid'])\n"
        "import seqcourse, seqcourse.data, seqcourse.text, seqcourse.lm, seqcourse.utils, seqcourse.dates\n"
        "after = (torch.initial_seed(), mpl.rcParams['axes.grid'])\n"
        "assert before == after, (before, after)\n"
        "assert not os.listdir(os.environ['SEQCOURSE_DATA'])\n"
    )
    env = dict(os.environ, SEQCOURSE_DATA=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
