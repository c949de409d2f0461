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
    """Two concurrent trials, Stage-I only (what is resumed is Tune's experiment, not the chaining of
    stages, which the pipeline's grid covers), of 1 and 16 epochs at 32 x 32 (6 were once not enough: the long one had
    finished too by the time of the interrupt); the driver is interrupted once the short
    one has finished, while the long one is still training. The resumed grid finishes the long one (each
    epoch logged once) and does not train the short one again."""
    from mlflow import MlflowClient

    from vreid.distributed.grid import run_grid

    raw = grid_dict(vehiclenet_manifests, tmp_path, {"stage1.epochs": [1, 16]},
                    **{"name": "resume", "grid.max_concurrent_trials": 2, "stage1.milestones": [15], "stage2.epochs": 0,
                       "data.image_size": [32, 32]})
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
        done = sorted(storage.glob("resume-*-stage1/vreid_stage.json"))
        if done:
            first = done[0]
        elif proc.poll() is not None:
            pytest.fail("the grid driver exited early:\n" + (tmp_path / "driver.log").read_text()[-3000:])
        time.sleep(1)
    assert first is not None, "the first trial did not finish in time"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)  # the driver is interrupted
    proc.wait(timeout=120)
    assert len(list(storage.glob("resume-*-stage1/vreid_stage.json"))) == 1, "the long trial finished before the interrupt"
    finished_trial = first.parent.name.removeprefix("resume-").removesuffix("-stage1")
    before = {p.name for p in (storage / f"resume-{finished_trial}-stage1").glob("checkpoint_*")}
    assert before

    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    selection = run_grid(cfg, resume=True)
    assert len(selection["finished"]) == 2, selection
    after = {p.name for p in (storage / f"resume-{finished_trial}-stage1").glob("checkpoint_*")}
    assert after == before, "a finished trial was trained again"
    assert not list(storage.glob("resume-*-stage2")), "stage2.epochs: 0 ran a Stage-II"
    client = MlflowClient(selection["tracking_uri"])
    histories = sorted(epoch_history(client, item["mlflow_run_id"]) for item in selection["finished"])
    assert histories == [[1], list(range(1, 17))], histories


class _Trial:
    def __init__(self, trial_id: str, status: str = "RUNNING", grid=None):
        self.trial_id = trial_id
        self.status = status
        self.config = {"grid": grid or {}}
        self.error_file = None


def test_grid_counter_counts_against_the_whole_grid(capsys):
    """Tune creates trials lazily (max_concurrent_trials=2: two exist when the first finishes), so the
    counter's total is the grid's size (2 x 2 = 4), not the trials created so far ("1/2 done" was the bug)."""
    from vreid.distributed.grid import grid_size, progress_callback

    params = {"stage1.batch_size+stage2.batch_size": [16, 32], "stage1.lr+stage2.lr": [0.03, 0.08]}
    assert grid_size(params) == 4
    cb = progress_callback(grid_size(params))
    a, b = _Trial("a_00000"), _Trial("a_00001")
    cb.on_trial_complete(0, [a, b], a)  # Tune updates a's status after this callback
    a.status = "TERMINATED"
    c = _Trial("a_00002")
    cb.on_trial_error(0, [a, b, c], b)
    b.status = "ERROR"
    d = _Trial("a_00003")
    cb.on_trial_complete(0, [a, b, c, d], c)
    lines = [line for line in capsys.readouterr().out.splitlines() if "done)" in line]
    assert ["(1/4 done)" in lines[0], "(2/4 done)" in lines[1], "(3/4 done)" in lines[2]] == [True] * 3, lines


def test_run_names_from_swept_values():
    from vreid.distributed.grid import run_name

    assert run_name({"stage1.batch_size+stage2.batch_size": 32, "stage1.lr+stage2.lr": 0.03}) == "bs32-lr0.03"
    assert run_name({"model.backbone": "resnet50_ibn_a", "recipe": "ssbver"}) == "resnet50_ibn_a-ssbver"
    # two swept keys with the same last part keep their stage
    assert run_name({"stage1.lr": 0.1, "stage2.lr": 0.01}) == "stage1.lr0.1-stage2.lr0.01"
    assert run_name({"stage1.lr": 1e-4}) == "lr0.0001"


def test_a_stalled_trial_is_reported_once(capsys):
    from vreid.distributed.grid import progress_callback

    now = [0.0]
    cb = progress_callback(2, stall_s=60, clock=lambda: now[0])
    a, b = _Trial("s_00000"), _Trial("s_00001", status="PENDING")
    cb.on_step_end(0, [a, b])
    now[0] = 59.0
    cb.on_step_end(0, [a, b])
    assert "no report" not in capsys.readouterr().out
    now[0] = 61.0
    cb.on_step_end(0, [a, b])
    cb.on_step_end(0, [a, b])  # once, not at every step
    out = capsys.readouterr().out
    assert out.count("no report for 1m01s while RUNNING (1 trial(s) PENDING)") == 1, out
    cb.on_trial_result(0, [a, b], a, {"final": 1})  # it reports again: the clock restarts
    now[0] = 100.0
    cb.on_step_end(0, [a, b])
    assert "no report" not in capsys.readouterr().out
