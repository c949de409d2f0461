"""AI City Challenge Track 2 submission (``track2.txt``; FORMATS.md "CityFlow-ReID").

One line per query, queries in sorted file-name order (000001.jpg ... 001052.jpg); each line the 100
best gallery entries, best first, as 1-based test image numbers separated by spaces.

Gallery numbers: when every gallery file name's stem is an integer (``000123.jpg`` -> 123, the official
naming) that integer is used; otherwise the 1-based position in *sorted* gallery file-name order. The
choice is recorded in the provenance sidecar (``gallery_numbering``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vreid.errors import EvaluationInputError, VreidError
from vreid.io import atomic_path, atomic_write_text

TRACK2_K = 100
_NUMBER = re.compile(r"[0-9]+")


class SubmissionError(VreidError):
    """A track2 submission file is malformed."""


def gallery_numbers(gallery_names: Sequence[str]) -> tuple[np.ndarray, str]:
    """Test image number of each gallery row and the rule used (``file_name`` or ``sorted_position``)."""
    stems = [Path(str(n)).stem for n in gallery_names]
    if stems and all(s.isdigit() for s in stems):
        nums = np.array([int(s) for s in stems], dtype=np.int64)
        if len(np.unique(nums)) == len(nums) and nums.min() >= 1:
            return nums, "file_name"
    order = np.argsort(np.asarray([str(n) for n in gallery_names]), kind="stable")
    nums = np.empty(len(stems), dtype=np.int64)
    nums[order] = np.arange(1, len(stems) + 1)
    return nums, "sorted_position"


def top_k_from_distance(dist_or_fn, k: int = TRACK2_K, n_rows: int | None = None,
                        chunk_size: int = 256) -> np.ndarray:
    """0-based gallery indices of the k nearest gallery items per query, best first (ties by index).

    ``dist_or_fn`` is a dense (n_query, n_gallery) array or a function ``fn(start, stop)`` returning
    the distance rows start..stop (then ``n_rows`` is required); either way rows are processed in chunks.
    """
    from vreid.evaluate.metrics import top_k_indices

    if callable(dist_or_fn):
        if n_rows is None:
            raise EvaluationInputError("top_k_from_distance with a function needs n_rows")
        fn: Callable[[int, int], np.ndarray] = dist_or_fn
    else:
        dist = np.asarray(dist_or_fn)
        if dist.ndim != 2:
            raise EvaluationInputError(f"dist must be 2-D, got shape {dist.shape}")
        if np.isnan(dist).any():
            raise EvaluationInputError("dist contains NaN")
        n_rows = dist.shape[0]

        def fn(a: int, b: int) -> np.ndarray:
            return dist[a:b]

    parts = [top_k_indices(fn(a, min(a + chunk_size, n_rows)), k) for a in range(0, n_rows, chunk_size)]
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def format_track2(ranking, query_names: Sequence[str], gallery_names: Sequence[str]) -> tuple[str, str]:
    """The track2 text (and the gallery numbering rule) for a ranking in query_names order."""
    ranking = np.asarray(ranking)
    n_q, n_g = len(query_names), len(gallery_names)
    if ranking.ndim != 2 or ranking.shape[0] != n_q:
        raise EvaluationInputError(
            f"ranking must be (n_query={n_q}, >= {TRACK2_K}) gallery row indices, got shape {ranking.shape}")
    k = min(TRACK2_K, n_g)
    if ranking.shape[1] < k:
        raise EvaluationInputError(f"ranking has {ranking.shape[1]} columns; a submission needs {k}")
    if ranking.dtype.kind not in "iu":
        raise EvaluationInputError(f"ranking must hold integer gallery row indices, got {ranking.dtype}")
    top = ranking[:, :k]
    if top.size and (top.min() < 0 or top.max() >= n_g):
        raise EvaluationInputError(f"ranking holds gallery row indices outside [0, {n_g - 1}]")
    if len(set(map(str, query_names))) != n_q:
        raise EvaluationInputError("query_names has duplicates")
    nums, rule = gallery_numbers(gallery_names)
    order = np.argsort(np.asarray([str(n) for n in query_names]), kind="stable")
    lines = [" ".join(map(str, nums[top[i]].tolist())) for i in order]
    return "\n".join(lines) + "\n", rule


def write_track2(ranking, query_names: Sequence[str], gallery_names: Sequence[str], out_path,
                 provenance: dict | None = None) -> Path:
    """Write ``track2.txt`` atomically, validated before the rename, plus ``track2.provenance.json``.

    ``ranking`` is (n_query, >= 100) 0-based gallery row indices, best first, rows in ``query_names``
    order (the writer sorts queries by file name).
    """
    text, rule = format_track2(ranking, query_names, gallery_names)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text, encoding="ascii")
        validate_track2(tmp, len(query_names), len(gallery_names))
    side = dict(provenance or {})
    side.update({"gallery_numbering": rule, "n_queries": len(query_names), "n_gallery": len(gallery_names),
                 "k": min(TRACK2_K, len(gallery_names)), "query_order": "sorted file name"})
    atomic_write_text(out_path.with_name(out_path.stem + ".provenance.json"),
                      json.dumps(side, indent=2, sort_keys=True, default=str))
    return out_path


def validate_track2(path, n_queries: int, n_gallery: int) -> None:
    """Check a track2 file: n_queries lines, each exactly min(100, n_gallery) distinct integers in
    [1, n_gallery]. Raises :class:`SubmissionError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: submission file not found")
    k = min(TRACK2_K, n_gallery)
    raw = path.read_bytes()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SubmissionError(f"{path}:{line}: not plain ASCII text (byte 0x{raw[exc.start]:02x}); "
                              "expected gallery numbers in ASCII digits") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) != n_queries:
        raise SubmissionError(f"{path}: expected {n_queries} lines (one per query), found {len(lines)}")
    for no, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) != k:
            raise SubmissionError(f"{path}:{no}: expected {k} gallery numbers, found {len(fields)}")
        bad = next((f for f in fields if not _NUMBER.fullmatch(f)), None)
        if bad is not None:  # int() would also take '+16', '4_4', ' 12' and non-ASCII digits
            raise SubmissionError(f"{path}:{no}: {bad!r} is not an integer gallery number (ASCII digits 0-9 only)")
        nums = [int(f) for f in fields]
        lo, hi = min(nums), max(nums)
        if lo < 1 or hi > n_gallery:
            bad = lo if lo < 1 else hi
            raise SubmissionError(f"{path}:{no}: gallery number {bad} outside [1, {n_gallery}]")
        if len(set(nums)) != len(nums):
            dup = next(n for n in nums if nums.count(n) > 1)
            raise SubmissionError(f"{path}:{no}: gallery number {dup} appears more than once")


__all__ = ["write_track2", "validate_track2", "top_k_from_distance", "format_track2", "gallery_numbers",
           "SubmissionError"]
