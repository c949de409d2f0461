"""The whole pipeline at a small size (what `make demo` runs), then the ensemble again as a Ray job
submitted with `ray job submit` to the session's Ray head: the same selection, manifests and chain
must give a byte-identical track2.txt.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO


@pytest.fixture(scope="module")
def demo_run(ray_cluster, mlflow_server, tmp_path_factory):
    """The demo pipeline, small, tracked by a real `mlflow server` over HTTP. Its grid has a third
    trial that cannot train (a negative learning rate), and one worker is killed after its first
    epoch, so the fault handling is checked on the pipeline's own grid."""
    import os

    from engine_callbacks import WorkerFault, by_value
    from vreid.demo import run_demo

    by_value()
    tmp = tmp_path_factory.mktemp("pipeline")
    out = tmp / "demo"
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    try:
        result = run_demo(
            out, str(REPO / "search_spaces" / "demo.yaml"), str(REPO / "search_spaces" / "postprocess_demo.yaml"),
            overrides=["stage1.epochs=2", "stage2.epochs=1", "grid.params={'stage1.lr+stage2.lr': [0.05, 0.08, -1.0]}"],
            extra_config={"callbacks": [WorkerFault(after_epoch=1, marker=str(tmp / "fault_injected"))]},
        )
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    result["fault_marker"] = tmp / "fault_injected"
    return result


def rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path)).metadata.num_rows


def test_pipeline_outputs_exist_and_parse(demo_run):
    from vreid.ensemble.submission import validate_track2

    out = Path(demo_run["out"])
    man = out / "manifests"
    for name in ("stage1_train", "stage2_train", "val_query", "val_gallery", "test_query", "test_gallery"):
        assert rows(man / f"{name}.parquet") > 0
    for fmt in ("veri776", "cityflow", "vehicleid", "veriwild", "compcars"):
        assert rows(man / "index" / f"{fmt}.parquet") > 0
    sel = json.loads(Path(demo_run["selection"]["path"]).read_text())
    assert len(sel["selected"]) == 2 and all(Path(s["checkpoint_uri"].removeprefix("file://")).is_dir() for s in sel["selected"])
    assert demo_run["tracking_uri"].startswith("http://127.0.0.1:")
    track2 = Path(demo_run["submission"])
    validate_track2(track2, rows(man / "test_query.parquet"), rows(man / "test_gallery.parquet"))
    prov = json.loads(track2.with_name("track2.provenance.json").read_text())
    assert prov["git_commit"] and len(prov["models"]) == 2 and all(m["mlflow_run_id"] for m in prov["models"])
    tables = json.loads((out / "ensemble" / "tables.json").read_text())
    assert len(tables["single_vs_ensemble"]) == 3
    assert [r["step"] for r in tables["postprocess"]][0] == "base"
    assert any(r["step"].startswith("re_ranking") for r in tables["postprocess"])
    report = (out / "report.md").read_text()
    for heading in ("Stage-I vs Stage-II", "ensemble", "Post-processing", "fficiency"):
        assert heading.lower() in report.lower(), heading
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 5, pngs
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert (out / "compare.md").read_text().count("|") > 10


def test_grid_faults_and_mlflow_over_http(demo_run):
    """A worker killed mid-trial resumes from its checkpoint (each epoch in MLflow once); the trial that
    cannot train is reported failed with its error; selection comes from the others."""
    from mlflow import MlflowClient

    from vreid import tracking

    sel = demo_run["selection"]
    uri = demo_run["tracking_uri"]
    assert demo_run["fault_marker"].exists(), "no worker was killed"
    assert len(sel["finished"]) == 2 and len(sel["failed"]) == 1
    assert "stage1.lr" in sel["failed"][0]["error"]
    client = MlflowClient(uri)
    for item in sel["finished"]:
        steps = sorted(m.step for m in client.get_metric_history(item["mlflow_run_id"], "val_mAP"))
        assert steps == [1, 2, 3], steps  # Stage-I epochs 1-2, Stage-II epoch 1, each once
        assert sorted(m.step for m in client.get_metric_history(item["mlflow_run_id"], "stage1/loss")) == [1, 2]
        run = client.get_run(item["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["vreid.selected"] == "true"
        assert run.data.tags["git_commit"] and run.data.tags["manifest.stage1_train"] != "none"
        assert run.data.tags["mlflow.parentRunId"] and run.data.params["model.backbone"] == "test_resnet"
    table = tracking.compare_table("demo", uri)
    assert len(table) == 3 and sorted(table["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    assert table.iloc[0]["selected"] and table.iloc[0]["val_mAP"] == pytest.approx(sel["selected"][0]["metrics"]["val_mAP"])
    assert table.iloc[0]["params_m"] > 0


def test_ensemble_as_ray_job_is_byte_identical(demo_run, ray_cluster, tmp_path):
    out = Path(demo_run["out"])
    job_out = tmp_path / "job_ensemble"
    runtime_env = {"excludes": [".git", ".venv", "outputs", "*.parquet", "mlruns", "__pycache__", "*.egg-info"]}
    env = dict(ray_cluster["env"])
    ray_bin = str(Path(env["PATH"].split(":")[0]) / "ray")
    cmd = [ray_bin, "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--",
           "python", "jobs/aicity_ensemble.py", "--selection", demo_run["selection"]["path"],
           "--manifests", str(out / "manifests"), "--chain", str(REPO / "search_spaces" / "postprocess_demo.yaml"),
           "--out", str(job_out), "--batch-size", "64", "--camera-checkpoint", demo_run["camera_checkpoint"]]
    for _ in range(40):  # the head's job agent may still be starting
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode == 0 or "No available agent" not in proc.stdout + proc.stderr:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    from vreid.ensemble.submission import validate_track2

    man = out / "manifests"
    validate_track2(job_out / "track2.txt", rows(man / "test_query.parquet"), rows(man / "test_gallery.parquet"))
    assert (job_out / "track2.txt").read_bytes() == Path(demo_run["submission"]).read_bytes()


def test_ensemble_rejects_bad_input_before_work(demo_run, tmp_path):
    from vreid.cli import main

    out = Path(demo_run["out"])
    sel = demo_run["selection"]["path"]
    target = tmp_path / "ens"
    # a gallery smaller than 100
    import pandas as pd

    from vreid.data.schema import read_manifest, write_manifest

    g = read_manifest(out / "manifests" / "test_gallery.parquet")
    write_manifest(g.head(50), tmp_path / "small_gallery.parquet")
    rc = main(["ensemble", "--selection", sel, "--query", str(out / "manifests" / "test_query.parquet"),
               "--gallery", str(tmp_path / "small_gallery.parquet"), "--out", str(target)])
    assert rc == 2 and not (target / "track2.txt").exists()
    # a missing checkpoint
    rc = main(["ensemble", "--checkpoint", str(tmp_path / "nope"), "--manifests", str(out / "manifests"), "--out", str(target)])
    assert rc == 2 and not (target / "track2.txt").exists()
    # a manifest without the expected columns
    pd.DataFrame({"path": ["x.jpg"]}).to_parquet(tmp_path / "bad.parquet")
    rc = main(["ensemble", "--selection", sel, "--query", str(tmp_path / "bad.parquet"),
               "--gallery", str(out / "manifests" / "test_gallery.parquet"), "--out", str(target)])
    assert rc == 2 and not (target / "track2.txt").exists()
