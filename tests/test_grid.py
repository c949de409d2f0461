"""The grid's driver-side parts without training: the progress counter and stall warning, run names,
the grid points that cannot train, a grid with no valid point refused before Ray starts.

(A grid interrupted and resumed, worker death inside a trial, a point that cannot train among valid
ones, and MLflow over HTTP are checked on the pipeline's own grid in tests/test_pipeline.py, so the
suite trains one grid, not two.)
"""

from __future__ import annotations

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


def test_sigint_handler_is_put_back_after_a_fit():
    """Ray Tune's and Ray Train's fit() replace the main thread's SIGINT handler and leave theirs behind
    (Tune's then swallows the next Ctrl+C, Train's exits 0 on it); run_grid and fit_stage put the
    caller's back, also when the fit raises."""
    import signal

    from vreid.distributed.ray_train import sigint_restored

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGINT, mine)
    try:
        with sigint_restored():
            signal.signal(signal.SIGINT, lambda signum, frame: None)  # what fit() does in the main thread
        assert signal.getsignal(signal.SIGINT) is mine
        with pytest.raises(RuntimeError), sigint_restored():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            raise RuntimeError("fit failed")
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)
