"""The Ray Tune grid: each trial is a Tune *function trainable* that runs the recipe's stages as
``TorchTrainer`` runs (Ray Train V2 no longer accepts a trainer inside ``tune.Tuner``), reports every
epoch to Tune through ``TuneReportCallback`` and to MLflow through :class:`~vreid.tracking.MLflowEpochLogger`.

After the grid, the best ``top_k`` trials by their final validation mAP (VehicleNet: "we select 8 best
models on the validation set") are written to ``<storage>/<grid name>/selection.json`` and their MLflow
runs tagged ``vreid.selected``. A trial that fails for good is reported with its error; the grid still
finishes and selects from the others.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Optional

from vreid.config import RunConfig, config_from_dict, set_dotted
from vreid.errors import VreidError
from vreid.io import atomic_write_text

SELECTION_FILE = "selection.json"
METRIC_KEYS = ("val_mAP", "val_rank1", "val_rank5", "val_mINP")


def grid_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: one grid point, Stage-I then Stage-II (or one SSBVER stage)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from vreid import tracking
    from vreid.distributed.ray_train import run_recipe, storage_path_for
    from vreid.models import measure_efficiency
    from vreid.train.checkpoint import load_model_for_inference
    from vreid.distributed.run import start_mlflow_run

    ctx = ray.tune.get_context()
    trial_id = ctx.get_trial_id()
    run = copy.deepcopy(config["run"])
    for key, value in (config.get("grid") or {}).items():
        set_dotted(run, key, value)
    run["grid"] = None
    grid_name = config["grid_name"]
    try:
        cfg = config_from_dict(run, f"grid trial {trial_id}")
    except VreidError as exc:  # a grid point that cannot train: a FAILED run that says why
        _failed_run(grid_name, trial_id, config, exc)
        raise
    cfg.name = f"{grid_name}-{trial_id}"
    storage = storage_path_for(cfg)
    uri = config["tracking_uri"]

    run_file = Path(storage) / grid_name / "trials" / f"{trial_id}.json"
    run_file.parent.mkdir(parents=True, exist_ok=True)
    if run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
    else:
        tags = {"vreid.trial_id": trial_id, "vreid.grid": grid_name}
        tags.update({f"grid.{k.replace('+', ' and ')}": str(v) for k, v in (config.get("grid") or {}).items()})
        run_id = start_mlflow_run(cfg, grid_name, f"{trial_id}", uri, parent_run_id=config.get("parent_run_id"), tags=tags)
        run_file.write_text(json.dumps({"run_id": run_id}))

    def callbacks(stage: str, offset: int) -> list:
        return [TuneReportCallback(), tracking.MLflowEpochLogger(uri, run_id, stage, offset, label=trial_id)]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    try:
        results = run_recipe(cfg, cfg.name, storage, callbacks, extra_config=config.get("extra_config"),
                             log=lambda s: print(s, flush=True))
    except Exception as exc:
        client.set_tag(run_id, "vreid.error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run_id, status="FAILED")
        raise
    final = results[cfg.stages[-1]]
    for stage, res in results.items():
        client.set_tag(run_id, f"checkpoint.{stage}", res["checkpoint"])
    client.set_tag(run_id, "checkpoint", final["checkpoint"])
    # efficiency of the exported model (SSBVER Table 1)
    model, info = load_model_for_inference(final["checkpoint"])
    eff = measure_efficiency(model, tuple(info["image_size"]), batch_size=8, device="cpu")
    client.log_batch(run_id, metrics=[_metric(f"eff_{k}", v) for k, v in eff.items() if isinstance(v, (int, float))])
    for key, value in efficiency_context("cpu").items():
        client.set_tag(run_id, f"eff.{key}", value)
    client.set_terminated(run_id)
    # The final row: also covers a restored trial whose stages had all finished (nothing else reported).
    # only the metrics the stage measured (no stand-in values): select_best checks grid.metric against them
    measured = {k: v for k, v in final["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ray.tune.report({**measured, "checkpoint_path": final["checkpoint"],
                 "stage": cfg.stages[-1], "final": 1, "mlflow_run_id": run_id, "trial_id": trial_id})


def efficiency_context(device: str) -> dict[str, str]:
    """What the efficiency figures were measured on (device, processor, library versions)."""
    import platform as _platform

    import mlflow
    import ray
    import timm
    import torch

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else (_platform.processor() or _platform.machine())
    return {"device": f"{device} ({name})", "torch_version": torch.__version__, "timm_version": timm.__version__,
            "ray_version": ray.__version__, "mlflow_version": mlflow.__version__}


def _failed_run(grid_name: str, trial_id: str, config: dict[str, Any], exc: Exception) -> None:
    from mlflow import MlflowClient

    from vreid import tracking

    uri = config["tracking_uri"]
    exp_id = tracking.get_or_create_experiment(grid_name, uri)
    client = MlflowClient(uri)
    tags = {"vreid.trial_id": trial_id, "vreid.grid": grid_name, "vreid.error": f"{type(exc).__name__}: {exc}"[:5000]}
    if config.get("parent_run_id"):
        tags["mlflow.parentRunId"] = config["parent_run_id"]
    run = client.create_run(exp_id, run_name=trial_id, tags=tags)
    try:
        tracking.log_params(client, run.info.run_id, dict(config.get("grid") or {}))
    finally:
        client.set_terminated(run.info.run_id, status="FAILED")


def progress_callback():
    """A Tune callback in the driver: one line per reported epoch and per finished or failed trial
    (so a grid run with ``log_to_driver=False`` still shows its progress, without Ray's log noise)."""
    from ray.tune import Callback

    class _Progress(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("final"):
                return
            print(f"[vreid] trial {trial.trial_id} {result.get('stage', '?')} epoch {result.get('epoch', '?')}: "
                  f"loss {result.get('loss', float('nan')):.4f}  val mAP {result.get('val_mAP', -1):.4f}  "
                  f"rank1 {result.get('val_rank1', -1):.4f}  ({result.get('images_per_s', 0):.0f} img/s)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            # called before this trial's own status is updated
            done = 1 + sum(t.status == "TERMINATED" for t in trials if t is not trial)
            print(f"[vreid] trial {trial.trial_id} finished ({done}/{len(trials)} done)", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[vreid] trial {trial.trial_id} FAILED: {str(trial.error_file or '')}", flush=True)

    return _Progress()


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def run_grid(cfg: RunConfig, name: Optional[str] = None, resume: bool = False, num_cpus: Optional[float] = None,
             extra_config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run the grid of ``cfg.grid`` (Tune grid search over dotted keys), select the best k, track it."""
    import ray.tune as tune
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.distributed.ray_train import init_ray, storage_path_for
    from vreid.distributed.run import start_mlflow_run

    if cfg.grid is None or not cfg.grid.params:
        raise VreidError("this config has no 'grid.params' section to sweep")
    name = name or cfg.name
    grid = cfg.grid
    init_ray(num_cpus=num_cpus)
    storage = storage_path_for(cfg)
    exp_dir = Path(storage) / name
    uri = cfg.output.mlflow_tracking_uri or tracking.default_tracking_uri(cfg.output.root)
    tracking.get_or_create_experiment(name, uri, artifact_root=Path(cfg.output.root) / "mlartifacts")
    parent_file = exp_dir / "mlflow_parent.json"
    exp_dir.mkdir(parents=True, exist_ok=True)
    if parent_file.is_file():
        parent_run_id = json.loads(parent_file.read_text())["run_id"]
    else:
        parent_run_id = start_mlflow_run(cfg, name, f"{name} (grid)", uri, tags={"vreid.grid": name, "vreid.role": "grid"})
        parent_file.write_text(json.dumps({"run_id": parent_run_id}))

    base = cfg.to_dict()
    base["grid"] = None
    param_space = {
        "run": base,
        "grid": {k: tune.grid_search(list(v)) for k, v in grid.params.items()},
        "grid_name": name,
        "tracking_uri": uri,
        "parent_run_id": parent_run_id,
        "extra_config": extra_config or {},
    }
    resources = {"cpu": grid.trial_cpus}
    if grid.trial_gpus:
        resources["gpu"] = grid.trial_gpus
    trainable = tune.with_resources(grid_trial, resources)
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        print(f"[vreid] resuming grid {name} from {exp_dir}", flush=True)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   param_space=param_space)
    else:
        if tune.Tuner.can_restore(str(exp_dir)) and not resume:
            raise VreidError(f"grid '{name}' already exists at {exp_dir}: pass --resume to continue it, or a new --name")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=grid.max_concurrent_trials or None),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=[progress_callback()],
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    result_grid = tuner.fit()
    selection = selection_from_results(result_grid, name, grid.top_k, grid.metric, grid.mode, uri)
    atomic_write_text(exp_dir / SELECTION_FILE, json.dumps(selection, indent=2, sort_keys=True))
    client = MlflowClient(uri)
    for rank, item in enumerate(selection["selected"], 1):
        if item.get("mlflow_run_id"):
            client.set_tag(item["mlflow_run_id"], "vreid.selected", "true")
            client.set_tag(item["mlflow_run_id"], "vreid.selected_rank", str(rank))
    client.set_tag(parent_run_id, "vreid.selection", str(exp_dir / SELECTION_FILE))
    client.set_terminated(parent_run_id)
    selection["path"] = str(exp_dir / SELECTION_FILE)
    return selection


def trial_rows(result_grid) -> list[dict[str, Any]]:
    """One row per trial of a Ray Tune ``ResultGrid``: its id (``trial_id``, which Tune puts in every
    trial's last result, reported or not), grid point, every numeric metric of its last result, checkpoint,
    MLflow run and error. A trial counts as finished only if it has no error and sent the final row."""
    rows = []
    for result in result_grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id")
        if not trial_id:
            raise VreidError(f"a Ray Tune result without a trial_id (trial folder {result.path})")
        row = {
            "trial_id": str(trial_id),
            "config": (result.config or {}).get("grid", {}),
            "metrics": {k: v for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _TUNE_KEYS},
            "checkpoint_uri": _as_uri(metrics.get("checkpoint_path")),
            "mlflow_run_id": metrics.get("mlflow_run_id"),
        }
        if result.error is not None or not metrics.get("final"):
            row["error"] = f"{type(result.error).__name__}: {result.error}" if result.error else "did not finish"
        rows.append(row)
    return rows


# bookkeeping keys Tune adds to every result: never a selection metric
_TUNE_KEYS = {"final", "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "pid",
              "time_since_restore", "iterations_since_restore", "done", "epoch", "stage"}


def select_best(rows: list[dict[str, Any]], metric: str, mode: str = "max", top_k: int = 1) -> dict[str, list]:
    """Pure selection: the best ``top_k`` finished rows (no ``error``) by ``rows[i]["metrics"][metric]``.

    ``metric`` must be one every finished trial reported (else a :class:`VreidError` naming it and the
    metrics the trials do report); a value of 0.0 is a value, not "missing"; NaN or None is refused.
    Ties keep the rows' order. Returns ``{"selected", "finished" (sorted best first), "failed"}``."""
    if mode not in ("max", "min"):
        raise VreidError(f"grid.mode must be 'max' or 'min', got {mode!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise VreidError(f"grid.top_k must be an integer >= 1, got {top_k!r}")
    finished = [r for r in rows if not r.get("error")]
    failed = [r for r in rows if r.get("error")]
    if finished:
        available = sorted(set().union(*(r.get("metrics", {}).keys() for r in finished)))
        for r in finished:
            value = r.get("metrics", {}).get(metric)
            if value is None:
                raise VreidError(f"grid.metric '{metric}' is not reported by trial {r['trial_id']}; the trials "
                                 f"report: {', '.join(available) or '(no metrics)'}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                raise VreidError(f"grid.metric '{metric}' of trial {r['trial_id']} is {value!r}, not a number")
    sign = -1.0 if mode == "max" else 1.0
    ordered = sorted(finished, key=lambda r: sign * float(r["metrics"][metric]))  # stable: ties keep order
    return {"selected": ordered[:top_k], "finished": ordered, "failed": failed}


def selection_from_results(result_grid, name: str, top_k: int, metric: str, mode: str,
                           tracking_uri: str) -> dict[str, Any]:
    """The grid's ``selection.json`` content: :func:`select_best` over the trials of ``result_grid``."""
    chosen = select_best(trial_rows(result_grid), metric, mode, top_k)
    return {"grid": name, "metric": metric, "mode": mode, "top_k": top_k, "tracking_uri": tracking_uri, **chosen}


def _as_uri(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    if "://" in path:
        return path
    return Path(path).resolve().as_uri()


def load_selection(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / SELECTION_FILE
    if not path.is_file():
        raise VreidError(f"selection file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VreidError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "selected" not in data:
        raise VreidError(f"{path}: expected a vreid selection with a 'selected' list")
    return data
