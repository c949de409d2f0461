"""The training dataset over a manifest (see :mod:`vreid.data.schema`).

``ManifestDataset(df, transform)[i]`` -> ``(image, label, i)``: the image at ``df.path[i]`` loaded with
PIL as RGB, cropped to ``df.bbox[i]`` when present (CompCars boxes; VehicleNet sec. III-A "by cropping
... we obtain 136,713 images"), then ``transform``-ed (a tensor, or a list of views for multi-crop).
An image that cannot be read fails with :class:`~vreid.errors.DataFormatError` naming its path: training
never skips images silently.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from vreid.errors import DataFormatError


def _bbox_or_none(value: Any) -> Optional[tuple[int, int, int, int]]:
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    box = [int(v) for v in value]
    if len(box) != 4:
        raise ValueError(f"bbox must have 4 numbers [x1, y1, x2, y2], got {list(value)}")
    return (box[0], box[1], box[2], box[3])


def load_image(path: str, bbox: Optional[Sequence[int]] = None) -> Image.Image:
    """PIL RGB image at ``path``, cropped to ``bbox`` = [x1, y1, x2, y2] (0-based, x2/y2 exclusive),
    clipped to the image. Unreadable files and empty boxes raise :class:`DataFormatError`."""
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except Exception as exc:  # PIL raises OSError, ValueError, DecompressionBombError, SyntaxError...
        raise DataFormatError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if bbox is not None:
        x1, y1, x2, y2 = (int(v) for v in bbox)
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(x2, img.width), min(y2, img.height)
        if x2 <= x1 or y2 <= y1:
            raise DataFormatError(f"{path}: bbox {list(bbox)} is empty inside the {img.width}x{img.height} image")
        img = img.crop((x1, y1, x2, y2))
    return img


class ManifestDataset(Dataset):
    """Images of a manifest DataFrame (needs ``path``; uses ``label`` when present, else -1, and ``bbox``
    when ``use_bbox``). Returns ``(transform(image), label, index)``."""

    def __init__(self, df: pd.DataFrame, transform: Optional[Callable] = None, use_bbox: bool = True):
        if "path" not in df.columns:
            raise DataFormatError(f"ManifestDataset: the manifest has no 'path' column (columns: {list(df.columns)})")
        self.paths = df["path"].astype(str).to_numpy()
        self.labels = (df["label"].to_numpy(dtype=np.int64) if "label" in df.columns
                       else np.full(len(df), -1, dtype=np.int64))
        self.bboxes: Optional[list] = None
        if use_bbox and "bbox" in df.columns:
            self.bboxes = []
            for i, value in enumerate(df["bbox"].tolist()):
                try:
                    self.bboxes.append(_bbox_or_none(value))
                except (TypeError, ValueError) as exc:
                    raise DataFormatError(f"manifest row {i} ({self.paths[i]}): bad bbox: {exc}") from None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        index = int(index)
        box = self.bboxes[index] if self.bboxes is not None else None
        img = load_image(self.paths[index], box)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index]), index


def collate_multicrop(batch: list) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Collate ``(views, label, index)`` items where ``views`` is a list of tensors (multi-crop) into
    ``([stacked view 0, stacked view 1, ...], labels, indices)``; plain tensor images are stacked as the
    default collate does."""
    images = [item[0] for item in batch]
    labels = torch.as_tensor([int(item[1]) for item in batch], dtype=torch.int64)
    index = torch.as_tensor([int(item[2]) for item in batch], dtype=torch.int64)
    if isinstance(images[0], (list, tuple)):
        n = len(images[0])
        if any(len(v) != n for v in images):
            raise ValueError("collate_multicrop: items have different numbers of views")
        return [torch.stack([v[i] for v in images]) for i in range(n)], labels, index
    return default_collate(images), labels, index
