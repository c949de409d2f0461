"""MLflow configuration: the default store, and no leaking of one grid's server into the next run."""

import os

from vreid import tracking


def test_default_uri_is_an_absolute_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.default_tracking_uri(tmp_path / "out")
    assert uri == f"sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db"


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.default_tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_configure_does_not_export_the_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure("http://127.0.0.1:5998")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking.default_tracking_uri(tmp_path).startswith("sqlite:///")


def _checkpoint(stage_dir, name, metrics):
    """A checkpoint folder as RayReport leaves it: the metrics the epoch reported in metrics.json."""
    import json

    d = stage_dir / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))


def test_an_epoch_checkpointed_but_not_logged_is_logged_once_on_resume(tmp_path, capsys):
    """A driver interrupted between Ray Train persisting epoch 5's checkpoint and the controller's
    after_report lost epoch 5 in MLflow (seen in the grid-resume test: steps 1-4, 6-16): resuming from
    that checkpoint must log it, once, whatever is resumed how often; epochs MLflow has stay as they are."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    storage = tmp_path / "ray"
    stage_dir = storage / "t-stage2"
    logger = tracking.MLflowEpochLogger(uri, run_id, "stage2", step_offset=4, label="t")
    for epoch in (1, 2):  # logged while the driver ran
        logger.log_epoch({"epoch": epoch, "loss": 3.0 - epoch, "val_mAP": 0.1 * epoch})
    _checkpoint(stage_dir, "checkpoint_2026-01-01_00-00-02.000000", {"epoch": 2, "loss": 1.0, "val_mAP": 0.2})
    _checkpoint(stage_dir, "checkpoint_2026-01-01_00-00-03.000000", {"epoch": 3, "loss": 0.5, "val_mAP": 0.35, "note": "x"})
    (stage_dir / "checkpoint_manager_snapshot.json").write_text("{}")
    damaged = stage_dir / "checkpoint_2026-01-01_00-00-01.000000"
    damaged.mkdir()
    (damaged / "metrics.json").write_text('{"epoch": 1, "loss"')  # a damaged file is named and skipped

    assert logger.backfill(str(storage), "t-stage2") == [3]
    assert "metrics.json: not JSON" in capsys.readouterr().out
    assert logger.backfill(str(storage), "t-stage2") == []  # a second resume logs nothing again
    history = {m.step: m.value for m in client.get_metric_history(run_id, "val_mAP")}
    assert history == {5: 0.1, 6: 0.2, 7: 0.35}
    assert sorted(m.step for m in client.get_metric_history(run_id, "stage2/loss")) == [5, 6, 7]
    # an epoch without validation (eval_every > 1) that MLflow has is not logged again
    for epoch in (4,):
        logger.log_epoch({"epoch": epoch, "loss": 0.4})
    _checkpoint(stage_dir, "checkpoint_2026-01-01_00-00-04.000000", {"epoch": 4, "loss": 0.4})
    assert logger.backfill(str(storage), "t-stage2") == []
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [5, 6, 7, 8]
    # nothing checkpointed yet (a stage's first start): nothing to do
    assert logger.backfill(str(storage), "t-stage9") == []
