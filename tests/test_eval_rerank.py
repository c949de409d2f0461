"""re_ranking against a plain dense copy of Zhong et al.'s original algorithm (CVPR 2017)."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.errors import EvaluationInputError
from vreid.evaluate import re_ranking, re_ranking_features
from vreid.evaluate.rerank import re_ranking_dense_reference


def _dists(seed, n_q, n_g, dim=8, clusters=True):
    rng = np.random.default_rng(seed)
    if clusters:  # identities as clusters, so k-reciprocal sets are large and the expansion fires
        centres = rng.normal(size=(6, dim))
        f = centres[rng.integers(0, 6, n_q + n_g)] + 0.4 * rng.normal(size=(n_q + n_g, dim))
    else:
        f = rng.normal(size=(n_q + n_g, dim))
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    return f, d[:n_q, n_q:], d[:n_q, :n_q], d[n_q:, n_q:]


@pytest.mark.parametrize("seed,n_q,n_g,k1,k2,lam", [
    (0, 15, 40, 20, 6, 0.3),
    (1, 30, 70, 5, 3, 0.3),
    (2, 10, 25, 4, 1, 0.5),
    (3, 40, 90, 20, 6, 0.0),
    (4, 3, 8, 20, 6, 1.0),  # k1 larger than the whole set
    (5, 25, 60, 7, 2, 0.3),
])
@pytest.mark.parametrize("clusters", [True, False])
def test_matches_dense_original(seed, n_q, n_g, k1, k2, lam, clusters):
    f, qg, qq, gg = _dists(seed, n_q, n_g, clusters=clusters)
    ref = re_ranking_dense_reference(qg, qq, gg, k1, k2, lam)
    ours = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert ours.shape == (n_q, n_g) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    feat = re_ranking_features(f[:n_q], f[n_q:], k1=k1, k2=k2, lambda_value=lam, block=7)
    np.testing.assert_allclose(feat, ref, atol=1e-5, rtol=0)


def test_asymmetric_inputs_follow_the_original_transpose():
    rng = np.random.default_rng(9)
    qg = rng.random((12, 30)) + 0.1
    qq = rng.random((12, 12)) + 0.1
    gg = rng.random((30, 30)) + 0.1
    np.fill_diagonal(qq, 0)
    np.fill_diagonal(gg, 0)
    np.testing.assert_allclose(re_ranking(qg, qq, gg, 6, 3, 0.3),
                               re_ranking_dense_reference(qg, qq, gg, 6, 3, 0.3), atol=1e-5, rtol=0)


def test_rerank_improves_retrieval_on_clustered_data():
    from vreid.evaluate import evaluate_rank
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(20), 8)
    f = rng.normal(size=(20, 16))[ids] + 0.9 * rng.normal(size=(160, 16))
    q = np.arange(0, 160, 8)
    g = np.setdiff1d(np.arange(160), q)
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    base = evaluate_rank(d[np.ix_(q, g)], ids[q], ids[g], np.zeros(20), np.ones(140))
    rr = re_ranking(d[np.ix_(q, g)], d[np.ix_(q, q)], d[np.ix_(g, g)])
    after = evaluate_rank(rr, ids[q], ids[g], np.zeros(20), np.ones(140))
    assert after["mAP"] > base["mAP"]


def test_bad_input():
    _, qg, qq, gg = _dists(0, 4, 6)
    with pytest.raises(EvaluationInputError, match="q_q_dist must have shape"):
        re_ranking(qg, qq[:3], gg)
    bad = gg.copy()
    bad[0, 1] = np.nan
    with pytest.raises(EvaluationInputError, match="g_g_dist contains NaN"):
        re_ranking(qg, qq, bad)
    with pytest.raises(EvaluationInputError, match="k1"):
        re_ranking(qg, qq, gg, k1=0)
    with pytest.raises(EvaluationInputError, match="feature dimension"):
        re_ranking_features(np.ones((2, 3)), np.ones((4, 5)))


# ----------------------------------------------------------------------------------------------------
# block-wise, streamed re-ranking from features against an independent dense reference
# ----------------------------------------------------------------------------------------------------
def dense_k_reciprocal_reference(qf, gf, k1, k2, lam):
    """Zhong et al. 2017 written set by set from the paper (Eq. 4-13) and the released code's numerics
    (squared distances cast to float32, each column divided by its maximum then transposed; stable
    ranking), holding every (Q+G)^2 matrix densely. Not derived from vreid's code."""
    f = np.concatenate([qf, gf]).astype(np.float64)
    n_q, n = len(qf), len(qf) + len(gf)
    d = np.sqrt(np.maximum(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1), 0.0))
    sq = (d ** 2).astype(np.float32)
    dist = (sq / sq.max(axis=0)).T  # original_dist
    rank = np.argsort(dist, axis=1, kind="stable")

    def recip(i, k):  # R(i, k): j in N(i, k) with i in N(j, k) (Eq. 6), N with k+1 entries (i itself)
        return {int(j) for j in rank[i, :k + 1] if i in rank[j, :k + 1]}

    V = np.zeros((n, n))
    half = int(round(k1 / 2))  # Python's round and np.around both round half to even
    for i in range(n):
        r = recip(i, k1)
        star = set(r)
        for c in r:  # Eq. 7: add R(c, k1/2) when it shares more than 2/3 of itself with R(i, k1)
            rc = recip(c, half)
            if len(rc & r) > 2.0 / 3.0 * len(rc):
                star |= rc
        cols = sorted(star)
        w = np.exp(-dist[i, cols].astype(np.float64))  # Eq. 8
        V[i, cols] = w / w.sum()
    if k2 != 1:  # Eq. 10: local query expansion over the top k2
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jac = np.empty((n_q, n))
    for i in range(n_q):  # Eq. 11: 1 - sum min / sum max
        jac[i] = 1.0 - np.minimum(V[i], V).sum(axis=1) / np.maximum(V[i], V).sum(axis=1)
    final = (1.0 - lam) * jac + lam * dist[:n_q]  # Eq. 13
    return final[:, n_q:]


