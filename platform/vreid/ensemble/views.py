"""Multi-model, multi-view features from images decoded once (VehicleNet sec. V-B, AI City setting).

For every image: decode once; for every model: resize to the model's input size, then for each scale s
in ``scales`` (fractions of the image *area*, so the side factor is sqrt(s), as the authors' code)
resize the *unscaled* tensor (never a previously scaled one), run the image and its horizontal flip,
sum all view features and L2-normalise. Where the manifest has a box and ``crop_average`` is on,
the same is done for the box crop and the two features averaged (sec. IV-C "Cropped Images").
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def decode(path: str) -> Image.Image:
    from vreid.errors import VreidError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise VreidError(f"cannot decode image {path}: {exc}") from None


def crop_box(img: Image.Image, bbox: Optional[Sequence[int]]) -> Optional[Image.Image]:
    if bbox is None or len(bbox) != 4:
        return None
    x1, y1, x2, y2 = (int(v) for v in bbox)
    if x2 <= x1 or y2 <= y1:
        return None
    return img.crop((x1, y1, x2, y2))


def to_batch(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Resize (bilinear) to ``size`` = (h, w), stack, ImageNet-normalise."""
    h, w = size
    arr = np.stack([np.asarray(im.resize((w, h), Image.BILINEAR), dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


@torch.no_grad()
def multiview_features(model: torch.nn.Module, x: torch.Tensor, scales: Sequence[float] = (1.0, 0.9, 0.8),
                       flip: bool = True) -> torch.Tensor:
    """Sum of ``model.extract`` over flip x scales views of the batch ``x``, L2-normalised."""
    total = None
    for s in scales:
        if s == 1.0:
            xs = x
        else:
            xs = F.interpolate(x, scale_factor=math.sqrt(s), mode="bilinear", align_corners=False)
        views = [xs, torch.flip(xs, dims=[3])] if flip else [xs]
        for v in views:
            f = model.extract(v).float()
            total = f if total is None else total + f
    return F.normalize(total, dim=1)


def fuse(features: Sequence[np.ndarray]) -> np.ndarray:
    """VehicleNet's late fusion: concatenate per-model L2-normalised features, each scaled by
    1/sqrt(n) so the fused feature has unit norm and every model weighs the same."""
    if not features:
        raise ValueError("fuse: no features given")
    n = len(features)
    parts = []
    for f in features:
        f = np.asarray(f, dtype=np.float32)
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        parts.append(f / np.maximum(norm, 1e-12) / math.sqrt(n))
    return np.concatenate(parts, axis=1)
