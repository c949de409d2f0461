"""CompCars (web-nature part) reader, as VehicleNet uses it (Sec. III-A; FORMATS.md "CompCars").

Layout: ``data/image/<make_id>/<model_id>/<released_year>/<name>.jpg`` and
``data/label/<same path>.txt`` with three lines: viewpoint (-1 unknown, 1 front, 2 rear, 3 side,
4 front-side, 5 rear-side), the number of boxes (1), and ``x1 y1 x2 y2`` in 1-based inclusive pixels;
``data/train_test_split/classification/{train,test}.txt`` list ``make/model/year/name.jpg``.

VehicleNet crops each image to its box, drops invalid boxes (136,726 -> 136,713 images) and treats
each (model, released year) as one class (4,701 classes). Here the box is converted to the manifest's
0-based, end-exclusive ``bbox = [x1 - 1, y1 - 1, x2, y2]`` (the crop is applied when loading), the
class is ``source_id = compcars:<make>/<model>/<year>``, ``vehicle_id`` is the model id, and every row
is ``split = train`` (CompCars is only ever training data here).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vreid.data._common import frame, parse_int, read_lines, require_file, require_root
from vreid.errors import ConfigError, DataFormatError

SUBSETS = ("all", "train", "test")
_IMAGE_EXT = (".jpg", ".jpeg", ".png")


def _data_dir(root: Path) -> Path:
    if (root / "data" / "image").is_dir():
        return root / "data"
    if (root / "image").is_dir():
        return root
    raise DataFormatError(f"{root}: no CompCars 'data/image' folder (expected <root>/data/image/<make>/<model>/<year>/)")


def parse_label(path: Path) -> tuple[int, tuple[int, int, int, int]]:
    """A CompCars label file -> (viewpoint, (x1, y1, x2, y2) as written: 1-based, inclusive)."""
    lines = read_lines(require_file(path, "CompCars label file"), "CompCars label file")
    if len(lines) < 3:
        raise DataFormatError(f"{path}:{len(lines) + 1}: expected 3 lines (viewpoint, box count, 'x1 y1 x2 y2'), "
                              f"got {len(lines)}")
    (l1, view_text), (l2, count_text), (l3, box_text) = lines[:3]
    viewpoint = parse_int(view_text, "viewpoint", f"{path}:{l1}")
    if viewpoint not in (-1, 1, 2, 3, 4, 5):
        raise DataFormatError(f"{path}:{l1}: viewpoint {viewpoint} is not one of -1, 1, 2, 3, 4, 5")
    count = parse_int(count_text, "box count", f"{path}:{l2}")
    if count < 1:
        raise DataFormatError(f"{path}:{l2}: expected at least one box, got {count}")
    coords = box_text.split()
    if len(coords) != 4:
        raise DataFormatError(f"{path}:{l3}: expected 'x1 y1 x2 y2', got {box_text!r}")
    x1, y1, x2, y2 = (parse_int(c, "box coordinate", f"{path}:{l3}") for c in coords)
    return viewpoint, (x1, y1, x2, y2)


def valid_box(box: tuple[int, int, int, int], size: tuple[int, int] | None) -> bool:
    """A 1-based inclusive box is valid if non-empty, starts at >= 1 and (if known) fits the image."""
    x1, y1, x2, y2 = box
    if x1 < 1 or y1 < 1 or x2 < x1 or y2 < y1:
        return False
    return size is None or (x2 <= size[0] and y2 <= size[1])


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except (UnidentifiedImageError, OSError):
        return None


def read_compcars(root: str | os.PathLike, subset: str = "all", check_image_size: bool = True) -> pd.DataFrame:
    """CompCars web-nature images with boxes, as ``train`` rows of classes model x year.

    ``subset="all"`` walks ``data/image`` (what VehicleNet uses); ``"train"`` / ``"test"`` read the
    classification split lists. Invalid boxes are dropped (count in the metadata); with
    ``check_image_size`` a box must also fit the image (header read) and an unreadable image counts as
    invalid.
    """
    if subset not in SUBSETS:
        raise ConfigError(f"CompCars subset {subset!r}: expected one of {list(SUBSETS)}")
    root = require_root(root, "CompCars")
    data = _data_dir(root)
    image_dir, label_dir = data / "image", data / "label"
    entries: list[tuple[str, str]] = []  # (relative name, where it came from)
    if subset == "all":
        for dirpath, dirnames, filenames in os.walk(image_dir):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(_IMAGE_EXT):
                    rel = Path(dirpath, f).relative_to(image_dir).as_posix()
                    entries.append((rel, str(image_dir / rel)))
    else:
        list_path = data / "train_test_split" / "classification" / f"{subset}.txt"
        seen: dict[str, int] = {}
        for line, text in read_lines(list_path, "CompCars split list"):
            where = f"{list_path}:{line}"
            if text in seen:
                raise DataFormatError(f"{where}: duplicate image name {text!r} (first on line {seen[text]})")
            seen[text] = line
            if not (image_dir / text).is_file():
                raise DataFormatError(f"{where}: image {text!r} is listed but not on disk in {image_dir}")
            entries.append((text, where))
    records = []
    dropped = []
    for rel, where in entries:
        parts = rel.split("/")
        if len(parts) != 4:
            raise DataFormatError(f"{where}: expected <make_id>/<model_id>/<released_year>/<name>.jpg, got {rel!r}")
        make = parse_int(parts[0], "make id", where)
        model = parse_int(parts[1], "model id", where)
        year = parts[2]
        label_path = label_dir / Path(rel).with_suffix(".txt")
        viewpoint, box = parse_label(label_path)
        path = image_dir / rel
        size = _image_size(path) if check_image_size else None
        if not valid_box(box, size) or (check_image_size and size is None):
            dropped.append(rel)
            continue
        key = f"{make}/{model}/{year}"
        x1, y1, x2, y2 = box
        records.append({"path": str(path), "image_name": rel, "dataset": "compcars", "split": "train",
                        "vehicle_id": model, "camera": -1, "bbox": [x1 - 1, y1 - 1, x2, y2],
                        "viewpoint": viewpoint, "model": key, "source_id": f"compcars:{key}"})
    if not records:
        why = f"all {len(dropped)} have an invalid box" if dropped else "none found"
        raise DataFormatError(f"{image_dir}: no usable CompCars images ({why}); expected "
                              "image/<make_id>/<model_id>/<year>/<name>.jpg")
    return frame(records, {"format": "compcars", "root": str(root), "subset": subset,
                           "check_image_size": check_image_size, "invalid_boxes_dropped": len(dropped),
                           "invalid_box_images": dropped[:100]})
