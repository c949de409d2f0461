"""evaluate_rank / evaluate_features against a brute-force per-query reference (FORMATS.md "Metrics")."""

from __future__ import annotations

import numpy as np
import pytest

from vreid.errors import EvaluationInputError
from vreid.evaluate.metrics import evaluate_features, evaluate_rank, top_k_indices


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, max_rank, remove_same_camera, ap_mode):
    """Plain per-query loop straight from the definitions: stable argsort, drop junk, walk the list."""
    aps, inps, firsts = [], [], []
    n_q = dist.shape[0]
    for i in range(n_q):
        order = np.argsort(dist[i], kind="stable")
        ranked = []
        for g in order:
            if remove_same_camera and g_pids[g] == q_pids[i] and g_cams[g] == q_cams[i]:
                continue
            ranked.append(g_pids[g] == q_pids[i])
        ranked = np.array(ranked, dtype=bool)
        n_true = int(ranked.sum())
        if n_true == 0:
            aps.append(None)
            continue
        hit_ranks = np.flatnonzero(ranked) + 1
        if ap_mode == "standard":
            ap = sum((k + 1) / r for k, r in enumerate(hit_ranks)) / n_true
        elif ap_mode == "top100":
            ap = sum((k + 1) / r for k, r in enumerate(hit_ranks) if r <= 100) / min(n_true, 100)
        else:
            ap = 0.0
            for k, r in enumerate(hit_ranks):
                prec = (k + 1) / r
                old = k / (r - 1) if r > 1 else 1.0
                ap += (old + prec) / 2 / n_true
        aps.append(ap)
        inps.append(n_true / hit_ranks[-1])
        firsts.append(hit_ranks[0])
    used = [a for a in aps if a is not None]
    denom = n_q if ap_mode == "trapezoid" else len(used)
    cmc = np.array([sum(f <= k for f in firsts) for k in range(1, max_rank + 1)]) / denom
    return {"mAP": sum(used) / denom, "cmc": cmc, "mINP": float(np.mean(inps)),
            "num_queries": len(used), "num_skipped": n_q - len(used)}


def random_case(seed, n_q=23, n_g=61, n_ids=9, n_cams=3, ties=False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, n_ids + 2, n_q)  # ids >= n_ids never appear in the gallery: skipped
    g_pids = rng.integers(0, n_ids, n_g)
    q_cams = rng.integers(0, n_cams, n_q)
    g_cams = rng.integers(0, n_cams, n_g)
    if ties:
        dist = rng.integers(0, 4, (n_q, n_g)).astype(np.float32)  # heavy ties
    else:
        dist = rng.random((n_q, n_g))
    return dist, q_pids, g_pids, q_cams, g_cams


