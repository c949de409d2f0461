"""Reports: tables from a real MLflow sqlite store filled here in the grid / ensemble layout, figures
from tiny generated images and a tiny real checkpoint, and the math behind the figures against
hand-computed or brute-force values."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from vreid.ensemble.job import postprocess_rows
from vreid.errors import EvaluationInputError, VreidError
from vreid.evaluate.chain import PostProcessConfig
from vreid.report import figures as F
from vreid.report import tables as T

EXP = "demo-grid"
IDS = [401, 402, 403, 404]  # int64 ids and camera numbers, as in the vreid manifest schema
CAMS = [1, 2, 3]
IMG = (48, 64)  # [h, w]
# Trial -> (lr, val_mAP per global epoch 1..5, val_rank1 per epoch); Stage-I = epochs 1..3
TRIALS = {
    "t0": (0.01, [0.10, 0.20, 0.31, 0.38, 0.4567], [0.30, 0.40, 0.52, 0.60, 0.6543]),
    "t1": (0.02, [0.12, 0.22, 0.27, 0.33, 0.3912], [0.31, 0.41, 0.48, 0.55, 0.5876]),
    "t2": (0.05, [0.05, 0.08, 0.11, 0.13, 0.1502], [0.10, 0.15, 0.20, 0.22, 0.2468]),
}
CHAIN = {"ensemble": True, "query_expansion": {"eps": 0.5}, "re_ranking": {"k1": 3, "k2": 2, "lambda": 0.3}}
EFF = {"t0": (11.18, 3.25, 160.5, 96.0, 512), "t1": (23.51, 4.55, 122.0, 122.0, 512), "t2": (11.18, 3.3, 150.0, 96.0, 512)}


def _image(path: Path, vid: int, cam: int) -> None:
    """A distinct picture per (vehicle, camera): a coloured 'vehicle' box whose colour is the id and
    whose position is the camera, on a grey road."""
    from PIL import Image

    arr = np.full((IMG[0] * 2, IMG[1] * 2, 3), 90, np.uint8)
    rng = np.random.default_rng(vid * 10 + cam)
    arr += rng.integers(0, 20, arr.shape, dtype=np.uint8)
    color = [(220, 30, 30), (30, 200, 30), (30, 60, 220), (230, 200, 20)][vid]
    y0, x0 = 20 + 6 * cam, 15 + 20 * cam
    arr[y0:y0 + 40, x0:x0 + 60] = color
    arr[y0 + 34:y0 + 44, x0 + 5:x0 + 15] = 10  # wheels
    arr[y0 + 34:y0 + 44, x0 + 45:x0 + 55] = 10
    Image.fromarray(arr).save(path)


def _manifests(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    img = root / "images"
    img.mkdir(parents=True)
    q, g = [], []
    for v, vid in enumerate(IDS):
        for c, cam in enumerate(CAMS):
            p = img / f"g_{vid}_{cam}.png"
            _image(p, v, c)
            g.append({"path": str(p), "image_name": p.name, "vehicle_id": vid, "camera": cam})
        p = img / f"q_{vid}.png"
        _image(p, v, 0)
        q.append({"path": str(p), "image_name": p.name, "vehicle_id": vid, "camera": CAMS[0]})
    return pd.DataFrame(q), pd.DataFrame(g)


def _features(q: pd.DataFrame, g: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features near a per-id centre, so most top ranks are true matches; id 404's gallery is moved
    towards id 401 so there are false matches to mark red."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8, dtype=np.float32)[: len(IDS)]
    cid = {vid: i for i, vid in enumerate(IDS)}
    qf = np.stack([centres[cid[v]] for v in q["vehicle_id"]]) + 0.2 * rng.standard_normal((len(q), 8))
    gf = np.stack([centres[cid[v]] for v in g["vehicle_id"]]) + 0.2 * rng.standard_normal((len(g), 8))
    gf[g["vehicle_id"].to_numpy() == 404] += 1.2 * centres[0]
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    return qf.astype(np.float32), gf.astype(np.float32)


def _checkpoint(root: Path) -> Path:
    from vreid.models import ReidModel
    from vreid.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = {"backbone_name": "test_resnet", "head": "vehiclenet", "num_classes": 4, "fc_dim": 32, "image_size": list(IMG)}
    model = ReidModel("test_resnet", head="vehiclenet", num_classes=4, fc_dim=32)
    return save_checkpoint(root / "ckpt" / "t0", export_model=model, model_config=cfg, state={"epoch": 5}, metrics={})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow sqlite store holding a 3-trial two-stage grid and an ensemble run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXP, artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp_id, run_name=f"{EXP} (grid)", tags={"vreid.role": "grid", "vreid.grid": EXP}).info.run_id
    qm, gm = _manifests(root)
    ckpt = _checkpoint(root)
    now = int(time.time() * 1000)
    run_ids = {}
    for rank, (trial, (lr, maps, r1s)) in enumerate(TRIALS.items(), 1):
        tags = {"vreid.trial_id": trial, "mlflow.parentRunId": parent, "vreid.grid": EXP,
                "checkpoint": str(ckpt) if trial == "t0" else f"/nowhere/{trial}"}
        if trial != "t2":
            tags.update({"vreid.selected": "true", "vreid.selected_rank": str(rank)})
        rid = client.create_run(exp_id, run_name=trial, tags=tags).info.run_id
        run_ids[trial] = rid
        params = {"recipe": "vehiclenet", "model.backbone": "test_resnet" if trial != "t1" else "resnet50",
                  "stage1.epochs": 3, "stage2.epochs": 2, "stage1.lr": lr, "stage2.lr": lr,
                  "data.image_size": "[48, 64]", "data.val_query": "/nowhere/q.parquet"}
        metrics = []
        for step in range(1, 6):
            stage = "stage1" if step <= 3 else "stage2"
            loss = 5.0 / step + lr if stage == "stage1" else 1.5 / (step - 2) + lr
            metrics += [Metric("val_mAP", maps[step - 1], now + step, step), Metric("val_rank1", r1s[step - 1], now + step, step),
                        Metric("val_rank5", min(1.0, r1s[step - 1] + 0.2), now + step, step),
                        Metric("val_mINP", maps[step - 1] / 2, now + step, step),
                        Metric("loss", loss, now + step, step), Metric(f"{stage}/loss", loss, now + step, step)]
        p, ms, ips, mem, dim = EFF[trial]
        metrics += [Metric("eff_params_m", p, now, 0), Metric("eff_ms_per_image_b1", ms, now, 0),
                    Metric("eff_images_per_s", ips, now, 0), Metric("eff_peak_mem_mb", mem, now, 0),
                    Metric("eff_feat_dim", dim, now, 0), Metric("eff_batch_size", 8, now, 0)]
        client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(rid)
    client.set_terminated(parent)

    ens = root / "ensemble"
    (ens / "val").mkdir(parents=True)
    qf, gf = _features(qm, gm)
    qf2, gf2 = _features(qm, gm, seed=1)
    np.save(ens / "val" / "query_features.npy", qf)
    np.save(ens / "val" / "gallery_features.npy", gf)
    qm.to_parquet(ens / "val" / "query.parquet")
    gm.to_parquet(ens / "val" / "gallery.parquet")
    tables = {
        "single_vs_ensemble": [
            {"name": "single: t1", "mAP": 0.3912, "mAP_top100": 0.3900, "rank1": 0.5876, "rank5": 0.7, "mINP": 0.18},
            {"name": "single: t0", "mAP": 0.4567, "mAP_top100": 0.4501, "rank1": 0.6543, "rank5": 0.8, "mINP": 0.2},
            {"name": "ensemble of 2", "mAP": 0.5123, "mAP_top100": 0.5099, "rank1": 0.7012, "rank5": 0.85, "mINP": 0.25},
        ],
        # the chain's real output, through the ensemble job's own Table VI function
        "postprocess": postprocess_rows(qm, gm, PostProcessConfig.from_dict(CHAIN), qf=[qf, qf2], gf=[gf, gf2]),
        "models": [{"trial_id": "t0", "checkpoint": str(ckpt), "mlflow_run_id": run_ids["t0"]},
                   {"trial_id": "t1", "checkpoint": "/nowhere/t1", "mlflow_run_id": run_ids["t1"]}],
    }
    (ens / "tables.json").write_text(json.dumps(tables))
    ens_run = client.create_run(exp_id, run_name="ensemble", tags={"vreid.role": "ensemble", "vreid.ensemble_dir": str(ens)}).info.run_id
    client.set_terminated(ens_run)
    return {"root": root, "uri": uri, "runs": run_ids, "parent": parent, "ensemble_run": ens_run, "ens": ens,
            "q": qm, "g": gm, "qf": qf, "gf": gf, "ckpt": ckpt}


# -- tables ---------------------------------------------------------------------------------------
def test_stage_results_read_the_last_stage1_epoch_and_the_end(store):
    from mlflow import MlflowClient

    res = T.stage_results(MlflowClient(store["uri"]), store["runs"]["t0"], stage1_epochs=3)
    assert res["stage1"]["val_mAP"] == pytest.approx(0.31)
    assert res["stage1"]["val_rank1"] == pytest.approx(0.52)
    assert res["final"]["val_mAP"] == pytest.approx(0.4567)
    assert res["final"]["val_rank1"] == pytest.approx(0.6543)


def test_stage_table_lists_selected_trials_with_both_stages(store):
    md = T.stage_table(EXP, store["uri"])
    assert md.startswith("### " + T.TABLE_TITLES["stages"])
    assert "| t0 | test_resnet | Stage-I | 3 | 31.00 | 52.00 |" in md
    assert "| t0 | test_resnet | Stage-II | 5 | 45.67 | 65.43 |" in md
    assert "| t1 | resnet50 | Stage-I | 3 | 27.00 | 48.00 |" in md
    assert "t2" not in md  # not selected
    # mean change over t0, t1: mAP ((0.4567-0.31) + (0.3912-0.27)) / 2 = 0.13395
    assert "mAP +13.39" in md or "mAP +13.40" in md


def test_grid_table_is_sorted_by_final_map(store):
    md = T.grid_table(EXP, store["uri"])
    lines = [l for l in md.splitlines() if l.startswith("| t") and not l.startswith("| trial")]
    assert [l.split("|")[1].strip() for l in lines] == ["t0", "t1", "t2"]
    assert "45.67" in lines[0] and "65.43" in lines[0] and "yes" in lines[0]
    assert "15.02" in lines[2] and "yes" not in lines[2]
    header = next(l for l in md.splitlines() if l.startswith("| trial"))
    assert "stage1.lr" in header and "stage1.epochs" not in header  # swept keys only
    assert "| 0.01 |" in lines[0]  # the param as logged
    assert "ensemble" not in md  # the ensemble run is not a trial


def test_efficiency_table_states_device_versions_and_batch(store):
    import mlflow
    import torch as _torch

    md = T.efficiency_table(EXP, store["uri"])
    assert "| t1 | resnet50 | [48, 64] | 23.51 | 4.55 | 122.00 | 122.00 | 512 |" in md
    assert "B = 8" in md
    assert f"torch {_torch.__version__}" in md and f"mlflow {mlflow.__version__}" in md
    assert "device `cpu`" in md


def test_ensemble_tables_and_bad_tables_json(store, tmp_path):
    tables = T.load_ensemble_tables(store["ens"])
    md = T.ensemble_table(tables)
    assert "| ensemble of 2 | 51.23 | 50.99 | 70.12 | 85.00 | 25.00 |" in md
    assert "fuses 2 models (t0, t1)" in md
    assert "| **single: t0** (best single) | 45.67 |" in md and "| single: t1 | 39.12 |" in md
    pp = T.postprocess_table(tables)
    steps = tables["postprocess"]
    assert [r["step"].split(" ")[0] for r in steps] == ["base", "ensemble", "query_expansion", "re_ranking"]
    for r in steps:  # every step the chain produced, with its numbers, in the report's table
        assert (f"| {r['step']} | {100 * r['mAP']:.2f} | {100 * r['mAP_top100']:.2f} | {100 * r['rank1']:.2f} | "
                f"{100 * r['rank5']:.2f} | {100 * r['mINP']:.2f} |") in pp
    (tmp_path / "tables.json").write_text('{"postprocess": {"step": 1}}')
    with pytest.raises(VreidError, match="'postprocess' must be a list"):
        T.load_ensemble_tables(tmp_path)
    (tmp_path / "tables.json").write_text("{not json")
    with pytest.raises(VreidError, match="tables.json: not valid JSON"):
        T.load_ensemble_tables(tmp_path)
    with pytest.raises(VreidError, match="missing tables.json"):
        T.load_ensemble_tables(tmp_path / "nope")


# -- figure math ----------------------------------------------------------------------------------
def test_ranked_gallery_drops_junk_and_marks_matches():
    sim = np.array([0.9, 0.8, 0.8, 0.1, 0.95])
    g_ids = np.array([7, 8, 7, 7, 7])
    g_cams = np.array([1, 2, 2, 3, 1])
    order, is_true = F.ranked_gallery(sim, 7, 1, g_ids, g_cams)
    # 4 and 0 are same id same camera (junk); ties (1, 2) keep gallery order
    assert order.tolist() == [1, 2, 3]
    assert is_true.tolist() == [False, True, True]


def test_pair_distances_match_brute_force():
    rng = np.random.default_rng(3)
    qf, gf = rng.standard_normal((5, 4)), rng.standard_normal((9, 4))
    qid, gid = rng.integers(0, 3, 5), rng.integers(0, 3, 9)
    qc, gc = rng.integers(0, 2, 5), rng.integers(0, 2, 9)
    pos, neg = F.pair_distances(qf, gf, qid, gid, qc, gc)
    bp, bn = [], []
    for i in range(5):
        for j in range(9):
            d = 1 - qf[i] @ gf[j] / np.linalg.norm(qf[i]) / np.linalg.norm(gf[j])
            if qid[i] == gid[j] and qc[i] == gc[j]:
                continue
            (bp if qid[i] == gid[j] else bn).append(d)
    np.testing.assert_allclose(np.sort(pos), np.sort(bp), atol=1e-5)
    np.testing.assert_allclose(np.sort(neg), np.sort(bn), atol=1e-5)


def test_distance_stats_overlap_by_hand():
    # bins=2 on [0.1, 0.9]: pos -> masses [1, 0]; neg -> [0.5, 0.5]; overlap = 0.5 + 0 = 0.5
    s = F.distance_stats(np.array([0.1, 0.2]), np.array([0.2, 0.9]), bins=2)
    assert s["overlap"] == pytest.approx(0.5)
    assert s["pos_mean"] == pytest.approx(0.15) and s["neg_mean"] == pytest.approx(0.55)
    assert F.distance_stats(np.array([0.3, 0.5]), np.array([0.3, 0.5]), bins=4)["overlap"] == pytest.approx(1.0)
    with pytest.raises(EvaluationInputError):
        F.distance_stats(np.array([]), np.array([0.2]))


class _Flat(nn.Module):
    """f(x) = x.flatten(1): cos-similarity gradients have a closed form; the backbone is the identity,
    so the activation map is the channel mean of the input."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Identity()
        self.w = nn.Parameter(torch.ones(1))

    def extract(self, x):
        return x.flatten(1) * self.w


