"""Retrieval metrics for re-identification: CMC, mAP and mINP (FORMATS.md "Metrics"; VehicleNet V-A).

Semantics (the same for every entry point here):

* Per query the gallery is ranked by ascending distance; ties are broken by gallery order (what a stable
  sort gives), so results are deterministic.
* Junk: with ``remove_same_camera=True`` gallery images with the query's id *and* camera are removed
  before ranking (the VeRi-776 / CityFlow protocol); with ``False`` nothing is junk.
* Queries without a true match in the surviving gallery are skipped and counted (``num_skipped``).
  If no query has a true match an :class:`EvaluationInputError` is raised (never a silent mAP of 0).
* ``cmc[k-1]`` is the fraction of used queries whose first true match has rank <= k. ``cmc`` always has
  ``max_rank`` entries; when ``max_rank`` exceeds the surviving gallery the curve has simply reached 1.
* AP (``ap_mode``):

  - ``"standard"``: mean of precision at the rank of each true match (the usual re-id AP).
  - ``"top100"``: AP over the first 100 ranks only, as the AI City Track 2 server scores a 100-long list:
    ``sum_{k: r_k <= 100} (k / r_k) / min(n_true, 100)`` (TREC-style AP@n).
  - ``"trapezoid"``: the VehicleNet authors' ``compute_mAP`` (layumi's evaluate code): each true match
    adds ``(1/n_true) * (old_precision + precision) / 2`` with ``old_precision = (k-1)/(r_k-1)`` (1 for
    ``r_k = 1``). As in their script, mAP *and* CMC are divided by all queries (skipped ones add 0);
    ``result["denominator"]`` says which divisor was used. mINP is always over used queries.

* mINP = (number of true matches) / (rank of the last true match), averaged over used queries
  (Ye et al., "Deep learning for person re-id: a survey", used by fast-reid).

How it is fast without argsort: for each query only the ranks of its true matches are needed. Rows are
sorted by value (``np.sort``, a SIMD sort, much cheaper than a stable argsort), each true match's rank is
a ``searchsorted`` of its distance plus an exact tie correction by gallery index, minus the junk items
ranked before it. The feature-level entry point computes distances one chunk of queries at a time, so
neither the full distance matrix nor any argsort is ever held.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np

from vreid.errors import EvaluationInputError

AP_MODES = ("standard", "top100", "trapezoid")
METRICS = ("cosine", "euclidean")


# ----------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------
def _as_ids(name: str, values, expected_len: int, expected_from: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise EvaluationInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != expected_len:
        raise EvaluationInputError(
            f"{name} has length {arr.shape[0]} but {expected_from} implies {expected_len}"
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.dtype.kind in "OUS":
            # string ids (e.g. VeRi-Wild "00001") are fine: compare them as categories
            _, arr = np.unique(arr.astype(str), return_inverse=True)
        else:
            raise EvaluationInputError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _encode_ids(q: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map query and gallery ids into one shared integer code space."""
    if q.dtype.kind in "iu" and g.dtype.kind in "iu":
        return q.astype(np.int64, copy=False), g.astype(np.int64, copy=False)
    both = np.concatenate([np.asarray(q).astype(str), np.asarray(g).astype(str)])
    _, codes = np.unique(both, return_inverse=True)
    return codes[: len(q)].astype(np.int64), codes[len(q):].astype(np.int64)


def _check_ids(q_pids, g_pids, q_camids, g_camids, n_q: int, n_g: int, source: str):
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if q_pids.dtype.kind in "OUS" or g_pids.dtype.kind in "OUS":
        if q_pids.ndim != 1 or g_pids.ndim != 1:
            raise EvaluationInputError("q_pids and g_pids must be 1-D")
        q_pids, g_pids = _encode_ids(q_pids, g_pids)
    q_pids = _as_ids("q_pids", q_pids, n_q, f"the number of query rows in {source}")
    g_pids = _as_ids("g_pids", g_pids, n_g, f"the number of gallery columns in {source}")
    q_camids = _as_ids("q_camids", q_camids, n_q, f"the number of query rows in {source}")
    g_camids = _as_ids("g_camids", g_camids, n_g, f"the number of gallery columns in {source}")
    return q_pids, g_pids, q_camids, g_camids


