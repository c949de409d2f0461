"""VeRi-Wild reader (Lou et al. 2019; FORMATS.md "VeRi-Wild").

Layout: ``images/<vid>/<imgid>.jpg``; ``train_test_split/train_list.txt``, the galleries
``test_3000.txt`` / ``test_5000.txt`` / ``test_10000.txt`` and queries ``test_3000_query.txt`` / ...,
lines ``<vid>/<imgid>``; ``vehicle_info.txt`` (in ``train_test_split/`` or the root): a header line,
then ``<vid>/<imgid>;<camid>;<time>;<model>;<type>;<color>``.

Same-camera conflict: fast-reid drops gallery images with the query's id and camera, the dataset
authors keep them. ``same_camera="keep"`` (the authors' protocol) or ``"remove"`` (fast-reid) makes
that explicit, and the choice is recorded in the manifest metadata.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import pandas as pd

from vreid.data._common import existing_files, frame, parse_camera, parse_int, read_lines, require_root
from vreid.errors import ConfigError, DataFormatError

TEST_SIZES = {"small": 3000, "medium": 5000, "large": 10000}
SAME_CAMERA = ("keep", "remove")
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


def parse_time(text: str, where: str) -> float:
    """VeRi-Wild's time field -> POSIX seconds (the wall-clock time read as UTC); '' -> NaN."""
    text = text.strip()
    if not text:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        pass
    for fmt in _TIME_FORMATS:
        try:
            return _dt.datetime.strptime(text, fmt).replace(tzinfo=_dt.timezone.utc).timestamp()
        except ValueError:
            continue
    raise DataFormatError(f"{where}: time {text!r} does not parse (expected like '2018-03-11 12:40:26')")


def _read_info(path: Path) -> tuple[dict[str, tuple], dict[str, list[str]]]:
    lines = read_lines(path, "VeRi-Wild vehicle_info file")
    rows: dict[str, tuple] = {}
    raw_attr: dict[str, list[str]] = {"type": [], "color": []}
    for line, text in lines[1:]:  # the first line is a header
        where = f"{path}:{line}"
        parts = text.split(";")
        if len(parts) != 6:
            raise DataFormatError(f"{where}: expected '<vid>/<imgid>;<camid>;<time>;<model>;<type>;<color>', "
                                  f"got {text!r}")
        name, cam, time, model, vtype, color = (p.strip() for p in parts)
        name = _strip_ext(name)
        if name in rows and rows[name][:5] != (parse_camera(cam, where), parse_time(time, where), model or None,
                                                 vtype, color):
            raise DataFormatError(f"{where}: image {name!r} contradicts its entry on line {rows[name][5]} "
                                  f"(camera, time, model, type or colour differ)")
        if name in rows:
            continue
        rows[name] = (parse_camera(cam, where), parse_time(time, where), model or None, vtype, color, line)
        raw_attr["type"].append(vtype)
        raw_attr["color"].append(color)
    # Attributes come as names in some releases and as numbers in others: numbers are kept, names
    # are coded by their sorted order and the code book goes into the metadata.
    books = {key: sorted({v for v in values if v and not v.lstrip("-").isdigit()})
             for key, values in raw_attr.items()}
    return rows, books


def _strip_ext(name: str) -> str:
    return name[: -len(".jpg")] if name.lower().endswith(".jpg") else name


def _attr_code(value: str, book: list[str]) -> int | None:
    if not value:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    return book.index(value)  # a small list: the code book has a few dozen names


def read_veriwild(root: str | os.PathLike, split: str = "small", same_camera: str = "keep") -> pd.DataFrame:
    """VeRi-Wild as a manifest: ``train_list.txt`` plus one test size's query and gallery.

    ``split``: ``small`` / ``medium`` / ``large`` picks ``test_3000*`` / ``test_5000*`` / ``test_10000*``.
    ``same_camera``: ``keep`` or ``remove`` gallery images sharing a query's id and camera.
    """
    if split not in TEST_SIZES:
        raise ConfigError(f"VeRi-Wild split {split!r}: expected one of {list(TEST_SIZES)}")
    if same_camera not in SAME_CAMERA:
        raise ConfigError(f"VeRi-Wild same_camera {same_camera!r}: expected one of {list(SAME_CAMERA)}")
    root = require_root(root, "VeRi-Wild")
    lists = root / "train_test_split"
    info_path = next((p for p in (lists / "vehicle_info.txt", root / "vehicle_info.txt") if p.is_file()),
                     lists / "vehicle_info.txt")
    info, books = _read_info(info_path)
    size = TEST_SIZES[split]
    images = root / "images"
    folder_cache: dict[str, set[str]] = {}
    records = []
    for part, list_name in (("train", "train_list.txt"), ("query", f"test_{size}_query.txt"),
                            ("gallery", f"test_{size}.txt")):
        list_path = lists / list_name
        seen: dict[str, int] = {}
        for line, text in read_lines(list_path, "VeRi-Wild list file"):
            where = f"{list_path}:{line}"
            name = _strip_ext(text)
            pieces = name.split("/")
            if len(text.split()) != 1 or len(pieces) != 2:
                raise DataFormatError(f"{where}: expected '<vid>/<imgid>', got {text!r}")
            if name in seen:
                raise DataFormatError(f"{where}: duplicate image name {name!r} (first on line {seen[name]})")
            seen[name] = line
            vid = parse_int(pieces[0], "vehicle id", where)
            files = folder_cache.get(pieces[0])
            if files is None:
                files = folder_cache[pieces[0]] = existing_files(images / pieces[0])
            if f"{pieces[1]}.jpg" not in files:
                raise DataFormatError(f"{where}: image {name!r} is listed but not on disk "
                                      f"({images / pieces[0] / (pieces[1] + '.jpg')})")
            if name not in info:
                raise DataFormatError(f"{where}: image {name!r} has no line in {info_path}")
            cam, time, model, vtype, color, _ = info[name]
            records.append({"path": str(images / pieces[0] / f"{pieces[1]}.jpg"), "image_name": name,
                            "dataset": "veriwild", "split": part, "vehicle_id": vid, "camera": cam,
                            "timestamp": time, "model": model, "type": _attr_code(vtype, books["type"]),
                            "color": _attr_code(color, books["color"]), "source_id": f"veriwild:{pieces[0]}"})
    removed = 0
    if same_camera == "remove":
        query_pairs = {(r["vehicle_id"], r["camera"]) for r in records if r["split"] == "query"}
        kept = [r for r in records if not (r["split"] == "gallery" and (r["vehicle_id"], r["camera"]) in query_pairs)]
        removed = len(records) - len(kept)
        records = kept
    return frame(records, {"format": "veriwild", "root": str(root), "split": split,
                           "test_lists": [f"test_{size}_query.txt", f"test_{size}.txt"],
                           "same_camera": same_camera, "same_camera_removed": removed,
                           "type_names": books["type"], "color_names": books["color"]})
