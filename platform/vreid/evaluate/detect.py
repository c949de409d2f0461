"""Vehicle re-detection with Mask R-CNN, boxes written into the manifest (VehicleNet Sec. IV-C
"Cropped Images": "we re-detect the vehicle with the state-of-the-art MaskRCNN").

``vreid data detect MANIFEST --weights maskrcnn.pth --out OUT.parquet`` runs torchvision's
``maskrcnn_resnet50_fpn`` from a *local* state-dict file (nothing is ever downloaded) on every image of
the manifest and writes the highest-scoring COCO vehicle box (car, motorcycle, bus, truck; score >=
``score_threshold``) into the ``bbox`` column, so the chain's ``crop_average`` step and the ensemble
job average each image with its re-detected crop. An image where no vehicle is found keeps the box it
had (none for CityFlow: the crop is then the full image); those images are listed in the output
manifest's metadata (``detect.no_detection``) and counted on the console. Written atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vreid.errors import VreidError

COCO_VEHICLES = {3: "car", 4: "motorcycle", 6: "bus", 8: "truck"}


def load_maskrcnn(weights_path: str | os.PathLike, min_size: int = 800, max_size: int = 1333, device: str = "cpu"):
    """torchvision's Mask R-CNN (ResNet-50 FPN, 91 COCO classes) with the state dict at ``weights_path``."""
    import torch
    import torchvision

    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise VreidError(f"Mask R-CNN weights not found at {weights_path}: no weights can be downloaded by vreid; "
                         "copy torchvision's maskrcnn_resnet50_fpn COCO state dict there and pass the local file")
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                               min_size=min_size, max_size=max_size)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any loading failure is a bad weights file
        raise VreidError(f"{weights_path}: not a maskrcnn_resnet50_fpn state dict ({str(exc).splitlines()[0]})") from None
    return model.eval().to(device)


def best_vehicle_box(det: dict, score_threshold: float) -> tuple[list[int], float, str] | None:
    """The highest-scoring vehicle detection of one torchvision output dict, as an integer box
    ``[x1, y1, x2, y2]`` (floor / ceil: 0-based, end exclusive, as the manifest's ``bbox``)."""
    best = None
    for box, lab, sc in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
        if int(lab) in COCO_VEHICLES and float(sc) >= score_threshold and (best is None or sc > best[1]):
            best = ([int(math.floor(box[0])), int(math.floor(box[1])), int(math.ceil(box[2])), int(math.ceil(box[3]))],
                    float(sc), COCO_VEHICLES[int(lab)])
    return best


def detect_boxes_with(model, paths: Sequence[str], score_threshold: float = 0.5, device: str = "cpu") -> list:
    """Per image: ``(box, score, label)`` of its best vehicle detection, or None."""
    import torch

    from vreid.evaluate.features import _load

    out = []
    with torch.no_grad():
        for p in paths:
            img = _load(p, None, False)
            t = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1).copy() / 255.0).to(device)
            out.append(best_vehicle_box(model([t])[0], score_threshold))
    return out


def redetect_manifest(manifest: str | os.PathLike, weights: str | os.PathLike, out: str | os.PathLike,
                      score_threshold: float = 0.5, min_size: int = 800, max_size: int = 1333,
                      device: str = "cpu") -> dict[str, Any]:
    """Re-detect every image of ``manifest`` and write the manifest with the new boxes to ``out``."""
    from vreid.data.schema import read_manifest, write_manifest

    if not 0.0 <= score_threshold <= 1.0:
        raise VreidError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    df = read_manifest(manifest)
    if df.empty:
        raise VreidError(f"{manifest}: the manifest has no images")
    model = load_maskrcnn(weights, min_size, max_size, device)  # a bad weights file fails before any image
    found = detect_boxes_with(model, list(df["path"]), score_threshold, device)
    boxes = list(df["bbox"])
    missing = []
    for i, hit in enumerate(found):
        if hit is None:
            missing.append(str(df["image_name"].iloc[i]))
        else:
            boxes[i] = hit[0]
    df = df.copy()
    df["bbox"] = boxes
    summary = {"weights": str(Path(weights).resolve()), "score_threshold": score_threshold, "min_size": min_size,
               "images": len(df), "detected": len(df) - len(missing), "no_detection": missing,
               "source_manifest": str(Path(manifest).resolve())}
    meta = dict(df.attrs.get("vreid", {}))
    meta["detect"] = summary
    df.attrs["vreid"] = meta
    write_manifest(df, out)
    return summary


__all__ = ["COCO_VEHICLES", "load_maskrcnn", "best_vehicle_box", "detect_boxes_with", "redetect_manifest"]
