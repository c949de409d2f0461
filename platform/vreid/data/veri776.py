"""VeRi-776 reader (Liu et al.; the VehicleNet paper's Sec. III-A, FORMATS.md "VeRi-776").

Layout: ``image_train/``, ``image_query/``, ``image_test/`` (the gallery), one-name-a-line lists
``name_train.txt`` / ``name_query.txt`` / ``name_test.txt``, and ``train_label.xml`` /
``test_label.xml`` (declared gb2312) with ``colorID`` and ``typeID`` per image. Query images are
copies of test images, so the same ``image_name`` appears in the query and gallery splits (the
evaluation treats same id + same camera as junk, which covers the copy).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from vreid.data._common import (existing_files, frame, parse_camera, parse_int, parse_xml,
                                read_name_list, require_file, require_image, require_root, xml_items)
from vreid.errors import DataFormatError

_SPLITS = (("train", "name_train.txt", "image_train", "train_label.xml"),
           ("query", "name_query.txt", "image_query", "test_label.xml"),
           ("gallery", "name_test.txt", "image_test", "test_label.xml"))
_NAME_RE = re.compile(r"^(\d+)_([cC]\d+)_(\d+)_(\d+)\.(jpg|jpeg|png)$")


def parse_veri_name(name: str, where: str) -> tuple[int, int, float]:
    """``0001_c001_00016450_0.jpg`` -> (vehicle id 1, camera 1, frame stamp 16450.0).

    Only the base name is parsed: a parent folder can look like ``123_c456``.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    m = _NAME_RE.match(base)
    if not m:
        raise DataFormatError(f"{where}: image name {name!r} does not parse "
                              "(expected <id>_c<camera>_<stamp>_<index>.jpg, e.g. 0001_c001_00016450_0.jpg)")
    return int(m.group(1)), parse_camera(m.group(2), where), float(m.group(3))


def _read_labels(path: Path) -> dict[str, tuple[int, int, int | None, int | None, int]]:
    root, text = parse_xml(path, "VeRi-776 label file")
    out = {}
    for item, line in xml_items(root, text):
        name = item.get("imageName")
        where = f"{path}:{line}"
        if not name:
            raise DataFormatError(f"{where}: <Item> without imageName attribute")
        vid = parse_int(item.get("vehicleID"), "vehicleID", where)
        cam = parse_camera(item.get("cameraID", ""), where)
        color = item.get("colorID")
        vtype = item.get("typeID")
        out[name] = (vid, cam, parse_int(color, "colorID", where) if color not in (None, "") else None,
                     parse_int(vtype, "typeID", where) if vtype not in (None, "") else None, line)
    return out


def read_veri776(root: str | os.PathLike, use_xml: bool = True) -> pd.DataFrame:
    """All VeRi-776 images as a manifest: train, query (``image_query``) and gallery (``image_test``).

    Id, camera and frame stamp come from the base file name; ``color`` / ``type`` from the label XML
    (``use_xml=True`` requires ``train_label.xml`` and ``test_label.xml`` and checks that their
    vehicleID / cameraID agree with the file names).
    """
    root = require_root(root, "VeRi-776")
    labels: dict[str, dict] = {}
    if use_xml:
        for xml_name in ("train_label.xml", "test_label.xml"):
            labels[xml_name] = _read_labels(require_file(root / xml_name, "VeRi-776 label file"))
    records = []
    for split, list_name, folder_name, xml_name in _SPLITS:
        list_path = root / list_name
        names = read_name_list(list_path, "VeRi-776 image list")
        folder = root / folder_name
        files = existing_files(folder)
        for line, name in names:
            where = f"{list_path}:{line}"
            vid, cam, stamp = parse_veri_name(name, where)
            path = require_image(files, name, folder, list_path, line)
            color = vtype = None
            if use_xml:
                lab = labels[xml_name].get(name)
                if lab is not None:
                    xml_path = root / xml_name
                    if (lab[0], lab[1]) != (vid, cam):
                        raise DataFormatError(
                            f"{xml_path}:{lab[4]}: {name!r} has vehicleID {lab[0]} cameraID {lab[1]} but its "
                            f"file name says id {vid} camera {cam}")
                    color, vtype = lab[2], lab[3]
            records.append({"path": str(path), "image_name": name, "dataset": "veri776", "split": split,
                            "vehicle_id": vid, "camera": cam, "timestamp": stamp, "color": color,
                            "type": vtype, "source_id": f"veri776:{vid:04d}"})
    return frame(records, {"format": "veri776", "root": str(root), "use_xml": use_xml})
