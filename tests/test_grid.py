"""The Ray Tune grid of Ray Train runs, against a real `mlflow server` over HTTP.

* A worker that dies mid-trial is replaced; the trial resumes from its checkpoint and finishes, and
  MLflow holds each epoch's metrics exactly once.
* A trial that fails for good (a backbone that does not exist) is reported as failed with its error;
  the grid still finishes and selects from the others.
* A grid whose driver is interrupted continues with ``--resume`` without re-running finished trials.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO, _free_port
from vreid.config import config_from_dict


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store and a local artifact root."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("mlflow server exited:\n" + (root / "server.log").read_text()[-3000:])
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def grid_dict(manifests: Path, root: Path, params: dict, **over) -> dict:
    raw = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    raw["data"]["manifests"] = str(manifests)
    raw["output"]["root"] = str(root)
    raw["stage1"]["epochs"] = 2
    raw["stage2"]["epochs"] = 1
    raw["grid"]["params"] = params
    raw["grid"]["top_k"] = 2
    for key, value in over.items():
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return raw


def epoch_history(client, run_id: str, key: str = "val_mAP") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_grid_fault_tolerance_over_mlflow_server(ray_cluster, vehiclenet_manifests, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.distributed.grid import run_grid

    raw = grid_dict(vehiclenet_manifests, tmp_path, {"model.backbone": ["test_resnet", "no_such_backbone_xyz"]},
                    **{"output.mlflow_tracking_uri": mlflow_server, "name": "faults"})
    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    marker = tmp_path / "fault_injected"
    selection = run_grid(cfg, extra_config={"inject_fault_after_epoch": 1, "fault_marker": str(marker)})

    assert marker.exists(), "no worker was killed"
    assert len(selection["finished"]) == 1 and len(selection["failed"]) == 1
    failed = selection["failed"][0]
    assert "no_such_backbone_xyz" in failed["error"]
    chosen = selection["selected"][0]
    assert chosen["config"]["model.backbone"] == "test_resnet"
    assert Path(chosen["checkpoint_uri"].removeprefix("file://")).is_dir()
    on_disk = json.loads((Path(selection["path"])).read_text())
    assert on_disk["selected"][0]["trial_id"] == chosen["trial_id"]

    # MLflow over HTTP: each epoch of the killed-and-resumed trial logged exactly once
    client = MlflowClient(mlflow_server)
    run = client.get_run(chosen["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["vreid.selected"] == "true"
    assert epoch_history(client, run.info.run_id) == [1, 2, 3]  # Stage-I epochs 1-2, Stage-II epoch 1
    assert epoch_history(client, run.info.run_id, "stage1/loss") == [1, 2]
    assert run.data.params["model.backbone"] == "test_resnet"
    assert run.data.tags["git_commit"] and run.data.tags["manifest.stage1_train"] != "none"
    assert run.data.tags["mlflow.parentRunId"]
    table = tracking.compare_table("faults", mlflow_server)
    assert len(table) == 2 and set(table["status"]) == {"FINISHED", "FAILED"}
    assert table.iloc[0]["selected"] and table.iloc[0]["val_mAP"] == pytest.approx(chosen["metrics"]["val_mAP"])
    assert table.iloc[0]["params_m"] > 0


def test_grid_resume_after_interrupted_driver(ray_cluster, vehiclenet_manifests, tmp_path):
    from mlflow import MlflowClient

    from vreid.distributed.grid import run_grid

    raw = grid_dict(vehiclenet_manifests, tmp_path, {"stage1.lr+stage2.lr": [0.05, 0.08]},
                    **{"name": "resume", "grid.max_concurrent_trials": 1, "stage1.epochs": 1})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "vreid"), "grid", str(space)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    storage = tmp_path / "ray"
    deadline = time.time() + 900
    first = None
    while time.time() < deadline and first is None:
        done = sorted(storage.glob("resume-*-stage2/vreid_stage.json"))
        if done:
            first = done[0]
        elif proc.poll() is not None:
            pytest.fail("the grid driver exited early:\n" + (tmp_path / "driver.log").read_text()[-3000:])
        time.sleep(1)
    assert first is not None, "the first trial did not finish in time"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)  # the driver is interrupted
    proc.wait(timeout=120)
    finished_trial = first.parent.name.removeprefix("resume-").removesuffix("-stage2")
    before = {p.name for p in (storage / f"resume-{finished_trial}-stage1").glob("checkpoint_*")} | \
             {p.name for p in (storage / f"resume-{finished_trial}-stage2").glob("checkpoint_*")}

    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    selection = run_grid(cfg, resume=True)
    assert len(selection["finished"]) == 2, selection
    after = {p.name for p in (storage / f"resume-{finished_trial}-stage1").glob("checkpoint_*")} | \
            {p.name for p in (storage / f"resume-{finished_trial}-stage2").glob("checkpoint_*")}
    assert after == before, "a finished trial was trained again"
    client = MlflowClient(selection["tracking_uri"])
    for item in selection["finished"]:
        assert epoch_history(client, item["mlflow_run_id"]) == [1, 2]
