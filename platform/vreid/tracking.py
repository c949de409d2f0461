"""MLflow tracking: where runs go, how a trial's epochs are logged, and reading runs back.

* Tracking URI: ``$MLFLOW_TRACKING_URI`` when set (e.g. an ``mlflow server`` on the cluster), else an
  absolute SQLite file ``<output root>/mlflow.db`` (absolute because Tune changes directories).
* One experiment per grid (or ``vreid train`` name); a parent run for the grid, a child run per trial
  with the flattened config as params, per-epoch metrics logged by :class:`MLflowEpochLogger` (a Ray Train
  callback running in the Train controller, so it sees each *persisted* report exactly once - a worker
  that dies and resumes from its checkpoint never logs an epoch twice).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from ray.train.v2.api.callback import UserCallback

STAGE_PREFIXED = ("loss", "loss_ce", "loss_triplet", "loss_ssl", "lr", "images_per_s", "epoch_time_s")


def default_tracking_uri(root: str | os.PathLike = "outputs") -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(root).resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def configure(tracking_uri: str) -> None:
    """Point MLflow's fluent API at ``tracking_uri`` for this process.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; that would make this URI the
    default of every later run in the process (and of its children), so the variable is restored.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def get_or_create_experiment(name: str, tracking_uri: str, artifact_root: Optional[str] = None) -> str:
    import mlflow

    configure(tracking_uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    kwargs = {}
    if artifact_root and tracking_uri.startswith("sqlite"):
        kwargs["artifact_location"] = Path(artifact_root).resolve().as_uri()
    return mlflow.create_experiment(name, **kwargs)


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def file_hash(path: str | None) -> str:
    """A short content hash of a manifest, so a run records exactly which data it saw."""
    import hashlib

    if not path or not Path(path).is_file():
        return "none"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    # MLflow keys allow letters, digits, _ - . / and spaces: a joined grid key "a.b+c.d" becomes "a.b and c.d"
    items = [Param(k.replace("+", " and "), str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


class MLflowEpochLogger(UserCallback):
    """Logs each persisted Ray Train report of one stage to an MLflow run, and prints a progress line.

    ``step_offset`` makes steps global across stages (Stage-II's epoch 1 follows Stage-I's last).
    Metrics like the loss are logged both as ``<stage>/loss`` and ``loss``; validation metrics as
    ``val_mAP`` etc.
    """

    def __init__(self, tracking_uri: str, run_id: str, stage: str, step_offset: int = 0, label: str = ""):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.stage = stage
        self.step_offset = step_offset
        self.label = label

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric
        import time

        m = metrics[0]
        epoch = int(m.get("epoch", 0))
        step = self.step_offset + epoch
        now = int(time.time() * 1000)
        batch = []
        for key, value in m.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or key == "epoch":
                continue
            if key in STAGE_PREFIXED:
                batch.append(Metric(f"{self.stage}/{key}", float(value), now, step))
            batch.append(Metric(key, float(value), now, step))
        client = MlflowClient(self.tracking_uri)
        client.log_batch(self.run_id, metrics=batch)
        if checkpoint is not None:
            client.set_tag(self.run_id, f"checkpoint.{self.stage}", checkpoint.path)
        val = m.get("val_mAP", -1)
        print(
            f"[vreid] {self.label} {self.stage} epoch {epoch}: loss {m.get('loss', float('nan')):.4f} "
            f"val mAP {val:.4f} rank1 {m.get('val_rank1', -1):.4f} ({m.get('images_per_s', 0):.0f} img/s)",
            flush=True,
        )


def runs_dataframe(experiment: str, tracking_uri: str):
    """All runs of an experiment as a pandas DataFrame (``mlflow.search_runs``)."""
    import mlflow

    configure(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        from vreid.errors import VreidError

        raise VreidError(f"no MLflow experiment named '{experiment}' at {tracking_uri}")
    return mlflow.search_runs(experiment_ids=[exp.experiment_id], max_results=10000)


COMPARE_METRICS = ("val_mAP", "val_rank1", "val_rank5", "val_mINP")
EFFICIENCY_METRICS = ("eff_params_m", "eff_ms_per_image_b1", "eff_images_per_s", "eff_peak_mem_mb", "eff_feat_dim")


def compare_table(experiment: str, tracking_uri: str):
    """The grid's trials as one table sorted by validation mAP (``vreid compare``).

    Columns: the swept config keys (params that differ between trials, plus the backbone), the final
    validation metrics, efficiency (parameters, ms/image, peak memory, feature dims), whether the
    trial was selected, its status and MLflow run id.
    """
    import pandas as pd

    runs = runs_dataframe(experiment, tracking_uri)
    if "tags.vreid.role" in runs.columns:
        runs = runs[~runs["tags.vreid.role"].fillna("").isin(["grid", "ensemble", "report"])]
    if runs.empty:
        from vreid.errors import VreidError

        raise VreidError(f"MLflow experiment '{experiment}' has no trial runs yet")
    param_cols = [c for c in runs.columns if c.startswith("params.")]
    varying = [c for c in param_cols if runs[c].nunique(dropna=False) > 1 and not c.endswith(("name", "description"))]
    keep = ["params.model.backbone", "params.recipe"] + [c for c in varying if c not in ("params.model.backbone", "params.recipe")]
    table = pd.DataFrame({"trial": runs.get("tags.vreid.trial_id", runs["tags.mlflow.runName"]).fillna(runs["tags.mlflow.runName"])})
    for c in keep:
        if c in runs.columns:
            table[c.removeprefix("params.")] = runs[c]
    for m in COMPARE_METRICS + EFFICIENCY_METRICS:
        col = f"metrics.{m}"
        table[m.removeprefix("eff_")] = runs[col] if col in runs.columns else float("nan")
    table["selected"] = runs.get("tags.vreid.selected", pd.Series(index=runs.index, dtype=object)).fillna("").eq("true")
    table["status"] = runs["status"]
    table["run_id"] = runs["run_id"]
    return table.sort_values("val_mAP", ascending=False, na_position="last").reset_index(drop=True)
