"""Feature extraction over a manifest (VehicleNet Sec. V-A/V-B: horizontal flip and scale jittering with
factors [1, 0.9, 0.8]; Sec. IV-C "Cropped Images": averaging with the box-cropped image).

Each image is loaded with PIL (RGB), optionally cropped to its box, resized to ``image_size`` and
normalised with the ImageNet mean/std. For an area scale ``s`` the *scale-1* tensor is resized by the side
factor ``sqrt(s)`` (bilinear), as the authors' code does with ``math.sqrt(s)``; scales are never compounded.
The features of all views (scales x {original, flipped}) are summed and L2-normalised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vreid.errors import DataFormatError, EvaluationInputError, VreidError
from vreid.io import atomic_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ID_COLUMNS = ("image_name", "path", "dataset", "split", "vehicle_id", "camera", "timestamp", "track")


def _box(value) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    try:
        vals = [int(v) for v in value]
    except TypeError:
        return None
    return tuple(vals) if len(vals) == 4 else None  # type: ignore[return-value]


def _load(path: str, box, crop: bool):
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"{path}: cannot read image ({exc})") from None
    if crop:
        # an empty box after clipping falls back to the whole image
        img = crop_to_box(img, box) or img
    return img


def crop_to_box(img, box):
    """``img`` cropped to ``box`` ([x1, y1, x2, y2], 0-based, end exclusive) clipped to the image;
    None when there is no box or it is empty after clipping."""
    box = _box(box)
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(img.width, x2), min(img.height, y2)
    if x2 <= x1 or y2 <= y1:
        return None
    return img.crop((x1, y1, x2, y2))


def _to_tensor(img, image_size):
    import torch

    img = img.resize((image_size[1], image_size[0]), resample=3)  # PIL bicubic, like torchvision Resize
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _views_feature(model, x, scales: Sequence[float], flip: bool):
    import torch.nn.functional as F

    total = None
    for s in scales:
        if s == 1.0:
            xs = x
        else:
            f = math.sqrt(s)
            xs = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
        variants = [xs, xs.flip(3)] if flip else [xs]
        for v in variants:
            out = model.extract(v).float()
            total = out if total is None else total + out
    return total


#: AI City / CityFlow: VehicleNet sec. V-B "horizontal flip and scale jittering ... [1, 0.9, 0.8]"
AICITY_SCALES = (1.0, 0.9, 0.8)


def default_views(recipe: str | None, protocol: str | None) -> tuple[bool, tuple[float, ...]]:
    """``(flip, scales)`` a recipe is evaluated with on a protocol, unless asked otherwise.

    * ``ssbver`` / ``ssbver_baseline``: one forward pass of the teacher (SSBVER sec. 3.4 / 4.2 evaluate the
      teacher; the paper names no test-time augmentation and stresses "a forward pass of a single DNN").
    * ``vehiclenet`` (and a checkpoint without a recipe) on ``cityflow``: flip x scales 1, 0.9, 0.8
      (VehicleNet sec. V-B, the AI City runs).
    * ``vehiclenet`` on VeRi-776 / VehicleID / VeRi-Wild: the mean of the image and its flip (sec. V-A).
    """
    if recipe in ("ssbver", "ssbver_baseline"):
        return False, (1.0,)
    if protocol == "cityflow":
        return True, AICITY_SCALES
    return True, (1.0,)


def extract_features(model, manifest_df, image_size=(256, 256), scales=(1.0, 0.9, 0.8), flip: bool = True,
                     batch_size: int = 64, use_bbox: bool = True, crop_average: bool = False,
                     device: str = "cpu", progress: bool = True) -> np.ndarray:
    """(N, D) float32 L2-normalised features of the manifest's images, in manifest row order.

    ``use_bbox``: crop each image to its manifest ``bbox`` where there is one. ``crop_average``: sum the
    views of the whole image and of the cropped image (rows without a box use the whole image only).
    Deterministic: ``model.eval()`` and ``torch.no_grad()``; no random augmentation.
    """
    import torch
    from tqdm import tqdm

    if "path" not in manifest_df.columns:
        raise EvaluationInputError("manifest_df has no 'path' column")
    if not scales or any(s <= 0 for s in scales):
        raise EvaluationInputError(f"scales must be positive area factors, got {scales}")
    if not hasattr(model, "extract"):
        raise EvaluationInputError("model must define extract(x) -> (B, D) features")
    paths = manifest_df["path"].astype(str).tolist()
    boxes = [_box(b) for b in manifest_df["bbox"]] if "bbox" in manifest_df.columns else [None] * len(paths)
    model.eval().to(device)
    feats = []
    with torch.no_grad():
        it = range(0, len(paths), batch_size)
        for s in tqdm(it, desc="features", disable=not progress, total=len(it)):
            p, b = paths[s:s + batch_size], boxes[s:s + batch_size]
            main = torch.stack([_to_tensor(_load(pp, bb, use_bbox and not crop_average), image_size)
                                for pp, bb in zip(p, b)]).to(device)
            f = _views_feature(model, main, scales, flip)
            if crop_average:
                has = [i for i, bb in enumerate(b) if bb is not None]
                if has:
                    crops = torch.stack([_to_tensor(_load(p[i], b[i], True), image_size) for i in has]).to(device)
                    f[has] = f[has] + _views_feature(model, crops, scales, flip)
            f = torch.nn.functional.normalize(f, dim=1)
            feats.append(f.cpu().numpy().astype(np.float32))
    if not feats:
        raise EvaluationInputError("manifest_df is empty: no features to extract")
    return np.concatenate(feats, axis=0)


def detect_boxes(paths: Sequence[str], weights_path, score_threshold: float = 0.5, device: str = "cpu"):
    """Re-detect vehicles with torchvision's Mask R-CNN from a *local* weights file (Sec. IV-C): per
    image the best vehicle box ``[x1, y1, x2, y2]`` or None (:mod:`vreid.evaluate.detect`, ``vreid data detect``)."""
    from vreid.evaluate.detect import detect_boxes_with, load_maskrcnn

    model = load_maskrcnn(weights_path, device=device)
    return [None if hit is None else hit[0] for hit in detect_boxes_with(model, paths, score_threshold, device)]


def _npy_path(path: Path) -> Path:
    return path.with_suffix(".npy")


def save_features(path, features: np.ndarray, df) -> Path:
    """Save features as ``<path>.npy`` and the id columns of ``df`` as the parquet ``path`` (atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix != ".parquet":
        raise EvaluationInputError(f"{path}: the features index must be a .parquet path")
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != len(df):
        raise EvaluationInputError(f"features shape {features.shape} does not match {len(df)} manifest rows")
    cols = [c for c in ID_COLUMNS if c in df.columns]
    index = df[cols].reset_index(drop=True).copy()
    index.insert(0, "row", np.arange(len(index), dtype=np.int64))
    with atomic_path(_npy_path(path), suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, features.astype(np.float32, copy=False))
    table = pa.Table.from_pandas(index, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"vreid_features"] = json.dumps({"shape": list(features.shape), "npy": _npy_path(path).name}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def load_features(path):
    """Inverse of :func:`save_features`: ``(features (N, D) float32, index DataFrame)``."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: features index not found")
    npy = _npy_path(path)
    if not npy.is_file():
        raise DataFormatError(f"{npy}: features array not found (expected beside {path.name})")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise DataFormatError(f"{path}: not a readable parquet features index ({type(exc).__name__}: {exc})") from None
    try:
        feats = np.load(npy, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:  # truncated: the header promises more bytes than exist
        raise DataFormatError(f"{npy}: not a readable .npy features array ({type(exc).__name__}: {exc})") from None
    meta = json.loads((table.schema.metadata or {}).get(b"vreid_features", b"{}") or b"{}")
    if feats.ndim != 2 or feats.shape[0] != table.num_rows or (meta and list(feats.shape) != meta.get("shape")):
        raise DataFormatError(f"{npy}: shape {feats.shape} does not match the {table.num_rows} rows of {path}")
    return np.asarray(feats), table.to_pandas()


__all__ = ["default_views", "extract_features", "detect_boxes", "save_features", "load_features"]
