"""Ensemble feature extraction, side by side on the same models and images:

1. decode-once: our Ray Data job path (each image decoded once for all models and views),
2. naive: a loop that decodes every image again for every model and every view,
3. floor: the model forwards alone, on tensors already decoded and resized.

Target: decode-once within 1.2x of the floor. The decode-once rate is measured twice: through Ray Data
(one actor; includes Ray's scheduling and parquet I/O) and in-process (the actor's own batch function),
so the cost of the pipeline itself is visible.

    .venv/bin/python benchmarks/bench_ensemble.py [--models 2] [--images 300] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SCALES = (1.0, 0.9, 0.8)


def make_checkpoints(work: Path, n_models: int, backbone: str, size: int) -> list[str]:
    from vreid.models import ReidModel
    from vreid.train.checkpoint import save_checkpoint

    paths = []
    for i in range(n_models):
        torch.manual_seed(i)
        kw = {"backbone_name": backbone, "head": "vehiclenet", "num_classes": 10, "pretrained": False,
              "last_stride": 1, "img_size": [size, size], "fc_dim": 128, "dropout": 0.0, "dino_out_dim": None}
        model = ReidModel(**kw).eval()
        d = work / f"model{i}"
        save_checkpoint(d, export_model=model, model_config={**kw, "image_size": [size, size]}, state={"epoch": 0},
                        metrics={})
        paths.append(str(d))
    return paths


def naive(paths, checkpoints) -> float:
    from vreid.ensemble.views import decode, to_batch
    from vreid.train.checkpoint import load_model_for_inference
    import math
    import torch.nn.functional as F

    models = [load_model_for_inference(c) for c in checkpoints]
    t0 = time.perf_counter()
    with torch.no_grad():
        for model, info in models:
            size = tuple(info["image_size"])
            for s in SCALES:
                for flip in (False, True):
                    for p in paths:  # decode again for every model and view
                        x = to_batch([decode(p)], size)
                        if s != 1.0:
                            x = F.interpolate(x, scale_factor=math.sqrt(s), mode="bilinear", align_corners=False)
                        if flip:
                            x = torch.flip(x, dims=[3])
                        model.extract(x)
    return len(paths) / (time.perf_counter() - t0)


def floor(paths, checkpoints, batch: int) -> float:
    from vreid.ensemble.views import decode, multiview_features, to_batch
    from vreid.train.checkpoint import load_model_for_inference

    models = [load_model_for_inference(c) for c in checkpoints]
    tensors = {}
    for model, info in models:
        size = tuple(info["image_size"])
        if size not in tensors:
            tensors[size] = [to_batch([decode(p) for p in paths[i:i + batch]], size) for i in range(0, len(paths), batch)]
    t0 = time.perf_counter()
    for model, info in models:
        for x in tensors[tuple(info["image_size"])]:
            multiview_features(model, x, SCALES, True)
    return len(paths) / (time.perf_counter() - t0)


def in_process(paths, checkpoints, batch: int) -> float:
    from vreid.distributed.batch_inference import EnsembleFeatureActor

    actor = EnsembleFeatureActor(checkpoints, SCALES, True, False, threads=1)
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        actor({"row": np.arange(len(chunk)), "path": np.array(chunk)})
    return len(paths) / (time.perf_counter() - t0)


def ray_data(paths, checkpoints, batch: int, work: Path) -> float:
    from vreid.distributed.batch_inference import extract_ensemble_features
    from vreid.distributed.ray_train import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    extract_ensemble_features(paths[:batch], checkpoints, SCALES, True, batch_size=batch, work_dir=str(work / "warm"))
    t0 = time.perf_counter()
    extract_ensemble_features(paths, checkpoints, SCALES, True, batch_size=batch, work_dir=str(work / "run"))
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from vreid.cli import main as vreid

    work = Path(tempfile.mkdtemp(prefix="vreid-bench-ens-"))
    assert vreid(["data", "synth", "--out", str(work / "data")]) == 0
    pool = sorted(str(p) for p in (work / "data").rglob("*.jpg"))
    # enough images that the Ray actor's start-up (a process, torch, the models) is amortised
    paths = (pool * (args.images // len(pool) + 1))[: args.images]
    ckpts = make_checkpoints(work, args.models, args.backbone, args.size)
    print(f"{len(paths)} images ({len(set(paths))} distinct generated files), {args.models} x {args.backbone} at {args.size}x{args.size}, "
          f"{len(SCALES) * 2} views (flip x scales {list(SCALES)}), 1 torch thread, CPU")
    f = floor(paths, ckpts, args.batch_size)
    ip = in_process(paths, ckpts, args.batch_size)
    rd = ray_data(paths, ckpts, args.batch_size, work)
    nv = naive(paths, ckpts)
    print(f"{'':44s}{'images/s':>10s}{'vs floor':>10s}")
    for name, rate in (("floor (forwards on decoded tensors)", f), ("decode-once, in-process batch function", ip),
                       ("decode-once, Ray Data job (1 actor)", rd), ("naive (decode per model and view)", nv)):
        print(f"{name:44s}{rate:10.1f}{f / rate:9.2f}x")
    print(f"decode-once (Ray Data) takes {f / rd:.2f}x the floor's time (target <= 1.2x); "
          f"the naive loop {f / nv:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
