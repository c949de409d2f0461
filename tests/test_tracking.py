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
