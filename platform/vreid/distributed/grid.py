"""The Ray Tune grid: each trial is a Tune *function trainable* that runs the recipe's stages as
``TorchTrainer`` runs (Ray Train V2 no longer accepts a trainer inside ``tune.Tuner``), reports every
epoch to Tune through ``TuneReportCallback`` and to MLflow through :class:`~vreid.tracking.MLflowEpochLogger`.

After the grid, the best ``top_k`` trials by their final validation mAP (VehicleNet: "we select 8 best
models on the validation set") are written to ``<storage>/<grid name>/selection.json`` and their MLflow
runs tagged ``vreid.selected``. A trial that fails for good is reported with its error; the grid still
finishes and selects from the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from vreid.config import RunConfig, config_from_dict
from vreid.errors import GridInterrupted, VreidError

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
    from vreid.preflight import point_run

    ctx = ray.tune.get_context()
    trial_id = ctx.get_trial_id()
    run = point_run(config["run"], config.get("grid") or {})
    grid_name = config["grid_name"]
    try:
        cfg = config_from_dict(run, f"grid trial {trial_id}")
    except VreidError as exc:  # a grid point that cannot train: a FAILED run that says why
        _failed_run(grid_name, trial_id, config, exc)
        raise
    cfg.name = f"{grid_name}-{trial_id}"
    storage = storage_path_for(cfg)
    uri = config["tracking_uri"]

    point = dict(config.get("grid") or {})
    name = run_name(point) or trial_id
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    # a retried or resumed trial (same trial id) continues its own MLflow run, wherever it runs now
    run_id = find_trial_run(client, uri, grid_name, trial_id)
    if run_id is None:
        tags = {"vreid.trial_id": trial_id, "vreid.grid": grid_name, "vreid.role": "trial",
                **tracking.source_tags(config.get("source") or "vreid grid",
                                       f"Grid **{grid_name}**, trial `{trial_id}`: {_point_text(point)}. {cfg.description}".strip())}
        tags.update({f"grid.{k.replace('+', ' and ')}": str(v) for k, v in point.items()})
        run_id = start_mlflow_run(cfg, grid_name, name, uri, parent_run_id=config.get("parent_run_id"), tags=tags)
        # the swept values also as `grid.<key>` params, so the runs table and compare view can show them first
        tracking.log_params(client, run_id, {f"grid.{k}": v for k, v in point.items()})
        tracking.log_manifest_inputs(client, run_id, manifest_paths(cfg))

    def callbacks(stage: str, offset: int) -> list:
        return [TuneReportCallback(), tracking.MLflowEpochLogger(uri, run_id, stage, offset, label=name)]

    extra = {"progress_label": name, **(config.get("extra_config") or {})}
    try:
        results = run_recipe(cfg, cfg.name, storage, callbacks, extra_config=extra, log=lambda s: print(s, flush=True))
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
    # the hand-on: the exported model as an MLflow model (mlflow.pytorch.load_model gives it back)
    model_uri = client.get_run(run_id).data.tags.get("vreid.model_uri")
    if not model_uri:  # a restored trial that already logged its model does not log it twice
        model_uri = tracking.log_reid_model(run_id, uri, _local_path(final["checkpoint"]), run)
        client.set_tag(run_id, "vreid.model_uri", model_uri)
    client.set_terminated(run_id)
    # The final row: also covers a restored trial whose stages had all finished (nothing else reported).
    # only the metrics the stage measured (no stand-in values): select_best checks grid.metric against them
    measured = {k: v for k, v in final["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ray.tune.report({**measured, "checkpoint_path": final["checkpoint"],
                 "stage": cfg.stages[-1], "final": 1, "mlflow_run_id": run_id, "trial_id": trial_id,
                 "model_uri": model_uri, "run_name": name})


def find_trial_run(client, uri: str, grid_name: str, trial_id: str) -> Optional[str]:
    """The MLflow run of ``trial_id`` in grid ``grid_name``, if one was started (the store is the
    trials' bookkeeping: it is shared by every node, unlike a node's disk)."""
    from vreid import tracking

    exp_id = tracking.get_or_create_experiment(grid_name, uri)
    runs = client.search_runs([exp_id], f"tags.`vreid.trial_id` = '{trial_id}' and tags.`vreid.grid` = '{grid_name}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def manifest_paths(cfg: RunConfig) -> dict[str, Optional[str]]:
    return {"stage1_train": cfg.data.stage1_train, "stage2_train": cfg.data.stage2_train,
            "val_query": cfg.data.val_query, "val_gallery": cfg.data.val_gallery}


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('+', ' = ')} = {v}" for k, v in point.items()) or "the base config"


def _local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


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


def _failed_run(grid_name: str, trial_id: str, config: dict[str, Any], exc: Exception) -> str:
    """A FAILED run for a grid point whose config is invalid, once (a resumed grid finds it); its id."""
    from mlflow import MlflowClient

    from vreid import tracking

    uri = config["tracking_uri"]
    client = MlflowClient(uri)
    point = dict(config.get("grid") or {})
    existing = find_trial_run(client, uri, grid_name, trial_id)
    if existing is not None:
        return existing
    exp_id = tracking.get_or_create_experiment(grid_name, uri)
    tags = {"vreid.trial_id": trial_id, "vreid.grid": grid_name, "vreid.role": "trial",
            "vreid.error": f"{type(exc).__name__}: {exc}"[:5000],
            **tracking.source_tags(config.get("source") or "vreid grid", f"Grid **{grid_name}**: {_point_text(point)} cannot train: {exc}")}
    if config.get("parent_run_id"):
        tags["mlflow.parentRunId"] = config["parent_run_id"]
    run = client.create_run(exp_id, run_name=run_name(point) or trial_id, tags=tags)
    try:
        tracking.log_params(client, run.info.run_id, {f"grid.{k}": v for k, v in point.items()})
    finally:
        client.set_terminated(run.info.run_id, status="FAILED")
    return run.info.run_id


def invalid_trial_id(grid_name: str, index: int) -> str:
    """The stable id of the grid's ``index``-th point when its config is invalid (it has no Tune trial)."""
    return f"{grid_name}_invalid_{index:05d}"


