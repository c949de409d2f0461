"""The two stages of the Ray Data batch inference (decode + resize in the read tasks, forwards in the
actor) against the evaluation's own extractor, with real timm models and generated JPEGs. The stages
are called in-process here (seconds); the whole Ray Data job runs in tests/test_pipeline.py's ensemble
job on a real cluster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from vreid.distributed.batch_inference import EnsembleFeatureActor, decode_stage
from vreid.evaluate.features import extract_features
from vreid.models import ReidModel
from vreid.train.checkpoint import load_model_for_inference, save_checkpoint


def _checkpoint(path, seed, size):
    torch.manual_seed(seed)
    kw = {"backbone_name": "test_resnet", "head": "vehiclenet", "num_classes": 5, "pretrained": False,
          "last_stride": 1, "img_size": list(size), "fc_dim": 32, "dropout": 0.0, "dino_out_dim": None}
    save_checkpoint(path, export_model=ReidModel(**kw).eval(), model_config={**kw, "image_size": list(size)},
                    state={"epoch": 0}, metrics={})
    return str(path)


def test_stages_give_the_evaluation_extractor_features(demo_data, tmp_path):
    paths = sorted(str(p) for p in (demo_data / "cityflow").rglob("*.jpg"))[:23]
    assert len(paths) == 23
    # two models with different input sizes: the read stage resizes each image once per size
    ckpts = [_checkpoint(tmp_path / "m0", 0, (32, 32)), _checkpoint(tmp_path / "m1", 1, (40, 24))]
    rng = np.random.default_rng(0)
    boxes = [[2, 3, 30, 25] if rng.random() < 0.6 else None for _ in paths]
    actor = EnsembleFeatureActor(ckpts, (1.0, 0.8), True, True)
    parts = []
    for s in range(0, len(paths), 5):  # batches as Ray Data would hand them over (numpy format)
        bb = np.empty(len(paths[s:s + 5]), dtype=object)
        bb[:] = boxes[s:s + 5]
        decoded = decode_stage({"row": np.arange(s, s + len(bb)), "path": np.array(paths[s:s + 5]), "bbox": bb},
                               [(32, 32), (40, 24), (32, 32)], crop=True)
        assert decoded["img_40x24"].dtype == np.uint8 and decoded["img_40x24"].shape == (len(bb), 40, 24, 3)
        parts.append(actor(decoded))
    feats = [np.concatenate([p[f"feat_{i}"] for p in parts]) for i in range(2)]
    crops = [np.concatenate([p[f"crop_{i}"] for p in parts]) for i in range(2)]
    assert np.array_equal(np.concatenate([p["row"] for p in parts]), np.arange(len(paths)))
    df = pd.DataFrame({"path": paths, "bbox": boxes})
    has = np.array([b is not None for b in boxes])
    for i, ck in enumerate(ckpts):
        model, info = load_model_for_inference(ck)
        size = tuple(info["image_size"])
        ref = extract_features(model, df, image_size=size, scales=(1.0, 0.8), flip=True, use_bbox=False,
                               batch_size=7, progress=False)
        np.testing.assert_allclose(feats[i], ref, atol=1e-6, rtol=0)  # row order restored
        ref_crop = extract_features(model, df[has], image_size=size, scales=(1.0, 0.8), flip=True,
                                    use_bbox=True, batch_size=7, progress=False)
        np.testing.assert_allclose(crops[i][has], ref_crop, atol=1e-6, rtol=0)
        np.testing.assert_allclose(crops[i][~has], ref[~has], atol=1e-6, rtol=0)  # no box: own feature
