"""The training engine: plain functions of plain arguments, no Ray (DINO's ``train_one_epoch``;
torchreid's engines). :func:`prepare` builds a stage from a :class:`~vreid.config.RunConfig` (recipe,
loader, optimiser, per-epoch learning rates); :func:`fit` runs its epochs and calls the callbacks;
:mod:`vreid.distributed.ray_train` runs the same ``fit`` inside ``TorchTrainer`` workers with a
callback that checkpoints and reports.

Callbacks are objects with any of ``on_step_end(StepContext)`` and ``on_epoch_end(EpochContext)``,
called in list order on every worker (tests inject faults and record shards this way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from vreid.config import RunConfig
from vreid.train.recipes import Recipe, recipe_class
from vreid.train.validation import VAL_KEYS


@dataclass
class StepContext:
    recipe: Recipe
    epoch: int  # 0-based
    step: int  # 0-based within the epoch
    batch: Any
    losses: dict[str, torch.Tensor]
    rank: int = 0
    world: int = 1


@dataclass
class EpochContext:
    recipe: Recipe
    optimizer: torch.optim.Optimizer
    epoch: int  # 0-based
    metrics: dict[str, Any]
    is_last: bool
    rank: int = 0
    world: int = 1


class Callback:
    def on_step_end(self, ctx: StepContext) -> None:
        pass

    def on_epoch_end(self, ctx: EpochContext) -> None:
        pass


@dataclass
class Stage:
    """Everything :func:`fit` needs for one stage, built by :func:`prepare`."""

    recipe: Recipe
    loader: Any
    optimizer: torch.optim.Optimizer
    lrs: np.ndarray
    epochs: int
    validate: Optional[Callable[[torch.nn.Module], dict]] = None
    eval_every: int = 1
    amp: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def make_optimizer(groups: list[dict[str, Any]], stage: Any) -> torch.optim.Optimizer:
    for g in groups:
        g["lr"] = stage.lr * g["lr_mult"]
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    if stage.optimizer == "adam":
        return torch.optim.Adam(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay)
    raise ValueError(f"optimizer {stage.optimizer!r} was not resolved (vreid.config.resolve_stage resolves 'auto')")


def prepare(cfg: RunConfig, stage_name: str, init_checkpoint: Optional[str] = None, rank: int = 0, world: int = 1,
            device: torch.device | str = "cpu", amp: bool = False) -> Stage:
    """Build ``stage_name`` of ``cfg``: data, recipe (seeded: every worker starts from the same weights),
    optimiser, schedule and the validation function."""
    from vreid.config import resolve_target
    from vreid.data.dataset import ManifestDataset
    from vreid.data.schema import read_manifest
    from vreid.train.data import make_loader, seed_everything, train_manifest_path, training_labels
    from vreid.train.schedules import lr_schedule
    from vreid.train.validation import validate

    resolve_target(cfg)
    device = torch.device(device)
    seed_everything(cfg.seed)
    df = read_manifest(train_manifest_path(cfg, stage_name))
    labels = training_labels(df, cfg.data.label_by)
    num_classes = int(labels.max()) + 1
    recipe = recipe_class(cfg.recipe)(cfg, stage_name, num_classes, device, init_checkpoint)
    stage = recipe.stage  # resolved (optimizer: auto -> the backbone family's)
    transform, collate = recipe.train_transform()
    dataset = ManifestDataset(df.assign(label=labels), transform, use_bbox=cfg.data.use_bbox)
    loader = make_loader(dataset, stage, labels, cfg.seed, world, rank, num_workers=cfg.data.loader_workers,
                         pin_memory=device.type == "cuda", collate_fn=collate)
    optimizer = make_optimizer(recipe.param_groups(), stage)
    return Stage(recipe=recipe, loader=loader, optimizer=optimizer, lrs=lr_schedule(stage), epochs=stage.epochs,
                 validate=lambda model: validate(model, cfg, device), eval_every=stage.eval_every, amp=amp,
                 info={"num_classes": num_classes, "stage": stage_name})


def train_one_epoch(recipe: Recipe, loader, optimizer: torch.optim.Optimizer, epoch: int, *, amp: bool = False,
                    scaler: Optional[torch.amp.GradScaler] = None, callbacks: Sequence[Any] = (), rank: int = 0,
                    world: int = 1) -> dict[str, float]:
    """One pass over ``loader``: ``recipe.losses`` -> backward -> step -> ``recipe.after_step``.
    Returns the mean of each loss term, ``images`` (this worker's) and ``epoch_time_s``."""
    from vreid.train.data import epoch_sampler

    sampler = epoch_sampler(loader)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    scaler = scaler or torch.amp.GradScaler(recipe.device.type, enabled=amp)
    recipe.train()
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    n_steps = n_images = 0
    for step, batch in enumerate(loader):
        with torch.autocast(device_type=recipe.device.type, enabled=amp):
            losses = recipe.losses(batch, epoch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            lr = optimizer.param_groups[-1]["lr"]
            raise FloatingPointError(f"{recipe.stage_name} epoch {epoch + 1}: loss is {loss.item()} (lr {lr:.3g})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        recipe.after_step()
        n_steps += 1
        n_images += int(batch[1].shape[0])
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        for cb in callbacks:
            if hasattr(cb, "on_step_end"):
                cb.on_step_end(StepContext(recipe, epoch, step, batch, losses, rank, world))
    elapsed = time.perf_counter() - t0
    out = {k: v / max(n_steps, 1) for k, v in sums.items()}
    out.update(images=n_images, epoch_time_s=elapsed)
    return out


def fit(stage: Stage, start_epoch: int = 0, callbacks: Sequence[Any] = (), rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Epochs ``start_epoch .. stage.epochs - 1``; rank 0 validates ``recipe.eval_model()`` every
    ``eval_every`` epochs and after the last. Each epoch's metrics go to ``on_epoch_end`` callbacks
    (validation keys are -1 until the first validation). Returns the last epoch's metrics."""
    recipe, optimizer = stage.recipe, stage.optimizer
    scaler = torch.amp.GradScaler(recipe.device.type, enabled=stage.amp)
    last_val: dict[str, float] = {k: -1.0 for k in VAL_KEYS}
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, stage.epochs):
        lr = float(stage.lrs[epoch])
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        m = train_one_epoch(recipe, stage.loader, optimizer, epoch, amp=stage.amp, scaler=scaler,
                            callbacks=callbacks, rank=rank, world=world)
        images = m.pop("images")
        metrics = {**m, "epoch": epoch + 1, "stage": recipe.stage_name, "lr": lr,
                   "images_per_s": images * world / max(m["epoch_time_s"], 1e-9),
                   "num_classes": recipe.num_classes}
        is_last = epoch == stage.epochs - 1
        if rank == 0 and stage.validate is not None and ((epoch + 1) % max(stage.eval_every, 1) == 0 or is_last):
            last_val = stage.validate(recipe.eval_model()) or last_val
        metrics.update(last_val)
        ctx = EpochContext(recipe, optimizer, epoch, metrics, is_last, rank, world)
        for cb in callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(ctx)
    return metrics


# -- checkpoints ------------------------------------------------------------------------------------
def training_state(recipe: Recipe, optimizer: torch.optim.Optimizer, epoch: int) -> dict[str, Any]:
    from vreid.train.checkpoint import rng_state

    return {"model": recipe.model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": int(epoch),
            "rng": rng_state(), **recipe.extra_state()}


def save_stage_checkpoint(directory, recipe: Recipe, optimizer: torch.optim.Optimizer, epoch: int,
                          metrics: dict[str, Any]):
    """The exported model (``recipe.export()``) plus what resuming needs, into ``directory``."""
    from vreid.train.checkpoint import save_checkpoint

    export_sd, model_config = recipe.export()
    return save_checkpoint(directory, export_state=export_sd, model_config=model_config,
                           state=training_state(recipe, optimizer, epoch), metrics={**metrics, **recipe.notes})


def restore(stage: Stage, state: dict[str, Any]) -> int:
    """Load a training state into ``stage``; returns the epoch to continue from."""
    from vreid.train.checkpoint import set_rng_state

    stage.recipe.model.load_state_dict(state["model"])
    stage.optimizer.load_state_dict(state["optimizer"])
    stage.recipe.load_extra_state(state)
    set_rng_state(state["rng"])
    return int(state["epoch"]) + 1
