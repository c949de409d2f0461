"""MLflow tracking: where runs go, how a trial's epochs are logged, and reading runs back.

* Tracking URI: ``$MLFLOW_TRACKING_URI`` when set (e.g. an ``mlflow server`` on the cluster), else an
  absolute SQLite file ``<output root>/mlflow.db`` (absolute because Tune changes directories).
* One experiment per grid (or ``vreid train`` name); a parent run for the grid, a child run per trial
  with the flattened config as params, per-epoch metrics logged by :class:`MLflowEpochLogger` (a Ray Train
  callback running in the Train controller, so it sees each *persisted* report exactly once - a worker
  that dies and resumes from its checkpoint never logs an epoch twice; a driver stopped after a
  checkpoint was persisted but before its report was logged leaves that epoch to
  :meth:`MLflowEpochLogger.backfill`, which logs it from the checkpoint when the stage resumes).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Optional

from ray.train.v2.api.callback import UserCallback

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
STAGE_PREFIXED = ("loss", "loss_ce", "loss_triplet", "loss_ssl", "lr", "images_per_s", "epoch_time_s")


def default_tracking_uri(root: str | os.PathLike = "outputs", create: bool = True) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db`` (its folder made unless ``create`` is false)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(root).resolve() / "mlflow.db"
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def require_existing_store(tracking_uri: str) -> None:
    """For reading commands: a SQLite store that does not exist is an error, not a new empty database
    (opening it would create one)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            from vreid.errors import VreidError

            raise VreidError(f"no MLflow database at {path}: give the grid's --root (the folder holding mlflow.db) "
                             "or --tracking-uri")


def configure(tracking_uri: str) -> None:
    """Point MLflow's fluent API at ``tracking_uri`` for this process.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; that would make this URI the
    default of every later run in the process (and of its children), so the variable is restored.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in job logs
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
    # MLflow 3's UI opens a GenAI overview unless the experiment says it holds model training runs
    kwargs["tags"] = {EXPERIMENT_KIND_TAG: "custom_model_development"}
    try:
        return mlflow.create_experiment(name, **kwargs)
    except mlflow.exceptions.MlflowException:  # another trial created it first
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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
        self.log_epoch(metrics[0], checkpoint.path if checkpoint is not None else None)

    def log_epoch(self, m: dict[str, Any], checkpoint_path: Optional[str] = None, note: str = "") -> None:
        """Log one epoch's reported metrics at step ``step_offset + epoch`` and print its progress line."""
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

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
        if checkpoint_path is not None:
            client.set_tag(self.run_id, f"checkpoint.{self.stage}", checkpoint_path)
        val = m.get("val_mAP", -1)
        print(
            f"[vreid] {self.label} {self.stage} epoch {epoch}: loss {m.get('loss', float('nan')):.4f} "
            f"val mAP {val:.4f} rank1 {m.get('val_rank1', -1):.4f} ({m.get('images_per_s', 0):.0f} img/s){note}",
            flush=True,
        )

    def backfill(self, storage_path: str, run_name: str) -> list[int]:
        """Before a stage (re)starts: log the epochs its kept checkpoints hold that MLflow lacks.

        Ray Train persists an epoch's checkpoint *before* the controller calls :meth:`after_report`; a
        driver stopped between the two (Ctrl+C, a lost node) leaves an epoch that training resumes *after*
        but MLflow never saw. Each checkpoint carries the metrics its epoch reported (``metrics.json``),
        so the resumed run logs them once here. Returns the epochs logged."""
        import json

        from mlflow import MlflowClient

        from vreid import storage

        reported = []
        for uri in storage.list_dirs(storage.join(storage_path, run_name), prefix="checkpoint_"):
            path = storage.join(uri, "metrics.json")
            text = storage.read_text(path)
            try:
                m = json.loads(text) if text else {}
            except ValueError as exc:  # a damaged file costs that epoch's MLflow row, not the resume
                print(f"[vreid] {self.label} {self.stage}: {path}: not JSON ({exc}); its epoch is not backfilled",
                      flush=True)
                continue
            if isinstance(m, dict) and "epoch" in m:
                reported.append(m)
        if not reported:
            return []
        client = MlflowClient(self.tracking_uri)
        logged: dict[str, set[int]] = {}  # steps MLflow has, per metric (validation may skip epochs)
        done = []
        for m in sorted(reported, key=lambda m: int(m["epoch"])):
            # an epoch is logged when a metric it reported is (its metrics go in one log_batch)
            key = next((k for k, v in m.items() if k != "epoch" and isinstance(v, (int, float))
                        and not isinstance(v, bool)), None)
            if key is None:
                continue
            if key not in logged:
                logged[key] = {h.step for h in client.get_metric_history(self.run_id, key)}
            if self.step_offset + int(m["epoch"]) not in logged[key]:
                self.log_epoch(m, note=" (from its checkpoint: the driver stopped before logging it)")
                done.append(int(m["epoch"]))
        return done


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

    Columns: the run name (the swept values), the swept config keys, the backbone and recipe, any other
    setting that differs between trials, the final
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
    # the swept keys first (logged as `grid.<key>` params), then the backbone / recipe, then any other
    # setting that differs between trials
    swept = [c for c in param_cols if c.startswith("params.grid.")]
    swept_parts = {part for c in swept for part in c.removeprefix("params.grid.").split(" and ")}
    varying = [c for c in param_cols if c not in swept and runs[c].nunique(dropna=False) > 1
               and not c.endswith(("name", "description")) and c.removeprefix("params.") not in swept_parts]
    keep = swept + ["params.model.backbone", "params.recipe"] + [c for c in varying if c not in ("params.model.backbone", "params.recipe")]
    table = pd.DataFrame({"run": runs["tags.mlflow.runName"]})
    if "tags.vreid.trial_id" in runs.columns:
        table["trial"] = runs["tags.vreid.trial_id"].fillna("")
    for c in keep:
        if c in runs.columns:
            table[c.removeprefix("params.").removeprefix("grid.")] = runs[c]
    for m in COMPARE_METRICS + EFFICIENCY_METRICS:
        col = f"metrics.{m}"
        table[m.removeprefix("eff_")] = runs[col] if col in runs.columns else float("nan")
    table["selected"] = runs.get("tags.vreid.selected", pd.Series(index=runs.index, dtype=object)).fillna("").eq("true")
    table["status"] = runs["status"]
    table["run_id"] = runs["run_id"]
    return table.sort_values("val_mAP", ascending=False, na_position="last").reset_index(drop=True)