def test_saliency_equals_closed_form_gradient():
    torch.manual_seed(0)
    xq, xg = torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5)
    mq, mg, sim = F.saliency_maps(_Flat(), xq, xg)
    q, g = xq.flatten().double(), xg.flatten().double()
    cos = float(q @ g / q.norm() / g.norm())
    # d cos / dq = g / (|q||g|) - cos * q / |q|^2
    dq = (g / (q.norm() * g.norm()) - cos * q / q.norm() ** 2).reshape(3, 4, 5)
    dg = (q / (q.norm() * g.norm()) - cos * g / g.norm() ** 2).reshape(3, 4, 5)
    assert sim == pytest.approx(cos, abs=1e-6)
    np.testing.assert_allclose(mq, dq.abs().amax(0).numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(mg, dg.abs().amax(0).numpy(), rtol=1e-4, atol=1e-7)


def test_activation_map_is_scaled_channel_mean():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) % 7
    cam = F.activation_map(_Flat(), x)
    m = x.mean(1).numpy()
    ref = (m - m.reshape(2, -1).min(1)[:, None, None]) / np.ptp(m.reshape(2, -1), axis=1)[:, None, None]
    np.testing.assert_allclose(cam, ref, atol=1e-6)


def test_feature_map_of_a_vit_lays_out_patch_tokens():
    from vreid.models import ReidModel

    model = ReidModel("test_vit", head="bnneck", num_classes=2).eval()
    size = model.backbone.body.patch_embed.img_size
    fm = F.feature_map(model, torch.randn(1, 3, *size))
    grid = model.backbone.body.patch_embed.grid_size
    assert fm.shape == (1, model.backbone_dim, grid[0], grid[1])


