"""`vreid data detect`: Mask R-CNN re-detection (VehicleNet IV-C "Cropped Images") writing boxes into
the manifest, and the chain refusing crop averaging when no image has a box.

No detector weights can be downloaded here, so the box-writing path runs a *randomly initialised*
torchvision Mask R-CNN saved to a local file. Its detections are junk: the test checks the plumbing
(the manifest gets exactly the best vehicle box the same weights give when run directly) and the
"no vehicle found -> the image keeps its previous box (none: the full image), recorded" behaviour.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vreid.cli import main


def _manifest(tmp_path, n=3):
    from vreid.data.schema import empty_manifest, normalize_manifest, write_manifest

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    df = empty_manifest().reindex(range(n))
    df = df.assign(path=paths, image_name=[f"{i:06d}.jpg" for i in range(n)], dataset="cityflow", split="gallery",
                   vehicle_id=list(range(n)), camera=1, label=-1, source_id=[f"cityflow:{i}" for i in range(n)])
    df["bbox"] = [None, [1, 2, 30, 40], None][:n]
    write_manifest(normalize_manifest(df), tmp_path / "m.parquet")
    return tmp_path / "m.parquet"


def _random_maskrcnn(path, car_bias=None):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    if car_bias is not None:  # every proposal becomes a confident "car" (COCO class 3): junk boxes, real path
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[3] = car_bias
    torch.save(model.state_dict(), path)
    return model.eval()


def test_detect_refuses_missing_or_bad_weights(tmp_path, capsys):
    m = _manifest(tmp_path)
    rc = main(["data", "detect", str(m), "--weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o.parquet")])
    assert rc == 2 and "Mask R-CNN weights not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    rc = main(["data", "detect", str(m), "--weights", str(bad), "--out", str(tmp_path / "o.parquet")])
    assert rc == 2 and "not a maskrcnn_resnet50_fpn state dict" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.integration  # Mask R-CNN forwards
def test_detect_writes_the_detectors_best_vehicle_box(tmp_path, capsys):
    from vreid.data.schema import read_manifest, read_manifest_metadata

    m = _manifest(tmp_path)
    weights = tmp_path / "maskrcnn_random.pth"
    model = _random_maskrcnn(weights, car_bias=8.0)
    out = tmp_path / "det.parquet"
    assert main(["data", "detect", str(m), "--weights", str(weights), "--out", str(out), "--min-size", "64"]) == 0
    df = read_manifest(out)
    model.transform.min_size, model.transform.max_size = (64,), 1333
    for i, p in enumerate(df.path):
        x = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1).copy() / 255)
        with torch.no_grad():
            det = model([x])[0]
        keep = [(s, b) for s, b, lab in zip(det["scores"].tolist(), det["boxes"].tolist(), det["labels"].tolist())
                if lab in (3, 4, 6, 8) and s >= 0.5]
        assert keep, "the biased detector should find a 'car'"
        box = max(keep, key=lambda t: t[0])[1]  # the first of equal scores, in output order
        assert list(df.bbox[i]) == [math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])]
    meta = read_manifest_metadata(out)["detect"]
    assert meta["detected"] == 3 and meta["no_detection"] == []
    assert "3 of 3 images got a Mask R-CNN box" in capsys.readouterr().out


@pytest.mark.integration  # Mask R-CNN forwards
def test_detect_nothing_found_keeps_previous_box_and_records_it(tmp_path, capsys):
    from vreid.data.schema import read_manifest, read_manifest_metadata

    m = _manifest(tmp_path)
    weights = tmp_path / "maskrcnn_random.pth"
    _random_maskrcnn(weights)  # random 91-way classifier: no class reaches 0.5
    out = tmp_path / "det.parquet"
    assert main(["data", "detect", str(m), "--weights", str(weights), "--out", str(out), "--min-size", "64"]) == 0
    df = read_manifest(out)
    assert df.bbox[0] is None and list(df.bbox[1]) == [1, 2, 30, 40] and df.bbox[2] is None
    meta = read_manifest_metadata(out)["detect"]
    assert meta["detected"] == 0 and meta["no_detection"] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert "0 of 3 images" in capsys.readouterr().out


def test_chain_refuses_crop_average_without_any_box():
    from vreid.errors import EvaluationInputError
    from vreid.evaluate.chain import PostProcessConfig, run_chain

    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(4, 8)), rng.normal(size=(6, 8))
    q_df = pd.DataFrame({"vehicle_id": [0, 1, 2, 3], "camera": 1, "bbox": [None] * 4})
    g_df = pd.DataFrame({"vehicle_id": [0, 1, 2, 3, 4, 5], "camera": 2, "bbox": [None] * 6})
    cfg = PostProcessConfig(crop_average=True)
    with pytest.raises(EvaluationInputError, match="crop_average.*no query or gallery image has a box.*vreid data detect"):
        run_chain(qf, gf, q_df, g_df, cfg, q_crop=qf, g_crop=gf)
    with pytest.raises(EvaluationInputError, match="crop_average.*no query or gallery image has a box"):
        run_chain(qf, gf, q_df.drop(columns="bbox"), g_df.drop(columns="bbox"), cfg, q_crop=qf, g_crop=gf)
    g_df.loc[2, "bbox"] = [0, 0, 4, 4]
    _, table = run_chain(qf, gf, q_df, g_df, cfg, q_crop=qf, g_crop=gf)
    assert table[1]["step"] == "crop_average (boxes: 1 of 10 images)"
