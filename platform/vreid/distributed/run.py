"""One recipe run, tracked in MLflow: the library behind ``vreid train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from vreid.config import RunConfig


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows, columns=columns)
    return df.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def start_mlflow_run(cfg: RunConfig, experiment: str, run_name: str, tracking_uri: str,
                     parent_run_id: Optional[str] = None, tags: Optional[dict[str, str]] = None) -> str:
    """Create an MLflow run with the flattened config as params and provenance tags."""
    from mlflow import MlflowClient

    from vreid import tracking

    exp_id = tracking.get_or_create_experiment(experiment, tracking_uri, artifact_root=Path(cfg.output.root) / "mlartifacts")
    client = MlflowClient(tracking_uri)
    all_tags = {
        "mlflow.runName": run_name,
        "vreid.recipe": cfg.recipe,
        "vreid.backbone": cfg.model.backbone,
        "vreid.stages": ",".join(cfg.stages),
        "git_commit": tracking.git_commit(),
        "manifest.stage1_train": tracking.file_hash(cfg.data.stage1_train),
        "manifest.stage2_train": tracking.file_hash(cfg.data.stage2_train),
        "manifest.val_query": tracking.file_hash(cfg.data.val_query),
        "manifest.val_gallery": tracking.file_hash(cfg.data.val_gallery),
    }
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update(tags or {})
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    params = {k: v for k, v in cfg.flat().items() if not k.startswith("grid")}
    # the optimiser settings each stage trains with (unset keys and `optimizer: auto` resolved)
    import dataclasses

    from vreid.config import resolve_stage, ssl_out_dim

    for stage in cfg.stages:
        for key, value in dataclasses.asdict(resolve_stage(cfg.stage(stage), cfg.model.backbone)).items():
            params[f"{stage}.{key}"] = value
    if cfg.recipe == "ssbver":
        params["ssbver.dino_out_dim"] = ssl_out_dim(cfg)
    tracking.log_params(client, run.info.run_id, params)
    return run.info.run_id


def _run_params(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in cfg.flat().items() if k != "name"}, default=str))


def _resumable_run(cfg: RunConfig, storage: str, run_file: Path, uri: str) -> Optional[str]:
    """The MLflow run to continue for ``cfg.name``, or None to start a fresh one.

    The same config resumes (an interrupted or failed run picks up from its last checkpoint). A
    different config resumes nothing: if the earlier run failed or was killed, its Ray Train folders are
    moved aside (``<name>-<stage>.stale-<time>``) and a new run starts, so neither its checkpoints nor its
    MLflow params leak into the new one; if it is still resumable, the differing keys are named.
    """
    import time

    from mlflow import MlflowClient

    from vreid.errors import ConfigError

    if not run_file.is_file():
        return None
    try:
        prev = json.loads(run_file.read_text())
        run_id = prev["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        prev, run_id = {}, None
    status = None
    if run_id:
        try:
            status = MlflowClient(uri).get_run(run_id).info.status
        except Exception:  # noqa: BLE001 - a run deleted from MLflow (or another store): start afresh
            status = None
    now = _run_params(cfg)
    old = prev.get("config")
    if status is not None and (old == now or (old is None and status != "FAILED")):  # None: an older run file
        if status != "RUNNING":
            MlflowClient(uri).update_run(run_id, status="RUNNING")
        return run_id
    if status in ("RUNNING", "FINISHED") and old is not None:
        diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        raise ConfigError(f"run name '{cfg.name}' already exists ({run_file}) with a different config "
                          f"({', '.join(diff[:6])}); give a new --name")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for stage in cfg.stages:
        stale = Path(storage) / f"{cfg.name}-{stage}"
        if stale.exists():
            stale.rename(stale.with_name(f"{stale.name}.stale-{stamp}"))
    run_file.unlink()
    return None


def train_run(cfg: RunConfig, num_cpus: Optional[float] = None, extra_config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run ``cfg`` on the local (or ``$RAY_ADDRESS``) Ray cluster; log it to MLflow as one run.

    Re-running the same ``cfg.name`` resumes: finished stages are skipped, the unfinished one restarts
    from its last checkpoint, and the same MLflow run is continued.
    """
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.config import resolve_target
    from vreid.distributed.ray_train import init_ray, run_recipe, storage_path_for

    resolve_target(cfg)  # the target the manifests record, before the config is compared and recorded
    init_ray(num_cpus=num_cpus)
    storage = storage_path_for(cfg)
    uri = cfg.output.mlflow_tracking_uri or tracking.default_tracking_uri(cfg.output.root)
    run_file = Path(storage) / f"{cfg.name}.mlflow_run.json"
    run_id = _resumable_run(cfg, storage, run_file, uri)
    if run_id is None:
        run_id = start_mlflow_run(cfg, cfg.name, cfg.name, uri)
        run_file.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "config": _run_params(cfg)}))

    def callbacks(stage: str, offset: int) -> list:
        return [tracking.MLflowEpochLogger(uri, run_id, stage, offset, label=cfg.name)]

    client = MlflowClient(uri)
    try:
        results = run_recipe(cfg, cfg.name, storage, callbacks, extra_config=extra_config)
    except BaseException:  # the run is FAILED in MLflow, not left RUNNING; the CLI prints the reason
        client.set_terminated(run_id, status="FAILED")
        raise
    rows = []
    for stage, res in results.items():
        m = res["metrics"]
        client.set_tag(run_id, f"checkpoint.{stage}", res["checkpoint"])
        rows.append({"stage": stage, **{k: m.get(k) for k in ("epoch", "val_mAP", "val_rank1", "val_rank5", "val_mINP")}})
    final = results[cfg.stages[-1]]
    client.set_tag(run_id, "checkpoint", final["checkpoint"])
    client.set_terminated(run_id)
    table = format_table(rows, ["stage", "epoch", "val_mAP", "val_rank1", "val_rank5", "val_mINP"])
    return {"results": results, "run_id": run_id, "tracking_uri": uri, "table": table, "checkpoint": final["checkpoint"]}