def _check_common(max_rank: int, ap_mode: str) -> None:
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise EvaluationInputError(f"max_rank must be a positive integer, got {max_rank!r}")
    if ap_mode not in AP_MODES:
        raise EvaluationInputError(f"ap_mode must be one of {AP_MODES}, got {ap_mode!r}")


def check_features(name: str, feats, dim: int | None = None) -> np.ndarray:
    """Validate a 2-D finite feature matrix; return it as float32/float64 without copying when possible."""
    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise EvaluationInputError(f"{name} must be a 2-D array (n, d), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise EvaluationInputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    if dim is not None and arr.shape[1] != dim:
        raise EvaluationInputError(f"{name} has feature dimension {arr.shape[1]}, expected {dim}")
    # chunked so a 1 GB gallery does not need a 1 GB boolean temporary
    step = max(1, (1 << 24) // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], step):
        block = arr[start:start + step]
        if not np.isfinite(block).all():
            bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise EvaluationInputError(f"{name} contains NaN or infinite values (first at row {bad})")
    return arr


# ----------------------------------------------------------------------------------------------------
# gallery grouping: the true-match / junk candidates of each query id
# ----------------------------------------------------------------------------------------------------
class _GalleryIndex:
    """Gallery rows grouped by id (ascending row order inside each id)."""

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray):
        self.order = np.argsort(g_pids, kind="stable")
        sorted_pids = g_pids[self.order]
        self.pids, self.starts, self.counts = np.unique(sorted_pids, return_index=True, return_counts=True)
        self.g_camids = g_camids

    def candidates(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c, P) gallery row indices with q's id (padded with 0) and the validity mask."""
        pos = np.searchsorted(self.pids, q_pids)
        pos_c = np.minimum(pos, len(self.pids) - 1)
        found = self.pids[pos_c] == q_pids
        counts = np.where(found, self.counts[pos_c], 0)
        width = int(counts.max()) if len(counts) else 0
        cols = np.arange(width)
        valid = cols[None, :] < counts[:, None]
        flat = np.where(valid, self.starts[pos_c][:, None] + cols[None, :], 0)
        return self.order[flat], valid


# ----------------------------------------------------------------------------------------------------
# per-chunk ranking of the true matches
# ----------------------------------------------------------------------------------------------------
def _chunk_ranks(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    gindex: _GalleryIndex,
    remove_same_camera: bool,
    row_offset: int,
    argname: str,
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks (among non-junk gallery items) of each query's true matches.

    Returns ``(ranks, good)``: ``ranks`` (c, P) float64 sorted ascending per row, ``inf`` where ``good``
    is False; ``good`` (c, P) marks real true matches.
    """
    c, n_g = dist.shape
    idx, valid = gindex.candidates(q_pids)
    width = idx.shape[1]
    rows = np.arange(c)[:, None]
    cand_d = dist[rows, idx] if width else np.zeros((c, 0), dist.dtype)
    if remove_same_camera:
        junk = valid & (gindex.g_camids[idx] == q_camids[:, None])
    else:
        junk = np.zeros_like(valid)
    good = valid & ~junk

    # Number of gallery items strictly closer than each candidate: sort a copy of the row in a reused
    # buffer (cache-resident, no page faults) and binary-search the candidates' distances.
    before = np.empty((c, width), dtype=np.int64)
    buf = _sort_buffer(c, n_g, dist.dtype)
    buf[:] = dist
    buf.sort(axis=1)  # releases the GIL: another thread can work on the next chunk meanwhile
    # np.sort puts NaN last and -inf first, so the row ends validate the whole chunk
    if np.isnan(buf[:, -1]).any():
        bad = row_offset + int(np.flatnonzero(np.isnan(buf[:, -1]))[0])
        raise EvaluationInputError(f"{argname} contains NaN (query row {bad})")
    if np.isneginf(buf[:, 0]).any():
        bad = row_offset + int(np.flatnonzero(np.isneginf(buf[:, 0]))[0])
        raise EvaluationInputError(f"{argname} contains -inf (query row {bad})")
    if width:
        for i in range(c):
            before[i] = buf[i].searchsorted(cand_d[i], side="left")
        # another item with the same distance sits right after the first equal one: resolve such ties
        # exactly by gallery index (stable-sort semantics); they are rare with real distances
        nxt = np.minimum(before + 1, n_g - 1)
        tied = valid & (before + 1 < n_g) & (np.take_along_axis(buf, nxt, axis=1) == cand_d)
        for i, p in zip(*np.nonzero(tied)):
            before[i, p] += int(np.count_nonzero(dist[i, : idx[i, p]] == cand_d[i, p]))
    if width == 0:
        return np.full((c, 0), np.inf), np.zeros((c, 0), bool)

    if junk.any():
        # junk items ranked before a true match do not count: compare (distance, index) pairs
        dj = np.where(junk, cand_d, np.inf)[:, None, :]
        ij = idx[:, None, :]
        dm = cand_d[:, :, None]
        im = idx[:, :, None]
        junk_before = (junk[:, None, :] & ((dj < dm) | ((dj == dm) & (ij < im)))).sum(axis=2)
        before -= junk_before
    ranks = np.where(good, before + 1, np.inf).astype(np.float64)
    ranks.sort(axis=1)
    good_sorted = np.isfinite(ranks)
    return ranks, good_sorted


_BUFFERS = threading.local()


def _sort_buffer(rows: int, cols: int, dtype) -> np.ndarray:
    """A per-thread scratch array reused across chunks: fresh 100 MB allocations cost page faults."""
    cur = getattr(_BUFFERS, "buf", None)
    if cur is None or cur.dtype != dtype or cur.shape[1] != cols or cur.shape[0] < rows:
        cur = np.empty((rows, cols), dtype=dtype)
        _BUFFERS.buf = cur
    return cur[:rows]


class _Accumulator:
    """Sums per-query statistics over chunks."""

    def __init__(self, max_rank: int, ap_mode: str):
        self.max_rank = max_rank
        self.ap_mode = ap_mode
        self.hits = np.zeros(max_rank + 1, dtype=np.int64)  # hits[r] = queries whose first match is rank r
        self.ap_sum = 0.0
        self.inp_sum = 0.0
        self.used = 0
        self.total = 0
        self.ap_per_query: list[np.ndarray] = []

    def add(self, ranks: np.ndarray, good: np.ndarray) -> None:
        self.total += ranks.shape[0]
        n_true = good.sum(axis=1)
        use = n_true > 0
        if not use.any():
            self.ap_per_query.append(np.full(ranks.shape[0], np.nan))
            return
        r = ranks[use]
        g = good[use]
        n = n_true[use].astype(np.float64)
        k = np.arange(1, r.shape[1] + 1, dtype=np.float64)[None, :]
        r_safe = np.where(g, r, 1.0)
        if self.ap_mode == "standard":
            ap = np.where(g, k / r_safe, 0.0).sum(axis=1) / n
        elif self.ap_mode == "top100":
            inside = g & (r <= 100)
            ap = np.where(inside, k / r_safe, 0.0).sum(axis=1) / np.minimum(n, 100.0)
        else:  # trapezoid
            old = np.where(r_safe > 1, (k - 1) / np.maximum(r_safe - 1, 1.0), 1.0)
            ap = np.where(g, (old + k / r_safe) / 2.0, 0.0).sum(axis=1) / n
        # a query whose true matches all lie beyond a truncated list (a kNN backend) has first = inf
        first = np.minimum(r[:, 0], self.max_rank + 1).astype(np.int64)
        last = r[np.arange(r.shape[0]), n_true[use] - 1]
        self.inp_sum += float((n / last).sum())
        self.ap_sum += float(ap.sum())
        clipped = np.minimum(first, self.max_rank + 1)
        self.hits += np.bincount(clipped, minlength=self.max_rank + 2)[: self.max_rank + 1]
        self.used += int(use.sum())
        per = np.full(ranks.shape[0], np.nan)
        per[use] = ap
        self.ap_per_query.append(per)

    def result(self) -> dict:
        if self.total == 0:
            raise EvaluationInputError("the query set is empty")
        if self.used == 0:
            raise EvaluationInputError(
                f"none of the {self.total} queries has a true match in the gallery (after junk removal); "
                "check that query and gallery ids refer to the same identities"
            )
        denom = self.total if self.ap_mode == "trapezoid" else self.used
        # hits[0] is unused (ranks start at 1); cumulative sum over ranks 1..max_rank
        cmc = np.cumsum(self.hits[1: self.max_rank + 1]) / denom
        return {
            "mAP": self.ap_sum / denom,
            "cmc": cmc.astype(np.float64),
            "mINP": self.inp_sum / self.used,
            "num_queries": self.used,
            "num_skipped": self.total - self.used,
            "denominator": "all_queries" if self.ap_mode == "trapezoid" else "used_queries",
            "ap_mode": self.ap_mode,
            "ap": np.concatenate(self.ap_per_query),
        }


def _default_chunk(n_g: int, budget_bytes: int = 8 << 20) -> int:
    # small chunks keep the sorted copy cache-friendly; per-chunk overhead is negligible
    return int(max(1, min(1024, budget_bytes // max(1, 4 * n_g))))


def _run_chunks(
    chunks: Iterator[tuple[int, np.ndarray]],
    q_pids, q_camids, gindex, remove_same_camera, acc: _Accumulator, argname: str, n_threads: int,
) -> None:
    def work(item):
        start, block = item
        stop = start + block.shape[0]
        return _chunk_ranks(block, q_pids[start:stop], q_camids[start:stop], gindex,
                            remove_same_camera, start, argname)

    if n_threads <= 1:
        for item in chunks:
            acc.add(*work(item))
        return
    # np.sort and BLAS release the GIL: two chunks in flight keep both cores busy. Results are
    # consumed in order, so accumulation (and the per-query AP order) stays deterministic.
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        pending = []
        for item in chunks:
            pending.append(pool.submit(work, item))
            if len(pending) >= n_threads:
                acc.add(*pending.pop(0).result())
        for fut in pending:
            acc.add(*fut.result())


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    remove_same_camera: bool = True,
    ap_mode: str = "standard",
    chunk_size: int | None = None,
    n_threads: int = 2,
) -> dict:
    """CMC, mAP and mINP from a (n_query, n_gallery) distance matrix; semantics in the module docstring.

    ``distmat`` may contain ``+inf`` (e.g. candidates dropped by camera verification: they rank last,
    in gallery order) but not NaN or ``-inf``. Returns a dict with ``mAP``, ``cmc`` (``cmc[k-1]`` =
    CMC@k), ``mINP``, ``num_queries`` (used), ``num_skipped``, ``denominator``, ``ap_mode`` and the
    per-query ``ap`` (NaN for skipped queries).
    """
    _check_common(max_rank, ap_mode)
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise EvaluationInputError(f"distmat must be 2-D (n_query, n_gallery), got shape {dist.shape}")
    if dist.dtype.kind not in "fiu":
        raise EvaluationInputError(f"distmat must be numeric, got dtype {dist.dtype}")
    n_q, n_g = dist.shape
    if n_q == 0:
        raise EvaluationInputError("the query set is empty (distmat has 0 rows)")
    if n_g == 0:
        raise EvaluationInputError("the gallery is empty (distmat has 0 columns)")
    q_pids, g_pids, q_camids, g_camids = _check_ids(q_pids, g_pids, q_camids, g_camids, n_q, n_g, "distmat")
    gindex = _GalleryIndex(g_pids, g_camids)
    acc = _Accumulator(int(max_rank), ap_mode)
    step = chunk_size or _default_chunk(n_g)
    chunks = ((s, dist[s:s + step]) for s in range(0, n_q, step))
    _run_chunks(chunks, q_pids, q_camids, gindex, remove_same_camera, acc, "distmat", n_threads)
    return acc.result()


# ----------------------------------------------------------------------------------------------------
# distances from features, chunk by chunk
# ----------------------------------------------------------------------------------------------------
def _sq_norms(feats: np.ndarray) -> np.ndarray:
    """Row squared norms in float64, in chunks (a whole-array float64 cast would double the memory)."""
    out = np.empty(feats.shape[0], dtype=np.float64)
    for s in range(0, feats.shape[0], 16384):
        block = feats[s:s + 16384].astype(np.float64)
        out[s:s + 16384] = np.einsum("ij,ij->i", block, block)
    return out


def _inv_norms(feats: np.ndarray, name: str) -> np.ndarray:
    norms = np.sqrt(_sq_norms(feats))
    if np.any(norms == 0):
        raise EvaluationInputError(f"{name} has an all-zero row ({int(np.flatnonzero(norms == 0)[0])}); "
                                   "cosine distance is undefined")
    return (1.0 / norms).astype(feats.dtype)


class DistanceBlocks:
    """Distances between query rows and the gallery, computed one block of queries at a time.

    ``metric="cosine"``: ``1 - cos``; ``"euclidean"``: *squared* Euclidean distance (monotone in the
    Euclidean distance, so rankings are the same; it is what re-id toolboxes rank by).
    """

    def __init__(self, qf, gf, metric: str = "cosine", device: str = "numpy"):
        if device not in ("numpy", "torch"):
            raise EvaluationInputError(f"device must be 'numpy' or 'torch', got {device!r}")
        self.device = device
        if metric not in METRICS:
            raise EvaluationInputError(f"metric must be one of {METRICS}, got {metric!r}")
        self.gf = check_features("gf", gf)
        self.qf = check_features("qf", qf, dim=self.gf.shape[1])
        self.dtype = np.result_type(self.gf.dtype, np.float32)
        self.metric = metric
        if metric == "cosine":
            self.g_inv = _inv_norms(self.gf, "gf")
            self.q_inv = _inv_norms(self.qf, "qf")
        else:
            self.g_sq = _sq_norms(self.gf).astype(self.dtype)
            self.q_sq = _sq_norms(self.qf).astype(self.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return self.qf.shape[0], self.gf.shape[0]

    def block(self, start: int, stop: int) -> np.ndarray:
        q = self.qf[start:stop].astype(self.dtype, copy=False)
        if self.device == "torch":
            import torch

            if not hasattr(self, "_tg"):
                self._tg = torch.from_numpy(np.ascontiguousarray(self.gf, dtype=self.dtype))
            sim = (torch.from_numpy(np.ascontiguousarray(q)) @ self._tg.T).numpy()
        else:
            sim = q @ self.gf.T
        if self.metric == "cosine":
            sim *= self.q_inv[start:stop, None]
            sim *= self.g_inv[None, :]
            np.subtract(1.0, sim, out=sim)
        else:
            sim *= -2.0
            sim += self.q_sq[start:stop, None]
            sim += self.g_sq[None, :]
            np.maximum(sim, 0.0, out=sim)
        return sim

    def iter_blocks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for s in range(0, self.shape[0], chunk_size):
            yield s, self.block(s, min(s + chunk_size, self.shape[0]))


def evaluate_features(
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "cosine",
    chunk_size: int | None = None,
    max_rank: int = 50,
    remove_same_camera: bool = True,
    ap_mode: str = "standard",
    n_threads: int = 2,
    backend="numpy",
    top_k: int | None = None,
) -> dict:
    """:func:`evaluate_rank` on features, in query chunks: memory is O(chunk_size x n_gallery).

    The full distance matrix and its argsort are never materialised, so VeRi-Wild large (10,000 x
    128,517, 2048-d) runs in bounded memory: the gallery features plus two chunk-sized blocks per thread.

    ``backend`` (:mod:`vreid.evaluate.neighbors`): ``"numpy"`` (default) or ``"torch"`` rank the whole
    gallery exactly (``torch`` only computes the distance blocks). A kNN backend (``"faiss-flat"``,
    ``"faiss-ivf"``, ``"faiss-hnsw"`` or a backend object) ranks only each query's ``top_k`` nearest
    non-junk gallery items (default 100): true matches beyond the list count as not retrieved, so AP
    sums only the retrieved matches over all ``n_true`` (with ``ap_mode="top100"`` and ``top_k >= 100``
    that is exactly the AI City score), CMC is exact up to rank ``top_k``, and mINP is a lower bound (0
    for a query whose last true match is beyond the list). With ``"faiss-flat"`` and ``top_k`` the
    gallery size the result equals the exact one (to faiss's float rounding).
    """
    _check_common(max_rank, ap_mode)
    if isinstance(backend, str) and backend in ("numpy", "torch"):
        blocks = DistanceBlocks(qf, gf, metric, device=backend)
        n_q, n_g = blocks.shape
    else:
        from vreid.evaluate.neighbors import make_backend

        nb = make_backend(backend, metric=metric)
        gf = check_features("gf", gf)
        qf = check_features("qf", qf, dim=gf.shape[1])
        n_q, n_g = qf.shape[0], gf.shape[0]
    if n_q == 0:
        raise EvaluationInputError("the query set is empty (qf has 0 rows)")
    if n_g == 0:
        raise EvaluationInputError("the gallery is empty (gf has 0 rows)")
    q_pids, g_pids, q_camids, g_camids = _check_ids(q_pids, g_pids, q_camids, g_camids, n_q, n_g,
                                                    "qf/gf")
    gindex = _GalleryIndex(g_pids, g_camids)
    acc = _Accumulator(int(max_rank), ap_mode)
    if isinstance(backend, str) and backend in ("numpy", "torch"):
        step = chunk_size or _default_chunk(n_g, budget_bytes=96 << 20)
        _run_chunks(blocks.iter_blocks(step), q_pids, q_camids, gindex, remove_same_camera, acc,
                    "distance", n_threads)
        return acc.result()
    top_k = 100 if top_k is None else int(top_k)
    if top_k < 1:
        raise EvaluationInputError(f"top_k must be >= 1, got {top_k}")
    nb.fit(gf)
    step = chunk_size or 1024
    for s in range(0, n_q, step):
        e = min(s + step, n_q)
        acc.add(*_list_ranks(nb, qf[s:e], q_pids[s:e], q_camids[s:e], g_pids, g_camids, gindex,
                             remove_same_camera, top_k))
    res = acc.result()
    res["top_k"] = min(top_k, n_g)
    res["backend"] = getattr(nb, "name", type(nb).__name__)
    return res


def _list_ranks(nb, qf, q_pids, q_camids, g_pids, g_camids, gindex: _GalleryIndex, remove_same_camera: bool,
                top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of each query's true matches within its ``top_k`` nearest non-junk items from backend
    ``nb``; ``(ranks, good)`` as :func:`_chunk_ranks` returns them, ``inf`` for matches not retrieved."""
    idx, valid = gindex.candidates(q_pids)
    if remove_same_camera:
        junk_c = valid & (gindex.g_camids[idx] == q_camids[:, None])
    else:
        junk_c = np.zeros_like(valid)
    n_true = (valid & ~junk_c).sum(axis=1)
    # junk items in the list do not count: ask for as many more as the worst query in the chunk has
    extra = int(junk_c.sum(axis=1).max()) if junk_c.size else 0
    _, lst = nb.search(qf, top_k + extra)
    ok = lst >= 0
    safe = np.where(ok, lst, 0)
    same = ok & (g_pids[safe] == q_pids[:, None])
    junk = same & (g_camids[safe] == q_camids[:, None]) if remove_same_camera else np.zeros_like(same)
    pos = np.cumsum(ok & ~junk, axis=1)  # 1-based rank among the non-junk items listed
    good = same & ~junk & (pos <= top_k)
    width = max(1, int(n_true.max()) if len(n_true) else 1)
    ranks = np.full((len(q_pids), width), np.inf)
    found = np.where(good, pos, np.iinfo(np.int64).max)
    found.sort(axis=1)
    take = min(width, found.shape[1])
    ranks[:, :take] = np.where(found[:, :take] < np.iinfo(np.int64).max, found[:, :take], np.inf)
    good_mask = np.arange(width)[None, :] < n_true[:, None]
    return ranks, good_mask


def evaluate_blocks(
    blocks: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, int],
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    remove_same_camera: bool = True,
    ap_mode: str = "standard",
    n_threads: int = 2,
) -> dict:
    """:func:`evaluate_rank` on a (n_query, n_gallery) distance matrix given as ``(start, block)`` query
    chunks in order (e.g. :func:`vreid.evaluate.rerank.iter_re_ranking_features`): each chunk is ranked
    as it arrives and dropped, so the matrix is never held."""
    _check_common(max_rank, ap_mode)
    n_q, n_g = int(shape[0]), int(shape[1])
    if n_q == 0 or n_g == 0:
        raise EvaluationInputError(f"the distance matrix is empty (shape {shape})")
    q_pids, g_pids, q_camids, g_camids = _check_ids(q_pids, g_pids, q_camids, g_camids, n_q, n_g,
                                                    "the distance blocks")
    gindex = _GalleryIndex(g_pids, g_camids)
    acc = _Accumulator(int(max_rank), ap_mode)

    def checked() -> Iterator[tuple[int, np.ndarray]]:
        expect = 0
        for start, block in blocks:
            block = np.asarray(block)
            if start != expect or block.ndim != 2 or block.shape[1] != n_g or start + block.shape[0] > n_q:
                raise EvaluationInputError(
                    f"distance block at query {start} with shape {block.shape} does not continue a "
                    f"({n_q}, {n_g}) matrix at row {expect}")
            expect = start + block.shape[0]
            yield start, block
        if expect != n_q:
            raise EvaluationInputError(f"distance blocks cover {expect} of {n_q} queries")

    _run_chunks(checked(), q_pids, q_camids, gindex, remove_same_camera, acc, "distance", n_threads)
    return acc.result()


def top_k_indices(dist: np.ndarray, k: int) -> np.ndarray:
    """Row-wise column indices of the k smallest values, ascending, ties by column index.

    Equal to ``np.argsort(dist, axis=1, kind="stable")[:, :k]`` without sorting whole rows: a partition
    finds each row's k-th value, every value below it is kept and the ties at it are taken in column order.
    """
    dist = np.asarray(dist)
    n = dist.shape[1]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros((dist.shape[0], 0), dtype=np.int64)
    if k == n:
        return np.argsort(dist, axis=1, kind="stable")
    # each row's k-th smallest value (a value, so no tie question): torch's top-k selection is about
    # twice as fast here as a full SIMD row sort, itself faster than np.partition
    import torch

    kth = torch.topk(torch.from_numpy(np.ascontiguousarray(dist)), k, dim=1, largest=False,
                     sorted=True).values[:, k - 1: k].numpy()
    keep = dist <= kth
    n_keep = np.count_nonzero(keep, axis=1)
    tied = np.flatnonzero(n_keep != k)  # values tied at the k-th beyond the slots left
    keep[tied] = False
    cols = np.empty((dist.shape[0], k), dtype=np.int64)
    ok = np.ones(dist.shape[0], dtype=bool)
    ok[tied] = False
    # 1-D flatnonzero is far faster than 2-D nonzero; row-major order gives ascending columns per row
    cols[ok] = (np.flatnonzero(keep) % n).reshape(-1, k)
    for i in tied:  # the lowest column indices win among the tied values (stable semantics)
        row = dist[i]
        less = np.flatnonzero(row < kth[i, 0])
        eq = np.flatnonzero(row == kth[i, 0])[: k - len(less)]
        cols[i] = np.sort(np.concatenate([less, eq]))
    vals = np.take_along_axis(dist, cols, axis=1)
    order = np.argsort(vals, axis=1, kind="stable")  # columns ascending, so ties stay in column order
    return np.take_along_axis(cols, order, axis=1)


def chunked_top_k(dist_fn: Callable[[int, int], np.ndarray], n_rows: int, k: int,
                  chunk_size: int = 256) -> np.ndarray:
    """Top-k smallest columns of each row of a distance matrix produced block by block."""
    parts = []
    for s in range(0, n_rows, chunk_size):
        parts.append(top_k_indices(dist_fn(s, min(s + chunk_size, n_rows)), k))
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, k), dtype=np.int64)


__all__ = [
    "AP_MODES",
    "DistanceBlocks",
    "evaluate_rank",
    "evaluate_features",
    "evaluate_blocks",
    "check_features",
    "top_k_indices",
    "chunked_top_k",
]
