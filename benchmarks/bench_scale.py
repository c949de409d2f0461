"""City-scale evaluation, re-ranking and search in bounded memory (issue 13), side by side:

1. block-wise k-reciprocal re-ranking from features (``iter_re_ranking_features``) vs the dense original
   algorithm (``re_ranking_dense_reference``, Zhong et al.'s code line by line) where the dense one fits:
   time, peak memory growth, max |difference|;
2. block-wise re-ranking at VeRi-Wild large size (10,000 queries + 128,517 gallery, 2048-d), consumed as
   metrics per query chunk, in a fresh process: time and peak resident memory (the dense original would
   need several 138,517^2 float32 matrices, 77 GB each);
3. faiss on a generated 1,000,000 x 256 gallery: build + search time, peak memory and recall@100 of each
   index (flat, IVF, HNSW) against exact brute-force search;
4. ``evaluate_features`` at 1x, 2x, 4x, 8x VeRi-Wild large's gallery (128,517 .. 1,028,136 x 2048
   generated features streamed from a numpy memmap on disk): time and peak memory.

    python benchmarks/bench_scale.py            # the full sizes (tens of minutes on 2 cores)
    python benchmarks/bench_scale.py --quick    # every section at small sizes (about a minute)

Peak memory: "growth" is the sampled resident-set growth above the level before the call (every 2 ms);
"peak RSS" of a fresh child process is its VmHWM. With a memmap gallery the resident set includes the
file pages the kernel keeps mapped, so section 4 prints the anonymous (heap) peak beside it.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

print = functools.partial(print, flush=True)  # noqa: A001 - progress visible when piped to a file
GIB = float(1 << 30)
WILD_Q, WILD_G = 10000, 128517


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


class PeakRSS:
    """Peak resident (and anonymous) memory growth during a block, sampled by a thread."""

    def __enter__(self):
        self.base, self.base_anon = _status("VmRSS"), _status("RssAnon")
        self.peak, self.peak_anon = self.base, self.base_anon
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("VmRSS"))
            self.peak_anon = max(self.peak_anon, _status("RssAnon"))
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._t.join()
        self.growth = self.peak - self.base
        self.growth_anon = self.peak_anon - self.base_anon


def clustered(n: int, dim: int, n_ids: int, seed: int, noise: float = 5.0, out=None):
    """Identity-clustered float32 features and their ids, generated in chunks (optionally into ``out``)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).standard_normal((n_ids, dim), dtype=np.float32)
    pids = rng.integers(0, n_ids, n)
    feats = np.empty((n, dim), np.float32) if out is None else out
    for s in range(0, n, 8192):
        p = pids[s:s + 8192]
        feats[s:s + len(p)] = centres[p] + noise * rng.standard_normal((len(p), dim), dtype=np.float32)
    return feats, pids


# ----------------------------------------------------------------------------------------------------
def bench_rerank_vs_dense(n_q: int, n_g: int, dim: int) -> None:
    from vreid.evaluate.rerank import _FeatureDistances, iter_re_ranking_features, re_ranking_dense_reference

    qf, _ = clustered(n_q, dim, 200, seed=0)
    gf, _ = clustered(n_g, dim, 200, seed=1)
    list(iter_re_ranking_features(qf[:5], gf[:50], backend="torch"))  # warm-up: imports, thread pools
    with PeakRSS() as m_ours:
        ours = np.empty((n_q, n_g), np.float32)  # held here only to compare with the dense result
        for s, b in iter_re_ranking_features(qf, gf, backend="torch"):
            ours[s:s + len(b)] = b
    with PeakRSS() as m_ref:
        # the same float32 distances the block-wise kNN stage sees (same blocks, same BLAS): the
        # algorithm's neighbour sets are discontinuous in the input, so a rounding difference between
        # two ways of computing distances would swap near-tied neighbours
        fd = _FeatureDistances(qf, gf, "euclidean", device="torch")
        full = np.concatenate([fd.rows(s, min(s + 512, n_q + n_g)) for s in range(0, n_q + n_g, 512)])
        # the original works on transpose(D / max(D, axis=0)): give it D = full.T so that its rows are
        # exactly the rows the block-wise stage computed (full is symmetric only up to rounding)
        full = np.ascontiguousarray(full.T)
        qg, qq, gg = full[:n_q, n_q:], full[:n_q, :n_q], full[n_q:, n_q:]
        ref = re_ranking_dense_reference(qg, qq, gg)
        del full, qg, qq, gg, fd
    out_mb = ours.nbytes / GIB
    print(f"[1] re-ranking {n_q:,} queries + {n_g:,} gallery x {dim}, k1=20 k2=6 lambda=0.3, from features")
    print(f"    dense original (distances + Zhong et al.'s code): {m_ref.seconds:8.1f} s, "
          f"peak growth {m_ref.growth / GIB:6.2f} GiB")
    print(f"    block-wise (torch kNN blocks)                  : {m_ours.seconds:8.1f} s, "
          f"peak growth {m_ours.growth / GIB:6.2f} GiB (of which the kept result {out_mb:.2f} GiB)")
    print(f"    ratio: {m_ref.seconds / m_ours.seconds:.1f}x faster, memory "
          f"{m_ours.growth / max(m_ref.growth, 1):.3f}x; max |diff| {np.abs(ours - ref).max():.2e} (target <= 1e-5)")


