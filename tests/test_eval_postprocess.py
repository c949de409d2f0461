"""Query expansion, camera verification, temporal filter, track fusion (VehicleNet Sec. IV-C)."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.errors import EvaluationInputError
from vreid.evaluate.postprocess import (alpha_query_expansion, camera_clusters, camera_verification,
                                        database_augmentation, query_expansion_dbscan, temporal_filter,
                                        track_fusion)


def test_dbscan_qe_replaces_cluster_members_by_mean():
    qf = np.array([[1, 0], [0.99, 0.14], [0.98, -0.2], [0, 1]], dtype=np.float64)
    out = query_expansion_dbscan(qf, eps=0.3, min_samples=2, normalize=False)
    np.testing.assert_allclose(out[:3], np.tile(qf[:3].mean(0), (3, 1)))
    np.testing.assert_allclose(out[3], qf[3])  # noise point untouched


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
