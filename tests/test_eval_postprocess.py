"""Query expansion, camera verification, temporal filter, track fusion (VehicleNet Sec. IV-C)."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.errors import EvaluationInputError
from vreid.evaluate.postprocess import (alpha_query_expansion, camera_clusters, camera_verification,
                                        database_augmentation, query_expansion_dbscan, temporal_filter,
                                        track_fusion)


def test_alpha_qe_hand_computed():
    qf = np.array([[1.0, 0.0]])
    gf = np.array([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    out = alpha_query_expansion(qf, gf, k=2, alpha=1.0)
    v = np.array([1.0, 0.0]) + 0.6 * np.array([0.6, 0.8]) + 0.0 * np.array([0.0, 1.0])
    np.testing.assert_allclose(out[0], v / np.linalg.norm(v), atol=1e-6)


def test_database_augmentation_excludes_self():
    gf = np.array([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    out = database_augmentation(gf, k=1, alpha=1.0)
    v = gf[0] + 0.6 * gf[1]
    np.testing.assert_allclose(out[0], v / np.linalg.norm(v), atol=1e-6)


def test_camera_verification_modes():
    d = np.array([[0.1, 0.2, 0.3]])
    drop = camera_verification(d, [2], [2, 1, -1])
    assert np.isinf(drop[0, 0]) and drop[0, 1] == pytest.approx(0.2) and d[0, 0] == 0.1
    pen = camera_verification(d, [2], [2, 1, 2], mode="penalty", penalty=0.5)
    np.testing.assert_allclose(pen, [[0.6, 0.2, 0.8]])
    with pytest.raises(EvaluationInputError, match="g_cams"):
        camera_verification(d, [2], [2, 1])


def test_temporal_filter_window_and_unknown_times():
    d = np.zeros((1, 4))
    out = temporal_filter(d, [100.0], [90.0, 111.0, np.nan, 110.0], tau=10)
    assert out[0].tolist() == [0.0, np.inf, 0.0, 0.0]


def test_track_fusion_adds_track_mean():
    gf = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    out = track_fusion(gf, [0, 0, -1], weight=2.0, normalize=False)
    np.testing.assert_allclose(out, [[2.0, 1.0], [1.0, 2.0], [3.0, 3.0]])


def test_camera_clusters_seeded():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal([5, 0], 0.1, (10, 2)), rng.normal([0, 5], 0.1, (10, 2))])
    a = camera_clusters(f, 2, seed=3)
    assert len(set(a[:10])) == 1 and len(set(a[10:])) == 1 and a[0] != a[10]
    np.testing.assert_array_equal(a, camera_clusters(f, 2, seed=3))


def _ref_dbscan(x, eps, min_samples):
    """DBSCAN from its definition (Ester et al. 1996), brute force: core points have >= min_samples
    points (themselves included) within eps; clusters are the eps-connected components of core
    points plus the border points within eps of one of their cores; the rest is noise (-1)."""
    n = len(x)
    d = np.array([[np.sqrt(np.sum((x[i] - x[j]) ** 2)) for j in range(n)] for i in range(n)])
    near = d <= eps
    core = near.sum(1) >= min_samples
    label = [-1] * n
    c = 0
    for i in range(n):
        if not core[i] or label[i] >= 0:
            continue
        stack = [i]
        label[i] = c
        while stack:
            p = stack.pop()
            if not core[p]:
                continue
            for j in range(n):
                if near[p, j] and label[j] < 0:
                    label[j] = c
                    stack.append(j)
        c += 1
    return np.array(label)


def test_dbscan_qe_is_mean_of_the_other_queries_hand_computed():
    """VehicleNet IV-C: "The query feature is updated to the mean feature of the other queries in the
    same cluster." eps is a Euclidean radius between L2-normalised features."""
    qf = np.array([[1, 0], [0.99, 0.14], [0.98, -0.2], [0, 1]], dtype=np.float64)
    out = query_expansion_dbscan(qf, eps=0.3, min_samples=2, normalize=False)
    np.testing.assert_allclose(out[0], (qf[1] + qf[2]) / 2)
    np.testing.assert_allclose(out[1], (qf[0] + qf[2]) / 2)
    np.testing.assert_allclose(out[2], (qf[0] + qf[1]) / 2)
    np.testing.assert_allclose(out[3], qf[3])  # noise point untouched
    unit = query_expansion_dbscan(qf, eps=0.3, min_samples=2)
    np.testing.assert_allclose(unit[0], (qf[1] + qf[2]) / np.linalg.norm(qf[1] + qf[2]))


def test_dbscan_qe_matches_brute_force_reference():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(5, 8))
    qf = np.concatenate([centres[i] + 0.25 * rng.normal(size=(1 + i % 3, 8)) for i in range(5)]
                        + [rng.normal(size=(4, 8))])
    x = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    for eps, ms in ((0.4, 2), (0.6, 3), (0.25, 2)):
        labels = _ref_dbscan(x, eps, ms)
        expect = qf.copy()
        for i in range(len(qf)):
            others = [j for j in range(len(qf)) if j != i and labels[j] == labels[i] >= 0]
            if others:
                expect[i] = np.mean(qf[others], axis=0)
        out = query_expansion_dbscan(qf, eps=eps, min_samples=ms, normalize=False)
        np.testing.assert_allclose(out, expect, atol=1e-9)
        # the named option: the cluster mean including the query itself
        incl = query_expansion_dbscan(qf, eps=eps, min_samples=ms, normalize=False, include_self=True)
        for i in range(len(qf)):
            if labels[i] >= 0:
                np.testing.assert_allclose(incl[i], qf[labels == labels[i]].mean(0), atol=1e-9)