def test_retrieval_figure_rejects_mismatched_inputs(store, tmp_path):
    with pytest.raises(EvaluationInputError, match="do not match the manifests"):
        F.retrieval_figure(store["qf"][:2], store["gf"], store["q"], store["g"], tmp_path / "r.png")
    with pytest.raises(VreidError, match="lacks column"):
        F.retrieval_figure(store["qf"], store["gf"], store["q"].drop(columns="camera"), store["g"], tmp_path / "r.png")


# -- the whole report -----------------------------------------------------------------------------
def _png_ok(path: Path, min_w: int = 300, min_h: int = 200) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert min_w <= w <= 4000 and min_h <= h <= 4000, (path, im.size)
        arr = np.asarray(im.convert("L"))
        assert arr.std() > 5, f"{path} looks blank"


def test_build_report_writes_tables_figures_and_logs_artifacts(store, tmp_path):
    from mlflow import MlflowClient

    from vreid.report import FIGURE_FILES, build_report

    out = tmp_path / "rep"
    path = build_report(EXP, root=store["root"], tracking_uri=store["uri"], out=out)
    md = path.read_text()
    for title in T.TABLE_TITLES.values():
        assert f"### {title}" in md
    final_step = json.loads((store["ens"] / "tables.json").read_text())["postprocess"][-1]
    assert "45.67" in md and "51.23" in md and "23.51" in md
    assert f"| {final_step['step']} | {100 * final_step['mAP']:.2f} |" in md  # the chain's last step
    assert "Not produced" not in md
    for name in FIGURE_FILES.values():
        assert f"](figures/{name})" in md
        _png_ok(out / "figures" / name)
    client = MlflowClient(store["uri"])
    logged = {a.path for a in client.list_artifacts(store["ensemble_run"], "report/figures")}
    assert {f"report/figures/{n}" for n in FIGURE_FILES.values()} <= logged
    assert any(a.path == "report/report.md" for a in client.list_artifacts(store["ensemble_run"], "report"))