# ----------------------------------------------------------------------------------------------------
def wild_rerank_child(n_q: int, n_g: int, dim: int) -> None:
    from vreid.evaluate.rerank import evaluate_re_ranking
    from vreid.evaluate.metrics import evaluate_features

    n_ids = max(100, n_g // 13)
    qf, qp = clustered(n_q, dim, n_ids, seed=1)
    gf, gp = clustered(n_g, dim, n_ids, seed=2)
    gp[:n_ids] = np.arange(n_ids)  # every id in the gallery
    rng = np.random.default_rng(3)
    qc, gc = rng.integers(0, 174, n_q), rng.integers(0, 174, n_g)
    before = _status("VmRSS")
    t = time.perf_counter()
    res = evaluate_re_ranking(qf, gf, qp, gp, qc, gc, metric="euclidean", backend="torch",
                              remove_same_camera=False)
    dt = time.perf_counter() - t
    base = evaluate_features(qf, gf, qp, gp, qc, gc, metric="euclidean", remove_same_camera=False)
    print(f"[2] block-wise re-ranking at {n_q:,} + {n_g:,} x {dim} (features {(qf.nbytes + gf.nbytes) / GIB:.2f} "
          f"GiB, resident before {before / GIB:.2f} GiB), metrics per query chunk: {dt:.1f} s, peak resident "
          f"memory of the process {_status('VmHWM') / GIB:.2f} GiB; mAP {base['mAP']:.4f} -> {res['mAP']:.4f}, "
          f"CMC@1 {base['cmc'][0]:.4f} -> {res['cmc'][0]:.4f}")
    n = n_q + n_g
    print(f"    dense original: its {n:,}^2 float32 matrices take {n * n * 4 / GIB:.0f} GiB each "
          f"(original_dist, V, V_qe, initial_rank ...): it cannot run on this 24 GiB machine")


# ----------------------------------------------------------------------------------------------------
def bench_faiss(n_g: int, n_q: int, dim: int, nlist: int, skip_hnsw: bool) -> None:
    from vreid.evaluate.neighbors import ExactNeighbors, FaissNeighbors

    gf, _ = clustered(n_g, dim, max(100, n_g // 100), seed=4, noise=1.0)
    qf, _ = clustered(n_q, dim, max(100, n_g // 100), seed=5, noise=1.0)
    k = 100
    with PeakRSS() as m_ex:
        exact = ExactNeighbors("euclidean", device="torch", block=256).fit(gf)
        _, ref = exact.search(qf, k)
        del exact
    rows = [("exact brute force (torch blocks)", m_ex, m_ex.seconds, 0.0, 1.0)]
    specs = [("faiss flat (exact)", dict(index="flat")),
             (f"faiss IVF-Flat nlist={nlist} nprobe=32 (approx.)", dict(index="ivf", nlist=nlist, nprobe=32))]
    if not skip_hnsw:
        specs.append(("faiss HNSW M=16 efC=40 efS=128 (approx.)",
                      dict(index="hnsw", hnsw_m=16, ef_construction=40, ef_search=128)))
    for name, kw in specs:
        with PeakRSS() as m:
            t = time.perf_counter()
            nb = FaissNeighbors("euclidean", **kw).fit(gf)
            t_build = time.perf_counter() - t
            _, got = nb.search(qf, k)
            t_search = time.perf_counter() - t - t_build
            del nb
        recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, ref)]))
        rows.append((name, m, t_build, t_search, recall))
    print(f"[3] nearest {k} of {n_q:,} queries in a generated {n_g:,} x {dim} gallery "
          f"({gf.nbytes / GIB:.2f} GiB float32)")
    print(f"    {'backend':52s}{'build s':>9s}{'search s':>10s}{'peak growth GiB':>17s}{'recall@100':>12s}")
    t_exact = rows[0][1].seconds
    for name, m, a, b, recall in rows:
        if name.startswith("exact"):
            print(f"    {name:52s}{'-':>9s}{t_exact:10.1f}{m.growth / GIB:17.2f}{recall:12.4f}")
        else:
            print(f"    {name:52s}{a:9.1f}{b:10.2f}{m.growth / GIB:17.2f}{recall:12.4f}"
                  f"   search {t_exact / max(b, 1e-9):.0f}x faster than exact")


# ----------------------------------------------------------------------------------------------------
def scale_child(path: str, n_g: int, dim: int, n_q: int, n_ids: int) -> None:
    from vreid.evaluate.metrics import evaluate_features

    gf = np.memmap(path, dtype=np.float32, mode="r", shape=(n_g, dim))
    gp = np.load(path + ".pids.npy", mmap_mode="r")[:n_g]
    qf, qp = clustered(n_q, dim, n_ids, seed=7)
    rng = np.random.default_rng(8)
    qc, gc = rng.integers(0, 174, n_q), rng.integers(0, 174, n_g)
    with PeakRSS() as m:
        res = evaluate_features(qf, gf, qp, np.asarray(gp), qc, gc, remove_same_camera=False)
    print(f"    {n_g:>10,}{m.seconds:10.1f}{m.seconds * 1e6 / n_g:14.1f}{m.growth_anon / GIB:14.2f}"
          f"{_status('VmHWM') / GIB:12.2f}{res['mAP']:10.4f}")


def bench_scaling(factors, dim: int, n_q: int, base_g: int, work: Path) -> None:
    n_max = base_g * max(factors)
    n_ids = 10000
    path = str(work / f"gallery_{n_max}x{dim}.f32")
    t = time.perf_counter()
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n_max, dim))
    _, pids = clustered(n_max, dim, n_ids, seed=6, out=mm)
    mm.flush()
    del mm
    np.save(path + ".pids.npy", pids)
    print(f"[4] evaluate_features, {n_q:,} queries x 2048-d against 1x..{max(factors)}x VeRi-Wild large's gallery "
          f"({n_max:,} x {dim} float32 = {n_max * dim * 4 / GIB:.1f} GiB memmap on disk, written in "
          f"{time.perf_counter() - t:.0f} s), each in a fresh process, cosine, no junk removal")
    print(f"    {'gallery':>10s}{'time s':>10s}{'us/gallery':>14s}{'heap GiB':>14s}{'peak RSS':>12s}{'mAP':>10s}")
    for f in factors:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--scale-child", path, str(base_g * f),
                        str(dim), str(n_q), str(n_ids)], check=True)
    os.remove(path)
    os.remove(path + ".pids.npy")