def grid_size(params: dict[str, list[Any]]) -> int:
    """Number of trials of a full grid over ``params`` (the product of the value counts)."""
    n = 1
    for values in params.values():
        n *= len(values)
    return n


SHORT_KEYS = {"batch_size": "bs", "lr": "lr", "weight_decay": "wd", "epochs": "ep", "backbone_lr_mult": "blr",
              "label_smoothing": "ls", "num_instances": "k"}


def run_name(point: dict[str, Any]) -> str:
    """A trial's MLflow run name from its swept values: ``{"stage1.batch_size+stage2.batch_size": 32,
    "stage1.lr+stage2.lr": 0.03}`` -> ``bs32-lr0.03``. A joined key is named by its first setting; a
    string value stands alone (``model.backbone: resnet50`` -> ``resnet50``); two keys with the same
    last part keep their full dotted name."""
    lasts = [key.split("+")[0].split(".")[-1] for key in point]
    parts = []
    for (key, value), last in zip(point.items(), lasts):
        first = key.split("+")[0]
        short = SHORT_KEYS.get(last, last) if lasts.count(last) == 1 else first
        if isinstance(value, str):
            parts.append(value if lasts.count(last) == 1 else f"{short}{value}")
        else:
            parts.append(f"{short}{_fmt(value)}")
    return "-".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10f}".rstrip("0").rstrip(".") if abs(value) >= 1e-4 else f"{value:g}"
    return str(value).replace(" ", "")