def test_cli_report_and_errors(store, tmp_path, capsys):
    from vreid.cli import main

    rc = main(["report", EXP, "--root", str(store["root"]), "--tracking-uri", store["uri"], "--out", str(tmp_path),
               "--no-log", "--queries", "2", "--top-k", "3"])
    assert rc == 0
    assert (tmp_path / "report.md").is_file()
    assert main(["report", "no-such-grid", "--tracking-uri", store["uri"], "--out", str(tmp_path)]) == 2
    assert "no MLflow experiment named 'no-such-grid'" in capsys.readouterr().err
    assert main(["report", EXP, "--tracking-uri", store["uri"], "--ensemble-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path), "--no-log"]) == 2


def test_report_without_ensemble_uses_trial_manifests_and_logs_to_grid_run(store, tmp_path):
    """No ensemble run yet: the tables say so, retrieval / distances are not produced (with the
    reason), heat maps and saliency come from the trial's own validation manifests, and the report is
    logged to the grid's parent run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from vreid.report import build_report

    client = MlflowClient(store["uri"])
    exp_id = client.create_experiment("solo", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp_id, tags={"vreid.role": "grid"}).info.run_id
    q, g = tmp_path / "q.parquet", tmp_path / "g.parquet"
    store["q"].to_parquet(q)
    store["g"].to_parquet(g)
    rid = client.create_run(exp_id, run_name="s0", tags={"vreid.trial_id": "s0", "mlflow.parentRunId": parent,
                                                         "checkpoint": str(store["ckpt"])}).info.run_id
    client.log_batch(rid, params=[Param("recipe", "vehiclenet"), Param("stage1.epochs", "1"), Param("stage2.epochs", "1"),
                                  Param("data.val_query", str(q)), Param("data.val_gallery", str(g))],
                     metrics=[Metric("val_mAP", 0.2, 0, 1), Metric("val_mAP", 0.3333, 0, 2),
                              Metric("stage1/loss", 2.0, 0, 1), Metric("stage2/loss", 1.0, 0, 2)])
    path = build_report("solo", root=tmp_path, tracking_uri=store["uri"], out=tmp_path / "out")
    md = path.read_text()
    assert "33.33" in md and "20.00" in md
    assert md.count("_No ensemble run found") == 2
    assert md.count("_Not produced: no ensemble output found._") == 2
    for name in ("heatmaps.png", "saliency.png", "loss_curves.png"):
        _png_ok(tmp_path / "out" / "figures" / name)
    assert "pair: true match of query id" in md
    logged = {a.path for a in client.list_artifacts(parent, "report/figures")}
    assert logged == {"report/figures/heatmaps.png", "report/figures/saliency.png", "report/figures/loss_curves.png"}
