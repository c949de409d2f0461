"""Decode every image of a manifest in parallel processes and report the unreadable ones.

A download can leave truncated JPEGs that only fail when fully decoded (``Image.open`` reads the header
only), which would otherwise crash a training run hours in; ``vreid data check`` finds them up front.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from PIL import Image


def check_images(paths: list[str], boxes: list | None = None, workers: int | None = None) -> list[tuple[str, str]]:
    """Decode every image in parallel processes; returns ``[(path, problem), ...]`` for the bad ones.

    A box (``[x1, y1, x2, y2]``, end-exclusive) that does not fit its image is also a problem.
    """
    boxes = boxes if boxes is not None else [None] * len(paths)
    jobs = list(zip(paths, boxes))
    workers = max(1, workers or os.cpu_count() or 1)
    chunk = max(1, len(jobs) // (workers * 8))
    if workers == 1 or len(jobs) < 64:
        return [r for r in map(_check_one, jobs) if r is not None]  # a pool costs more than it saves
    # forkserver, not fork: the caller may hold threads (Ray, torch) that a forked child would inherit locked
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return [r for r in pool.map(_check_one, jobs, chunksize=chunk) if r is not None]


def _check_one(job) -> tuple[str, str] | None:
    path, box = job
    try:
        with Image.open(path) as im:
            im.load()  # a full decode: truncated files fail here, not at open
            size = im.size
    except Exception as exc:  # noqa: BLE001 - every decode failure is a finding to report
        return path, f"{type(exc).__name__}: {exc}"
    if box is not None and len(box) == 4 and (box[2] > size[0] or box[3] > size[1]):
        return path, f"bbox {list(box)} exceeds image size {size[0]}x{size[1]}"
    return None
