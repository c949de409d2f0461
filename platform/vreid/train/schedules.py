"""Learning-rate and temperature schedules, computed up front as per-epoch arrays (DINO's habit).

* Step decay: ``lr * gamma ** (number of milestones <= epoch)`` (VehicleNet sec. V-A: /10 at epoch 40 of
  Stage-I, epoch 8 of Stage-II; SSBVER 4.3: x0.1 at 40, 70, 100).
* Cosine: ``min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2`` over the epochs after warm-up
  (SSBVER 4.3 for transformers: 1e-4 -> 1.6e-5).
* Linear warm-up over ``warmup_epochs`` from ``warmup_factor * lr`` to the scheduled value
  (SSBVER: ten epochs "with rate 0.099").

Milestones are 1-based epoch numbers as the papers count them ("divided by 10 at the 40-th epoch"):
the decayed rate applies from 0-based epoch index ``milestone`` on, i.e. after ``milestone`` epochs.
"""

from __future__ import annotations

import math

import numpy as np

from vreid.config import StageConfig


def lr_schedule(stage: StageConfig) -> np.ndarray:
    """Per-epoch learning rate (for the head; the backbone gets ``backbone_lr_mult`` times it) of a stage
    resolved by :func:`vreid.config.resolve_stage`."""
    if stage.lr is None or stage.scheduler is None or stage.optimizer == "auto":
        raise ValueError("lr_schedule: resolve the stage first (vreid.config.resolve_stage)")
    epochs = stage.epochs
    lrs = np.empty(epochs, dtype=np.float64)
    warm = min(stage.warmup_epochs, epochs)
    for e in range(epochs):
        if stage.scheduler == "step":
            lr = stage.lr * stage.gamma ** sum(1 for m in stage.milestones if e >= m)
        else:
            span = max(epochs - warm, 1)
            t = min(max(e - warm, 0), span)
            lr = stage.min_lr + (stage.lr - stage.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / span))
        if e < warm:
            # linear from warmup_factor*lr at epoch 0 to lr at epoch `warm`
            alpha = e / warm
            lr = lr * (stage.warmup_factor * (1 - alpha) + alpha)
        lrs[e] = lr
    return lrs


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """SSBVER 4.3: tau_t rises linearly from ``warmup_temp`` to ``temp`` over the first epochs."""
    warm = min(warmup_epochs, epochs)
    return np.concatenate([np.linspace(warmup_temp, temp, warm), np.full(epochs - warm, temp)])