# ----------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every section at small sizes")
    p.add_argument("--only", type=int, nargs="*", help="sections to run (1-4)")
    p.add_argument("--scale-queries", type=int, default=2000,
                   help="queries for section 4 (the gallery is what scales; default 2,000)")
    p.add_argument("--skip-hnsw", action="store_true", help="section 3 without the HNSW build")
    p.add_argument("--wild-child", type=int, nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--scale-child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.wild_child:
        wild_rerank_child(*a.wild_child)
        return
    if a.scale_child:
        path, n_g, dim, n_q, n_ids = a.scale_child
        scale_child(path, int(n_g), int(dim), int(n_q), int(n_ids))
        return
    only = set(a.only or [1, 2, 3, 4])
    work = Path(tempfile.mkdtemp(prefix="vreid-bench-scale-"))
    print(f"{'quick' if a.quick else 'full'} sizes, {os.cpu_count()} CPU cores")
    if 1 in only:
        bench_rerank_vs_dense(*((300, 1500, 256) if a.quick else (1678, 11579, 2048)))
    if 2 in only:
        size = (1000, 12852, 2048) if a.quick else (WILD_Q, WILD_G, 2048)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--wild-child", *map(str, size)], check=True)
    if 3 in only:
        if a.quick:
            bench_faiss(50000, 200, 256, nlist=256, skip_hnsw=a.skip_hnsw)
        else:
            bench_faiss(1_000_000, 1000, 256, nlist=1024, skip_hnsw=a.skip_hnsw)
    if 4 in only:
        if a.quick:
            bench_scaling([1, 2, 4, 8], 2048, 200, 12852, work)
        else:
            bench_scaling([1, 2, 4, 8], 2048, a.scale_queries, WILD_G, work)
    os.rmdir(work)


if __name__ == "__main__":
    main()
