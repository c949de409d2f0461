"""Transforms (VehicleNet sec. V-A, SSBVER sec. 3.3 / 4.3) and the manifest dataset."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms as TV

from vreid.data import transforms as T
from vreid.data.dataset import ManifestDataset, collate_multicrop
from vreid.errors import DataFormatError

MEAN = np.array(T.IMAGENET_MEAN)
STD = np.array(T.IMAGENET_STD)


def _const(rgb, size=(40, 30)):
    return Image.new("RGB", size, tuple(rgb))  # size = (w, h)


def test_test_transform_resizes_and_normalises():
    out = T.test_transform((32, 24))(_const((255, 128, 0)))
    assert tuple(out.shape) == (3, 32, 24)
    expected = (np.array([255, 128, 0]) / 255.0 - MEAN) / STD
    assert out.mean(dim=(1, 2)).numpy() == pytest.approx(expected, abs=1e-4)


def test_vehiclenet_train_transform_pads_crops_flips():
    tf = T.vehiclenet_train_transform((32, 32))
    kinds = [type(t) for t in tf.transforms]
    assert kinds[:4] == [TV.Resize, TV.Pad, TV.RandomCrop, TV.RandomHorizontalFlip]
    assert tf.transforms[1].padding == 10
    white = _const((255, 255, 255), (32, 32))
    zero = (0 - MEAN) / STD
    one = (1 - MEAN) / STD
    saw_padding = False
    for seed in range(8):
        torch.manual_seed(seed)
        out = tf(white).numpy()
        assert out.shape == (3, 32, 32)
        for c in range(3):  # pixels are the image (white) or the zero padding, nothing else
            vals = out[c]
            assert np.all(np.isclose(vals, one[c], atol=1e-4) | np.isclose(vals, zero[c], atol=1e-4))
        saw_padding |= bool(np.isclose(out[0], zero[0], atol=1e-4).any())
    assert saw_padding


def test_ssbver_global_and_local_views():
    g = T.ssbver_global_transform((32, 24))
    rrc = g.transforms[0]
    assert isinstance(rrc, TV.RandomResizedCrop) and rrc.scale == (0.8, 1.0)
    assert any(isinstance(t, TV.Pad) and t.padding == 10 for t in g.transforms)
    assert any(isinstance(t, TV.RandomErasing) for t in g.transforms)
    assert any(isinstance(t, TV.RandomHorizontalFlip) for t in g.transforms)
    loc = T.ssbver_local_transform((12, 10))
    assert loc.transforms[0].scale == (0.1, 0.4)
    assert not any(isinstance(t, (TV.RandomErasing, TV.Pad)) for t in loc.transforms)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    a = g(img)
    torch.manual_seed(0)
    b = g(img)
    c = g(img)
    assert tuple(a.shape) == (3, 32, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert tuple(loc(img).shape) == (3, 12, 10)


def _coordinate_image(n=100):
    yy, xx = np.mgrid[0:n, 0:n]
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(np.uint8))


@pytest.mark.parametrize("which,lo,hi", [("local", 0.07, 0.42), ("global", 0.65, 1.0)])
def test_crop_area_ratio(which, lo, hi):
    # Pixels hold their own (x, y) in R, G: the crop's source region is read back from the output, so the
    # configured crops keep 10-40 % (local) / 80-100 % (global) of the area (minus resampling margins).
    tf = T.ssbver_local_transform((16, 16)) if which == "local" else T.ssbver_global_transform((16, 16))
    rrc = tf.transforms[0]
    img = _coordinate_image()
    for seed in range(20):
        torch.manual_seed(seed)
        out = np.asarray(rrc(img)).astype(float)
        area = (np.ptp(out[..., 0]) + 1) * (np.ptp(out[..., 1]) + 1) / 100.0**2
        assert lo <= area <= hi


def test_multicrop_transform_returns_2_plus_l_views():
    tf = T.MultiCropTransform((32, 32), (16, 16), n_local=3)
    views = tf(_const((10, 20, 30), (48, 48)))
    assert len(views) == 5
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3


# -- dataset ------------------------------------------------------------------------------------------
@pytest.fixture()
def images(tmp_path):
    a = np.zeros((20, 30, 3), dtype=np.uint8)
    a[5:15, 10:20] = [255, 0, 0]  # a red box at x 10..19, y 5..14
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path


def test_manifest_dataset_crops_bbox_and_converts_rgb(images):
    df = pd.DataFrame({
        "path": [str(images / "a.png"), str(images / "gray.png")],
        "label": [3, 7],
        "bbox": [[10, 5, 20, 15], None],
    })
    ds = ManifestDataset(df, transform=None)
    img, label, index = ds[0]
    assert img.size == (10, 10) and label == 3 and index == 0
    assert np.all(np.asarray(img) == [255, 0, 0])  # exactly the box (x2, y2 exclusive)
    img, label, index = ds[1]
    assert img.mode == "RGB" and img.size == (8, 8) and label == 7
    no_box = ManifestDataset(df, transform=None, use_bbox=False)
    assert no_box[0][0].size == (30, 20)


def test_manifest_dataset_names_unreadable_file(images):
    df = pd.DataFrame({"path": [str(images / "broken.jpg")], "label": [0]})
    with pytest.raises(DataFormatError, match="broken.jpg"):
        ManifestDataset(df, T.test_transform((8, 8)))[0]
    with pytest.raises(DataFormatError, match="empty"):
        ManifestDataset(pd.DataFrame({"path": [str(images / "a.png")], "bbox": [[40, 0, 50, 5]]}))[0]


def test_collate_multicrop(images):
    df = pd.DataFrame({"path": [str(images / "a.png")] * 3, "label": [1, 2, 3]})
    ds = ManifestDataset(df, T.MultiCropTransform((16, 16), (8, 8), n_local=2))
    views, labels, index = collate_multicrop([ds[i] for i in range(3)])
    assert [tuple(v.shape) for v in views] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 2
    assert labels.tolist() == [1, 2, 3] and index.tolist() == [0, 1, 2]
    plain = ManifestDataset(df, T.test_transform((16, 16)))
    x, labels, _ = collate_multicrop([plain[i] for i in range(3)])
    assert tuple(x.shape) == (3, 3, 16, 16)
