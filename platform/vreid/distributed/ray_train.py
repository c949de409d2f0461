"""Launch recipes on Ray Train (needs a Ray cluster; :func:`init_ray` starts or joins one).

The adapter between Ray Train and the Ray-free engine (:mod:`vreid.train.engine`):
:func:`train_loop_per_worker` reads the Train context (rank, world size, device), builds the stage with
``engine.prepare``, resumes from Ray's checkpoint, wraps the student with ``prepare_model`` (DDP) when
there are several workers, and runs ``engine.fit`` with :class:`RayReport` (rank 0 writes a checkpoint;
every rank calls ``ray.train.report``, a barrier) followed by any callbacks passed in the loop config's
``callbacks`` (tests inject faults this way).

A recipe is a sequence of stages (VehicleNet: ``stage1`` then ``stage2``; SSBVER: ``stage1``), each one
``TorchTrainer`` run of :func:`train_loop_per_worker` named ``<name>-<stage>`` under
``storage_path``. Ray Train resumes a run with the same (storage_path, name) from its last checkpoint,
and a finished stage leaves ``vreid_stage.json`` beside its checkpoints, so re-running an interrupted
recipe with the same name skips finished stages and resumes the unfinished one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from vreid.config import RunConfig
from vreid.errors import VreidError

STAGE_MARKER = "vreid_stage.json"


class RayReport:
    """Engine callback: at the end of each epoch rank 0 saves a checkpoint (exported model + resume
    state) and every rank reports the metrics to Ray Train with it."""

    def on_epoch_end(self, ctx) -> None:
        import shutil
        import tempfile

        import ray.train
        from ray.train import Checkpoint

        from vreid.train.engine import save_stage_checkpoint

        checkpoint, tmp = None, None
        if ctx.rank == 0:
            tmp = tempfile.mkdtemp(prefix="vreid-ckpt-")
            save_stage_checkpoint(tmp, ctx.recipe, ctx.optimizer, ctx.epoch, ctx.metrics)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(ctx.metrics, checkpoint=checkpoint)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: ``config`` carries ``run`` (a RunConfig dict), ``stage``, optionally
    ``init_checkpoint`` (Stage-II starts from Stage-I) and ``callbacks`` (engine callbacks)."""
    import ray.train
    import ray.train.torch
    import torch

    from vreid.config import config_from_dict
    from vreid.train import engine
    from vreid.train.checkpoint import load_state

    cfg = config_from_dict(config["run"], "<trainer config>")
    stage_name: str = config["stage"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = cfg.scaling.use_gpu and torch.cuda.is_available()
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    if not use_gpu:
        # one thread per whole CPU the worker holds (fractional CPUs: one), unless overridden
        torch.set_num_threads(int(os.environ.get("VREID_TORCH_THREADS") or max(1, int(cfg.scaling.cpus_per_worker))))
    stage = engine.prepare(cfg, stage_name, init_checkpoint=config.get("init_checkpoint"), rank=rank, world=world,
                           device=device, amp=use_gpu and cfg.scaling.mixed_precision)
    if rank == 0 and stage.recipe.notes.get("dropped_classifier"):
        print(f"[vreid] {stage_name}: loaded {config.get('init_checkpoint')}; replaced the classifier: "
              f"{stage.recipe.notes['dropped_classifier']}", flush=True)
    start_epoch = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start_epoch = engine.restore(stage, load_state(d))
        if rank == 0:
            print(f"[vreid] {stage_name}: resumed after epoch {start_epoch} from {ckpt.path}", flush=True)
    if world > 1:
        stage.recipe.train_model = ray.train.torch.prepare_model(stage.recipe.model, move_to_device=False)
    from vreid.progress import DEFAULT_EVERY_STEPS, StepProgressCallback

    # a progress line every N optimiser steps (images/s, epoch ETA), printed by the driver's board
    progress = StepProgressCallback(config.get("progress_label") or cfg.name, stage_name, stage.epochs, len(stage.loader),
                                    world, rank, every=int(config.get("progress_every_steps", DEFAULT_EVERY_STEPS)))
    callbacks = [RayReport(), progress, *(config.get("callbacks") or [])]
    engine.fit(stage, start_epoch=start_epoch, callbacks=callbacks, rank=rank, world=world)


def init_ray(num_cpus: Optional[float] = None, address: Optional[str] = None, **kwargs: Any) -> None:
    """Join ``address`` / ``$RAY_ADDRESS`` when given, else start a local cluster (``address="local"``
    never attaches to somebody else's cluster)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0]
        if host in ("127.0.0.1", "localhost", "::1"):
            loopback_only()  # else Ray rewrites the loopback host to the machine's address and misses the head
        ray.init(address=address, **kwargs)
        return
    import tempfile

    loopback_only()
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",  # every component of this single-node cluster on loopback only
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=kwargs.pop("object_store_memory", 512 * 1024 * 1024),
        # socket paths must stay under 107 bytes
        _temp_dir=kwargs.pop("_temp_dir", os.environ.get("VREID_RAY_TMPDIR") or tempfile.gettempdir() + "/ray"),
        log_to_driver=kwargs.pop("log_to_driver", True),
        **kwargs,
    )


def loopback_only() -> None:
    """Make the local cluster about to start bind 127.0.0.1 only (GCS, raylet, workers, dashboard and
    runtime-env agents), not every interface.

    On Linux Ray replaces a node IP of 127.0.0.1 by the machine's address unless its
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` switch is off (Ray's own single-node mode, the default on
    macOS and Windows); with it off, ``get_node_ip_address`` returns the loopback address and every
    component listens there. The environment variable reaches the processes Ray spawns; the constant
    is patched because this process may have imported Ray already.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def storage_path_for(cfg: RunConfig) -> str:
    path = cfg.output.storage_path or str(Path(cfg.output.root) / "ray")
    if "://" in path:
        return path
    p = Path(path).resolve()
    p.mkdir(parents=True, exist_ok=True)
    return str(p)


def stage_marker(storage_path: str, run_name: str) -> Optional[dict[str, Any]]:
    from vreid import storage

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
    with sigint_restored():  # Ctrl+C during fit: Train's graceful abort; after it: the caller's handler again
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise VreidError(f"{run_name}: training finished without a checkpoint")
    from vreid import storage

    out = {"checkpoint": storage.checkpoint_uri(storage_path, result.checkpoint.path), "metrics": _plain(result.metrics)}
    storage.write_text(storage.join(storage_path, run_name, STAGE_MARKER), json.dumps(out, indent=2))
    return out


@contextlib.contextmanager
def sigint_restored():
    """Put back the SIGINT handler a Ray Tune or Ray Train ``fit()`` replaces in the main thread and
    leaves behind (Tune's swallowed the next Ctrl+C after the grid; Train's exits 0 on it)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


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
        callbacks = callbacks_for_stage(stage, offset) if callbacks_for_stage else []
        # epochs checkpointed but never logged (the driver stopped in between) are logged before resuming
        for cb in callbacks:
            if hasattr(cb, "backfill"):
                cb.backfill(storage_path, run_name)
        if done is not None:
            log(f"[vreid] {name}: {stage} already finished ({done['checkpoint']}); skipping")
            results[stage] = done
        else:
            log(f"[vreid] {name}: starting {stage} ({cfg.recipe}, {cfg.stage(stage).epochs} epochs, "
                f"{cfg.scaling.num_workers} worker(s))")
            results[stage] = fit_stage(cfg, stage, run_name, storage_path, init, callbacks, extra_config)
        init = results[stage]["checkpoint"]
        offset += cfg.stage(stage).epochs
    return results