def assert_same(ours, ref):
    assert ours["num_queries"] == ref["num_queries"]
    assert ours["num_skipped"] == ref["num_skipped"]
    np.testing.assert_allclose(ours["mAP"], ref["mAP"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["mINP"], ref["mINP"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["cmc"], ref["cmc"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("ap_mode", ["standard", "top100", "trapezoid"])
@pytest.mark.parametrize("remove", [True, False])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_rank_matches_brute_force(seed, ties, remove, ap_mode):
    dist, qp, gp, qc, gc = random_case(seed, ties=ties)
    ref = brute_force(dist, qp, gp, qc, gc, 80, remove, ap_mode)  # max_rank 80 > gallery size 61
    for chunk, threads in [(None, 1), (5, 2), (1, 1)]:
        ours = evaluate_rank(dist, qp, gp, qc, gc, max_rank=80, remove_same_camera=remove,
                             ap_mode=ap_mode, chunk_size=chunk, n_threads=threads)
        assert_same(ours, ref)
    assert ours["cmc"].shape == (80,)
    assert ours["num_skipped"] > 0  # the generator makes queries without any true match


def test_top100_differs_from_standard_on_long_lists():
    # 150 gallery items, true matches at ranks 1, 120 and 150
    n_g = 150
    dist = np.arange(n_g, dtype=np.float64)[None, :]
    g_pids = np.full(n_g, 5)
    g_pids[[0, 119, 149]] = 1
    res_std = evaluate_rank(dist, [1], g_pids, [0], np.ones(n_g, int))
    res_100 = evaluate_rank(dist, [1], g_pids, [0], np.ones(n_g, int), ap_mode="top100")
    assert res_std["mAP"] == pytest.approx((1 / 1 + 2 / 120 + 3 / 150) / 3)
    assert res_100["mAP"] == pytest.approx(1.0 / 3)
    assert res_std["mINP"] == pytest.approx(3 / 150)


def test_hand_computed_example_with_junk_and_ties():
    # gallery: ids [1, 2, 1, 1, 3], cams [0, 1, 1, 0, 1]; query id 1 cam 0 -> items 0 and 3 are junk
    dist = np.array([[0.1, 0.5, 0.5, 0.2, 0.5]])
    res = evaluate_rank(dist, [1], [1, 2, 1, 1, 3], [0], [0, 1, 1, 0, 1], max_rank=3)
    # survivors ranked: item1 (0.5, idx1), item2 (0.5, idx2), item4 -> true match at rank 2
    assert res["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(res["cmc"], [0.0, 1.0, 1.0])
    assert res["mINP"] == pytest.approx(0.5)
    keep = evaluate_rank(dist, [1], [1, 2, 1, 1, 3], [0], [0, 1, 1, 0, 1], max_rank=3,
                         remove_same_camera=False)
    # ranks of true matches: 1 (item0), 2 (item3), 4 (item2 behind item1 by index)
    assert keep["mAP"] == pytest.approx((1 + 1 + 3 / 4) / 3)


def test_inf_distances_rank_last_in_gallery_order():
    dist = np.array([[np.inf, 0.3, np.inf, 0.1]])
    res = evaluate_rank(dist, [7], [7, 1, 7, 2], [0], [1, 1, 1, 1])
    # ranked: 3, 1, 0 (inf, idx0), 2 (inf, idx2) -> matches at 3 and 4
    assert res["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluate_features_equals_dense(metric):
    rng = np.random.default_rng(3)
    qf = rng.normal(size=(40, 16)).astype(np.float32)
    gf = rng.normal(size=(97, 16)).astype(np.float32)
    qp, gp = rng.integers(0, 10, 40), rng.integers(0, 10, 97)
    qc, gc = rng.integers(0, 4, 40), rng.integers(0, 4, 97)
    from vreid.evaluate.metrics import DistanceBlocks
    dense = DistanceBlocks(qf, gf, metric).block(0, 40)
    if metric == "cosine":
        qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        np.testing.assert_allclose(dense, 1 - qn @ gn.T, atol=1e-5)
    else:
        np.testing.assert_allclose(dense, ((qf[:, None] - gf[None]) ** 2).sum(-1), rtol=1e-4, atol=1e-4)
    ref = brute_force(dense, qp, gp, qc, gc, 50, True, "standard")
    for chunk in (7, 40):
        assert_same(evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, chunk_size=chunk), ref)


def test_string_ids_are_accepted():
    dist = np.array([[0.2, 0.1], [0.9, 0.3]])
    res = evaluate_rank(dist, ["a", "b"], ["b", "a"], [0, 0], [1, 1])
    assert res["mAP"] == pytest.approx((1 / 1 + 1 / 2) / 2)


def test_top_k_indices_is_stable_argsort_prefix():
    rng = np.random.default_rng(0)
    d = rng.integers(0, 5, (13, 40)).astype(np.float32)
    for k in (1, 3, 17, 40, 55):
        np.testing.assert_array_equal(top_k_indices(d, k), np.argsort(d, axis=1, kind="stable")[:, :k])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"distmat": np.zeros((0, 3))}, "query set is empty"),
        ({"q_pids": [1, 2]}, "q_pids has length 2"),
        ({"g_camids": [0, 1]}, "g_camids has length 2"),
        ({"distmat": np.array([[np.nan, 1, 2], [0, 1, 2], [0, 1, 2]])}, "NaN"),
        ({"distmat": np.zeros(3)}, "2-D"),
        ({"max_rank": 0}, "max_rank"),
        ({"ap_mode": "bogus"}, "ap_mode"),
        ({"q_pids": [9, 9, 9]}, "none of the 3 queries"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"distmat": np.arange(9, dtype=float).reshape(3, 3), "q_pids": [1, 2, 3], "g_pids": [1, 2, 3],
            "q_camids": [0, 0, 0], "g_camids": [1, 1, 1]}
    args.update(kwargs)
    with pytest.raises(EvaluationInputError, match=match):
        evaluate_rank(**args)


def test_bad_features():
    qf = np.ones((2, 4), np.float32)
    gf = np.ones((3, 4), np.float32)
    bad = gf.copy()
    bad[1, 2] = np.inf
    with pytest.raises(EvaluationInputError, match="gf contains NaN or infinite values"):
        evaluate_features(qf, bad, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(EvaluationInputError, match="feature dimension"):
        evaluate_features(np.ones((2, 5)), gf, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(EvaluationInputError, match="qf has 0 rows"):
        evaluate_features(np.ones((0, 4)), gf, [], [1, 2, 3], [], [1, 1, 1])


# ----------------------------------------------------------------------------------------------------
# neighbour backends: faiss's exact (flat) index against brute force, and the kNN evaluation path
# ----------------------------------------------------------------------------------------------------
def _brute_knn(q, g, k, metric):
    """Stable argsort of distances computed in float64 straight from the definition."""
    q, g = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
        d = 1.0 - qn @ gn.T
    else:
        d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    return d, np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("backend", ["numpy", "torch", "faiss-flat"])
def test_exact_backends_give_brute_force_ranks(backend, metric):
    from vreid.evaluate.neighbors import make_backend

    rng = np.random.default_rng(0)
    g = rng.normal(size=(500, 24)).astype(np.float32)
    q = rng.normal(size=(40, 24)).astype(np.float32)
    d_ref, ref = _brute_knn(q, g, 30, metric)
    nb = make_backend(backend, metric=metric).fit(g)
    assert nb.exact
    dist, idx = nb.search(q, 30)
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(d_ref, ref, axis=1), atol=1e-4)
    np.testing.assert_allclose(nb.farthest(q), d_ref.max(axis=1), rtol=1e-5, atol=1e-4)


def test_faiss_flat_ties_are_reported_honestly():
    """Integer features give exactly tied distances. Inside the list faiss's results are re-sorted by
    (distance, index), so they equal numpy's stable ranks; at the k-th place faiss may keep another of the
    tied items, so there only the distances (and the items strictly closer) must agree."""
    from vreid.evaluate.neighbors import make_backend

    rng = np.random.default_rng(1)
    g = rng.integers(0, 3, size=(300, 4)).astype(np.float32)
    q = rng.integers(0, 3, size=(50, 4)).astype(np.float32)
    k = 20
    d_np, i_np = make_backend("numpy").fit(g).search(q, k)
    d_fa, i_fa = make_backend("faiss-flat").fit(g).search(q, k)
    np.testing.assert_array_equal(d_fa, d_np)  # integer distances: exact in float32
    full = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    n_boundary_ties = 0
    for r in range(len(q)):
        kth = d_np[r, -1]
        if np.count_nonzero(full[r] <= kth) == k:  # no tie across the cut: the lists are identical
            np.testing.assert_array_equal(i_fa[r], i_np[r])
        else:
            n_boundary_ties += 1
            below = d_np[r] < kth
            np.testing.assert_array_equal(i_fa[r][below], i_np[r][below])
            assert np.all(full[r][i_fa[r][~below]] == kth)
            assert np.all(np.diff(i_fa[r][~below]) > 0)  # ties inside the list in index order
    assert n_boundary_ties > 0  # the case is exercised


def test_faiss_ivf_visiting_every_list_is_exact_and_hnsw_is_approximate():
    from vreid.evaluate.neighbors import FaissNeighbors

    rng = np.random.default_rng(2)
    g = rng.normal(size=(2000, 16)).astype(np.float32)
    q = rng.normal(size=(50, 16)).astype(np.float32)
    _, ref = _brute_knn(q, g, 10, "euclidean")
    ivf = FaissNeighbors("euclidean", index="ivf", nlist=16, nprobe=16).fit(g)
    assert not ivf.exact and ivf.name == "faiss-ivf"
    np.testing.assert_array_equal(ivf.search(q, 10)[1], ref)
    hnsw = FaissNeighbors("euclidean", index="hnsw").fit(g)
    assert not hnsw.exact
    got = hnsw.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)])
    assert 0.5 < recall <= 1.0


@pytest.mark.parametrize("remove", [True, False])
def test_evaluate_features_with_faiss_flat_equals_exact(remove):
    rng = np.random.default_rng(4)
    n_q, n_g, n_ids = 30, 400, 40
    centres = rng.normal(size=(n_ids, 16))
    qp, gp = rng.integers(0, n_ids, n_q), rng.integers(0, n_ids, n_g)
    qc, gc = rng.integers(0, 3, n_q), rng.integers(0, 3, n_g)
    qf = (centres[qp] + 1.2 * rng.normal(size=(n_q, 16))).astype(np.float32)
    gf = (centres[gp] + 1.2 * rng.normal(size=(n_g, 16))).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        ref = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, remove_same_camera=remove)
        # the whole gallery listed: the ordinary metrics
        full = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, remove_same_camera=remove,
                                 backend="faiss-flat", top_k=n_g)
        assert full["backend"] == "faiss-flat" and full["top_k"] == n_g
        assert_same(full, ref)
        # a 100-long list with AI City's AP@100 equals the exact top100 score, and CMC up to rank 100
        ref100 = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, remove_same_camera=remove,
                                   ap_mode="top100", max_rank=100)
        got100 = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, remove_same_camera=remove,
                                   ap_mode="top100", max_rank=100, backend="faiss-flat", top_k=100)
        np.testing.assert_allclose(got100["mAP"], ref100["mAP"], atol=1e-12)
        np.testing.assert_allclose(got100["cmc"], ref100["cmc"], atol=1e-12)
        assert got100["mINP"] <= ref100["mINP"] + 1e-12  # a lower bound when matches lie beyond the list
    with pytest.raises(EvaluationInputError, match="neighbour backend"):
        evaluate_features(qf, gf, qp, gp, qc, gc, backend="annoy")


def test_evaluate_blocks_equals_evaluate_rank_and_checks_coverage():
    from vreid.evaluate.metrics import evaluate_blocks

    dist, qp, gp, qc, gc = random_case(5)
    ref = evaluate_rank(dist, qp, gp, qc, gc)
    blocks = [(s, dist[s:s + 4]) for s in range(0, len(dist), 4)]
    assert_same(evaluate_blocks(iter(blocks), dist.shape, qp, gp, qc, gc), ref)
    with pytest.raises(EvaluationInputError, match="does not continue"):
        evaluate_blocks(iter(blocks[1:]), dist.shape, qp, gp, qc, gc)
    with pytest.raises(EvaluationInputError, match="cover 20 of 23 queries"):
        evaluate_blocks(iter(blocks[:-1]), dist.shape, qp, gp, qc, gc)