# -- MLflow's own fields: source, git, user, description, dataset inputs ------------------------------
def git_info() -> dict[str, str]:
    """Commit, branch and remote of the checkout vreid runs from (``$VREID_GIT_COMMIT`` wins: a Ray job's
    working-dir copy has no ``.git``)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    info = {"commit": os.environ.get("VREID_GIT_COMMIT") or git("rev-parse", "HEAD")}
    if not os.environ.get("VREID_GIT_COMMIT"):
        info["branch"] = git("rev-parse", "--abbrev-ref", "HEAD")
        info["repo_url"] = git("remote", "get-url", "origin")
    return {k: v for k, v in info.items() if v}


def source_tags(source_name: str, description: str = "") -> dict[str, str]:
    """MLflow's standard run fields (what its UI shows as Source, Git commit, User, Description)."""
    import getpass

    tags = {
        "mlflow.source.name": source_name,
        "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else "LOCAL",
    }
    git = git_info()
    if "commit" in git:
        tags["mlflow.source.git.commit"] = git["commit"]
    if "branch" in git:
        tags["mlflow.source.git.branch"] = git["branch"]
    if "repo_url" in git:
        tags["mlflow.source.git.repoURL"] = git["repo_url"]
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    if description:
        tags["mlflow.note.content"] = description
    return tags


def driver_source() -> str:
    """What started this process, for ``mlflow.source.name`` (``vreid grid space.yaml`` or the job's script)."""
    import sys

    argv = list(sys.argv)
    if not argv or not argv[0]:
        return "python"
    path = Path(argv[0])
    if path.name == "vreid" or (path.name in ("__main__.py", "cli.py") and path.parent.name == "vreid"):
        return " ".join(["vreid", *argv[1:]])
    return " ".join([argv[0], *argv[1:]])


