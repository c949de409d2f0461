"""VehicleID reader and its seeded query/gallery draws (Liu et al. 2016; FORMATS.md "VehicleID").

Layout: ``image/<imgid>.jpg``, ``train_test_split/train_list.txt`` and ``test_list_{800,1600,2400}.txt``
(plus ``test_list_13164.txt``), lines ``<imgid> <vid>``; optional ``attribute/model_attr.txt`` and
``attribute/color_attr.txt``, lines ``<vid> <attribute>``. No camera ids (-1).

Protocol (small / medium / large = 800 / 1600 / 2400 test ids): for each id one random image goes
to the gallery, all others are queries; this is repeated ten times and the mean reported. Our draws
are seeded, by the one rule :func:`vehicleid_gallery_picks` (also used by
``vreid evaluate --protocol vehicleid``): draw ``k`` of seed ``s`` makes ``numpy.random.default_rng([s, k])``
and, for each id in ascending order, calls ``integers(n)`` once to pick the gallery image among the id's
``n`` images sorted by name; so it is reproducible and recorded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from vreid.data._common import (check_consistent, existing_files, frame, parse_int, read_lines, require_image, require_root)
from vreid.errors import ConfigError, DataFormatError

TEST_LISTS = {"small": "test_list_800.txt", "medium": "test_list_1600.txt", "large": "test_list_2400.txt",
              "full": "test_list_13164.txt"}


def vehicleid_gallery_picks(counts, seed: int, draw: int) -> np.ndarray:
    """The VehicleID draw rule, the one implementation the reader (:mod:`vreid.data.vehicleid`) and this
    protocol share: ``rng = numpy.random.default_rng([seed, draw])``; for each id in ascending id order,
    one call ``rng.integers(n)`` picks the gallery image's index among that id's ``n`` images sorted by
    image name. ``counts``: the images per id, ids in ascending order. Returns one index per id."""
    if int(seed) < 0 or int(draw) < 0:
        raise ConfigError(f"VehicleID draw: seed and draw must be >= 0, got seed={seed} draw={draw}")
    rng = np.random.default_rng([int(seed), int(draw)])
    return np.array([int(rng.integers(int(n))) for n in counts], dtype=np.int64)


def _read_pairs(path: Path, files: set[str], folder: Path) -> list[tuple[str, int, Path]]:
    out = []
    seen: dict[str, int] = {}
    for line, text in read_lines(path, "VehicleID list file"):
        parts = text.split()
        where = f"{path}:{line}"
        if len(parts) != 2:
            raise DataFormatError(f"{where}: expected '<imgid> <vid>', got {text!r}")
        name, vid_text = parts
        vid = parse_int(vid_text, "vehicle id", where)
        if name in seen:
            raise DataFormatError(f"{where}: duplicate image name {name!r} (first on line {seen[name]})")
        seen[name] = line
        file_name = name if name.lower().endswith((".jpg", ".jpeg", ".png")) else f"{name}.jpg"
        out.append((name, vid, require_image(files, file_name, folder, path, line)))
    return out


def _read_attribute(path: Path) -> dict[int, str]:
    if not path.is_file():
        return {}
    seen: dict = {}
    for line, text in read_lines(path, "VehicleID attribute file"):
        parts = text.split()
        if len(parts) != 2:
            raise DataFormatError(f"{path}:{line}: expected '<vid> <attribute>', got {text!r}")
        check_consistent(seen, parse_int(parts[0], "vehicle id", f"{path}:{line}"), parts[1], path, line, "vehicle")
    return {k: v for k, (v, _) in seen.items()}


class _VehicleID:
    """The parsed list files of one VehicleID root (parsed once, drawn many times)."""

    def __init__(self, root, split: str):
        if split not in TEST_LISTS:
            raise ConfigError(f"VehicleID split {split!r}: expected one of {list(TEST_LISTS)}")
        self.root = require_root(root, "VehicleID")
        self.split = split
        folder = self.root / "image"
        files = existing_files(folder)
        lists = self.root / "train_test_split"
        self.train = _read_pairs(lists / "train_list.txt", files, folder)
        self.test = _read_pairs(lists / TEST_LISTS[split], files, folder)
        attr = self.root / "attribute"
        self.models = _read_attribute(attr / "model_attr.txt")
        colors = _read_attribute(attr / "color_attr.txt")
        self.colors = {k: parse_int(v, "colour", str(attr / "color_attr.txt")) for k, v in colors.items()}

    def record(self, name: str, vid: int, path: Path, split: str) -> dict:
        return {"path": str(path), "image_name": name, "dataset": "vehicleid", "split": split, "vehicle_id": vid,
                "camera": -1, "model": self.models.get(vid), "color": self.colors.get(vid),
                "source_id": f"vehicleid:{vid}"}

    def draw(self, seed: int, draw: int, include_train: bool) -> pd.DataFrame:
        if seed < 0 or draw < 0:
            raise ConfigError(f"VehicleID draw: seed and draw must be >= 0, got seed={seed} draw={draw}")
        by_id: dict[int, list[tuple[str, Path]]] = {}
        for name, vid, path in self.test:
            by_id.setdefault(vid, []).append((name, path))
        records = [self.record(n, v, p, "train") for n, v, p in self.train] if include_train else []
        vids = sorted(by_id)
        images_of = {vid: sorted(by_id[vid]) for vid in vids}
        picks = vehicleid_gallery_picks([len(images_of[v]) for v in vids], seed, draw)
        for vid, pick in zip(vids, picks):
            for i, (name, path) in enumerate(images_of[vid]):
                records.append(self.record(name, vid, path, "gallery" if i == pick else "query"))
        return frame(records, {"format": "vehicleid", "root": str(self.root), "split": self.split,
                               "test_list": TEST_LISTS[self.split], "seed": seed, "draw": draw,
                               "include_train": include_train})


def read_vehicleid(root: str | os.PathLike, split: str = "small", seed: int = 0, draw: int = 0,
                   include_train: bool = True) -> pd.DataFrame:
    """VehicleID as a manifest: ``train_list.txt`` (split ``train``) and draw ``draw`` of the test list.

    ``split``: ``small`` / ``medium`` / ``large`` (800 / 1600 / 2400 ids) or ``full`` (13,164 ids);
    query/gallery follow the seeded draw described in the module docstring.
    """
    return _VehicleID(root, split).draw(seed, draw, include_train)


def vehicleid_draws(root: str | os.PathLike, split: str = "small", seed: int = 0, n: int = 10) -> Iterator[pd.DataFrame]:
    """The ``n`` seeded query/gallery draws (draw 0..n-1) of one test list, without the training rows.

    Draw ``k`` equals ``read_vehicleid(root, split, seed, draw=k, include_train=False)``; the lists
    are parsed once.
    """
    data = _VehicleID(root, split)  # parsed here, so bad input fails at the call, not at the first draw
    if seed < 0 or n < 0:
        raise ConfigError(f"vehicleid_draws: seed and n must be >= 0, got seed={seed} n={n}")
    return (data.draw(seed, k, include_train=False) for k in range(n))
