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


def test_cbow_examples_windows_and_mask():
    ctx, mask, cen = embeddings.cbow_examples([[1, 2, 3]], max_window=1)
    assert cen.tolist() == [1, 2, 3]
    assert ctx.shape == mask.shape == (3, 2)
    got = [sorted(c for c, m in zip(row, mrow) if m) for row, mrow in zip(ctx.tolist(), mask.tolist())]
    assert got == [[2], [1, 3], [2]]
    ctx, mask, cen = embeddings.cbow_examples([[4], [5, 6]], max_window=3)
    assert cen.tolist() == [5, 6] and mask.sum().item() == 2  # a one-token sentence gives no example
    with pytest.raises(ValueError, match="max_window"):
        embeddings.cbow_examples([[1, 2]], max_window=0)


def test_cbow_loss_formula_and_gradcheck():
    torch.manual_seed(0)
    m = embeddings.CBOWNS(7, 4).double()
    torch.nn.init.normal_(m.center_emb.weight)
    ctx = torch.tensor([[1, 2, 0], [3, 4, 5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    cen, neg = torch.tensor([6, 0]), torch.tensor([[5, 3], [1, 2]])
    h = torch.stack([m.context_emb.weight[[1, 2]].mean(0), m.context_emb.weight[[3, 4, 5]].mean(0)])
    u, un = m.center_emb.weight[cen], m.center_emb.weight[neg]
    ref = -(torch.log(torch.sigmoid((u * h).sum(1)))
            + torch.log(torch.sigmoid(-(un @ h.unsqueeze(2)).squeeze(2))).sum(1)).mean()
    assert torch.allclose(m(ctx, mask, cen, neg), ref)

    def fn(Wctx, Wcen):  # CBOWNS.forward with the tables as explicit inputs
        hh = (Wctx[ctx] * mask.unsqueeze(2)).sum(1) / mask.sum(1, keepdim=True)
        return -(F.logsigmoid((Wcen[cen] * hh).sum(1))
                 + F.logsigmoid(-(Wcen[neg] @ hh.unsqueeze(2)).squeeze(2)).sum(1)).mean()

    W1 = m.context_emb.weight.detach().clone().requires_grad_(True)
    W2 = m.center_emb.weight.detach().clone().requires_grad_(True)
    assert torch.allclose(fn(W1, W2), ref)
    assert torch.autograd.gradcheck(fn, (W1, W2))
    with pytest.raises(ValueError, match="contexts"):
        m(ctx, mask[:1], cen, neg)
    with pytest.raises(ValueError, match="at least one context word"):
        m(ctx, torch.zeros_like(mask), cen, neg)


def _two_topics():
    # two "topics" whose words only co-occur within the topic
    rng = np.random.default_rng(0)
    sents = [list(rng.choice([1, 2, 3, 4], 8)) for _ in range(60)] + [list(rng.choice([5, 6, 7, 8], 8)) for _ in range(60)]
    return [[int(w) for w in s] for s in sents]


def test_train_cbow_learns_cooccurrence():
    sents = _two_topics()
    counts = collections.Counter(w for s in sents for w in s)
    model, hist = embeddings.train_cbow(sents, 9, counts, embed_size=8, num_epochs=6, batch_size=64, lr=2e-2)
    assert hist["loss"][-1] < hist["loss"][0]
    W = model.context_emb.weight.detach()
    nb = [w for w, _ in embeddings.nearest("5", W, [str(i) for i in range(9)], k=3, exclude=["0"])]
    assert set(nb) == {"6", "7", "8"}


def test_cooccurrence_counts_by_hand():
    X = embeddings.cooccurrence_counts([[0, 1, 2], [2, 0]], 3, window=2)
    expected = torch.tensor([[0, 1, 0.5 + 1], [1, 0, 1], [0.5 + 1, 1, 0]], dtype=torch.float64)
    assert torch.equal(X, expected)
    X1 = embeddings.cooccurrence_counts([[0, 1, 2]], 3, window=1)
    assert X1[0, 2] == 0 and X1[0, 1] == 1
    with pytest.raises(ValueError, match="vocab_size"):
        embeddings.cooccurrence_counts([[0, 5]], 3)
    with pytest.raises(ValueError, match="window"):
        embeddings.cooccurrence_counts([[0, 1]], 3, window=0)


def test_glove_loss_formula_weighting_and_gradcheck():
    assert torch.allclose(embeddings.glove_weight(torch.tensor([1.0, 100.0, 400.0])),
                          torch.tensor([0.01 ** 0.75, 1.0, 1.0]))
    torch.manual_seed(0)
    m = embeddings.GloVe(5, 3).double()
    for p in m.parameters():
        torch.nn.init.normal_(p)
    i, j, x = torch.tensor([0, 1, 4]), torch.tensor([2, 3, 4]), torch.tensor([1.0, 50.0, 300.0], dtype=torch.float64)
    W, Wt, b, bt = (p.detach().clone().requires_grad_(True) for p in
                    (m.center_emb.weight, m.context_emb.weight, m.center_bias.weight, m.context_bias.weight))

    def fn(W, Wt, b, bt):  # GloVe.forward with the parameters as explicit inputs
        pred = (W[i] * Wt[j]).sum(1) + b[i, 0] + bt[j, 0]
        f = torch.clamp((x / 100) ** 0.75, max=1.0)
        return (f * (pred - torch.log(x)) ** 2).mean()

    assert torch.allclose(m(i, j, x), fn(W, Wt, b, bt))
    assert torch.autograd.gradcheck(fn, (W, Wt, b, bt))
    assert torch.equal(m.vectors(), (m.center_emb.weight + m.context_emb.weight).detach())
    with pytest.raises(ValueError, match="non-zero"):
        m(i, j, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        m(i, j[:2], x)


def test_train_glove_fits_log_counts():
    sents = _two_topics()
    X = embeddings.cooccurrence_counts(sents, 9, window=3)
    model, hist = embeddings.train_glove(X, embed_size=8, num_epochs=60, batch_size=16, lr=0.1)
    assert hist["loss"][-1] < 0.1 * hist["loss"][0]
    nb = [w for w, _ in embeddings.nearest("5", model.vectors(), [str(i) for i in range(9)], k=3, exclude=["0"])]
    assert set(nb) == {"6", "7", "8"}
    with pytest.raises(ValueError, match="square"):
        embeddings.train_glove(torch.ones(3, 4))
    with pytest.raises(ValueError, match="non-zero"):
        embeddings.train_glove(torch.zeros(3, 3))
