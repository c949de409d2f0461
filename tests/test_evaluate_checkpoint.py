"""`vreid evaluate` on a training checkpoint: the model is rebuilt from its config, features extracted
with flip (and scales), and the protocol's table printed; a checkpoint whose weights do not match its
config is refused."""

import json

import torch

from vreid.cli import main


def _checkpoint(path, fc_dim=16):
    from vreid.models import ReidModel
    from vreid.train.checkpoint import save_checkpoint

    kw = {"backbone_name": "test_resnet", "head": "vehiclenet", "num_classes": 5, "pretrained": False,
          "last_stride": 1, "img_size": [32, 32], "fc_dim": fc_dim, "dropout": 0.0, "dino_out_dim": None}
    torch.manual_seed(0)
    save_checkpoint(path, export_model=ReidModel(**kw), model_config={**kw, "image_size": [32, 32]},
                    state={"epoch": torch.tensor(0)}, metrics={})
    return path


def test_evaluate_checkpoint_on_veri776(demo_data, tmp_path, capsys):
    from vreid.data.schema import read_manifest, write_manifest

    assert main(["data", "index", "veri776", str(demo_data / "veri776"), "--out", str(tmp_path / "veri.parquet")]) == 0
    df = read_manifest(tmp_path / "veri.parquet")
    write_manifest(df[df.split == "query"].reset_index(drop=True), tmp_path / "q.parquet")
    write_manifest(df[df.split == "gallery"].reset_index(drop=True), tmp_path / "g.parquet")
    ck = _checkpoint(tmp_path / "ck")
    capsys.readouterr()
    rc = main(["evaluate", "--protocol", "veri776", "--query", str(tmp_path / "q.parquet"), "--gallery",
               str(tmp_path / "g.parquet"), "--checkpoint", str(ck), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "mAP" in out, out

    # weights that do not match the config: refused with the file named
    cfg = json.loads((ck / "model_config.json").read_text())
    cfg["fc_dim"] = 32
    (ck / "model_config.json").write_text(json.dumps(cfg))
    rc = main(["evaluate", "--protocol", "veri776", "--query", str(tmp_path / "q.parquet"), "--gallery",
               str(tmp_path / "g.parquet"), "--checkpoint", str(ck), "--no-progress"])
    assert rc == 2 and "do not match" in capsys.readouterr().err
