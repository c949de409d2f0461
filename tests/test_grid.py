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
    """Two concurrent trials, Stage-I only (what is resumed is Tune's experiment, not the chaining of
    stages, which the pipeline's grid covers), of 1 and 4 epochs at 32 x 32. The long one holds after
    its epoch 2 was reported (a test callback: no race with its training); the driver is interrupted
    once the short one has finished and the long one holds. The resumed grid finishes the long one from
    its checkpoint, each epoch logged once, and does not train the short one again. (Racing a 16-epoch
    trial instead once lost epoch 5: checkpointed, then the driver stopped before logging it; resuming
    now logs such an epoch from its checkpoint, tests/test_tracking.py.)"""
    from mlflow import MlflowClient

    from vreid.distributed.grid import run_grid

    raw = grid_dict(vehiclenet_manifests, tmp_path, {"stage1.epochs": [1, 4]},
                    **{"name": "resume", "grid.max_concurrent_trials": 2, "stage1.milestones": [3], "stage2.epochs": 0,
                       "data.image_size": [32, 32]})
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
    first = None
    while time.time() < deadline and not (first and (hold / "held").exists()):
        done = sorted(storage.glob("resume-*-stage1/vreid_stage.json"))
        first = done[0] if done else None
        if proc.poll() is not None:
            pytest.fail("the grid driver exited early:\n" + (tmp_path / "driver.log").read_text()[-3000:])
        time.sleep(0.5)
    assert first is not None and (hold / "held").exists(), "the short trial did not finish, or the long one did not reach its hold"
    proc.send_signal(signal.SIGINT)  # the driver is interrupted while the long trial holds after epoch 2
    proc.wait(timeout=120)
    (hold / "release").write_text("")  # the resumed run passes its epoch 2 (it resumes after it anyway)
    assert len(list(storage.glob("resume-*-stage1/vreid_stage.json"))) == 1
    finished_trial = first.parent.name.removeprefix("resume-").removesuffix("-stage1")
    before = {p.name for p in (storage / f"resume-{finished_trial}-stage1").glob("checkpoint_*")}
    assert before

    cfg = config_from_dict(raw)
    cfg.data = cfg.data.resolved()
    from engine_callbacks import HoldAfterEpoch, by_value

    by_value()
    # the same extra config as the interrupted driver's (Tune restores only an unchanged param space)
    selection = run_grid(cfg, resume=True, extra_config={"callbacks": [HoldAfterEpoch(2, str(hold))]})
    assert len(selection["finished"]) == 2, selection
    after = {p.name for p in (storage / f"resume-{finished_trial}-stage1").glob("checkpoint_*")}
    assert after == before, "a finished trial was trained again"
    assert not list(storage.glob("resume-*-stage2")), "stage2.epochs: 0 ran a Stage-II"
    client = MlflowClient(selection["tracking_uri"])
    histories = sorted(epoch_history(client, item["mlflow_run_id"]) for item in selection["finished"])
    assert histories == [[1], [1, 2, 3, 4]], histories
    long_run = next(i for i in selection["finished"] if epoch_history(client, i["mlflow_run_id"]) == [1, 2, 3, 4])
    lrs = sorted(m.step for m in client.get_metric_history(long_run["mlflow_run_id"], "stage1/loss"))
    assert lrs == [1, 2, 3, 4], lrs


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
    whose config is invalid is set apart with the error naming the field, before any trial starts."""
    from vreid.distributed.grid import check_points, grid_points, grid_size

    params = {"stage1.batch_size+stage2.batch_size": [16, 32], "stage1.lr+stage2.lr": [0.05, -1.0, 0.08]}
    points = grid_points(params)
    assert len(points) == grid_size(params) == 6
    k, lr = "stage1.batch_size+stage2.batch_size", "stage1.lr+stage2.lr"
    assert points == [{k: 16, lr: 0.05}, {k: 16, lr: -1.0}, {k: 16, lr: 0.08},
                      {k: 32, lr: 0.05}, {k: 32, lr: -1.0}, {k: 32, lr: 0.08}]
    base = config_from_dict(grid_dict(tmp_path, tmp_path, params)).to_dict()
    base["grid"] = None
    valid, invalid = check_points(base, points)
    assert valid == [points[0], points[2], points[3], points[5]]
    assert [i for i, _, _ in invalid] == [1, 4]
    assert all("'stage1.lr' must be > 0, got -1.0" in str(exc) for _, _, exc in invalid)
    assert "grid point bs16-lr-1" in str(invalid[0][2])
