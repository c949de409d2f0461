"""Training throughput, side by side in one run on the same model and data:

1. the Ray Train loop (``vreid.train.loop`` in one ``TorchTrainer`` worker) - images/s of its epochs,
2. the same recipe as a plain PyTorch loop (same model, transform, loader, optimiser) - images/s,
3. the data loader alone (decode + augment + collate) and the model alone (forward + backward on
   tensors already in memory), to show which one bounds the loop.

Target: Ray Train >= 0.9 x plain PyTorch.

    .venv/bin/python benchmarks/bench_train.py [--epochs 3] [--backbone test_resnet] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def plain_loop(cfg, epochs: int) -> float:
    """The reference: a plain PyTorch loop with the same pieces as the Ray Train loop."""
    from vreid.data import transforms as T
    from vreid.data.dataset import ManifestDataset
    from vreid.data.samplers import NaiveSampler
    from vreid.data.schema import read_manifest
    from vreid.losses import CrossEntropyLabelSmooth
    from vreid.models import ReidModel
    from vreid.train.loop import make_optimizer, model_kwargs, param_groups, training_labels

    torch.manual_seed(cfg.seed)
    df = read_manifest(cfg.data.stage1_train)
    labels = training_labels(df)
    df = df.assign(label=labels)
    ds = ManifestDataset(df, T.vehiclenet_train_transform(tuple(cfg.data.image_size)), use_bbox=True)
    sampler = NaiveSampler(len(ds), seed=cfg.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.stage1.batch_size, sampler=sampler, num_workers=cfg.data.loader_workers,
                                         drop_last=True)
    model = ReidModel(**model_kwargs(cfg, int(labels.max()) + 1))
    opt = make_optimizer(param_groups(model, cfg.stage1), cfg.stage1)
    ce = CrossEntropyLabelSmooth(int(labels.max()) + 1)
    rates = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for images, targets, _ in loader:
            loss = ce(model(images)["logits"], targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(targets)
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def loader_rate(cfg) -> float:
    from vreid.data import transforms as T
    from vreid.data.dataset import ManifestDataset
    from vreid.data.schema import read_manifest
    from vreid.train.loop import training_labels

    df = read_manifest(cfg.data.stage1_train)
    df = df.assign(label=training_labels(df))
    ds = ManifestDataset(df, T.vehiclenet_train_transform(tuple(cfg.data.image_size)), use_bbox=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.stage1.batch_size, shuffle=True, num_workers=cfg.data.loader_workers)
    t0, n = time.perf_counter(), 0
    for images, targets, _ in loader:
        n += len(targets)
    return n / (time.perf_counter() - t0)


def model_rate(cfg, steps: int = 20) -> float:
    from vreid.models import ReidModel
    from vreid.train.loop import make_optimizer, model_kwargs, param_groups

    model = ReidModel(**model_kwargs(cfg, 100))
    opt = make_optimizer(param_groups(model, cfg.stage1), cfg.stage1)
    h, w = cfg.data.image_size
    x = torch.randn(cfg.stage1.batch_size, 3, h, w)
    y = torch.randint(0, 100, (cfg.stage1.batch_size,))
    for _ in range(3):
        torch.nn.functional.cross_entropy(model(x)["logits"], y).backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * cfg.stage1.batch_size / (time.perf_counter() - t0)


def ray_loop(cfg, epochs: int, work: Path) -> float:
    from vreid.distributed.ray_train import fit_stage, init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    storage = str(work / "ray")
    res = fit_stage(cfg, "stage1", f"bench-{int(time.time())}", storage)
    # per-epoch images/s from the reported metrics (the training part of each epoch, as the plain loop)
    run_dir = Path(res["checkpoint"]).parent
    rates = []
    for ck in sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir()):
        m = __import__("json").loads((ck / "metrics.json").read_text())
        rates.append(m["images_per_s"])
    if not rates:
        rates = [res["metrics"]["images_per_s"]]
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


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
    plain = plain_loop(cfg, args.epochs)
    ray_rate = ray_loop(cfg, args.epochs, work)
    loader = loader_rate(cfg)
    model = model_rate(cfg)
    print(f"{'':34s}{'images/s':>10s}")
    print(f"{'plain PyTorch loop':34s}{plain:10.1f}")
    print(f"{'Ray Train loop (1 worker)':34s}{ray_rate:10.1f}")
    print(f"{'data loader alone':34s}{loader:10.1f}")
    print(f"{'model alone (fwd+bwd+step)':34s}{model:10.1f}")
    print(f"ratio Ray Train / plain PyTorch: {ray_rate / plain:.2f}x (target >= 0.9x)")
    print(f"ratio data loader / model:       {loader / model:.2f}x (> 1: the model bounds the loop)")


if __name__ == "__main__":
    sys.exit(main())
