"""Training throughput, side by side in one run on the same model and data:

1. the engine (``vreid.train.engine.prepare`` + ``fit``) in one ``TorchTrainer`` worker (Ray Train) -
   images/s of its epochs,
2. the same engine called plainly in this process (no Ray) - images/s,
3. the data loader alone (decode + augment + collate) and the model alone (forward + backward on
   tensors already in memory), to show which one bounds the loop.

Both runs execute the same code (no copy of the loop): the ratio is the cost of Ray Train itself.
Target: Ray Train >= 0.9 x plain engine.

    .venv/bin/python benchmarks/bench_train.py [--epochs 4] [--backbone test_resnet] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _median_after_first(rates: list[float]) -> float:
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def plain_engine(cfg) -> float:
    """The engine without Ray: per-epoch images/s as the engine measures them."""
    from vreid.train import engine

    stage = engine.prepare(cfg, "stage1")
    rates: list[float] = []

    class Rate:
        def on_epoch_end(self, ctx):
            rates.append(ctx.metrics["images_per_s"])

    engine.fit(stage, callbacks=[Rate()])
    return _median_after_first(rates)


def loader_rate(cfg) -> float:
    from vreid.train import engine

    stage = engine.prepare(cfg, "stage1")
    t0, n = time.perf_counter(), 0
    for batch in stage.loader:
        n += len(batch[1])
    return n / (time.perf_counter() - t0)


def model_rate(cfg, steps: int = 20) -> float:
    from vreid.train.engine import make_optimizer
    from vreid.train.recipes import recipe_class

    recipe = recipe_class(cfg.recipe)(cfg, "stage1", 100)
    opt = make_optimizer(recipe.param_groups(), recipe.stage)
    h, w = cfg.data.image_size
    x = torch.randn(cfg.stage1.batch_size, 3, h, w)
    y = torch.randint(0, 100, (cfg.stage1.batch_size,))
    batch = (x, y, torch.arange(len(y)))
    recipe.train()
    for _ in range(3):
        recipe.losses(batch, 0)["loss"].backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = recipe.losses(batch, 0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * cfg.stage1.batch_size / (time.perf_counter() - t0)


def ray_engine(cfg, work: Path) -> float:
    from vreid.distributed.ray_train import fit_stage, init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    res = fit_stage(cfg, "stage1", f"bench-{int(time.time())}", str(work / "ray"))
    # per-epoch images/s from the reported metrics (the training part of each epoch, as the plain run)
    run_dir = Path(res["checkpoint"]).parent
    rates = [json.loads((ck / "metrics.json").read_text())["images_per_s"]
             for ck in sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())]
    return _median_after_first(rates or [res["metrics"]["images_per_s"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ids", type=int, default=80)
    args = parser.parse_args()

    from vreid.cli import main as vreid
    from vreid.config import config_from_dict

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="vreid-bench-"))
    assert vreid(["data", "synth", "--out", str(work / "data"), "--ids", str(args.ids)]) == 0
    assert vreid(["data", "index", "veri776", str(work / "data" / "veri776"), "--out", str(work / "train.parquet")]) == 0
    from vreid.data.schema import read_manifest, write_manifest

    df = read_manifest(work / "train.parquet")
    df = df[df["split"] == "train"].reset_index(drop=True)
    write_manifest(df, work / "train_only.parquet")
    cfg = config_from_dict({
        "recipe": "vehiclenet", "seed": 0,
        "data": {"stage1_train": str(work / "train_only.parquet"), "image_size": [args.size, args.size], "loader_workers": 0},
        "model": {"backbone": args.backbone, "fc_dim": 128, "dropout": 0.0},
        "stage1": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05, "backbone_lr_mult": 1.0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "output": {"root": str(work)},
    })
    print(f"data: {len(df)} images of the generated VeRi-776 training set at {args.size}x{args.size}; "
          f"backbone {args.backbone}; batch {args.batch_size}; {args.epochs} epochs; 1 torch thread; CPU")
    plain = plain_engine(cfg)
    ray_rate = ray_engine(cfg, work)
    loader = loader_rate(cfg)
    model = model_rate(cfg)
    print(f"{'':34s}{'images/s':>10s}")
    print(f"{'engine, plain (no Ray)':34s}{plain:10.1f}")
    print(f"{'engine in TorchTrainer (1 worker)':34s}{ray_rate:10.1f}")
    print(f"{'data loader alone':34s}{loader:10.1f}")
    print(f"{'model alone (fwd+bwd+step)':34s}{model:10.1f}")
    print(f"ratio Ray Train / plain engine:  {ray_rate / plain:.2f}x (target >= 0.9x)")
    print(f"ratio data loader / model:       {loader / model:.2f}x (> 1: the model bounds the loop)")


if __name__ == "__main__":
    sys.exit(main())
