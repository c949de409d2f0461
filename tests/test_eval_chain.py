"""The Table VI post-processing chain: YAML config and run_chain on small synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vreid.errors import ConfigError, EvaluationInputError
from vreid.evaluate import evaluate_rank, re_ranking_features
from vreid.evaluate.chain import PostProcessConfig, format_table, run_chain
from vreid.evaluate.postprocess import camera_verification

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _data(seed=0, n_ids=12, per_id=6, dim=16):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), per_id)
    cams = np.tile(np.arange(per_id), n_ids) % 4
    centres = rng.normal(size=(n_ids, dim))
    m1 = centres[ids] + 1.2 * rng.normal(size=(len(ids), dim))
    m2 = centres[ids] + 1.2 * rng.normal(size=(len(ids), dim))
    crop = centres[ids] + 1.2 * rng.normal(size=(len(ids), dim))
    q = np.arange(0, len(ids), per_id)
    g = np.arange(len(ids))  # the query's own copy is in the gallery: same id + camera -> junk
    q_df = pd.DataFrame({"vehicle_id": ids[q], "camera": cams[q], "timestamp": q * 1.0})
    g_df = pd.DataFrame({"vehicle_id": ids[g], "camera": cams[g], "timestamp": g * 1.0,
                         "track": ids[g], "bbox": [[0, 0, 8, 8]] * len(g)})
    return (m1[q], m2[q], crop[q]), (m1[g], m2[g], crop[g]), q_df, g_df


def test_default_yaml_loads_with_table_vi_steps():
    cfg = PostProcessConfig.from_yaml(ROOT / "search_spaces" / "postprocess_aicity.yaml")
    assert cfg.crop_average and cfg.ensemble and cfg.query_expansion.enabled
    assert cfg.camera_verification.enabled and cfg.re_ranking.enabled
    assert cfg.re_ranking.lambda_value == 0.3 and not cfg.temporal.enabled


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("re_ranking:\n  k1: 20\n  kk2: 6\n")
    with pytest.raises(ConfigError, match="unknown key 're_ranking.kk2'"):
        PostProcessConfig.from_yaml(p)
    p.write_text("re_ranking:\n  k1: twenty\n")
    with pytest.raises(ConfigError, match="'re_ranking.k1' must be int"):
        PostProcessConfig.from_yaml(p)


def test_chain_steps_match_direct_computation():
    (q1, q2, qc), (g1, g2, gc), q_df, g_df = _data()
    cfg = PostProcessConfig.from_dict({"crop_average": True, "ensemble": True,
                                       "camera_verification": {"mode": "drop"},
                                       "re_ranking": {"k1": 5, "k2": 2, "lambda": 0.3}})
    dist, table = run_chain([q1, q2], [g1, g2], q_df, g_df, cfg, q_crop=[qc, qc * 0 + qc], g_crop=[gc, gc])
    steps = [r["step"].split(" ")[0] for r in table]
    assert steps == ["base", "crop_average", "ensemble", "camera_verification", "re_ranking"]
    n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    base = evaluate_rank(1 - n(q1) @ n(g1).T, q_df.vehicle_id, g_df.vehicle_id, q_df.camera, g_df.camera)
    assert table[0]["mAP"] == pytest.approx(base["mAP"], abs=1e-6)
    fq = np.concatenate([n(n(q1) + n(qc)), n(n(q2) + n(qc))], axis=1) / np.sqrt(2)
    fg = np.concatenate([n(n(g1) + n(gc)), n(n(g2) + n(gc))], axis=1) / np.sqrt(2)
    expect = camera_verification(re_ranking_features(fq, fg, 5, 2, 0.3), q_df.camera, g_df.camera)
    np.testing.assert_allclose(dist, expect, atol=1e-5)
    assert np.isinf(dist[q_df.camera.to_numpy()[:, None] == g_df.camera.to_numpy()[None, :]]).all()
    assert "mAP%" in format_table(table)


def test_chain_without_ids_only_returns_distance():
    (q1, _, _), (g1, _, _), q_df, g_df = _data()
    q_df = q_df.assign(vehicle_id=-1)
    cfg = PostProcessConfig.from_dict({"query_expansion": {"eps": 0.8}, "temporal": {"tau": 10.0},
                                       "track_fusion": {"weight": 0.5}})
    dist, table = run_chain(q1, g1, q_df, g_df, cfg)
    assert dist.shape == (len(q1), len(g1))
    assert all("mAP" not in r for r in table)
    far = np.abs(q_df.timestamp.to_numpy()[:, None] - g_df.timestamp.to_numpy()[None, :]) > 10
    assert np.isinf(dist[far]).all() and np.isfinite(dist[~far]).all()


def test_chain_bad_input():
    (q1, _, _), (g1, _, _), q_df, g_df = _data()
    with pytest.raises(EvaluationInputError, match="g_df has"):
        run_chain(q1, g1, q_df, g_df.iloc[:3], PostProcessConfig())
    with pytest.raises(EvaluationInputError, match="crop_average"):
        run_chain(q1, g1, q_df, g_df, PostProcessConfig(crop_average=True))


# -- fusion and norms (VehicleNet Sec. IV-C "Model Ensemble") ----------------------------------------
def _ensemble_data(n_models=8, n_ids=10, per_id=6, n_query=2, noise=1.0, dim=32, seed=0):
    """n_models independent noisy views of n_ids identities; n_query images per id are queries."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_ids), per_id)
    cams = np.tile(np.arange(per_id), n_ids)
    is_q = np.tile(np.arange(per_id) < n_query, n_ids)
    qs, gs = [], []
    for _ in range(n_models):
        f = rng.normal(size=(n_ids, dim))[ids] + noise * rng.normal(size=(len(ids), dim))
        qs.append(f[is_q])
        gs.append(f[~is_q])
    q_df = pd.DataFrame({"vehicle_id": ids[is_q], "camera": cams[is_q]})
    g_df = pd.DataFrame({"vehicle_id": ids[~is_q], "camera": cams[~is_q]})
    return qs, gs, q_df, g_df


