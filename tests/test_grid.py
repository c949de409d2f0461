"""A grid whose driver is interrupted continues with ``--resume`` without re-running finished trials.

(Worker death inside a trial, a grid point that cannot train, and MLflow over HTTP are checked on the
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
    """A grid of two points, Stage-I only (what is resumed is Tune's experiment, not the chaining of
    stages, which the pipeline's grid covers), at 32 x 32: a trial of 3 epochs that holds after its
    epoch 2 was reported (a test callback: no race with its training), and a point that cannot train
    (reported before the grid starts). The driver is interrupted while the trial holds. The resumed grid
    trains only epoch 3, from the checkpoint of epoch 2; each epoch is logged once; the point that cannot
    train keeps its one FAILED run. (One trial, not two: each trial costs a Tune trial actor, a Train
    controller, a worker and Train's helper actors, ~40 CPU-seconds on this 2-core machine; a finished
    stage left alone on resume is the stage marker's job, tests/test_bad_input.py. Racing a 16-epoch
    trial instead once lost epoch 5: checkpointed, then the driver stopped before logging it; resuming
    now logs such an epoch from its checkpoint, tests/test_tracking.py.)"""
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.distributed.grid import run_grid

    raw = grid_dict(vehiclenet_manifests, tmp_path, {"stage1.lr": [0.05, -1.0]},
                    **{"name": "resume", "grid.top_k": 1, "stage1.epochs": 3, "stage1.milestones": [3],
                       "stage2.epochs": 0, "data.image_size": [32, 32]})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    hold = tmp_path / "hold"
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from engine_callbacks import HoldAfterEpoch, by_value\n"
        "from vreid.config import load_config\n"
        "from vreid.distributed.grid import run_grid\n"
        "from vreid.distributed.ray_train import init_ray\n"
        "by_value()\n"
        f"cfg = load_config({str(space)!r})\n"
        "init_ray()\n"
        f"run_grid(cfg, extra_config={{'callbacks': [HoldAfterEpoch(2, {str(hold)!r})]}})\n")
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, str(driver)], env=env, stdout=log, stderr=subprocess.STDOUT)
    storage = tmp_path / "ray"
    deadline = time.time() + 600
    while time.time() < deadline and not (hold / "held").exists():
        if proc.poll() is not None:
            pytest.fail("the grid driver exited early:\n" + (tmp_path / "driver.log").read_text()[-3000:])
        time.sleep(0.5)
    assert (hold / "held").exists(), "the trial did not reach its hold"
    proc.send_signal(signal.SIGINT)  # the driver is interrupted while the trial holds after epoch 2
    proc.wait(timeout=120)
    (hold / "release").write_text("")  # the resumed run passes its epoch 2 (it resumes after it anyway)
    assert (hold / "epochs").read_text().split() == ["1", "2"]
    assert not list(storage.glob("resume-*-stage1/vreid_stage.json")), "the trial finished before the interrupt"
    uri = tracking.default_tracking_uri(tmp_path)
    assert len(tracking.runs_dataframe("resume", uri).query("`tags.vreid.role` == 'trial'")) == 2

    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    from engine_callbacks import HoldAfterEpoch, by_value

    by_value()
    # the same extra config as the interrupted driver's (Tune restores only an unchanged param space)
    selection = run_grid(cfg, resume=True, extra_config={"callbacks": [HoldAfterEpoch(2, str(hold))]})
    assert (hold / "epochs").read_text().split() == ["1", "2", "3"], "the resumed trial did not start from epoch 2's checkpoint"
    assert len(selection["finished"]) == 1 and len(selection["failed"]) == 1, selection
    assert "'stage1.lr' must be > 0" in selection["failed"][0]["error"]
    assert not list(storage.glob("resume-*-stage2")), "stage2.epochs: 0 ran a Stage-II"
    client = MlflowClient(selection["tracking_uri"])
    run_id = selection["finished"][0]["mlflow_run_id"]
    assert epoch_history(client, run_id) == [1, 2, 3]
    assert epoch_history(client, run_id, "stage1/loss") == [1, 2, 3]
    trials = tracking.runs_dataframe("resume", uri).query("`tags.vreid.role` == 'trial'")
    assert sorted(trials["status"]) == ["FAILED", "FINISHED"], trials[["status", "tags.vreid.trial_id"]]


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


def test_grid_points_and_the_ones_that_cannot_train(tmp_path):
    """The grid's points are the product of the swept values (2 x 3 here, written out by hand); a point
    whose config is invalid is set apart with the error naming the field. The Python API's run_grid
    refuses a grid with no valid point before Ray starts (`vreid grid` refuses any invalid point:
    tests/test_bad_input.py)."""
    import ray

    from vreid.distributed.grid import run_grid
    from vreid.errors import VreidError
    from vreid.preflight import grid_points, split_grid_points

    params = {"stage1.batch_size+stage2.batch_size": [16, 32], "stage1.lr+stage2.lr": [0.05, -1.0, 0.08]}
    cfg = config_from_dict(grid_dict(tmp_path, tmp_path, params))
    points = grid_points(cfg)
    k, lr = "stage1.batch_size+stage2.batch_size", "stage1.lr+stage2.lr"
    assert points == [{k: 16, lr: 0.05}, {k: 16, lr: -1.0}, {k: 16, lr: 0.08},
                      {k: 32, lr: 0.05}, {k: 32, lr: -1.0}, {k: 32, lr: 0.08}]
    valid, invalid = split_grid_points(cfg, "space.yaml")
    assert valid == [points[0], points[2], points[3], points[5]]
    assert [i for i, _, _ in invalid] == [1, 4]
    assert all("'stage1.lr' must be > 0, got -1.0" in str(exc) for _, _, exc in invalid)
    assert f"space.yaml (grid.params.{k}=16, grid.params.{lr}=-1.0)" in str(invalid[0][2])
    none_valid = config_from_dict(grid_dict(tmp_path, tmp_path, {"stage1.lr": [-1.0, 0.0]}))
    ray_was_up = ray.is_initialized()  # the session's cluster, when an integration test ran first here
    with pytest.raises(VreidError, match=r"no point of grid 'demo' can train: .*got -1\.0.*got 0\.0"):
        run_grid(none_valid)
    assert ray.is_initialized() == ray_was_up, "Ray was started for a grid that could be refused before it"
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()
