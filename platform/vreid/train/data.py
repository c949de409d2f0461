"""Training data: which manifest a stage trains on, its contiguous labels, the loader of a recipe."""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch

from vreid.config import RunConfig
from vreid.errors import ConfigError, VreidError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def train_manifest_path(cfg: RunConfig, stage: str) -> str:
    """Stage-I: the merged VehicleNet manifest; Stage-II and SSBVER: the target's training set."""
    if cfg.recipe == "vehiclenet" and stage == "stage1":
        path = cfg.data.stage1_train
    else:
        path = cfg.data.stage2_train or cfg.data.stage1_train
    if not path:
        raise ConfigError(f"no training manifest for {cfg.recipe}/{stage}: set data.manifests or data.{stage}_train")
    return path


def training_labels(df, label_by: str = "identity") -> np.ndarray:
    """The contiguous ``label`` column; manifests without one get labels from sorted vehicle ids.
    ``label_by="camera"``: contiguous labels from the camera ids (the camera classifier)."""
    if label_by == "camera":
        cams = df["camera"].to_numpy()
        if (cams < 0).any():
            raise VreidError("label_by: camera needs a camera id on every training image (found -1)")
        uniq = {v: i for i, v in enumerate(sorted(set(cams.tolist())))}
        return np.array([uniq[v] for v in cams.tolist()], dtype=np.int64)
    if "label" in df.columns and (df["label"] >= 0).all():
        return df["label"].to_numpy(np.int64)
    ids = df["source_id"] if "source_id" in df.columns else df["vehicle_id"]
    uniq = {v: i for i, v in enumerate(sorted(set(ids.tolist())))}
    return np.array([uniq[v] for v in ids.tolist()], dtype=np.int64)


def make_sampler(stage: Any, labels: np.ndarray, seed: int, world: int, rank: int):
    """``(sampler, batch_sampler)``: one of them is None. P x K batches (``stage.sampler: pk``), class
    balanced or naive shuffling, each sharded over ``world`` workers."""
    from vreid.data import samplers

    if stage.sampler == "pk":
        return None, samplers.PKSampler(labels, P=stage.batch_size // stage.num_instances, K=stage.num_instances,
                                        seed=seed, num_replicas=world, rank=rank)
    if stage.sampler == "balanced":
        return samplers.ClassBalancedSampler(labels, seed=seed, num_replicas=world, rank=rank), None
    return samplers.NaiveSampler(len(labels), seed=seed, num_replicas=world, rank=rank, shuffle=True), None


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, stage: Any, labels: np.ndarray, seed: int, world: int = 1, rank: int = 0,
                num_workers: int = 0, pin_memory: bool = False, collate_fn: Optional[Any] = None):
    """The DataLoader of one worker's shard; its sampler has ``set_epoch`` (seeded per epoch)."""
    sampler, batch_sampler = make_sampler(stage, labels, seed, world, rank)
    g = torch.Generator()
    g.manual_seed(seed * 1000 + rank)
    kw: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory, generator=g,
                              persistent_workers=num_workers > 0, worker_init_fn=_worker_init)
    if collate_fn is not None:
        kw["collate_fn"] = collate_fn
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kw)
    per_worker = max(1, stage.batch_size // world)
    return torch.utils.data.DataLoader(dataset, batch_size=per_worker, sampler=sampler,
                                       drop_last=len(sampler) > per_worker, **kw)


def epoch_sampler(loader):
    """The loader's sampler that takes ``set_epoch``."""
    return loader.batch_sampler if hasattr(loader.batch_sampler, "set_epoch") else loader.sampler
