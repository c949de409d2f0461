"""The camera classifier reuses the training recipe with camera ids as labels (VehicleNet IV-C)."""

import pandas as pd
import pytest

from vreid.errors import VreidError
from vreid.train.data import training_labels


def test_camera_labels_are_contiguous_by_sorted_camera():
    df = pd.DataFrame({"camera": [12, 3, 12, 40, 3], "vehicle_id": [1, 1, 2, 2, 3], "label": [0, 0, 1, 1, 2]})
    assert training_labels(df, "camera").tolist() == [1, 0, 1, 2, 0]
    assert training_labels(df).tolist() == [0, 0, 1, 1, 2]


def test_camera_labels_need_known_cameras():
    df = pd.DataFrame({"camera": [1, -1], "vehicle_id": [1, 2], "label": [0, 1]})
    with pytest.raises(VreidError, match="camera"):
        training_labels(df, "camera")


def test_identity_labels_from_ids_when_no_label_column():
    df = pd.DataFrame({"camera": [1, 2, 3], "vehicle_id": [30, 7, 30]})
    assert training_labels(df).tolist() == [1, 0, 1]


def test_ensemble_refuses_cluster_verification_without_camera_model(tmp_path, capsys):
    from vreid.cli import main

    chain = tmp_path / "chain.yaml"
    chain.write_text("ensemble: true\ncamera_verification:\n  source: clusters\n")
    ck = tmp_path / "ck"
    ck.mkdir()
    import torch

    from vreid.models import ReidModel
    from vreid.train.checkpoint import save_checkpoint

    kw = {"backbone_name": "test_resnet", "head": "vehiclenet", "num_classes": 3, "pretrained": False,
          "last_stride": 1, "img_size": [32, 32], "fc_dim": 16, "dropout": 0.0, "dino_out_dim": None}
    save_checkpoint(ck, export_model=ReidModel(**kw), model_config={**kw, "image_size": [32, 32]},
                    state={"epoch": torch.tensor(0)}, metrics={})
    rc = main(["ensemble", "--checkpoint", str(ck), "--val-query", "x.parquet", "--val-gallery", "y.parquet",
               "--chain", str(chain), "--out", str(tmp_path / "out")])
    assert rc == 2 and not (tmp_path / "out" / "track2.txt").exists()
    assert "--camera-checkpoint" in capsys.readouterr().err
