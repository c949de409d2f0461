"""`vreid evaluate` on saved features and `vreid submission check`, through the real CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vreid.cli import main
from vreid.evaluate import evaluate_rank
from vreid.evaluate.features import save_features
from vreid.evaluate.protocols import vehicleid_draw


def _manifest(names, ids, cams, split):
    from vreid.data.schema import empty_manifest, normalize_manifest
    n = len(names)
    df = empty_manifest().reindex(range(n))
    df = df.assign(path=[f"/x/{s}" for s in names], image_name=names, dataset="veri776", split=split,
                   vehicle_id=ids, camera=cams, label=-1, source_id=[f"veri776:{i}" for i in ids],
                   timestamp=np.arange(n, dtype=float), track=pd.array([None] * n, dtype="Int64"))
    df["bbox"] = [None] * n
    return normalize_manifest(df)


@pytest.fixture()
def saved(tmp_path):
    from vreid.data.schema import write_manifest
    rng = np.random.default_rng(0)
    n_q, n_g, dim = 12, 50, 8
    q_ids, g_ids = rng.integers(0, 6, n_q), np.concatenate([np.arange(6), rng.integers(0, 6, n_g - 6)])
    q_cams, g_cams = rng.integers(1, 4, n_q), rng.integers(1, 4, n_g)
    centres = rng.normal(size=(6, dim))
    qf = (centres[q_ids] + rng.normal(size=(n_q, dim))).astype(np.float32)
    gf = (centres[g_ids] + rng.normal(size=(n_g, dim))).astype(np.float32)
    q_df = _manifest([f"q{i:03d}.jpg" for i in range(n_q)], q_ids, q_cams, "query")
    g_df = _manifest([f"g{i:03d}.jpg" for i in range(n_g)], g_ids, g_cams, "gallery")
    write_manifest(q_df, tmp_path / "q.parquet")
    write_manifest(g_df, tmp_path / "g.parquet")
    # saved in a different row order than the manifests: the CLI must align by image name
    perm = rng.permutation(n_g)
    save_features(tmp_path / "f" / "query.parquet", qf, q_df)
    save_features(tmp_path / "f" / "gallery.parquet", gf[perm], g_df.iloc[perm])
    return tmp_path, qf, gf, q_df, g_df


def test_evaluate_saved_features_veri776(saved, capsys):
    tmp, qf, gf, q_df, g_df = saved
    rc = main(["evaluate", "--protocol", "veri776", "--query", str(tmp / "q.parquet"), "--gallery",
               str(tmp / "g.parquet"), "--features-dir", str(tmp / "f")])
    assert rc == 0
    out = capsys.readouterr().out
    qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
    gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
    ref = evaluate_rank(1 - qn @ gn.T, q_df.vehicle_id, g_df.vehicle_id, q_df.camera, g_df.camera)
    assert f"{100 * ref['mAP']:.2f}" in out


def test_evaluate_with_chain_prints_each_step(saved, capsys, tmp_path):
    tmp = saved[0]
    chain = tmp_path / "chain.yaml"
    chain.write_text("query_expansion: {eps: 0.6}\ncamera_verification: {mode: drop}\n"
                     "re_ranking: {k1: 6, k2: 3, lambda: 0.3}\n")
    rc = main(["evaluate", "--protocol", "cityflow", "--query", str(tmp / "q.parquet"), "--gallery",
               str(tmp / "g.parquet"), "--features-dir", str(tmp / "f"), "--chain", str(chain)])
    assert rc == 0
    out = capsys.readouterr().out
    for step in ("base", "query_expansion", "camera_verification", "re_ranking"):
        assert step in out


def test_vehicleid_draws_are_seeded(saved, capsys):
    tmp, qf, gf, q_df, g_df = saved
    df = pd.concat([q_df, g_df], ignore_index=True)
    q1, g1 = vehicleid_draw(df, 0, 3)
    q2, g2 = vehicleid_draw(df.iloc[::-1].reset_index(drop=True), 0, 3)
    assert len(g1) == df.vehicle_id.nunique() and len(q1) + len(g1) == len(df)
    names = df.image_name.to_numpy()
    assert set(names[g1]) == set(df.iloc[::-1].reset_index(drop=True).image_name.to_numpy()[g2])
    rc = main(["evaluate", "--protocol", "vehicleid", "--query", str(tmp / "q.parquet"), "--gallery",
               str(tmp / "g.parquet"), "--features-dir", str(tmp / "f"), "--draws", "3", "--split", "small"])
    assert rc == 0 and "±" in capsys.readouterr().out


def test_errors_exit_2(saved, capsys, tmp_path):
    tmp = saved[0]
    rc = main(["evaluate", "--protocol", "veri776", "--query", str(tmp / "q.parquet"), "--gallery",
               str(tmp / "g.parquet"), "--features-dir", str(tmp_path / "nowhere")])
    assert rc == 2 and "query.parquet" in capsys.readouterr().err
    bad = tmp_path / "track2.txt"
    bad.write_text("1 2 3\n")
    assert main(["submission", "check", str(bad), "--queries", "1", "--gallery", "3"]) == 0
    assert main(["submission", "check", str(bad), "--queries", "2", "--gallery", "3"]) == 2
    assert "expected 2 lines" in capsys.readouterr().err


def test_chain_camera_clusters_need_camera_features(saved, capsys, tmp_path):
    tmp, qf, gf, q_df, g_df = saved
    chain = tmp_path / "chain.yaml"
    chain.write_text("camera_verification: {source: clusters, n_clusters: 3}\n")
    base = ["evaluate", "--protocol", "cityflow", "--query", str(tmp / "q.parquet"), "--gallery",
            str(tmp / "g.parquet"), "--features-dir", str(tmp / "f"), "--chain", str(chain)]
    assert main(base) == 2 and "--camera-features-dir" in capsys.readouterr().err
    # camera features: one tight group per manifest camera, so the clusters are the cameras
    rng = np.random.default_rng(1)
    centres = 5 * rng.normal(size=(4, 6))
    save_features(tmp_path / "cam" / "query.parquet", centres[q_df.camera] + 0.01 * rng.normal(size=(len(q_df), 6)), q_df)
    save_features(tmp_path / "cam" / "gallery.parquet", centres[g_df.camera] + 0.01 * rng.normal(size=(len(g_df), 6)), g_df)
    assert main(base + ["--camera-features-dir", str(tmp_path / "cam")]) == 0
    out = capsys.readouterr().out
    chain.write_text("camera_verification: {source: manifest}\n")
    assert main(base) == 0
    by_manifest = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("camera_verification")][0]
    line_m = [ln for ln in by_manifest.splitlines() if ln.startswith("camera_verification")][0]
    assert line.split()[-4:] == line_m.split()[-4:]  # same numbers: the clusters recover the cameras


def _tiny_checkpoint(path, seed, num_classes=5):
    import torch

    from vreid.models import ReidModel
    from vreid.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    kw = {"backbone_name": "test_resnet", "head": "vehiclenet", "num_classes": num_classes, "pretrained": False,
          "last_stride": 1, "img_size": [32, 32], "fc_dim": 16, "dropout": 0.0, "dino_out_dim": None}
    save_checkpoint(path, export_model=ReidModel(**kw), model_config={**kw, "image_size": [32, 32]},
                    state={"epoch": torch.tensor(0)}, metrics={})
    return str(path)


def test_evaluate_features_dirs_and_ensemble_job_agree_on_every_step(ray_cluster, vehiclenet_manifests, tmp_path):
    """The AI City chain as shipped (crops, ensemble, query expansion, camera clusters, re-ranking):
    the ensemble job's Table VI and `vreid evaluate` on the per-model features the job saved give the
    same numbers for every step."""
    import json

    from vreid.data.schema import read_manifest, write_manifest

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    chain = root / "search_spaces" / "postprocess_aicity.yaml"
    man = {}
    for name in ("val_query", "val_gallery"):  # boxes, so the crop step has crops (the generated data has none)
        df = read_manifest(vehiclenet_manifests / f"{name}.parquet")
        df["bbox"] = [[2, 2, 28, 30] if i % 3 else None for i in range(len(df))]
        man[name] = write_manifest(df, tmp_path / f"{name}.parquet")
    ckpts = [_tiny_checkpoint(tmp_path / f"m{i}", seed=i) for i in range(2)]
    camera = _tiny_checkpoint(tmp_path / "camera", seed=7, num_classes=40)
    out = tmp_path / "ens"
    argv = ["ensemble", "--checkpoint", ckpts[0], "--checkpoint", ckpts[1], "--val-query", str(man["val_query"]),
            "--val-gallery", str(man["val_gallery"]), "--chain", str(chain), "--camera-checkpoint", camera,
            "--out", str(out), "--batch-size", "32"]
    assert main(argv) == 0
    job_rows = json.loads((out / "tables.json").read_text())["postprocess"]
    feats = out / "val" / "features"
    argv = ["evaluate", "--protocol", "cityflow", "--query", str(man["val_query"]), "--gallery",
            str(man["val_gallery"]), "--features-dir", str(feats / "model_0"), "--features-dir", str(feats / "model_1"),
            "--camera-features-dir", str(feats / "camera"), "--chain", str(chain), "--save-table", str(tmp_path / "t.json")]
    assert main(argv) == 0
    cli_rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["step"].split(" ")[0] for r in cli_rows] == ["base", "crop_average", "ensemble", "query_expansion",
                                                           "camera_verification", "re_ranking"]
    assert [r["step"] for r in job_rows] == [r["step"] for r in cli_rows]
    for a, b in zip(job_rows, cli_rows):
        for ka, kb in (("mAP", "mAP"), ("mAP_top100", "mAP_top100"), ("rank1", "CMC@1"), ("rank5", "CMC@5"),
                       ("mINP", "mINP")):
            assert a[ka] == pytest.approx(b[kb], abs=1e-9), (a["step"], ka)


def test_ensemble_refuses_manifest_cameras_on_the_test_set_before_work(vehiclenet_manifests, tmp_path, capsys):
    chain = tmp_path / "chain.yaml"
    chain.write_text("ensemble: true\ncamera_verification:\n  source: manifest\n")
    ck = _tiny_checkpoint(tmp_path / "m0", seed=0)
    rc = main(["ensemble", "--checkpoint", ck, "--query", str(vehiclenet_manifests / "test_query.parquet"),
               "--gallery", str(vehiclenet_manifests / "test_gallery.parquet"), "--chain", str(chain),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown camera (-1)" in err and "source: clusters" in err
    assert not (tmp_path / "out" / "track2.txt").exists()
