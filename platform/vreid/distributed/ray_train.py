"""Launch recipes on Ray Train (needs a Ray cluster; :func:`init_ray` starts or joins one).

A recipe is a sequence of stages (VehicleNet: ``stage1`` then ``stage2``; SSBVER: ``stage1``), each one
``TorchTrainer`` run of :func:`vreid.train.loop.train_loop_per_worker` named ``<name>-<stage>`` under
``storage_path``. Ray Train resumes a run with the same (storage_path, name) from its last checkpoint,
and a finished stage leaves ``vreid_stage.json`` beside its checkpoints, so re-running an interrupted
recipe with the same name skips finished stages and resumes the unfinished one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from vreid.config import RunConfig
from vreid.errors import VreidError

STAGE_MARKER = "vreid_stage.json"


def init_ray(num_cpus: Optional[float] = None, address: Optional[str] = None, **kwargs: Any) -> None:
    """Join ``address`` / ``$RAY_ADDRESS`` when given, else start a local cluster (``address="local"``
    never attaches to somebody else's cluster)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return
    import tempfile

    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=kwargs.pop("object_store_memory", 512 * 1024 * 1024),
        # socket paths must stay under 107 bytes
        _temp_dir=kwargs.pop("_temp_dir", os.environ.get("VREID_RAY_TMPDIR") or tempfile.gettempdir() + "/ray"),
        log_to_driver=kwargs.pop("log_to_driver", True),
        **kwargs,
    )


def storage_path_for(cfg: RunConfig) -> str:
    path = cfg.output.storage_path or str(Path(cfg.output.root) / "ray")
    if "://" in path:
        return path
    p = Path(path).resolve()
    p.mkdir(parents=True, exist_ok=True)
    return str(p)


def stage_marker(storage_path: str, run_name: str) -> Optional[dict[str, Any]]:
    from vreid.distributed import storage

    text = storage.read_text(storage.join(storage_path, run_name, STAGE_MARKER))
    return json.loads(text) if text else None


def fit_stage(
    cfg: RunConfig,
    stage: str,
    run_name: str,
    storage_path: str,
    init_checkpoint: Optional[str] = None,
    callbacks: Optional[list] = None,
    extra_config: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Run one stage as a TorchTrainer and return ``{"checkpoint": path, "metrics": {...}}``."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from vreid.train.loop import train_loop_per_worker

    s = cfg.scaling
    resources: dict[str, float] = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    loop_config = {"run": cfg.to_dict(), "stage": stage, "init_checkpoint": init_checkpoint}
    loop_config.update(extra_config or {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise VreidError(f"{run_name}: training finished without a checkpoint")
    from vreid.distributed import storage

    out = {"checkpoint": storage.checkpoint_uri(storage_path, result.checkpoint.path), "metrics": _plain(result.metrics)}
    storage.write_text(storage.join(storage_path, run_name, STAGE_MARKER), json.dumps(out, indent=2))
    return out


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool))}


def run_recipe(
    cfg: RunConfig,
    name: str,
    storage_path: Optional[str] = None,
    callbacks_for_stage: Optional[Callable[[str, int], list]] = None,
    extra_config: Optional[dict[str, Any]] = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run every stage of ``cfg.recipe`` in order; Stage-II starts from Stage-I's final checkpoint.

    ``callbacks_for_stage(stage, step_offset)`` gives the Train callbacks of a stage (MLflow logging,
    Tune reporting). Returns ``{stage: {"checkpoint", "metrics"}}``.
    """
    storage_path = storage_path or storage_path_for(cfg)
    results: dict[str, dict[str, Any]] = {}
    init: Optional[str] = None
    offset = 0
    for stage in cfg.stages:
        run_name = f"{name}-{stage}"
        done = stage_marker(storage_path, run_name)
        if done is not None:
            log(f"[vreid] {name}: {stage} already finished ({done['checkpoint']}); skipping")
            results[stage] = done
        else:
            log(f"[vreid] {name}: starting {stage} ({cfg.recipe}, {cfg.stage(stage).epochs} epochs, "
                f"{cfg.scaling.num_workers} worker(s))")
            callbacks = callbacks_for_stage(stage, offset) if callbacks_for_stage else []
            results[stage] = fit_stage(cfg, stage, run_name, storage_path, init, callbacks, extra_config)
        init = results[stage]["checkpoint"]
        offset += cfg.stage(stage).epochs
    return results
