"""Neighbour backends: the k nearest gallery items of each query, exact or approximate.

Every backend answers the same two questions about a base set fitted once (``fit(base)``):

* ``search(queries, k) -> (dist, idx)``: the k nearest base items of each query, ascending by distance,
  ties among the returned items broken by base index;
* ``farthest(queries) -> dist``: each query's largest distance to the base (the normaliser of
  k-reciprocal re-ranking's ``original_dist``).

Distances: ``metric="euclidean"`` is the *squared* Euclidean distance, ``"cosine"`` is ``1 - cos``.

Backends:

* ``"numpy"`` / ``"torch"`` (:class:`ExactNeighbors`): brute force in blocks of queries, exact. A row's
  top-k is :func:`vreid.evaluate.metrics.top_k_indices` (stable-sort semantics: ties by index, also at
  the k-th place). ``"torch"`` only computes the distance blocks with torch (its BLAS is faster here).
* ``"faiss-flat"`` (:class:`FaissNeighbors`, ``index="flat"``): faiss brute force, exact up to float
  rounding (faiss computes ``|x|^2 + |y|^2 - 2 x.y`` in its own order, so two items whose distances differ
  by a rounding error can swap). Among items tied *at the k-th place* faiss keeps an unspecified one.
* ``"faiss-ivf"`` / ``"faiss-hnsw"``: **approximate** (inverted file with ``nprobe`` lists visited, or an
  HNSW graph with ``ef_search``): some true neighbours are missed; ``benchmarks/bench_scale.py`` prints
  their recall@100 against exact search. ``farthest`` on these builds the same kind of index over
  augmented vectors (maximum inner product search), so it is approximate too.

A GPU faiss index is used when faiss reports a GPU (``faiss.get_num_gpus() > 0``, the ``faiss-gpu``
build) unless ``use_gpu=False``; HNSW has no GPU version and stays on the CPU.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vreid.errors import EvaluationInputError

BACKENDS = ("numpy", "torch", "faiss-flat", "faiss-ivf", "faiss-hnsw")
METRICS = ("cosine", "euclidean")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise EvaluationInputError(f"metric must be one of {METRICS}, got {metric!r}")


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise EvaluationInputError(f"{name} has an all-zero row ({int(np.flatnonzero(norms[:, 0] == 0)[0])}); "
                                   "cosine distance is undefined")
    return (x / norms).astype(np.float32)


def _sq_norms(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float32)
    for s in range(0, x.shape[0], 16384):
        b = np.asarray(x[s:s + 16384], dtype=np.float32)
        out[s:s + 16384] = np.einsum("ij,ij->i", b, b)
    return out


class ExactNeighbors:
    """Exact brute-force neighbours in blocks of queries; ``device`` "numpy" or "torch"."""

    exact = True

    def __init__(self, metric: str = "euclidean", device: str = "numpy", block: int = 1024):
        _check_metric(metric)
        if device not in ("numpy", "torch"):
            raise EvaluationInputError(f"device must be 'numpy' or 'torch', got {device!r}")
        self.metric, self.device, self.block = metric, device, int(block)
        self.name = device

    def fit(self, base) -> "ExactNeighbors":
        from vreid.evaluate.metrics import check_features

        base = check_features("base", base)
        self.base = _normalise(base, "base") if self.metric == "cosine" else np.asarray(base, np.float32)
        self.base_sq = _sq_norms(self.base)
        if self.device == "torch":
            import torch

            self._tbase = torch.from_numpy(np.ascontiguousarray(self.base))
        return self

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """float32 (len(queries), n_base) distances (squared Euclidean or 1 - cos)."""
        q = np.asarray(queries, dtype=np.float32)
        if self.metric == "cosine":
            q = _normalise(q, "queries")
        if self.device == "torch":
            import torch

            g = (torch.from_numpy(np.ascontiguousarray(q)) @ self._tbase.T).numpy()
        else:
            g = q @ self.base.T
        if self.metric == "cosine":
            np.subtract(1.0, g, out=g)
        else:
            g *= -2.0
            g += _sq_norms(q)[:, None]
            g += self.base_sq[None, :]
            np.maximum(g, 0.0, out=g)
        return g

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        from vreid.evaluate.metrics import top_k_indices

        q = np.asarray(queries)
        k = min(int(k), self.base.shape[0])
        dist = np.empty((q.shape[0], k), np.float32)
        idx = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], self.block):
            d = self.distances(q[s:s + self.block])
            i = top_k_indices(d, k)
            idx[s:s + len(i)] = i
            dist[s:s + len(i)] = np.take_along_axis(d, i, axis=1)
        return dist, idx

    def farthest(self, queries) -> np.ndarray:
        q = np.asarray(queries)
        out = np.empty(q.shape[0], np.float32)
        for s in range(0, q.shape[0], self.block):
            out[s:s + self.block] = self.distances(q[s:s + self.block]).max(axis=1)
        return out


class FaissNeighbors:
    """faiss index: ``index="flat"`` (exact), ``"ivf"`` or ``"hnsw"`` (approximate)."""

    def __init__(self, metric: str = "euclidean", index: str = "flat", nlist: Optional[int] = None,
                 nprobe: int = 32, hnsw_m: int = 32, ef_construction: int = 80, ef_search: int = 128,
                 use_gpu: Optional[bool] = None, threads: Optional[int] = None, seed: int = 0):
        _check_metric(metric)
        if index not in ("flat", "ivf", "hnsw"):
            raise EvaluationInputError(f"faiss index must be 'flat', 'ivf' or 'hnsw', got {index!r}")
        try:
            import faiss  # noqa: F401
        except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
            raise EvaluationInputError("the faiss backend needs the faiss-cpu package") from exc
        self.metric, self.kind = metric, index
        self.nlist, self.nprobe = nlist, int(nprobe)
        self.hnsw_m, self.ef_construction, self.ef_search = int(hnsw_m), int(ef_construction), int(ef_search)
        self.use_gpu, self.threads, self.seed = use_gpu, threads, int(seed)
        self.exact = index == "flat"
        self._keep: list = []
        self.name = f"faiss-{index}"

    # -- building ------------------------------------------------------------------------------------
    def _gpu(self) -> bool:
        import faiss

        want = self.use_gpu if self.use_gpu is not None else True
        return bool(want) and self.kind != "hnsw" and hasattr(faiss, "index_cpu_to_all_gpus") \
            and faiss.get_num_gpus() > 0

    def _build(self, x: np.ndarray, inner_product: bool):
        import faiss

        if self.threads:
            faiss.omp_set_num_threads(int(self.threads))
        # faiss 1.15 searches a flat index with BLAS only from 128,000 queries at once (the cvar's
        # default); below that its direct SIMD loop is several times slower than a matrix product here
        faiss.cvar.distance_compute_blas_threshold = min(int(faiss.cvar.distance_compute_blas_threshold), 20)
        d = x.shape[1]
        mt = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d) if inner_product else faiss.IndexFlatL2(d)
        elif self.kind == "ivf":
            nlist = self.nlist or int(max(1, min(4 * np.sqrt(x.shape[0]), x.shape[0] // 39)))
            quantizer = faiss.IndexFlatIP(d) if inner_product else faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, mt)
            index.cp.seed = self.seed
            # k-means on a seeded sample of 64 points per list (faiss's own default would take 256)
            rng = np.random.default_rng(self.seed)
            n_train = min(x.shape[0], 64 * nlist)
            sample = x[np.sort(rng.choice(x.shape[0], n_train, replace=False))] if n_train < x.shape[0] else x
            index.cp.max_points_per_centroid = 64
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
            index.nprobe = min(self.nprobe, nlist)
            self._keep.append(quantizer)  # the IVF index refers to it: keep it alive
        else:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, mt)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        if self._gpu():
            index = faiss.index_cpu_to_all_gpus(index)
        for s in range(0, x.shape[0], 65536):
            index.add(np.ascontiguousarray(x[s:s + 65536], dtype=np.float32))
        return index

    def _prep(self, x, name: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return _normalise(x, name) if self.metric == "cosine" else x

    def fit(self, base) -> "FaissNeighbors":
        from vreid.evaluate.metrics import check_features

        base = self._prep(check_features("base", base), "base")
        self.base = base
        self.n_base = base.shape[0]
        self.index = self._build(base, inner_product=self.metric == "cosine")
        self._far = None
        return self

    # -- queries -------------------------------------------------------------------------------------
    def search(self, queries, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        q = self._prep(queries, "queries")
        k = min(int(k), self.n_base)
        if self._gpu() and k > 2048:
            raise EvaluationInputError(f"a faiss GPU index returns at most 2048 neighbours, asked for {k}; "
                                       "use top_k <= 2048 or use_gpu=False")
        dist = np.empty((q.shape[0], k), np.float32)
        idx = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], block):
            d, i = self.index.search(np.ascontiguousarray(q[s:s + block]), k)
            if self.metric == "cosine":
                d = 1.0 - d
            else:
                np.maximum(d, 0.0, out=d)
            # missing results (an approximate index found fewer than k) come back as -1: rank them last
            d = np.where(i < 0, np.inf, d).astype(np.float32)
            order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=1)
            dist[s:s + len(d)] = np.take_along_axis(d, order, axis=1)
            idx[s:s + len(d)] = np.take_along_axis(i, order, axis=1)
        return dist, idx

    def farthest(self, queries, block: int = 4096) -> np.ndarray:
        """max_j d(q, y_j) as a maximum inner product search over augmented vectors:
        euclidean ``|q|^2 + max_j (y_j.(-2q) + |y_j|^2)`` on base ``[y, |y|^2]``, query ``[-2q, 1]``;
        cosine ``1 + max_j (-q).y_j``."""
        q = self._prep(queries, "queries")
        if self._far is None:
            if self.metric == "euclidean":
                aug = np.concatenate([self.base, _sq_norms(self.base)[:, None]], axis=1)
            else:
                aug = self.base
            self._far = self._build(aug, inner_product=True)
        out = np.empty(q.shape[0], np.float32)
        for s in range(0, q.shape[0], block):
            b = q[s:s + block]
            if self.metric == "euclidean":
                aq = np.concatenate([-2.0 * b, np.ones((len(b), 1), np.float32)], axis=1)
                d, _ = self._far.search(np.ascontiguousarray(aq), 1)
                out[s:s + len(b)] = np.maximum(d[:, 0] + _sq_norms(b), 0.0)
            else:
                d, _ = self._far.search(np.ascontiguousarray(-b), 1)
                out[s:s + len(b)] = 1.0 + d[:, 0]
        return out


def make_backend(backend, metric: str = "euclidean", **kwargs):
    """A backend from its name (:data:`BACKENDS`), or ``backend`` itself if it is already one."""
    if backend is None:
        backend = "numpy"
    if not isinstance(backend, str):
        if not all(hasattr(backend, a) for a in ("fit", "search", "farthest", "exact")):
            raise EvaluationInputError(f"backend {backend!r} has no fit/search/farthest/exact")
        return backend
    if backend in ("numpy", "torch"):
        return ExactNeighbors(metric, device=backend, **kwargs)
    if backend.startswith("faiss-") and backend in BACKENDS:
        return FaissNeighbors(metric, index=backend.split("-", 1)[1], **kwargs)
    raise EvaluationInputError(f"neighbour backend must be one of {BACKENDS}, got {backend!r}")


__all__ = ["BACKENDS", "ExactNeighbors", "FaissNeighbors", "make_backend"]