def _ref_fuse(models, crops=None):
    """The paper's formula written out row by row: f_i = [f_i^1/|f_i^1|, ..., f_i^n/|f_i^n|] / sqrt(n)."""
    n = len(models)
    rows = []
    for i in range(len(models[0])):
        parts = []
        for j in range(n):
            v = np.asarray(models[j][i], dtype=np.float64)
            v = v / np.sqrt(np.sum(v * v))
            if crops is not None:
                c = np.asarray(crops[j][i], dtype=np.float64)
                v = v + c / np.sqrt(np.sum(c * c))
                v = v / np.sqrt(np.sum(v * v))
            parts.extend(v / np.sqrt(n))
        rows.append(parts)
    return np.array(rows)


def test_one_fusion_for_chain_and_ensemble_job():
    from vreid.ensemble.views import fuse
    from vreid.evaluate.postprocess import fuse_features

    qs, gs, _, _ = _ensemble_data(n_models=3, n_ids=4, per_id=3)
    crops = [g[::-1].copy() for g in gs]
    np.testing.assert_allclose(fuse_features(gs), _ref_fuse(gs), atol=1e-6)
    np.testing.assert_allclose(fuse_features(gs, crops), _ref_fuse(gs, crops), atol=1e-6)
    np.testing.assert_array_equal(fuse(gs), fuse_features(gs))
    np.testing.assert_array_equal(fuse(gs, crops), fuse_features(gs, crops))
    np.testing.assert_allclose(np.linalg.norm(fuse_features(gs), axis=1), 1.0, atol=1e-6)