def progress_callback(total: int, stall_s: Optional[float] = None, clock=time.monotonic):
    """A Tune callback in the driver: one line per reported epoch and per finished or failed trial
    (so a grid run with ``log_to_driver=False`` still shows its progress, without Ray's log noise), and
    a warning when a running trial has reported nothing for ``stall_s`` seconds (default
    ``$VREID_STALL_S`` or 600: e.g. its Train worker waits for a CPU another trial holds).

    ``total`` is the grid's size: Tune creates trials lazily (``max_concurrent_trials``), so the trials
    it passes are only those created so far.
    """
    import os

    from ray.tune import Callback

    from vreid.progress import format_duration

    stall_s = float(stall_s if stall_s is not None else os.environ.get("VREID_STALL_S", 600))

    def label(trial) -> str:
        point = (getattr(trial, "config", None) or {}).get("grid") or {}
        return f"{run_name(point)} ({trial.trial_id})" if point else str(trial.trial_id)

    def finished(trials, trial) -> int:
        # called before this trial's own status is updated
        return 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)

    class _Progress(Callback):
        def __init__(self):
            super().__init__()
            self.last: dict[str, float] = {}
            self.warned: set[str] = set()

        def on_step_end(self, iteration, trials, **info):
            now = clock()
            pending = sum(t.status == "PENDING" for t in trials)
            for t in trials:
                if t.status != "RUNNING":
                    self.last.pop(t.trial_id, None)
                    continue
                since = now - self.last.setdefault(t.trial_id, now)
                if since >= stall_s and t.trial_id not in self.warned:
                    self.warned.add(t.trial_id)
                    print(f"[vreid] trial {label(t)}: no report for {format_duration(since)} while RUNNING "
                          f"({pending} trial(s) PENDING); its workers may be waiting for resources: see `ray status`",
                          flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last[trial.trial_id] = clock()
            self.warned.discard(trial.trial_id)
            if result.get("final"):
                return
            print(f"[vreid] trial {label(trial)} {result.get('stage', '?')} epoch {result.get('epoch', '?')}: "
                  f"loss {result.get('loss', float('nan')):.4f}  val mAP {result.get('val_mAP', -1):.4f}  "
                  f"rank1 {result.get('val_rank1', -1):.4f}  ({result.get('images_per_s', 0):.0f} img/s)", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            print(f"[vreid] trial {label(trial)} finished ({finished(trials, trial)}/{total} done)", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[vreid] trial {label(trial)} FAILED ({finished(trials, trial)}/{total} done): "
                  f"{str(trial.error_file or '')}", flush=True)

    return _Progress()


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def run_grid(cfg: RunConfig, name: Optional[str] = None, resume: bool = False, num_cpus: Optional[float] = None,
             extra_config: Optional[dict[str, Any]] = None, shared: Optional[str] = None) -> dict[str, Any]:
    """Run the grid of ``cfg.grid`` (Tune grid search over dotted keys), select the best k, track it.

    ``shared``: a mount every node of a multi-node cluster sees (else ``$VREID_SHARED_STORAGE``); a local
    ``storage_path`` or SQLite store outside it is refused there (:mod:`vreid.storage`)."""
    import ray.tune as tune
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.distributed.ray_train import init_ray, sigint_restored, storage_path_for
    if cfg.grid is None or not cfg.grid.params:
        raise VreidError("this config has no 'grid.params' section to sweep")
    name = name or cfg.name
    grid = cfg.grid
    from vreid.preflight import split_grid_points

    base = cfg.to_dict()
    base["grid"] = None
    # a point that cannot train fails the same way on every try: it is reported now and never becomes
    # a Tune trial (Tune would start it, and retry it scaling.max_failures times)
    valid, invalid = split_grid_points(cfg, f"grid '{name}'")
    if not valid:  # refused before anything is started or logged
        raise VreidError(f"no point of grid '{name}' can train: " + "; ".join(str(exc) for _, _, exc in invalid))
    init_ray(num_cpus=num_cpus)
    from vreid import storage as st

    storage = storage_path_for(cfg)
    exp_dir = st.join(storage, name)
    uri = cfg.output.mlflow_tracking_uri or tracking.default_tracking_uri(cfg.output.root)
    st.check_cluster_storage(storage, uri, shared)
    warning = st.node_loss_warning()
    if warning:
        print(f"[vreid] warning: {warning}", flush=True)
    tracking.get_or_create_experiment(name, uri, artifact_root=Path(cfg.output.root) / "mlartifacts")
    parent_file = st.join(exp_dir, "mlflow_parent.json")
    parent_text = st.read_text(parent_file)
    if parent_text:
        parent_run_id = json.loads(parent_text)["run_id"]
    else:
        parent_run_id = start_grid_run(cfg, name, uri)
        st.write_text(parent_file, json.dumps({"run_id": parent_run_id}))

    failed_points = []
    for index, point, exc in invalid:
        trial_id = invalid_trial_id(name, index)
        run_id = _failed_run(name, trial_id, {"tracking_uri": uri, "grid": point, "parent_run_id": parent_run_id,
                                               "source": tracking.driver_source()}, exc)
        print(f"[vreid] grid point {run_name(point)} cannot train, not run: {exc}", flush=True)
        failed_points.append({"trial_id": trial_id, "config": point, "metrics": {}, "checkpoint_uri": None,
                              "mlflow_run_id": run_id, "error": f"{type(exc).__name__}: {exc}"})
    param_space = {
        "run": base,
        "grid": tune.grid_search(valid),
        "grid_name": name,
        "tracking_uri": uri,
        "parent_run_id": parent_run_id,
        "storage": storage,
        "source": tracking.driver_source(),
        "extra_config": extra_config or {},
    }
    resources = {"cpu": grid.trial_cpus}
    if grid.trial_gpus:
        resources["gpu"] = grid.trial_gpus
    trainable = tune.with_resources(grid_trial, resources)
    total = len(valid)
    if resume and tune.Tuner.can_restore(exp_dir):
        print(f"[vreid] resuming grid {name} from {exp_dir}", flush=True)
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   param_space=param_space)
    else:
        if tune.Tuner.can_restore(exp_dir) and not resume:
            raise VreidError(f"grid '{name}' already exists at {exp_dir}: pass --resume to continue it, or a new --name")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=grid.max_concurrent_trials or None),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=[progress_callback(total)],
                                      # a trial whose driver dies (its node is lost) is retried; its Train runs
                                      # resume from their last checkpoints on shared storage
                                      failure_config=tune.FailureConfig(max_failures=cfg.scaling.max_failures)),
        )
    from vreid.progress import progress_board

    skipped = f" ({len(invalid)} grid point(s) that cannot train not run)" if invalid else ""
    print(f"[vreid] grid {name}: {total} trials{skipped}, MLflow {uri}, Ray storage {storage}", flush=True)
    with progress_board(), sigint_restored():  # the workers' step progress, printed here (and in `ray job logs`)
        result_grid = tuner.fit()
    unfinished = unfinished_trials(result_grid)
    if unfinished:  # Tune returns after a SIGINT: nothing is selected, registered or marked finished
        raise GridInterrupted(f"grid '{name}' interrupted with {unfinished} of {len(result_grid)} trial(s) unfinished; "
                              f"finished trials and checkpoints are kept in {exp_dir}: run it again with --resume")
    selection = selection_from_results(result_grid, name, grid.top_k, grid.metric, grid.mode, uri)
    selection["failed"] += failed_points
    client = MlflowClient(uri)
    for item in selection["finished"] + selection["failed"]:
        if item.get("mlflow_run_id"):
            run = client.get_run(item["mlflow_run_id"])
            item["run_name"] = run.info.run_name
            item["model_uri"] = run.data.tags.get("vreid.model_uri")
    selection["parent_run_id"] = parent_run_id
    selection["registered_model"] = registry_name(name)
    versions = tracking.register_selected(uri, registry_name(name), selection["selected"])
    for v in versions:
        selection["selected"][v["rank"] - 1]["model_version"] = v["version"]
    selection_path = st.join(exp_dir, SELECTION_FILE)
    st.write_text(selection_path, json.dumps(selection, indent=2, sort_keys=True))
    for rank, item in enumerate(selection["selected"], 1):
        if item.get("mlflow_run_id"):
            client.set_tag(item["mlflow_run_id"], "vreid.selected", "true")
            client.set_tag(item["mlflow_run_id"], "vreid.selected_rank", str(rank))
    finish_grid_run(client, parent_run_id, name, uri, selection, selection_path)
    selection["path"] = selection_path
    return selection


