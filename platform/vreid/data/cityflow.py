"""CityFlow-ReID reader (AI City Challenge Track 2; VehicleNet Sec. III-A, FORMATS.md "CityFlow-ReID").

Layout: ``image_train/`` + ``name_train.txt`` + ``train_label.xml`` (declared gb2312:
``<Item imageName="000001.jpg" vehicleID="0001" cameraID="c001"/>``), the test set
``image_query/`` + ``name_query.txt`` and ``image_test/`` + ``name_test.txt`` (ids unknown: -1),
and the tracks ``train_track.txt`` / ``test_track.txt`` (one track a line, space-separated image
names or numbers, often with a trailing space). Query and test folders both number their files
from ``000001.jpg``, so ``image_name`` is unique within a split only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vreid.data._common import (existing_files, frame, parse_camera, parse_int, parse_xml,
                                read_lines, read_name_list, require_file, require_image, require_root,
                                xml_items)
from vreid.errors import DataFormatError


def _read_train_labels(path: Path) -> dict[str, tuple[int, int]]:
    root, text = parse_xml(path, "CityFlow label file")
    out: dict[str, tuple[int, int]] = {}
    for item, line in xml_items(root, text):
        name = item.get("imageName")
        where = f"{path}:{line}"
        if not name:
            raise DataFormatError(f"{where}: <Item> without imageName attribute")
        if name in out:
            raise DataFormatError(f"{where}: duplicate image name {name!r} in the label file")
        out[name] = (parse_int(item.get("vehicleID"), "vehicleID", where),
                     parse_camera(item.get("cameraID", ""), where))
    return out


def read_tracks(path: Path, names: list[str]) -> dict[str, int]:
    """``image_name -> 0-based track line`` from a ``*_track.txt`` file.

    Tokens may be image names (``000001.jpg``) or bare numbers (``1``), and lines may end in a space.
    """
    by_number = {}
    for name in names:
        stem = name.rsplit(".", 1)[0]
        if stem.isdigit():
            by_number[int(stem)] = name
    known = set(names)
    out: dict[str, int] = {}
    track = -1
    for line, text in read_lines(path, "CityFlow track file"):
        track += 1
        for token in text.split():
            name = token if token in known else (by_number.get(int(token)) if token.isdigit() else None)
            if name is None:
                raise DataFormatError(f"{path}:{line}: track names image {token!r}, which is not in the image list")
            if name in out:
                raise DataFormatError(f"{path}:{line}: image {name!r} is already in track {out[name]}")
            out[name] = track
    return out


def read_cityflow(root: str | os.PathLike, tracks: bool = True) -> pd.DataFrame:
    """CityFlow-ReID as a manifest: ``train`` (labelled), ``query`` and ``gallery`` (the test set).

    ``tracks=True`` fills ``track`` from ``train_track.txt`` / ``test_track.txt`` when present
    (track = 0-based line number; query images belong to no track).
    """
    root = require_root(root, "CityFlow")
    labels = _read_train_labels(require_file(root / "train_label.xml", "CityFlow label file"))
    records = []
    for split, list_name, folder_name, track_name in (("train", "name_train.txt", "image_train", "train_track.txt"),
                                                      ("query", "name_query.txt", "image_query", None),
                                                      ("gallery", "name_test.txt", "image_test", "test_track.txt")):
        list_path = root / list_name
        names = read_name_list(list_path, "CityFlow image list")
        folder = root / folder_name
        files = existing_files(folder)
        track_of: dict[str, int] = {}
        if tracks and track_name and (root / track_name).is_file():
            track_of = read_tracks(root / track_name, [n for _, n in names])
        for line, name in names:
            path = require_image(files, name, folder, list_path, line)
            if split == "train":
                if name not in labels:
                    raise DataFormatError(f"{list_path}:{line}: training image {name!r} has no <Item> in "
                                          f"{root / 'train_label.xml'}")
                vid, cam = labels[name]
                source_id = f"cityflow:{vid:04d}"
            else:
                vid, cam = -1, -1
                source_id = f"cityflow:unknown/{split}/{name}"
            records.append({"path": str(path), "image_name": name, "dataset": "cityflow", "split": split,
                            "vehicle_id": vid, "camera": cam, "track": track_of.get(name),
                            "source_id": source_id})
    return frame(records, {"format": "cityflow", "root": str(root), "tracks": tracks})


def read_timestamps_csv(path: str | os.PathLike) -> tuple[str, dict]:
    """A timestamps CSV: a header ``image_name,timestamp`` (one time per image) or ``track,timestamp``
    (one time per CityFlow track, given to every image of that track); times are numbers in any one
    unit (seconds, frames), the temporal filter's ``tau`` is in the same unit.
    Returns ``(key column, {key: time})``."""
    import csv
    import math

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: timestamps CSV not found")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise DataFormatError(f"{path}:1: empty file; expected a header 'image_name,timestamp' or 'track,timestamp'")
    header = [h.strip() for h in rows[0]]
    if header not in (["image_name", "timestamp"], ["track", "timestamp"]):
        raise DataFormatError(f"{path}:1: header {','.join(header)!r}: expected 'image_name,timestamp' or 'track,timestamp'")
    key = header[0]
    out: dict = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise DataFormatError(f"{path}:{line}: expected 2 fields ({key},timestamp), got {len(row)}")
        k, t = row[0].strip(), row[1].strip()
        try:
            value = float(t)
        except ValueError:
            raise DataFormatError(f"{path}:{line}: timestamp {t!r} is not a number") from None
        if not math.isfinite(value):
            raise DataFormatError(f"{path}:{line}: timestamp {t!r} is not finite")
        if key == "track":
            k = parse_int(k, "track", f"{path}:{line}")
        if k in out:
            raise DataFormatError(f"{path}:{line}: {key} {k!r} is listed twice")
        out[k] = value
    if not out:
        raise DataFormatError(f"{path}: no timestamps after the header")
    return key, out


def join_timestamps(df: pd.DataFrame, csv_paths) -> pd.DataFrame:
    """A copy of manifest ``df`` whose ``timestamp`` is filled from timestamps CSV(s)
    (:func:`read_timestamps_csv`), joined on ``image_name`` or, for ``track,timestamp`` files, on the
    manifest's ``track`` column; a CSV value overrides the manifest's own (e.g. VeRi-776 frame stamps)."""
    import numpy as np

    paths = [csv_paths] if isinstance(csv_paths, (str, os.PathLike)) else list(csv_paths)
    out = df.copy()
    times = (out["timestamp"].to_numpy(dtype=np.float64, na_value=np.nan).copy() if "timestamp" in out.columns
             else np.full(len(out), np.nan))
    for p in paths:
        key, table = read_timestamps_csv(p)
        if key == "image_name":
            keys = out["image_name"].astype(str).tolist()
        else:
            if "track" not in out.columns:
                raise DataFormatError(f"{p}: a track,timestamp file needs the manifest's 'track' column")
            keys = [None if pd.isna(t) else int(t) for t in out["track"]]
        for i, k in enumerate(keys):
            if k in table:
                times[i] = table[k]
    out["timestamp"] = times
    return out
