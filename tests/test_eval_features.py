"""Feature extraction (flip + area scales from the original tensor, summed, L2-normalised) and I/O."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vreid.errors import DataFormatError
from vreid.evaluate.features import extract_features, load_features, save_features



class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 3)

    def extract(self, x):
        # position-dependent so flips and scales change the output
        y = self.conv(x)
        w = torch.linspace(0, 1, y.shape[-1])
        return torch.cat([y.mean((2, 3)), (y * w).mean((2, 3))], dim=1)


def _images(tmp_path, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return pd.DataFrame({"path": paths, "image_name": [f"{i:06d}.png" for i in range(n)],
                         "vehicle_id": [1, 2, 3], "camera": [1, 1, 2],
                         "bbox": [[2, 3, 20, 18], None, [0, 0, 10, 10]]})


def _bilinear(img: np.ndarray, factor: float) -> np.ndarray:
    """Resize a (C, H, W) array by ``factor`` with bilinear interpolation, written from its definition
    (half-pixel centres: output pixel o samples the input at (o + 0.5) / factor - 0.5, clamped at the
    border; output side floor(side * factor)), one output pixel at a time."""
    c, h, w = img.shape
    oh, ow = int(math.floor(h * factor)), int(math.floor(w * factor))
    out = np.zeros((c, oh, ow), dtype=np.float64)
    for oy in range(oh):
        sy = max((oy + 0.5) / factor - 0.5, 0.0)
        y0 = min(int(sy), h - 1)
        y1, wy = min(y0 + 1, h - 1), sy - int(sy)
        for ox in range(ow):
            sx = max((ox + 0.5) / factor - 0.5, 0.0)
            x0 = min(int(sx), w - 1)
            x1, wx = min(x0 + 1, w - 1), sx - int(sx)
            out[:, oy, ox] = ((1 - wy) * ((1 - wx) * img[:, y0, x0] + wx * img[:, y0, x1])
                              + wy * ((1 - wx) * img[:, y1, x0] + wx * img[:, y1, x1]))
    return out


def _manual(model, path, size, scales, flip, box=None):
    """The feature as VehicleNet / our docs define it: the RGB image (cropped to the box [x1, y1, x2, y2],
    end exclusive), resized to ``size`` (bicubic), ImageNet-normalised per channel; for every area scale s
    a view resized by the side factor sqrt(s) *from the scale-1 image*; each view and its mirror image
    through the model; all summed, then divided by the L2 norm."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    if box is not None:
        x1, y1, x2, y2 = box
        arr = arr[y1:y2, x1:x2]
    arr = np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BICUBIC), dtype=np.float64) / 255.0
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    chw = np.stack([(arr[:, :, ch] - mean[ch]) / std[ch] for ch in range(3)])
    total = np.zeros(10)
    for s in scales:
        view = chw if s == 1 else _bilinear(chw, math.sqrt(s))
        views = [view, view[:, :, ::-1]] if flip else [view]
        for v in views:
            x = torch.tensor(np.ascontiguousarray(v), dtype=torch.float32)[None]
            total += model.extract(x)[0].detach().double().numpy()
    return total / np.sqrt(np.sum(total ** 2))


def test_extract_matches_manual_views(tmp_path):
    df = _images(tmp_path)
    model = TinyNet()
    f = extract_features(model, df, image_size=(16, 16), batch_size=2, progress=False)
    assert f.shape == (3, 10)
    for i in range(3):
        box = df.bbox[i]
        np.testing.assert_allclose(f[i], _manual(model, df.path[i], (16, 16), (1.0, 0.9, 0.8), True, box), atol=1e-5)
    again = extract_features(model, df, image_size=(16, 16), batch_size=3, progress=False)
    np.testing.assert_allclose(f, again, atol=1e-6)  # deterministic, batch-size independent
    plain = extract_features(model, df, image_size=(16, 16), scales=(1.0,), flip=False, use_bbox=False,
                             progress=False)
    np.testing.assert_allclose(plain[1], _manual(model, df.path[1], (16, 16), (1.0,), False), atol=1e-5)
    avg = extract_features(model, df, image_size=(16, 16), scales=(1.0,), flip=False, crop_average=True,
                           progress=False)
    x_full = _manual(model, df.path[0], (16, 16), (1.0,), False)
    assert not np.allclose(avg[0], x_full, atol=1e-4)  # row 0 has a box: crop averaged in
    np.testing.assert_allclose(avg[1], plain[1], atol=1e-5)  # row 1 has none


def test_save_load_roundtrip_and_errors(tmp_path):
    df = _images(tmp_path)
    feats = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    p = save_features(tmp_path / "out" / "query.parquet", feats, df)
    f2, idx = load_features(p)
    np.testing.assert_array_equal(f2, feats)
    assert idx.image_name.tolist() == df.image_name.tolist() and idx.row.tolist() == [0, 1, 2]
    (tmp_path / "out" / "query.npy").unlink()
    with pytest.raises(DataFormatError, match="query.npy"):
        load_features(p)
    with pytest.raises(DataFormatError, match="cannot read image"):
        bad = df.copy()
        bad.loc[0, "path"] = str(tmp_path / "missing.png")
        extract_features(TinyNet(), bad, image_size=(8, 8), progress=False)