def registry_name(grid_name: str) -> str:
    """The Model Registry entry of a grid's selected models."""
    return f"vreid-{grid_name}"


def start_grid_run(cfg: RunConfig, name: str, uri: str) -> str:
    """The grid's parent run: the base config as params *without* the swept keys (no trial ran their base
    values), the swept values as ``grid.<key>`` params (the lists), the manifests as dataset inputs."""
    from mlflow import MlflowClient

    from vreid import tracking

    exp_id = tracking.get_or_create_experiment(name, uri, artifact_root=Path(cfg.output.root) / "mlartifacts")
    client = MlflowClient(uri)
    swept = {part for key in cfg.grid.params for part in key.split("+")}
    points = ", ".join(f"{k.replace('+', ' = ')} in {list(v)}" for k, v in cfg.grid.params.items())
    description = (f"Grid **{name}** ({cfg.recipe}, {cfg.model.backbone}): {grid_size(cfg.grid.params)} trials over "
                   f"{points}; the best {cfg.grid.top_k} by {cfg.grid.metric} are selected. {cfg.description}").strip()
    tags = {"vreid.grid": name, "vreid.role": "grid", "vreid.recipe": cfg.recipe, "vreid.backbone": cfg.model.backbone,
            **tracking.source_tags(tracking.driver_source(), description)}
    view = tracking.save_trials_view(client, exp_id, list(cfg.grid.params), cfg.grid.metric)
    tags["mlflow.note.content"] += f"\n\nThe trials side by side (MLflow UI): `{view}`."
    run = client.create_run(exp_id, run_name=f"{name} (grid)", tags=tags)
    params = {k: v for k, v in cfg.flat().items() if not k.startswith("grid") and k not in swept}
    params.update({f"grid.{k}": list(v) for k, v in cfg.grid.params.items()})
    params.update({"grid.top_k": cfg.grid.top_k, "grid.metric": cfg.grid.metric, "grid.trials": grid_size(cfg.grid.params)})
    tracking.log_params(client, run.info.run_id, params)
    tracking.log_manifest_inputs(client, run.info.run_id, manifest_paths(cfg))
    return run.info.run_id


