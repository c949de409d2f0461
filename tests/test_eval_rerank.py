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
