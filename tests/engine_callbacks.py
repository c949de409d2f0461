"""Engine callbacks that tests hand to Ray Train workers (``extra_config={"callbacks": [...]}``).

They live in the test tree, not in vreid: production code has no fault-injection or debug hooks.
Ray pickles the callbacks into its workers, which cannot import this module (it is not on their
path), so :func:`by_value` registers it to be pickled by value."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def by_value() -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def params_digest(model) -> str:
    """Hash of the trainable parameters (BN running statistics are per-worker buffers that DDP
    re-broadcasts from rank 0 at each forward, so they are left out)."""
    h = hashlib.sha1()
    for _, p in sorted(model.named_parameters()):
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _applies(ctx, when: dict | None) -> bool:
    """``when``: dotted config keys and values (``{"stage1.lr": 0.05}``); the callback acts only in the
    trial whose config has them (a grid's trials all get the same callbacks)."""
    flat = ctx.recipe.cfg.flat()
    return not when or all(flat.get(k) == v for k, v in when.items())


class WorkerFault:
    """The last worker process dies (``os._exit``) once, right after epoch ``after_epoch`` was
    reported; the marker file makes it happen once per trial (``when``: in that trial only)."""

    def __init__(self, after_epoch: int, marker: str, when: dict | None = None):
        self.after_epoch, self.marker, self.when = int(after_epoch), str(marker), when

    def on_epoch_end(self, ctx) -> None:
        marker = Path(self.marker)
        if ctx.rank == ctx.world - 1 and ctx.epoch + 1 == self.after_epoch and not marker.exists() and _applies(ctx, self.when):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            os._exit(1)


class ShardRecorder:
    """Per epoch and worker: the dataset indices seen and the parameter digest after every step,
    written to ``<folder>/<stage>_e<epoch>_r<rank>.json``."""

    def __init__(self, folder: str):
        self.folder = str(folder)
        self.seen: list[int] = []
        self.digests: list[str] = []

    def on_step_end(self, ctx) -> None:
        self.seen.extend(ctx.batch[2].tolist())
        self.digests.append(params_digest(ctx.recipe.model))

    def on_epoch_end(self, ctx) -> None:
        path = Path(self.folder)
        path.mkdir(parents=True, exist_ok=True)
        name = f"{ctx.recipe.stage_name}_e{ctx.epoch + 1}_r{ctx.rank}.json"
        (path / name).write_text(json.dumps({"seen": self.seen, "digests": self.digests}))
        self.seen, self.digests = [], []


class HoldAfterEpoch:
    """Rank 0 stops after epoch ``epoch`` of ``stage`` was reported (its checkpoint persisted): it writes
    ``<folder>/held`` and sleeps until ``<folder>/release`` exists, so a test can interrupt a grid's
    driver at a known point of a trial instead of racing its training. Every epoch rank 0 finishes is
    appended to ``<folder>/epochs`` (a line ``<stage> <1-based epoch>``), so a test sees which were
    trained. ``when``: in that trial only."""

    def __init__(self, epoch: int, folder: str, stage: str = "stage1", when: dict | None = None):
        self.epoch, self.folder, self.stage, self.when = int(epoch), str(folder), stage, when

    def on_epoch_end(self, ctx) -> None:
        import time

        folder = Path(self.folder)
        if ctx.rank != 0 or not _applies(ctx, self.when):
            return
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "epochs", "a") as f:
            f.write(f"{ctx.recipe.stage_name} {ctx.epoch + 1}\n")
        if (ctx.recipe.stage_name, ctx.epoch + 1) != (self.stage, self.epoch):
            return
        (folder / "held").write_text(str(os.getpid()))
        while not (folder / "release").exists():
            time.sleep(0.2)


def pipeline_faults(folder: str) -> list:
    """The pipeline test's grid faults (tests/test_pipeline.py): in trial lr0.08 the worker dies after
    its first epoch (marker ``<folder>/fault_injected``); trial lr0.05 holds after its Stage-II epoch 1
    (``<folder>/hold``). The interrupted driver and the resumed one pass the same list."""
    return [WorkerFault(1, f"{folder}/fault_injected", when={"stage1.lr": 0.08}),
            HoldAfterEpoch(1, f"{folder}/hold", stage="stage2", when={"stage1.lr": 0.05})]