def finish_grid_run(client, parent_run_id: str, name: str, uri: str, selection: dict[str, Any], selection_path: str) -> None:
    """The grid's summary on its parent run: best metrics, counts, the selection table (markdown + CSV)
    and selection.json as artifacts, the table as the run's description."""
    import tempfile

    from vreid import tracking

    metric = selection["metric"]
    best = selection["selected"][0] if selection["selected"] else None
    metrics = [_metric("trials_finished", len(selection["finished"])), _metric("trials_failed", len(selection["failed"]))]
    if best:
        metrics += [_metric(f"best_{k}", v) for k, v in best["metrics"].items() if isinstance(v, (int, float))]
        client.set_tag(parent_run_id, "vreid.best_run", best.get("run_name") or best["trial_id"])
    client.log_batch(parent_run_id, metrics=metrics)
    rows = []
    chosen = {item.get("mlflow_run_id"): rank for rank, item in enumerate(selection["selected"], 1)}
    for item in selection["finished"] + selection["failed"]:
        row = {"run": item.get("run_name") or item["trial_id"], "trial": item["trial_id"],
               **{k: v for k, v in (item.get("config") or {}).items()},
               **{k: item["metrics"].get(k) for k in METRIC_KEYS},
               "selected": chosen.get(item.get("mlflow_run_id"), ""),
               "status": "FAILED" if item.get("error") else "FINISHED"}
        rows.append(row)
    import pandas as pd

    table = pd.DataFrame(rows)
    with tempfile.TemporaryDirectory(prefix="vreid-grid-") as tmp:
        md = table.to_markdown(index=False, floatfmt=".4f")
        (Path(tmp) / "selection_table.md").write_text(md + "\n")
        table.to_csv(Path(tmp) / "selection_table.csv", index=False)
        for f in ("selection_table.md", "selection_table.csv"):
            client.log_artifact(parent_run_id, str(Path(tmp) / f), artifact_path="selection")
        sel_file = Path(tmp) / SELECTION_FILE
        sel_file.write_text(json.dumps(selection, indent=2, sort_keys=True))
        client.log_artifact(parent_run_id, str(sel_file), artifact_path="selection")
    note = client.get_run(parent_run_id).data.tags.get("mlflow.note.content", "")
    best_line = f"\n\nBest: **{best.get('run_name') or best['trial_id']}**, {metric} {best['metrics'].get(metric):.4f}." if best else ""
    client.set_tag(parent_run_id, "mlflow.note.content", f"{note}{best_line}\n\n{md}")
    client.set_tag(parent_run_id, "vreid.selection", str(selection_path))
    client.set_tag(parent_run_id, "vreid.registered_model", selection.get("registered_model", ""))
    client.set_terminated(parent_run_id)


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


def unfinished_trials(result_grid) -> int:
    """How many trials of a Tune ``ResultGrid`` neither sent their final row (:func:`grid_trial` sends it
    last) nor failed: trials still pending or running when the driver was interrupted. (Not Tune's
    statuses: after a SIGINT Tune stops the running trials and reports them TERMINATED, while the
    experiment it saved has them unfinished, so ``--resume`` runs them.)"""
    return sum(1 for result in result_grid if result.error is None and not (result.metrics or {}).get("final"))


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
    """A grid's ``selection.json`` (or the grid's experiment folder holding it): ``selected`` (best first,
    each with ``checkpoint_uri``, ``mlflow_run_id``, ``run_name``, ``model_uri``, metrics), ``finished``,
    ``failed``, the MLflow ``tracking_uri``, ``parent_run_id`` and ``registered_model``."""
    from vreid import storage as st

    if st.is_remote(str(path)):
        text = st.read_text(str(path)) if str(path).split("?")[0].endswith(".json") else st.read_text(st.join(str(path), SELECTION_FILE))
        if text is None:
            raise VreidError(f"selection file not found: {path}")
    else:
        path = Path(path)
        if path.is_dir():
            path = path / SELECTION_FILE
        if not path.is_file():
            raise VreidError(f"selection file not found: {path}")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VreidError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "selected" not in data:
        raise VreidError(f"{path}: expected a vreid selection with a 'selected' list")
    return data
