"""Ensemble feature extraction at AI City (CityFlow) test size, side by side on the same models and images:

1. the whole Ray Data job (``extract_ensemble_features``: parquet index, decode + resize in the read
   tasks, one actor pool of forwards, parquet output, re-ordering), timed from the call to its return,
   actor start-up and model loading included;
2. the same two stages in-process, one after the other on one core (decode stage, then the actor);
3. naive: a loop that decodes every image again for every model and every view (on a subset);
4. floor: the model forwards alone, on tensors already decoded and resized, one torch thread.

Target: the whole Ray Data job within 1.2x of the floor's time. Default size: CityFlow's test set,
1,052 queries + 19,342 gallery = 20,394 images (generated, small model and images so it runs here).

    python benchmarks/bench_ensemble.py [--models 2] [--images 20394] [--size 64] [--batch-size 64]
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
    from vreid.distributed.batch_inference import EnsembleFeatureActor, decode_stage
    from vreid.train.checkpoint import read_model_config

    sizes = [tuple(read_model_config(c)["image_size"]) for c in checkpoints]
    actor = EnsembleFeatureActor(checkpoints, SCALES, True, False, threads=1)
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        actor(decode_stage({"row": np.arange(len(chunk)), "path": np.array(chunk)}, sizes, False))
    return len(paths) / (time.perf_counter() - t0)


def ray_data(paths, checkpoints, batch: int, work: Path, num_actors: int) -> tuple[float, float]:
    from vreid.distributed.batch_inference import extract_ensemble_features
    from vreid.distributed.ray_train import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    t0 = time.perf_counter()  # a first small job: Ray's workers and imports warm
    extract_ensemble_features(paths[:batch], checkpoints, SCALES, True, batch_size=batch, work_dir=str(work / "warm"),
                              num_actors=num_actors)
    small = time.perf_counter() - t0
    t0 = time.perf_counter()
    extract_ensemble_features(paths, checkpoints, SCALES, True, batch_size=batch, work_dir=str(work / "run"),
                              num_actors=num_actors)
    return len(paths) / (time.perf_counter() - t0), small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--images", type=int, default=19342 + 1052, help="default: CityFlow test size")
    parser.add_argument("--naive-images", type=int, default=1000, help="subset for the slow naive loop")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from vreid.cli import main as vreid

    work = Path(tempfile.mkdtemp(prefix="vreid-bench-ens-"))
    assert vreid(["data", "synth", "--out", str(work / "data")]) == 0
    pool = sorted(str(p) for p in (work / "data").rglob("*.jpg"))
    paths = (pool * (args.images // len(pool) + 1))[: args.images]
    ckpts = make_checkpoints(work, args.models, args.backbone, args.size)
    print(f"{len(paths)} images ({len(set(paths))} distinct generated files), {args.models} x {args.backbone} at "
          f"{args.size}x{args.size}, {len(SCALES) * 2} views (flip x scales {list(SCALES)}), batch {args.batch_size}, "
          f"1 torch thread per actor, CPU", flush=True)
    # on a shared machine the load drifts: the floor is measured before and after the job, and the job
    # is compared with the faster of the two (the conservative ratio)
    f0 = floor(paths, ckpts, args.batch_size)
    ip = in_process(paths, ckpts, args.batch_size)
    rd, small = ray_data(paths, ckpts, args.batch_size, work, args.actors)
    f1 = floor(paths, ckpts, args.batch_size)
    f = max(f0, f1)
    nv = naive(paths[: args.naive_images], ckpts)
    print(f"floor before / after the job: {f0:.1f} / {f1:.1f} images/s (the faster one is the reference)")
    print(f"{'':52s}{'images/s':>10s}{'vs floor':>10s}")
    for name, rate in (("floor (forwards on decoded tensors, 1 thread)", f),
                       ("decode stage + actor in-process, 1 core", ip),
                       (f"whole Ray Data job ({args.actors} actor, start-up incl.)", rd),
                       (f"naive (decode per model and view; {min(args.naive_images, len(paths))} images)", nv)):
        print(f"{name:52s}{rate:10.1f}{f / rate:9.2f}x")
    print(f"the whole Ray Data job takes {f / rd:.2f}x the floor's time (target <= 1.2x): {len(paths) / rd:.1f} s "
          f"vs {len(paths) / f:.1f} s; a {args.batch_size}-image job takes {small:.1f} s (the fixed start-up); "
          f"the naive loop {f / nv:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