def test_rerank_after_qe_on_8_model_ensemble_keeps_map():
    """Before the fix the chain fused without 1/sqrt(n) (gallery norm sqrt(8)) while query expansion
    re-normalised queries to 1: Euclidean re-ranking then mixed two scales (mAP 1.000 -> 0.454 here)."""
    qs, gs, q_df, g_df = _ensemble_data()
    cfg = PostProcessConfig.from_dict({"ensemble": True, "query_expansion": {"eps": 0.5},
                                       "re_ranking": {"k1": 20, "k2": 6, "lambda": 0.3}})
    dist, table = run_chain(qs, gs, q_df, g_df, cfg)
    by_step = {r["step"].split(" ")[0]: r["mAP"] for r in table}
    assert by_step["ensemble"] == pytest.approx(1.0)
    assert by_step["re_ranking"] >= by_step["query_expansion"] - 1e-9
    # the re-ranked distance is k-reciprocal re-ranking of the reference-fused, expanded features
    fq, fg = _ref_fuse(qs), _ref_fuse(gs)
    from vreid.evaluate.postprocess import query_expansion_dbscan

    eq = query_expansion_dbscan(fq, eps=0.5, min_samples=2)
    np.testing.assert_allclose(np.linalg.norm(eq, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(dist, re_ranking_features(eq, fg, 20, 6, 0.3), atol=1e-4)


# -- camera verification (VehicleNet Sec. IV-C "Camera Verification") --------------------------------
def test_manifest_camera_source_refuses_unknown_cameras():
    (q1, _, _), (g1, _, _), q_df, g_df = _data()
    cfg = PostProcessConfig.from_dict({"camera_verification": {"source": "manifest"}})
    with pytest.raises(EvaluationInputError, match="camera.*unknown.*clusters"):
        run_chain(q1, g1, q_df.assign(camera=-1), g_df.assign(camera=-1), cfg, evaluate=False)
    with pytest.raises(EvaluationInputError, match="query manifest.*1 of 12"):
        run_chain(q1, g1, q_df.assign(camera=[-1] + [0] * 11), g_df, cfg, evaluate=False)


def test_cluster_camera_verification_matches_brute_force():
    """Camera features around 5 well-separated centres: the reference drops, for each query, exactly
    the gallery images whose camera feature lies nearest the same centre as the query's (the paper:
    "we remove the images of the same camera cluster from candidate images")."""
    (q1, _, _), (g1, _, _), q_df, g_df = _data()
    rng = np.random.default_rng(7)
    centres = 10 * rng.normal(size=(5, 6))
    qc_true = rng.integers(0, 5, len(q1))
    gc_true = rng.integers(0, 5, len(g1))
    qcf = centres[qc_true] + 0.05 * rng.normal(size=(len(q1), 6))
    gcf = centres[gc_true] + 0.05 * rng.normal(size=(len(g1), 6))
    cfg = PostProcessConfig.from_dict({"camera_verification": {"source": "clusters", "n_clusters": 5}})
    dist, table = run_chain(q1, g1, q_df.assign(camera=-1), g_df.assign(camera=-1), cfg, evaluate=False,
                            q_camera_features=qcf, g_camera_features=gcf)

    def nearest(v):  # brute force: index of the closest centre
        return min(range(5), key=lambda c: float(np.sum((v - centres[c]) ** 2)))

    a = q1 / np.linalg.norm(q1, axis=1, keepdims=True)
    b = g1 / np.linalg.norm(g1, axis=1, keepdims=True)
    for i in range(len(q1)):
        for j in range(len(g1)):
            if nearest(qcf[i]) == nearest(gcf[j]):
                assert dist[i, j] == np.inf
            else:
                assert dist[i, j] == pytest.approx(1 - float(a[i] @ b[j]), abs=1e-5)


# -- temporal filter (VehicleNet Sec. IV-C "Temporal Annotation") ------------------------------------
def _brute_temporal(qf, gf, qt, gt, tau):
    """Cosine distance, and +inf where |t_query - t_gallery| > tau (an unknown time filters nothing)."""
    out = np.zeros((len(qf), len(gf)))
    for i in range(len(qf)):
        for j in range(len(gf)):
            a, b = qf[i], gf[j]
            out[i, j] = 1 - float(a @ b) / np.sqrt(float(a @ a) * float(b @ b))
            if not (np.isnan(qt[i]) or np.isnan(gt[j])) and abs(qt[i] - gt[j]) > tau:
                out[i, j] = np.inf
    return out


def test_temporal_from_veri776_frame_stamps():
    from vreid.data.veri776 import read_veri776

    df = read_veri776(ROOT / "tests" / "fixtures" / "data" / "veri776")
    q_df = df[df.split == "query"].reset_index(drop=True)
    g_df = df[df.split == "gallery"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(len(q_df), 5)), rng.normal(size=(len(g_df), 5))
    cfg = PostProcessConfig.from_dict({"temporal": {"tau": 500.0}})
    dist, table = run_chain(qf, gf, q_df, g_df, cfg, evaluate=False)
    # frame stamps from the names 0003_c003_00030000_0.jpg ...: 30000 vs 30000, 30100, 31000
    expect = _brute_temporal(qf, gf, [30000.0], [30000.0, 30100.0, 31000.0], 500.0)
    np.testing.assert_allclose(dist, expect, atol=1e-5)
    assert np.isinf(dist[0, 2]) and "times known: 1/1 queries, 3/3 gallery" in table[-1]["step"]


def test_temporal_from_csv_by_image_and_by_track(tmp_path):
    rng = np.random.default_rng(1)
    q_df = pd.DataFrame({"image_name": ["q0.jpg", "q1.jpg", "q2.jpg"], "vehicle_id": -1, "camera": -1,
                         "timestamp": np.nan, "track": pd.array([None] * 3, dtype="Int64")})
    g_df = pd.DataFrame({"image_name": [f"g{i}.jpg" for i in range(6)], "vehicle_id": -1, "camera": -1,
                         "timestamp": np.nan, "track": pd.array([0, 0, 1, 1, 2, None], dtype="Int64")})
    qf, gf = rng.normal(size=(3, 4)), rng.normal(size=(6, 4))
    cfg = PostProcessConfig.from_dict({"temporal": {"tau": 10.0}})
    with pytest.raises(EvaluationInputError, match="no query image has a timestamp.*temporal.csv"):
        run_chain(qf, gf, q_df, g_df, cfg, evaluate=False)
    (tmp_path / "q.csv").write_text("image_name,timestamp\nq0.jpg,100\nq1.jpg,200\n")
    (tmp_path / "tracks.csv").write_text("track,timestamp\n0,95\n1,205\n2,300\n")
    cfg = PostProcessConfig.from_dict({"temporal": {"tau": 10.0, "csv": [str(tmp_path / "q.csv"),
                                                                        str(tmp_path / "tracks.csv")]}})
    dist, table = run_chain(qf, gf, q_df, g_df, cfg, evaluate=False)
    qt = [100.0, 200.0, np.nan]
    gt = [95.0, 95.0, 205.0, 205.0, 300.0, np.nan]
    np.testing.assert_allclose(dist, _brute_temporal(qf, gf, qt, gt, 10.0), atol=1e-5)
    assert "times known: 2/3 queries, 5/6 gallery" in table[-1]["step"]
    (tmp_path / "bad.csv").write_text("image_name,timestamp\nq0.jpg,soon\n")
    with pytest.raises(Exception, match=r"bad.csv:2: timestamp 'soon' is not a number"):
        run_chain(qf, gf, q_df, g_df, PostProcessConfig.from_dict({"temporal": {"csv": str(tmp_path / "bad.csv")}}),
                  evaluate=False)
