"""Image transforms of the two recipes (torchvision v1 transforms; all randomness from the torch RNG,
which the DataLoader seeds per worker).

* :func:`vehiclenet_train_transform` -- the VehicleNet authors' training transform
  (layumi/Person_reID_baseline_pytorch, AICity-reID-2020): bicubic resize to (h, w), zero-pad 10,
  random (h, w) crop, horizontal flip, ImageNet normalisation.
* :func:`test_transform` -- bicubic resize to (h, w), ImageNet normalisation.
* :func:`ssbver_global_transform` -- SSBVER sec. 3.3 / 4.3 global views (teacher transform T_t): random
  crop of area ratio a_g in [0.8, 1], zero padding, flip, colour jitter, random erasing.
* :func:`ssbver_local_transform` -- SSBVER local views (T_s): random crop of area ratio a_l in
  [0.1, 0.4], flip, colour jitter.
* :class:`MultiCropTransform` -- 2 global + L local views of one image (SSBVER V_g(I) and V_l(I)).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Union[int, Sequence[int]]

# Colour jitter of DINO's multi-crop augmentation, which SSBVER builds on (it gives no values).
_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
_JITTER_P = 0.8


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(v) for v in size)
    return (h, w)


def _normalize() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def vehiclenet_train_transform(size: Size, pad: int = 10) -> T.Compose:
    """VehicleNet sec. V-A training transform for input ``size`` = (h, w) (256x256 or 384x384)."""
    hw = _hw(size)
    return T.Compose([
        T.Resize(hw, interpolation=InterpolationMode.BICUBIC),
        T.Pad(pad),
        T.RandomCrop(hw),
        T.RandomHorizontalFlip(),
        *_normalize(),
    ])


def test_transform(size: Size) -> T.Compose:
    """Evaluation transform: bicubic resize to (h, w), ImageNet mean/std."""
    return T.Compose([T.Resize(_hw(size), interpolation=InterpolationMode.BICUBIC), *_normalize()])


test_transform.__test__ = False  # not a pytest test, even when imported into a test module


def ssbver_global_transform(size: Size, scale: tuple[float, float] = (0.8, 1.0), pad: int = 10,
                            erasing_p: float = 0.5) -> T.Compose:
    """SSBVER global view (sec. 3.3, 4.3): random resized crop with area ratio in ``scale`` to (h, w),
    zero padding ``pad`` then a random (h, w) crop, horizontal flip, colour jitter (p=0.8), ImageNet
    normalisation, random erasing (p=``erasing_p``, zeros in normalised space) to simulate occlusion."""
    hw = _hw(size)
    return T.Compose([
        T.RandomResizedCrop(hw, scale=scale, interpolation=InterpolationMode.BICUBIC),
        T.Pad(pad),
        T.RandomCrop(hw),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(**_JITTER)], p=_JITTER_P),
        *_normalize(),
        T.RandomErasing(p=erasing_p, value=0),
    ])


def ssbver_local_transform(local_size: Size, scale: tuple[float, float] = (0.1, 0.4)) -> T.Compose:
    """SSBVER local view (sec. 3.3, 4.3): random resized crop with area ratio in ``scale`` to
    ``local_size`` (h, w), horizontal flip, colour jitter (p=0.8), ImageNet normalisation."""
    return T.Compose([
        T.RandomResizedCrop(_hw(local_size), scale=scale, interpolation=InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(**_JITTER)], p=_JITTER_P),
        *_normalize(),
    ])


class MultiCropTransform:
    """``[global_1, global_2, local_1, ..., local_L]`` tensors of one PIL image (SSBVER V_g(I) + V_l(I)):
    the two global views at ``global_size``, ``n_local`` local views at ``local_size``."""

    def __init__(self, global_size: Size, local_size: Size, n_local: int,
                 global_scale: tuple[float, float] = (0.8, 1.0), local_scale: tuple[float, float] = (0.1, 0.4)):
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        self.n_local = int(n_local)
        self.global_tf = ssbver_global_transform(global_size, scale=global_scale)
        self.local_tf = ssbver_local_transform(local_size, scale=local_scale)

    def __call__(self, img) -> list[torch.Tensor]:
        views = [self.global_tf(img), self.global_tf(img)]
        views += [self.local_tf(img) for _ in range(self.n_local)]
        return views

    def __repr__(self) -> str:
        return f"MultiCropTransform(global={self.global_tf}, local={self.local_tf}, n_local={self.n_local})"
