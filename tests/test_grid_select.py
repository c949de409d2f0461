"""select_best: the pure grid selection (VehicleNet: "we select 8 best models on the validation set")."""

from __future__ import annotations

import pytest

from vreid.distributed.grid import select_best, trial_rows
from vreid.errors import VreidError


def _row(tid, error=None, **metrics):
    r = {"trial_id": tid, "config": {}, "metrics": metrics, "checkpoint_uri": f"file:///ck/{tid}", "mlflow_run_id": None}
    if error:
        r["error"] = error
    return r


def test_best_k_by_metric_max_and_min():
    rows = [_row("a", val_mAP=0.3, loss=2.0), _row("b", val_mAP=0.5, loss=3.0), _row("c", val_mAP=0.1, loss=1.0),
            _row("d", error="RuntimeError: boom")]
    out = select_best(rows, "val_mAP", "max", 2)
    assert [r["trial_id"] for r in out["selected"]] == ["b", "a"]
    assert [r["trial_id"] for r in out["finished"]] == ["b", "a", "c"]
    assert [r["trial_id"] for r in out["failed"]] == ["d"]
    assert [r["trial_id"] for r in select_best(rows, "loss", "min", 1)["selected"]] == ["c"]


def test_zero_is_a_value_not_missing():
    # before: `metrics.get(metric) or -inf` ranked an mAP of 0.0 like a missing one (below a negative score)
    rows = [_row("neg", score=-0.5), _row("zero", score=0.0)]
    assert [r["trial_id"] for r in select_best(rows, "score", "max", 2)["selected"]] == ["zero", "neg"]
    assert [r["trial_id"] for r in select_best(rows, "score", "min", 1)["selected"]] == ["neg"]


def test_ties_keep_order_and_top_k_larger_than_rows():
    rows = [_row("x", val_mAP=0.2), _row("y", val_mAP=0.2), _row("z", val_mAP=0.2)]
    assert [r["trial_id"] for r in select_best(rows, "val_mAP", "max", 10)["selected"]] == ["x", "y", "z"]


def test_unknown_metric_names_it_and_the_available_ones():
    rows = [_row("a", val_mAP=0.3, val_rank1=0.5), _row("b", val_mAP=0.2, val_rank1=0.4)]
    with pytest.raises(VreidError, match=r"grid.metric 'val_map' is not reported by trial a; the trials report: "
                                         r"val_mAP, val_rank1"):
        select_best(rows, "val_map", "max", 1)
    with pytest.raises(VreidError, match="not a number"):
        select_best([_row("a", val_mAP=float("nan"))], "val_mAP", "max", 1)
    with pytest.raises(VreidError, match="grid.mode"):
        select_best(rows, "val_mAP", "best", 1)
    with pytest.raises(VreidError, match="top_k"):
        select_best(rows, "val_mAP", "max", 0)


def test_only_failed_trials_select_nothing():
    out = select_best([_row("a", error="did not finish")], "val_mAP", "max", 2)
    assert out["selected"] == [] and len(out["failed"]) == 1


class _Result:
    def __init__(self, metrics, path, error=None, config=None):
        self.metrics, self.path, self.error, self.config = metrics, path, error, config or {"grid": {"lr": 0.1}}


def test_trial_rows_take_ids_from_ray_results_not_folder_names():
    grid = [_Result({"trial_id": "abc12_00001", "final": 1, "val_mAP": 0.0, "checkpoint_path": "/ck/1",
                     "time_total_s": 3.0}, "/exp/some_renamed_folder"),
            _Result({"trial_id": "abc12_00002"}, "/exp/grid_trial_ffff_00009", error=RuntimeError("oom"))]
    rows = trial_rows(grid)
    assert [r["trial_id"] for r in rows] == ["abc12_00001", "abc12_00002"]
    assert rows[0]["metrics"] == {"val_mAP": 0.0} and rows[0]["checkpoint_uri"] == "file:///ck/1"
    assert rows[1]["error"] == "RuntimeError: oom"
    assert select_best(rows, "val_mAP", "max", 1)["selected"][0]["trial_id"] == "abc12_00001"
