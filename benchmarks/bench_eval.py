"""Side-by-side speed and memory of the evaluation engine (issue 4).

1. ``evaluate_rank`` vs a per-query NumPy reference (stable argsort of each row, loop over queries) on
   VeRi-776-sized random features (1,678 x 11,579, 2048-d): same numbers to 1e-6, speed ratio.
2. ``re_ranking`` (sparse kNN) vs the dense original algorithm on the same data: time and peak memory.
3. ``evaluate_features`` at VeRi-Wild large size (10,000 x 128,517, 2048-d) in a fresh process: time and
   peak resident memory.

Run: ``.venv/bin/python benchmarks/bench_eval.py [--skip-rerank] [--skip-wild]``.
Peak memory is the resident-set growth above the level before the call, sampled every 2 ms by a thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import functools

import numpy as np

print = functools.partial(print, flush=True)  # noqa: A001 - progress visible when piped to a file


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident-memory growth during a block (sampling thread)."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.base


def synthetic_features(n_q, n_g, dim, n_ids, n_cams, seed, noise=5.0):
    """Identity-clustered random features in float32, generated in chunks (no float64 temporaries)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    q_pids = rng.integers(0, n_ids, n_q)
    g_pids = np.concatenate([np.arange(n_ids), rng.integers(0, n_ids, n_g - n_ids)])
    q_cams = rng.integers(0, n_cams, n_q)
    g_cams = rng.integers(0, n_cams, n_g)

    def make(pids):
        out = np.empty((len(pids), dim), dtype=np.float32)
        for s in range(0, len(pids), 8192):
            out[s:s + 8192] = centres[pids[s:s + 8192]]
            out[s:s + 8192] += noise * rng.standard_normal((len(pids[s:s + 8192]), dim), dtype=np.float32)
        return out

    return make(q_pids), make(g_pids), q_pids, g_pids, q_cams, g_cams


def reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Per-query reference: stable argsort of each row, drop same-id-same-camera junk, walk the list."""
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        remove = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        matches = (g_pids[order] == q_pids[i])[~remove].astype(np.int64)
        if not matches.any():
            continue
        cmc = matches.cumsum()
        pos = np.flatnonzero(matches)
        all_inp.append(cmc[pos[-1]] / (pos[-1] + 1.0))
        cmc = (cmc >= 1).astype(np.float64)
        row = np.ones(max_rank)
        row[: min(max_rank, len(cmc))] = cmc[:max_rank]
        all_cmc.append(row)
        prec = matches.cumsum() / np.arange(1, len(matches) + 1)
        all_ap.append((prec * matches).sum() / matches.sum())
    return {"mAP": float(np.mean(all_ap)), "cmc": np.mean(all_cmc, axis=0), "mINP": float(np.mean(all_inp))}


def bench_rank(data):
    from vreid.evaluate import evaluate_rank
    from vreid.evaluate.metrics import DistanceBlocks

    qf, gf, qp, gp, qc, gc = data
    dist = DistanceBlocks(qf, gf, "cosine").block(0, len(qf))
    evaluate_rank(dist[:64], qp[:64], gp, qc[:64], gc)  # warm-up (imports, thread pool)
    t = time.perf_counter()
    ref = reference_eval(dist, qp, gp, qc, gc)
    t_ref = time.perf_counter() - t
    times = []
    for _ in range(5):
        t = time.perf_counter()
        ours = evaluate_rank(dist, qp, gp, qc, gc)
        times.append(time.perf_counter() - t)
    t_ours = min(times)
    diff = max(abs(ours["mAP"] - ref["mAP"]), abs(ours["mINP"] - ref["mINP"]),
               float(np.abs(ours["cmc"] - ref["cmc"]).max()))
    print(f"[evaluate_rank] VeRi-776 size {dist.shape}: mAP {ours['mAP']:.6f} CMC@1 {ours['cmc'][0]:.6f} "
          f"mINP {ours['mINP']:.6f}")
    print(f"  reference (per-query stable argsort): {t_ref:.3f} s")
    print(f"  evaluate_rank (best of 5, median {np.median(times):.3f} s): {t_ours:.3f} s")
    print(f"  speed-up {t_ref / t_ours:.1f}x, max |difference| {diff:.2e} (target >= 50x, <= 1e-6)")
    return dist


def bench_rerank(data):
    from vreid.evaluate import evaluate_rank
    from vreid.evaluate.metrics import DistanceBlocks
    from vreid.evaluate.rerank import re_ranking, re_ranking_dense_reference, re_ranking_features

    qf, gf, qp, gp, qc, gc = data
    qg = np.sqrt(DistanceBlocks(qf, gf, "euclidean").block(0, len(qf)))
    qq = np.sqrt(DistanceBlocks(qf, qf, "euclidean").block(0, len(qf)))
    gg = np.sqrt(DistanceBlocks(gf, gf, "euclidean").block(0, len(gf)))
    with PeakRSS() as m_ours:
        t = time.perf_counter()
        ours = re_ranking(qg, qq, gg)
        t_ours = time.perf_counter() - t
    with PeakRSS() as m_feat:
        t = time.perf_counter()
        ours_f = re_ranking_features(qf, gf)
        t_feat = time.perf_counter() - t
    with PeakRSS() as m_ref:
        t = time.perf_counter()
        ref = re_ranking_dense_reference(qg, qq, gg)
        t_ref = time.perf_counter() - t
    gib = 1 << 30
    print(f"[re_ranking] {qg.shape[0]} queries + {qg.shape[1]} gallery, k1=20 k2=6 lambda=0.3")
    print(f"  dense original : {t_ref:7.2f} s, peak RSS growth {m_ref.growth / gib:.2f} GiB")
    print(f"  re_ranking     : {t_ours:7.2f} s, peak RSS growth {m_ours.growth / gib:.2f} GiB "
          f"(inputs given), max |diff| {np.abs(ours - ref).max():.2e}")
    print(f"  re_ranking_features: {t_feat:7.2f} s, peak RSS growth {m_feat.growth / gib:.2f} GiB, "
          f"max |diff| {np.abs(ours_f - ref).max():.2e}")
    print(f"  speed-up {t_ref / t_ours:.1f}x, memory ratio {m_ours.growth / max(m_ref.growth, 1):.3f} "
          f"(targets >= 10x, <= 0.25)")
    base = evaluate_rank(qg, qp, gp, qc, gc)["mAP"]
    after = evaluate_rank(ours, qp, gp, qc, gc)["mAP"]
    print(f"  mAP before / after re-ranking: {base:.4f} / {after:.4f}")


def bench_wild_child():
    from vreid.evaluate import evaluate_features

    qf, gf, qp, gp, qc, gc = synthetic_features(10000, 128517, 2048, 10000, 174, seed=1, noise=5.0)
    t = time.perf_counter()
    res = evaluate_features(qf, gf, qp, gp, qc, gc, remove_same_camera=False)
    dt = time.perf_counter() - t
    # VmHWM is the peak of this process's own address space; ru_maxrss would also carry the parent's
    # peak across fork/exec (Linux keeps the old mm's high-water mark in the signal struct)
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    print(f"[evaluate_features] VeRi-Wild large 10,000 x 128,517 x 2048 (float32 features "
          f"{(qf.nbytes + gf.nbytes) / (1 << 30):.2f} GiB): {dt:.1f} s, "
          f"peak resident memory of the process {peak / (1 << 30):.2f} GiB (target < 4 GiB); "
          f"mAP {res['mAP']:.4f} CMC@1 {res['cmc'][0]:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-rerank", action="store_true")
    p.add_argument("--skip-wild", action="store_true")
    p.add_argument("--wild-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.wild_child:
        bench_wild_child()
        return
    data = synthetic_features(1678, 11579, 2048, 200, 20, seed=0)
    bench_rank(data)
    if not args.skip_rerank:
        bench_rerank(data)
    if not args.skip_wild:
        # a fresh process, so its peak resident memory is the evaluation's alone
        subprocess.run([sys.executable, os.path.abspath(__file__), "--wild-child"], check=True)


if __name__ == "__main__":
    main()
