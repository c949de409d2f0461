"""A grid whose driver is interrupted continues with ``--resume`` without re-running finished trials.

(Worker death inside a trial, a trial that fails for good, and MLflow over HTTP are checked on the
pipeline's own grid in tests/test_pipeline.py, so the suite trains one grid fewer.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from vreid.config import config_from_dict


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
