"""Tests for seqcourse.embeddings."""

import collections
import hashlib
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqcourse import embeddings, text

WORDS = ["man", "woman", "king", "queen", "apple"]
TABLE = torch.tensor([[-1.0, 0.0, 0.1], [1.0, 0.0, 0.1], [-1.0, 1.0, 0.7], [1.0, 1.0, 0.7], [0.0, 0.0, -1.0]])


def test_cosine_and_euclidean_match_torch():
    q = torch.randn(3, dtype=torch.float64)
    E = torch.randn(6, 3, dtype=torch.float64)
    assert torch.allclose(embeddings.cosine_similarity(q, E), F.cosine_similarity(E, q[None], dim=1))
    assert torch.allclose(embeddings.euclidean_distance(q, E), torch.cdist(q[None], E)[0])
    with pytest.raises(ValueError, match="shape"):
        embeddings.cosine_similarity(torch.zeros(2), E)
    with pytest.raises(ValueError, match=r"\(V, E\)"):
        embeddings.euclidean_distance(q, torch.zeros(3))


def test_nearest_and_analogy():
    nb = embeddings.nearest("king", TABLE, WORDS, k=2)
    assert nb[0][0] == "man" and "king" not in [w for w, _ in nb]  # gender dominates this table
    nb_e = embeddings.nearest(TABLE[0], TABLE, WORDS, k=1, metric="euclidean")
    assert nb_e == [("man", 0.0)]
    assert embeddings.analogy("man", "woman", "king", TABLE, WORDS)[0][0] == "queen"
    vocab = text.Vocab(WORDS)  # <unk> first, then alphabetical (all counts 1)
    emb = torch.cat([torch.zeros(1, 3), TABLE[[WORDS.index(w) for w in vocab.idx_to_token[1:]]]])
    assert embeddings.analogy("man", "woman", "king", emb, vocab)[0][0] == "queen"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        embeddings.nearest("prince", TABLE, WORDS)
    with pytest.raises(ValueError, match="metric"):
        embeddings.nearest("king", TABLE, WORDS, metric="manhattan")
    with pytest.raises(ValueError, match="aligned"):
        embeddings.nearest("king", TABLE, WORDS[:3])


def test_neighbour_overlap():
    assert embeddings.neighbour_overlap(["a", "b"], [("b", 0.3), ("c", 0.1)]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="empty"):
        embeddings.neighbour_overlap([], [])


def test_pca_2d_matches_torch_svd():
    X = torch.randn(20, 6, dtype=torch.float64)
    xy = embeddings.pca_2d(X)
    Xc = X - X.mean(0)
    _, _, Vh = torch.linalg.svd(Xc, full_matrices=False)
    ref = Xc @ Vh[:2].T
    assert xy.shape == (20, 2)
    assert np.allclose(np.abs(xy), np.abs(ref.numpy()), atol=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        embeddings.pca_2d(torch.zeros(1, 3))


def test_subsample_keeps_rare_and_drops_frequent():
    corpus = [0] * 1000 + list(range(1, 101))
    counts = collections.Counter(corpus)
    kept = embeddings.subsample(corpus, counts, t=1e-3, seed=0)
    kept_counts = collections.Counter(kept)
    assert all(kept_counts[w] == 1 for w in range(1, 101))
    assert kept_counts[0] < 200
    assert kept == embeddings.subsample(corpus, counts, t=1e-3, seed=0)
    with pytest.raises(ValueError, match="positive"):
        embeddings.subsample(corpus, counts, t=0)


def test_skipgram_pairs_windows():
    c, o = embeddings.skipgram_pairs([[1, 2, 3, 4]], max_window=1)
    assert sorted(zip(c.tolist(), o.tolist())) == [(1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (4, 3)]
    c, o = embeddings.skipgram_pairs([[1, 2], [3, 4]], max_window=5)
    assert set(zip(c.tolist(), o.tolist())) == {(1, 2), (2, 1), (3, 4), (4, 3)}  # no crossing sentences
    with pytest.raises(ValueError, match="max_window"):
        embeddings.skipgram_pairs([[1, 2]], max_window=0)


def test_noise_distribution():
    p = embeddings.noise_distribution({1: 16, 2: 1}, 3)
    assert p[0] == 0 and p[1] / p[2] == pytest.approx(16 ** 0.75)
    assert p.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        embeddings.noise_distribution({5: 1}, 3)


def test_skipgram_loss_formula_and_gradcheck():
    torch.manual_seed(0)
    m = embeddings.SkipGramNS(7, 4).double()
    torch.nn.init.normal_(m.context_emb.weight)
    c, o, n = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6], [0, 1]])
    v, u, un = m.center_emb.weight[c], m.context_emb.weight[o], m.context_emb.weight[n]
    ref = -(torch.log(torch.sigmoid((u * v).sum(1)))
            + torch.log(torch.sigmoid(-(un @ v.unsqueeze(2)).squeeze(2))).sum(1)).mean()
    assert torch.allclose(m(c, o, n), ref)
    W_c = m.center_emb.weight.detach().clone().requires_grad_(True)
    W_o = m.context_emb.weight.detach().clone().requires_grad_(True)

    def fn(Wc, Wo):  # SkipGramNS.forward with the tables as explicit inputs
        v, u, un = Wc[c], Wo[o], Wo[n]
        return -(F.logsigmoid((u * v).sum(1)) + F.logsigmoid(-(un @ v.unsqueeze(2)).squeeze(2)).sum(1)).mean()

    assert torch.autograd.gradcheck(fn, (W_c, W_o))
    with pytest.raises(ValueError, match="centers"):
        m(c, o[:1], n)


