"""The AI City ensemble job: best-k checkpoints -> Ray Data features (flip x scales, decode once) ->
fused features -> post-processing chain -> ``track2.txt`` (VehicleNet sec. IV-C, Fig. 5, Table VI).

Inputs are checked before any work starts (checkpoints load and match their configs, manifests have
the expected columns, the query set is not empty, the gallery has at least 100 images), and the
submission is validated before it is moved into place, so no partial ``track2.txt`` is ever left.
When validation manifests (with identities) are given, the job also measures every single model, the
plain ensemble and each post-processing step: this run's Table VI.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from vreid.config import flatten
from vreid.errors import VreidError
from vreid.io import atomic_write_text

REQUIRED_COLUMNS = ("path", "image_name", "vehicle_id", "camera")
# what an ensemble output folder holds (anything else there is not ours: the folder is refused, not replaced)
OUTPUT_ENTRIES = ("track2.txt", "track2.provenance.json", "tables.json", "val", "test", "_work")


@dataclass
class ModelRef:
    checkpoint: str
    trial_id: str = ""
    mlflow_run_id: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


# -- resolving the models ---------------------------------------------------------------------------
def models_from_selection(path: str | Path, top_k: Optional[int] = None) -> list[ModelRef]:
    from vreid.distributed.grid import load_selection

    sel = load_selection(path)
    items = sel["selected"][: top_k or len(sel["selected"])]
    if not items:
        raise VreidError(f"{path}: the selection is empty (no trial finished)")
    refs = []
    for i, item in enumerate(items):
        uri = item.get("checkpoint_uri")
        if not uri:
            raise VreidError(f"{path}: selected[{i}] has no 'checkpoint_uri'")
        refs.append(ModelRef(_local(uri), str(item.get("trial_id", "")), str(item.get("mlflow_run_id") or ""), item.get("metrics", {})))
    return refs


def models_from_mlflow(experiment: str, tracking_uri: str, top_k: int) -> list[ModelRef]:
    """The runs tagged ``vreid.selected`` (best first), else the best ``top_k`` by final val_mAP."""
    from vreid import tracking

    runs = tracking.runs_dataframe(experiment, tracking_uri)
    if "tags.checkpoint" not in runs.columns:
        raise VreidError(f"MLflow experiment '{experiment}' has no runs with a checkpoint")
    runs = runs[runs["tags.checkpoint"].notna()]
    if "tags.vreid.selected" in runs.columns and runs["tags.vreid.selected"].eq("true").any():
        runs = runs[runs["tags.vreid.selected"].eq("true")]
    runs = runs.sort_values("metrics.val_mAP", ascending=False).head(top_k)
    if runs.empty:
        raise VreidError(f"MLflow experiment '{experiment}' has no finished runs to ensemble")
    return [ModelRef(_local(r["tags.checkpoint"]), str(r.get("tags.vreid.trial_id") or ""), r["run_id"],
                     {"val_mAP": r.get("metrics.val_mAP")}) for _, r in runs.iterrows()]


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def check_models(refs: Sequence[ModelRef]) -> None:
    """Load every checkpoint once up front: missing files or config mismatches fail before any work."""
    from vreid.train.checkpoint import load_model_for_inference

    for ref in refs:  # local folders, mounted paths or storage URIs (s3://...: downloaded once per node)
        load_model_for_inference(ref.checkpoint)


def load_manifest(path: str | Path, what: str, min_rows: int = 1):
    from vreid.data.schema import read_manifest

    path = Path(path)
    if not path.is_file():
        raise VreidError(f"{what} manifest not found: {path}")
    df = read_manifest(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise VreidError(f"{what} manifest {path}: missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    if len(df) < min_rows:
        raise VreidError(f"{what} manifest {path}: has {len(df)} images, needs at least {min_rows}")
    return df.reset_index(drop=True)


# -- the job ----------------------------------------------------------------------------------------
@dataclass
class EnsembleInputs:
    models: list[ModelRef]
    out_dir: str
    test_query: Optional[str] = None
    test_gallery: Optional[str] = None
    val_query: Optional[str] = None
    val_gallery: Optional[str] = None
    chain: Optional[str] = None  # YAML
    scales: tuple[float, ...] = (1.0, 0.9, 0.8)
    flip: bool = True
    num_actors: int = 1
    batch_size: int = 64
    use_gpu: bool = False
    cpus_per_actor: float = 1.0
    experiment: Optional[str] = None
    tracking_uri: Optional[str] = None
    source: str = ""  # where the model list came from (selection path, experiment)
    camera_checkpoint: Optional[str] = None  # camera classifier for camera verification by clusters
    parent_run_id: Optional[str] = None  # the grid's MLflow run: the ensemble run is nested under it


def run_ensemble(inp: EnsembleInputs) -> dict[str, Any]:
    """Run the whole job; returns paths and tables. Needs Ray (``init_ray`` is called).

    Every output is one set: written into a temporary sibling of ``out_dir`` and swapped in whole, so a
    run killed at any moment leaves the old set or the new one (the next run removes a dead run's
    temporaries, ``_work/`` included); MLflow logs the set once it is in place.
    """
    from vreid.io import atomic_dir

    out = Path(inp.out_dir).resolve()
    with atomic_dir(out, known=OUTPUT_ENTRIES) as stage:
        result = _run_ensemble(inp, stage)
    submission = str(out / "track2.txt") if result["submission"] else None
    run_id = _log_mlflow(inp, out, result["tables"], result["metrics"], submission, result["chain_cfg"])
    return {"out_dir": str(out), "submission": submission, "tables": result["tables"], "metrics": result["metrics"],
            "mlflow_run_id": run_id}


def _run_ensemble(inp: EnsembleInputs, stage: Path) -> dict[str, Any]:
    """The job, writing every output under ``stage`` (the set's temporary folder)."""
    from vreid import tracking
    from vreid.distributed.batch_inference import extract_ensemble_features
    from vreid.distributed.ray_train import init_ray
    from vreid.ensemble.submission import top_k_from_distance, validate_track2, write_track2
    from vreid.ensemble.views import fuse
    from vreid.evaluate.chain import PostProcessConfig, run_chain

    t_start = time.time()
    out = stage
    if "://" in inp.out_dir:
        raise VreidError(f"output {inp.out_dir}: write to an absolute path on shared storage (mounted)")
    # ---- check everything before any work
    if not inp.models:
        raise VreidError("no models to ensemble")
    check_models(inp.models + ([ModelRef(inp.camera_checkpoint)] if inp.camera_checkpoint else []))
    chain_cfg = PostProcessConfig.from_yaml(inp.chain) if inp.chain else PostProcessConfig.from_dict({"ensemble": True})
    cv = chain_cfg.camera_verification
    if cv.enabled and cv.source == "clusters" and not inp.camera_checkpoint:
        raise VreidError("the chain clusters camera features (camera_verification.source: clusters): "
                         "give --camera-checkpoint (a model trained with data.label_by: camera)")
    sets: dict[str, Any] = {}
    if inp.test_query or inp.test_gallery:
        if not (inp.test_query and inp.test_gallery):
            raise VreidError("give both the test query and the test gallery manifests")
        sets["test_query"] = load_manifest(inp.test_query, "test query")
        sets["test_gallery"] = load_manifest(inp.test_gallery, "test gallery", min_rows=100)
    if inp.val_query or inp.val_gallery:
        if not (inp.val_query and inp.val_gallery):
            raise VreidError("give both the validation query and gallery manifests")
        sets["val_query"] = load_manifest(inp.val_query, "validation query")
        sets["val_gallery"] = load_manifest(inp.val_gallery, "validation gallery")
        if (sets["val_query"]["vehicle_id"] < 0).all():
            raise VreidError(f"validation query manifest {inp.val_query} has no identities (vehicle_id < 0)")
    if not sets:
        raise VreidError("nothing to do: give test and/or validation query/gallery manifests")
    if cv.enabled and cv.source == "manifest":  # before any work: run_chain would refuse it after extraction
        for key, df in sets.items():
            unknown = int((df["camera"] < 0).sum())
            if unknown:
                raise VreidError(f"{inp.chain}: camera_verification.source is 'manifest' but {unknown} of {len(df)} "
                                 f"{key.replace('_', ' ')} images have an unknown camera (-1): use source: clusters "
                                 "with --camera-checkpoint (a model trained with data.label_by: camera)")
    if chain_cfg.crop_average:
        from vreid.evaluate.chain import NO_BOX_MESSAGE, boxed_rows

        for pair in (("test_query", "test_gallery"), ("val_query", "val_gallery")):
            if pair[0] in sets and boxed_rows(sets[pair[0]]) + boxed_rows(sets[pair[1]]) == 0:
                raise VreidError(f"{inp.chain} ({pair[0]}/{pair[1]}): {NO_BOX_MESSAGE}")

    # ---- one Ray Data pass over the union of all images: each decoded once for all models and views
    init_ray()
    all_paths: list[str] = []
    where: dict[str, int] = {}
    bboxes: list[Any] = []
    for df in sets.values():
        for p, bb in zip(df["path"], df["bbox"] if "bbox" in df.columns else [None] * len(df)):
            if p not in where:
                where[p] = len(all_paths)
                all_paths.append(p)
                bboxes.append(None if bb is None or (hasattr(bb, "__len__") and len(bb) != 4) else list(bb))
    print(f"[vreid] ensemble: {len(inp.models)} model(s) x {len(inp.scales) * (2 if inp.flip else 1)} view(s) "
          f"over {len(all_paths)} images", flush=True)
    t0 = time.time()
    checkpoints = [m.checkpoint for m in inp.models] + ([inp.camera_checkpoint] if inp.camera_checkpoint else [])
    per_model, per_model_crops = extract_ensemble_features(
        all_paths, checkpoints, scales=inp.scales, flip=inp.flip,
        bboxes=bboxes, crop_average=chain_cfg.crop_average, num_actors=inp.num_actors,
        batch_size=inp.batch_size, use_gpu=inp.use_gpu, cpus_per_actor=inp.cpus_per_actor,
        work_dir=str(out / "_work"),
    )
    extract_s = time.time() - t0
    camera_feats = None
    if inp.camera_checkpoint:  # the camera model's features are for clustering, not for fusion
        camera_feats = per_model.pop()
        if per_model_crops is not None:
            per_model_crops.pop()
    fused_all = fuse(per_model)
    rows_of = {k: np.array([where[p] for p in df["path"]]) for k, df in sets.items()}

    tables: dict[str, Any] = {"models": [{"trial_id": m.trial_id, "checkpoint": m.checkpoint,
                                          "mlflow_run_id": m.mlflow_run_id} for m in inp.models]}
    metrics: dict[str, float] = {}
    # ---- validation: single models, plain ensemble, each post-processing step (Table VI)
    if "val_query" in sets:
        from vreid.evaluate import evaluate_features

        q_df, g_df = sets["val_query"], sets["val_gallery"]
        qi, gi = rows_of["val_query"], rows_of["val_gallery"]
        rows = []
        for m, feats in zip(inp.models, per_model):
            rows.append({"name": f"single: {m.trial_id or Path(m.checkpoint).name}",
                         **_eval(evaluate_features, feats[qi], feats[gi], q_df, g_df)})
        rows.append({"name": f"ensemble of {len(inp.models)} (flip x scales {list(inp.scales)})",
                     **_eval(evaluate_features, fused_all[qi], fused_all[gi], q_df, g_df)})
        tables["single_vs_ensemble"] = rows
        tables["postprocess"] = postprocess_rows(q_df, g_df, chain_cfg, **_chain_inputs(per_model, per_model_crops, qi, gi, camera_feats))
        val_dir = out / "val"
        val_dir.mkdir(exist_ok=True)
        np.save(val_dir / "query_features.npy", fused_all[qi])
        np.save(val_dir / "gallery_features.npy", fused_all[gi])
        q_df.to_parquet(val_dir / "query.parquet", index=False)
        g_df.to_parquet(val_dir / "gallery.parquet", index=False)
        _save_model_features(val_dir / "features", per_model, per_model_crops, camera_feats, qi, gi, q_df, g_df)
        best_single = max(rows[:-1], key=lambda r: r["mAP"])
        metrics.update({f"ensemble_{k}": v for k, v in rows[-1].items() if isinstance(v, float)})
        metrics.update({f"best_single_{k}": v for k, v in best_single.items() if isinstance(v, float)})
        for i, r in enumerate(tables["postprocess"]):
            metrics[f"chain_{i}_mAP"] = float(r["mAP"])

    # ---- the submission
    submission = None
    if "test_query" in sets:
        q_df, g_df = sets["test_query"], sets["test_gallery"]
        qi, gi = rows_of["test_query"], rows_of["test_gallery"]
        final, _ = run_chain(q_df=q_df, g_df=g_df, config=chain_cfg, evaluate=False, **_chain_inputs(per_model, per_model_crops, qi, gi, camera_feats))
        ranking = top_k_from_distance(final, k=100)
        provenance = {
            "models": tables["models"],
            "source": inp.source,
            "chain": chain_cfg_dict(chain_cfg),
            "scales": list(inp.scales),
            "flip": inp.flip,
            "git_commit": tracking.git_commit(),
            "test_query": str(inp.test_query),
            "test_gallery": str(inp.test_gallery),
        }
        submission = str(out / "track2.txt")
        write_track2(ranking, list(q_df["image_name"]), list(g_df["image_name"]), submission, provenance=provenance)
        validate_track2(submission, len(q_df), len(g_df))
        test_dir = out / "test"
        test_dir.mkdir(exist_ok=True)
        np.save(test_dir / "query_features.npy", fused_all[qi])
        np.save(test_dir / "gallery_features.npy", fused_all[gi])

    tables["timing"] = {"extract_s": extract_s, "images": len(all_paths), "total_s": time.time() - t_start}
    atomic_write_text(out / "tables.json", json.dumps(tables, indent=2, default=_json_default))
    shutil.rmtree(out / "_work", ignore_errors=True)
    return {"submission": submission, "tables": tables, "metrics": metrics, "chain_cfg": chain_cfg}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _eval(evaluate_features, qf, gf, q_df, g_df) -> dict[str, float]:
    args = (qf, gf, q_df["vehicle_id"].to_numpy(), g_df["vehicle_id"].to_numpy(),
            q_df["camera"].to_numpy(), g_df["camera"].to_numpy())
    full = evaluate_features(*args)
    top = evaluate_features(*args, ap_mode="top100")
    cmc = full["cmc"]
    return {"mAP": float(full["mAP"]), "mAP_top100": float(top["mAP"]), "rank1": float(cmc[0]),
            "rank5": float(cmc[min(4, len(cmc) - 1)]), "mINP": float(full["mINP"])}


def _chain_inputs(per_model, crops, qi, gi, camera_feats=None):
    """Per-model feature lists (and box-crop features) for the chain's own crop / ensemble steps."""
    kw = {"qf": [f[qi] for f in per_model], "gf": [f[gi] for f in per_model]}
    if crops is not None:
        kw["q_crop"] = [f[qi] for f in crops]
        kw["g_crop"] = [f[gi] for f in crops]
    if camera_feats is not None:
        kw["q_camera_features"] = camera_feats[qi]
        kw["g_camera_features"] = camera_feats[gi]
    return kw


def _save_model_features(folder: Path, per_model, crops, camera_feats, qi, gi, q_df, g_df) -> None:
    """Each model's features (and box-crop / camera-model features) in the ``vreid evaluate
    --features-dir`` layout: ``model_<i>/{query,gallery}[_crop].parquet`` and ``camera/``, so the chain
    can be re-run on exactly this job's features (``vreid evaluate --features-dir ... --chain``)."""
    from vreid.evaluate.features import save_features

    for i, feats in enumerate(per_model):
        d = folder / f"model_{i}"
        save_features(d / "query.parquet", feats[qi], q_df)
        save_features(d / "gallery.parquet", feats[gi], g_df)
        if crops is not None:
            save_features(d / "query_crop.parquet", crops[i][qi], q_df)
            save_features(d / "gallery_crop.parquet", crops[i][gi], g_df)
    if camera_feats is not None:
        save_features(folder / "camera" / "query.parquet", camera_feats[qi], q_df)
        save_features(folder / "camera" / "gallery.parquet", camera_feats[gi], g_df)


def postprocess_rows(q_df, g_df, chain_cfg, **chain_inputs) -> list[dict[str, Any]]:
    """This run's Table VI: :func:`vreid.evaluate.chain.run_chain` on the validation split, one row per
    step (``step``, ``mAP``, ``mAP_top100``, ``rank1``, ``rank5``, ``mINP``), as ``tables.json`` stores it."""
    from vreid.evaluate.chain import run_chain

    _, steps = run_chain(q_df=q_df, g_df=g_df, config=chain_cfg, evaluate=True, **chain_inputs)
    return [_rename(r) for r in steps]


def _rename(row: dict[str, Any]) -> dict[str, Any]:
    names = {"CMC@1": "rank1", "CMC@5": "rank5"}
    return {names.get(k, k): v for k, v in row.items()}


def chain_cfg_dict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def _log_mlflow(inp: EnsembleInputs, out: Path, tables: dict[str, Any], metrics: dict[str, float],
                submission: Optional[str], chain_cfg: Any) -> Optional[str]:
    from mlflow import MlflowClient

    from vreid import tracking

    if not inp.experiment:
        return None
    uri = inp.tracking_uri or tracking.default_tracking_uri(out.parent)
    exp_id = tracking.get_or_create_experiment(inp.experiment, uri, artifact_root=out.parent / "mlartifacts")
    client = MlflowClient(uri)
    tags = {
        "mlflow.runName": f"ensemble of {len(inp.models)}",
        **tracking.source_tags(tracking.driver_source(), f"The ensemble of {len(inp.models)} model(s) from {inp.source}: "
                               f"flip {inp.flip}, scales {list(inp.scales)}, outputs in {out}."),
        "vreid.role": "ensemble",
        "vreid.ensemble_dir": str(out),
        "vreid.models": ",".join(m.mlflow_run_id or m.checkpoint for m in inp.models),
        "git_commit": tracking.git_commit(),
        "vreid.source": inp.source,
    }
    if inp.parent_run_id:
        tags["mlflow.parentRunId"] = inp.parent_run_id
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    tracking.log_manifest_inputs(client, rid, {"test_query": inp.test_query, "test_gallery": inp.test_gallery,
                                               "val_query": inp.val_query, "val_gallery": inp.val_gallery})
    params = {"n_models": len(inp.models), "scales": list(inp.scales), "flip": inp.flip,
              **{f"chain.{k}": v for k, v in flatten(chain_cfg_dict(chain_cfg)).items()}}
    tracking.log_params(client, rid, params)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(rid, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_artifact(rid, str(out / "tables.json"))
    if submission:
        client.log_artifact(rid, submission)
        prov = Path(submission).with_name("track2.provenance.json")
        if prov.is_file():
            client.log_artifact(rid, str(prov))
    for sub in ("val", "test"):
        for name in ("query_features.npy", "gallery_features.npy"):
            p = out / sub / name
            if p.is_file():
                client.log_artifact(rid, str(p), artifact_path=f"features/{sub}")
    client.set_terminated(rid)
    return rid