def log_manifest_inputs(client, run_id: str, manifests: dict[str, Optional[str]]) -> None:
    """``mlflow.log_input`` of each manifest (parquet): name, source path, schema, row count and the same
    content digest as :func:`file_hash`; context ``training`` / ``validation`` / ``test`` from its name."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    from vreid.data.schema import read_manifest

    inputs = []
    for name, path in manifests.items():
        if not path or not Path(path).is_file():
            continue
        df = read_manifest(path)
        ds = mlflow.data.from_pandas(df, source=str(Path(path).resolve()), name=name, digest=file_hash(path))
        context = "training" if "train" in name else "validation" if name.startswith("val") else "test"
        inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


# -- the exported model in MLflow ---------------------------------------------------------------------
import torch  # noqa: E402  (the model wrapper below is a torch module)


class FeatureExtractor(torch.nn.Module):
    """What a trial hands on through MLflow: images [B, 3, H, W] (RGB, ImageNet-normalised floats) ->
    re-id features [B, D] (the head's ``feat``, the feature every vreid evaluation uses).
    ``mlflow.pytorch.load_model(uri)`` returns this module; ``.reid`` is the underlying ReidModel."""

    def __init__(self, reid: torch.nn.Module, image_size: tuple[int, int]):
        super().__init__()
        self.reid = reid
        self.image_size = tuple(int(v) for v in image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.reid.extract(images)


def log_reid_model(run_id: str, tracking_uri: str, checkpoint: str, run_config: dict[str, Any],
                   name: str = "model") -> str:
    """Log a checkpoint's exported model to ``run_id`` with ``mlflow.pytorch.log_model``: a
    :class:`FeatureExtractor` with its tensor signature, the vreid package as code (so loading needs only
    torch and timm), and ``run_config.yaml`` + ``model_config.json`` as extra files. Returns the model URI
    (``models:/<model id>``)."""
    import tempfile

    import mlflow
    import mlflow.pytorch
    import numpy as np
    import timm
    import yaml
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from vreid.train.checkpoint import MODEL_CONFIG_FILE, load_model_for_inference

    from vreid.storage import local_checkpoint

    checkpoint = local_checkpoint(checkpoint)
    model, info = load_model_for_inference(checkpoint)
    h, w = (int(v) for v in info["image_size"])
    wrapped = FeatureExtractor(model, (h, w)).eval()
    with torch.no_grad():
        dim = int(wrapped(torch.zeros(1, 3, h, w)).shape[1])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, h, w), "images")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim), "features")]))
    configure(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="vreid-mlflow-") as tmp:
        cfg_file = Path(tmp) / "run_config.yaml"
        cfg_file.write_text(yaml.safe_dump(run_config, sort_keys=False))
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            logged = mlflow.pytorch.log_model(
                wrapped, name=name, signature=signature, serialization_format="pickle",
                extra_files=[str(cfg_file), str(Path(checkpoint) / MODEL_CONFIG_FILE)],
                code_paths=[str(Path(__file__).resolve().parent)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}", "numpy", "safetensors"],
                metadata={"feature_dim": dim, "image_size": [h, w], "checkpoint": str(checkpoint),
                          "backbone": info.get("backbone_name"), "recipe": info.get("recipe")},
            )
            mlflow.log_artifact(str(cfg_file), artifact_path="config")
    return logged.model_uri


def register_selected(tracking_uri: str, registry_name: str, selected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register each selected trial's logged model as a version of ``registry_name`` in the Model Registry,
    with aliases ``rank1``, ``rank2``, ... and ``champion`` (the best). Returns ``[{"rank", "version",
    "model_uri"}]`` for the items that had a logged model."""
    import mlflow
    from mlflow import MlflowClient

    configure(tracking_uri)
    client = MlflowClient(tracking_uri)
    out = []
    for rank, item in enumerate(selected, 1):
        uri = item.get("model_uri")
        if not uri:
            continue
        mv = mlflow.register_model(uri, registry_name, tags={"vreid.trial": str(item.get("run_name") or item.get("trial_id")),
                                                             "vreid.rank": str(rank)})
        client.set_registered_model_alias(registry_name, f"rank{rank}", mv.version)
        if rank == 1:
            client.set_registered_model_alias(registry_name, "champion", mv.version)
        out.append({"rank": rank, "version": str(mv.version), "model_uri": uri})
    return out


SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
GRID_VIEW_KEY = "vreid-trials"


def save_trials_view(client, experiment_id: str, swept: list[str], metric: str = "val_mAP") -> str:
    """A shared view of the experiment's runs table (MLflow's own "share view" state, an experiment tag
    ``mlflow.sharedViewState.<key>``): the trial runs only, best ``metric`` first, with the swept keys'
    ``grid.*`` params, then the validation metrics, models and datasets as columns. Returns the UI path
    ``#/experiments/<id>/runs?viewStateShareKey=<key>`` that opens it."""
    import json

    columns = [f"params.`grid.{k.replace('+', ' and ')}`" for k in swept]
    columns += [f"metrics.`{m}`" for m in (metric, *[c for c in COMPARE_METRICS if c != metric])]
    columns += ["metrics.`eff_params_m`", "attributes.`Models`", "attributes.`Dataset`", "attributes.`Source`"]
    state = {"searchFilter": "tags.`vreid.role` = 'trial'", "orderByKey": f"metrics.`{metric}`", "orderByAsc": False,
             "selectedColumns": columns}
    client.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + GRID_VIEW_KEY, json.dumps(state))
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={GRID_VIEW_KEY}"
