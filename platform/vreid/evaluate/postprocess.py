"""Post-processing of VehicleNet Section IV-C (Fig. 5, Table VI): query expansion, camera verification,
temporal filtering and track fusion.

All functions are pure (inputs are never modified in place) and take plain arrays.
"Dropping" a gallery candidate means setting its distance to ``+inf``: :func:`evaluate_rank` and the
submission writer rank ``+inf`` last, in gallery order.
"""

from __future__ import annotations

import numpy as np

from vreid.errors import EvaluationInputError
from vreid.evaluate.metrics import check_features, top_k_indices


def l2_normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def fuse_features(features, crops=None) -> np.ndarray:
    """VehicleNet's late fusion (Sec. IV-C "Model Ensemble"), the one used by the chain and the ensemble job.

    ``features``: one (N, d_j) matrix per model (a single matrix is one model). Each model's rows are
    L2-normalised, f^j / |f^j|; with ``crops`` (one matrix per model, Sec. IV-C "Cropped Images") a
    model's feature is first the mean of its full-image and box-crop features, each L2-normalised,
    re-normalised. The per-model parts are concatenated and scaled by 1/sqrt(n): the paper's
    [f^1/|f^1|, ..., f^n/|f^n|] up to that constant factor, which ranks identically under cosine
    distance and gives the fused rows unit norm, the norm every later step (query expansion, track
    fusion, Euclidean re-ranking) keeps and expects.
    """
    feats = [features] if isinstance(features, np.ndarray) else list(features)
    if not feats:
        raise EvaluationInputError("fuse_features: no features given")
    crop_list = None if crops is None else ([crops] if isinstance(crops, np.ndarray) else list(crops))
    if crop_list is not None and len(crop_list) != len(feats):
        raise EvaluationInputError(f"fuse_features: {len(feats)} models but {len(crop_list)} crop matrices")
    n_rows = np.asarray(feats[0]).shape[0]
    parts = []
    for j, f in enumerate(feats):
        f = check_features(f"features[{j}]", f).astype(np.float32)
        if f.shape[0] != n_rows:
            raise EvaluationInputError(f"fuse_features: model {j} has {f.shape[0]} rows, model 0 has {n_rows}")
        f = l2_normalize(f)
        if crop_list is not None:
            c = check_features(f"crops[{j}]", crop_list[j], dim=f.shape[1]).astype(np.float32)
            if c.shape[0] != n_rows:
                raise EvaluationInputError(f"fuse_features: crops[{j}] has {c.shape[0]} rows, expected {n_rows}")
            f = l2_normalize(f + l2_normalize(c))
        parts.append(f)
    return (np.concatenate(parts, axis=1) / np.float32(np.sqrt(len(parts)))).astype(np.float32)


def _vector(name: str, values, n: int, dtype=None) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise EvaluationInputError(f"{name} must be 1-D with {n} entries, got shape {arr.shape}")
    return arr


def query_expansion_dbscan(qf, eps: float = 0.5, min_samples: int = 2, metric: str = "euclidean",
                           normalize: bool = True, include_self: bool = False) -> np.ndarray:
    """VehicleNet's query expansion (Sec. IV-C): "The query feature is updated to the mean feature of
    the other queries in the same cluster", clusters by DBSCAN over the queries.

    The space of ``eps``: DBSCAN runs on the query rows after L2 normalisation; with
    ``metric="euclidean"`` (default) ``eps`` is a Euclidean radius there, in [0, 2] (eps = 0.5 means
    cosine similarity >= 1 - eps**2 / 2 = 0.875); with ``metric="cosine"`` it is a bound on 1 - cos.
    A query is its own neighbour when ``min_samples`` is counted (as in sklearn's DBSCAN).
    Each clustered query becomes the mean of the *other* members' (unnormalised input) features;
    noise queries (and a cluster's only member, which has no other) keep their own feature.
    ``include_self=True`` is the variant that averages over the whole cluster, the query included
    (not the paper's sentence; kept as a named option). ``normalize`` re-normalises the output rows
    to unit norm, the norm of the fused features (:func:`fuse_features`). Deterministic.
    """
    from sklearn.cluster import DBSCAN

    qf = check_features("qf", qf)
    if eps <= 0 or min_samples < 1:
        raise EvaluationInputError(f"query expansion needs eps > 0 and min_samples >= 1, got {eps}, {min_samples}")
    x = l2_normalize(qf.astype(np.float64))
    if metric == "cosine":
        d = np.clip(1.0 - x @ x.T, 0.0, None)
    elif metric == "euclidean":
        d = np.sqrt(np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None))
    else:
        raise EvaluationInputError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(d)
    src = qf.astype(np.float64)
    out = src.copy()
    for lab in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == lab)
        total = src[members].sum(axis=0)
        if include_self:
            out[members] = total / len(members)
        elif len(members) > 1:
            out[members] = (total[None, :] - src[members]) / (len(members) - 1)
    out = out.astype(qf.dtype)
    return l2_normalize(out).astype(qf.dtype) if normalize else out


def _weighted_neighbour_sum(src: np.ndarray, base: np.ndarray, k: int, alpha: float,
                            chunk: int = 1024) -> np.ndarray:
    """For each row of src: src + sum over its top-k rows of base of max(sim, 0)^alpha * base_row."""
    b = l2_normalize(base.astype(np.float32))
    s = l2_normalize(src.astype(np.float32))
    out = np.empty_like(s)
    for a in range(0, len(s), chunk):
        sim = s[a:a + chunk] @ b.T
        top = top_k_indices(-sim, k)
        w = np.maximum(np.take_along_axis(sim, top, axis=1), 0.0) ** alpha
        out[a:a + chunk] = s[a:a + chunk] + np.einsum("ik,ikd->id", w, b[top])
    return l2_normalize(out)