def _feats(seed, n_q, n_g, dim=8, clusters=True):
    return _dists(seed, n_q, n_g, dim, clusters)[0]


@pytest.mark.parametrize("seed,n_q,n_g,k1,k2,lam", [
    (0, 12, 40, 20, 6, 0.3),
    (1, 25, 60, 5, 3, 0.3),
    (2, 9, 30, 4, 1, 0.5),
    (3, 4, 9, 20, 6, 0.3),  # k1 larger than the whole set
])
@pytest.mark.parametrize("clusters", [True, False])
def test_streamed_blocks_match_independent_dense_reference(seed, n_q, n_g, k1, k2, lam, clusters):
    from vreid.evaluate.rerank import iter_re_ranking_features

    f = _feats(seed, n_q, n_g, clusters=clusters)
    ref = dense_k_reciprocal_reference(f[:n_q], f[n_q:], k1, k2, lam)
    # tiny blocks and chunks: many kNN blocks and many query chunks, each yielded and consumed in order
    starts, parts = [], []
    for s, b in iter_re_ranking_features(f[:n_q], f[n_q:], k1, k2, lam, block=5, cell_limit=3 * n_g):
        assert b.dtype == np.float32 and b.shape[1] == n_g and b.shape[0] <= 3
        starts.append(s)
        parts.append(b)
    assert starts == sorted(starts) and len(parts) > 1
    np.testing.assert_allclose(np.concatenate(parts), ref, atol=1e-5, rtol=0)
    # the dense-input entry point on the same distances
    _, qg, qq, gg = _dists(seed, n_q, n_g, clusters=clusters)
    np.testing.assert_allclose(re_ranking(qg, qq, gg, k1, k2, lam), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
def test_knn_stage_backends_match_dense_reference(backend):
    from vreid.evaluate.rerank import re_ranking_features

    f = _feats(7, 20, 70, dim=12)
    ref = dense_k_reciprocal_reference(f[:20], f[20:], 10, 4, 0.3)
    for metric in ("euclidean", "cosine"):
        ours = re_ranking_features(f[:20], f[20:], 10, 4, 0.3, metric=metric, backend=backend)
        base = re_ranking_features(f[:20], f[20:], 10, 4, 0.3, metric=metric)
        np.testing.assert_allclose(ours, base, atol=1e-5, rtol=0)
        if metric == "euclidean":
            np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_top_k_lists_and_streamed_metrics_equal_the_dense_result():
    from vreid.evaluate import evaluate_rank
    from vreid.evaluate.rerank import evaluate_re_ranking, re_ranking_top_k

    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(12), 6)
    f = rng.normal(size=(12, 10))[ids] + 0.8 * rng.normal(size=(72, 10))
    cams = rng.integers(0, 3, 72)
    q = np.arange(0, 72, 6)
    g = np.setdiff1d(np.arange(72), q)
    ref = dense_k_reciprocal_reference(f[q], f[g], 8, 3, 0.3)
    idx, dist = re_ranking_top_k(f[q], f[g], k=15, k1=8, k2=3, lambda_value=0.3)
    np.testing.assert_array_equal(idx, np.argsort(ref, axis=1, kind="stable")[:, :15])
    np.testing.assert_allclose(dist, np.sort(ref, axis=1)[:, :15], atol=1e-5, rtol=0)
    want = evaluate_rank(ref, ids[q], ids[g], cams[q], cams[g])
    got = evaluate_re_ranking(f[q], f[g], ids[q], ids[g], cams[q], cams[g], k1=8, k2=3, lambda_value=0.3)
    for key in ("mAP", "mINP"):
        assert abs(got[key] - want[key]) < 1e-9
    np.testing.assert_allclose(got["cmc"], want["cmc"], atol=1e-12)


def test_streamed_bad_input_names_the_argument():
    from vreid.evaluate.rerank import evaluate_re_ranking, re_ranking_top_k

    f = _feats(0, 4, 10)
    with pytest.raises(EvaluationInputError, match="g_pids has length 3"):
        evaluate_re_ranking(f[:4], f[4:], np.arange(4), np.arange(3), np.zeros(4), np.zeros(10))
    with pytest.raises(EvaluationInputError, match="neighbour backend"):
        re_ranking_top_k(f[:4], f[4:], backend="annoy")