def test_train_skipgram_learns_cooccurrence():
    # two "topics" whose words only co-occur within the topic
    rng = np.random.default_rng(0)
    sents = [list(rng.choice([1, 2, 3, 4], 8)) for _ in range(60)] + [list(rng.choice([5, 6, 7, 8], 8)) for _ in range(60)]
    sents = [[int(w) for w in s] for s in sents]
    counts = collections.Counter(w for s in sents for w in s)
    model, hist = embeddings.train_skipgram(sents, 9, counts, embed_size=8, num_epochs=3, batch_size=256, lr=2e-2)
    assert hist["loss"][-1] < hist["loss"][0]
    W = model.center_emb.weight.detach()
    nb = [w for w, _ in embeddings.nearest("1", W, [str(i) for i in range(9)], k=3, exclude=["0"])]
    assert set(nb) == {"2", "3", "4"}


def _fake_glove(tmp_path, name="glove.txt"):
    lines = "the 0.1 0.2 0.3\ncat 1.0 0.0 -1.0\ndog 0.9 0.1 -1.0\n"
    p = tmp_path / name
    p.write_text(lines, encoding="utf-8")
    return p


def test_load_glove_txt_and_zip(tmp_path):
    tokens, vecs = embeddings.load_glove(_fake_glove(tmp_path))
    assert tokens == ["the", "cat", "dog"] and vecs.shape == (3, 3)
    assert embeddings.nearest("cat", vecs, tokens, k=1)[0][0] == "dog"
    zpath = tmp_path / "fake.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(_fake_glove(tmp_path), "glove.6B.50d/vec.txt")
    tokens2, vecs2 = embeddings.load_glove(zpath, max_words=2)
    assert tokens2 == ["the", "cat"] and torch.equal(vecs2, vecs[:2])


def test_load_glove_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQCOURSE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=embeddings.GLOVE_6B_50D.sha1):
        embeddings.load_glove()
    assert embeddings.glove_path() == tmp_path.resolve() / "glove.6B.50d.zip"
    # a file with the official name but the wrong content fails its checksum
    bad = tmp_path / "glove.6B.50d.zip"
    bad.write_bytes(b"not a zip")
    assert hashlib.sha1(b"not a zip").hexdigest() != embeddings.GLOVE_6B_50D.sha1
    with pytest.raises(ValueError, match="SHA-1"):
        embeddings.load_glove()
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("a 1 2 3\nb 1 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected 3"):
        embeddings.load_glove(ragged)


def test_embedding_lookup_equals_one_hot_times_matrix():
    """nn.Embedding is a lookup that equals one_hot(ids) @ weight, gradients included."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(7, 3).double()
    ids = torch.tensor([[1, 4, 4], [0, 6, 2]])
    one_hot = torch.nn.functional.one_hot(ids, 7).double()  # (B, T, V)
    lookup = emb(ids)  # (B, T, E)
    product = one_hot @ emb.weight  # (B, T, V) @ (V, E) -> (B, T, E)
    assert torch.equal(lookup, product)
    g = torch.randn_like(lookup)
    (grad_lookup,) = torch.autograd.grad(lookup, emb.weight, g)
    (grad_product,) = torch.autograd.grad(one_hot @ emb.weight, emb.weight, g)
    assert torch.allclose(grad_lookup, grad_product)
    untouched = sorted(set(range(7)) - set(ids.flatten().tolist()))
    assert torch.all(grad_lookup[untouched] == 0)  # only looked-up rows get a gradient
