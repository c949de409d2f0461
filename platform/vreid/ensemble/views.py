"""Multi-model, multi-view features from images decoded once (VehicleNet sec. V-B, AI City setting).

For every image: decode once; for every model: resize to the model's input size, then for each scale s
in ``scales`` (fractions of the image *area*, so the side factor is sqrt(s), as the authors' code)
resize the *unscaled* tensor (never a previously scaled one), run the image and its horizontal flip,
sum all view features and L2-normalise. Where the manifest has a box and ``crop_average`` is on,
the same is done for the box crop and the two features averaged (sec. IV-C "Cropped Images").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vreid.evaluate.features import _load, _to_tensor, _views_feature
from vreid.evaluate.postprocess import fuse_features


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


def fuse(features: Sequence[np.ndarray], crops: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """VehicleNet's late fusion: :func:`vreid.evaluate.postprocess.fuse_features` (the same function the
    post-processing chain uses): per-model L2 norm (crop-averaged when ``crops``), concat, 1/sqrt(n)."""
    return fuse_features(features, crops)
