"""Multi-model, multi-view features from images decoded once (VehicleNet sec. V-B, AI City setting).

For every image: decode once; for every model: resize to the model's input size, then for each scale s
in ``scales`` (fractions of the image *area*, so the side factor is sqrt(s), as the authors' code)
resize the *unscaled* tensor (never a previously scaled one), run the image and its horizontal flip,
sum all view features and L2-normalise. Where the manifest has a box and ``crop_average`` is on,
the same is done for the box crop and the two features averaged (sec. IV-C "Cropped Images").
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vreid.evaluate.features import _load, _to_tensor, _views_feature


def decode(path: str) -> Image.Image:
    """Read and decode one image (RGB); the same loader as :func:`vreid.evaluate.features.extract_features`."""
    return _load(path, None, False)


def to_batch(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """Resize to ``size`` = (h, w) and ImageNet-normalise, exactly as the evaluation's extractor."""
    return torch.stack([_to_tensor(im, size) for im in images])


@torch.no_grad()
def multiview_features(model: torch.nn.Module, x: torch.Tensor, scales: Sequence[float] = (1.0, 0.9, 0.8),
                       flip: bool = True) -> torch.Tensor:
    """Sum of ``model.extract`` over flip x scales views of the batch ``x``, L2-normalised."""
    return F.normalize(_views_feature(model, x, scales, flip), dim=1)


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