def alpha_query_expansion(qf, gf, k: int = 5, alpha: float = 3.0) -> np.ndarray:
    """alpha-weighted query expansion (Radenovic et al., alpha-QE): q' = norm(q + sum_{i<=k} s_i^alpha g_i)
    over the query's top-k gallery neighbours by cosine similarity s_i."""
    gf = check_features("gf", gf)
    qf = check_features("qf", qf, dim=gf.shape[1])
    if k < 1:
        raise EvaluationInputError(f"k must be >= 1, got {k}")
    return _weighted_neighbour_sum(qf, gf, min(k, len(gf)), alpha)


def database_augmentation(gf, k: int = 5, alpha: float = 3.0) -> np.ndarray:
    """Database-side augmentation: each gallery feature becomes norm(g + sum of its top-k other gallery
    neighbours weighted by s^alpha). The item itself is its own nearest neighbour, so top-(k+1) is used
    and the self term is removed."""
    gf = check_features("gf", gf)
    if k < 1:
        raise EvaluationInputError(f"k must be >= 1, got {k}")
    b = l2_normalize(gf.astype(np.float32))
    out = np.empty_like(b)
    kk = min(k + 1, len(b))
    for a in range(0, len(b), 1024):
        sim = b[a:a + 1024] @ b.T
        rows = np.arange(a, min(a + 1024, len(b)))
        sim[np.arange(len(rows)), rows] = -np.inf  # the item itself is added once, with weight 1
        top = top_k_indices(-sim, kk - 1) if kk > 1 else np.zeros((len(rows), 0), np.int64)
        w = np.maximum(np.take_along_axis(sim, top, axis=1), 0.0) ** alpha
        out[a:a + 1024] = b[rows] + np.einsum("ik,ikd->id", w, b[top])
    return l2_normalize(out)


def camera_verification(dist, q_cams, g_cams, mode: str = "drop", penalty: float = 1.0) -> np.ndarray:
    """VehicleNet's camera verification (Sec. IV-C): the query and its true match are assumed to come
    from different cameras. ``mode="drop"`` sets the distance of gallery candidates from the query's
    camera (or camera cluster) to ``+inf``; ``mode="penalty"`` adds ``penalty`` to it. Camera -1 means
    unknown and is never matched."""
    d = np.array(dist, dtype=np.result_type(np.asarray(dist).dtype, np.float32), copy=True)
    if d.ndim != 2:
        raise EvaluationInputError(f"dist must be 2-D, got shape {d.shape}")
    q = _vector("q_cams", q_cams, d.shape[0]).astype(np.int64)
    g = _vector("g_cams", g_cams, d.shape[1]).astype(np.int64)
    same = (q[:, None] == g[None, :]) & (q[:, None] >= 0)
    if mode == "drop":
        d[same] = np.inf
    elif mode == "penalty":
        d[same] += penalty
    else:
        raise EvaluationInputError(f"camera verification mode must be 'drop' or 'penalty', got {mode!r}")
    return d


def temporal_filter(dist, q_times, g_times, tau: float) -> np.ndarray:
    """Temporal annotation (Sec. IV-C): keep only gallery images with timestamp in [t - tau, t + tau];
    the others are dropped (+inf). A NaN timestamp (unknown) filters nothing."""
    d = np.array(dist, dtype=np.result_type(np.asarray(dist).dtype, np.float32), copy=True)
    if d.ndim != 2:
        raise EvaluationInputError(f"dist must be 2-D, got shape {d.shape}")
    if not tau >= 0:
        raise EvaluationInputError(f"tau must be >= 0, got {tau}")
    qt = _vector("q_times", q_times, d.shape[0], dtype=np.float64)
    gt = _vector("g_times", g_times, d.shape[1], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        far = np.abs(qt[:, None] - gt[None, :]) > tau  # NaN compares False: unknown times never filter
    d[far] = np.inf
    return d


def track_fusion(gf, g_tracks, weight: float = 1.0, normalize: bool = True) -> np.ndarray:
    """Track fusion: g' = g + weight * mean(features of g's track). Track -1 (or NaN) = no track."""
    gf = check_features("gf", gf)
    tr = _vector("g_tracks", g_tracks, gf.shape[0], dtype=np.float64)
    tr = np.where(np.isnan(tr), -1, tr).astype(np.int64)
    out = gf.astype(np.float64).copy()
    has = tr >= 0
    if has.any():
        uniq, inv = np.unique(tr[has], return_inverse=True)
        sums = np.zeros((len(uniq), gf.shape[1]))
        np.add.at(sums, inv, gf[has])
        means = sums / np.bincount(inv)[:, None]
        out[has] += weight * means[inv]
    out = out.astype(gf.dtype)
    return l2_normalize(out).astype(gf.dtype) if normalize else out


def camera_clusters(features, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster camera-aware features with k-means (VehicleNet: camera model features "then cluster"),
    returning a pseudo camera id per row for :func:`camera_verification`."""
    from sklearn.cluster import KMeans

    f = check_features("features", features)
    if not 1 <= n_clusters <= len(f):
        raise EvaluationInputError(f"n_clusters must be in [1, {len(f)}], got {n_clusters}")
    km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10)
    return km.fit_predict(l2_normalize(f.astype(np.float64))).astype(np.int64)


__all__ = [
    "l2_normalize",
    "fuse_features",
    "query_expansion_dbscan",
    "alpha_query_expansion",
    "database_augmentation",
    "camera_verification",
    "temporal_filter",
    "track_fusion",
    "camera_clusters",
]
