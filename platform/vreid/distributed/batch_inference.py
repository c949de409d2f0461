"""Ray Data batch inference for the ensemble (needs a Ray cluster).

``read_parquet -> map_batches(decode_stage) -> map_batches(EnsembleFeatureActor,
compute=ActorPoolStrategy(size=n)) -> write_parquet``. The decode stage is a plain task fused with the
parquet read: each image is read and decoded once and resized once per distinct model input size, as
uint8, on a CPU beside the actors. Each actor loads every selected model once (in ``__init__``) and is
reused for every batch of the job (the ensemble job runs one pass over the union of its image sets),
so it only normalises pixels and runs forwards. Output order is not guaranteed, so every row carries its
``row`` id and the result is re-ordered by it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

PROGRESS_KEY = "ensemble-rows"


def _size_key(prefix: str, size: Sequence[int]) -> str:
    return f"{prefix}_{int(size[0])}x{int(size[1])}"


def decode_stage(batch: dict[str, np.ndarray], sizes: Sequence[Sequence[int]], crop: bool) -> dict[str, np.ndarray]:
    """The read stage's work (a Ray Data task, fused with the parquet read): decode each image once and
    resize it to every model input size as uint8 (h, w, 3), plus its box crop where ``crop``.

    The resize is :func:`vreid.evaluate.features._to_tensor`'s (PIL bicubic); the float conversion and
    ImageNet normalisation happen in the actor (:func:`normalise`), so features are bit-identical to the
    evaluation's extractor while only uint8 pixels travel through the object store."""
    from vreid.ensemble.views import decode
    from vreid.evaluate.features import crop_to_box

    images = [decode(str(p)) for p in batch["path"]]
    out: dict[str, np.ndarray] = {"row": np.asarray(batch["row"], dtype=np.int64)}
    crops = None
    if crop and "bbox" in batch:
        crops = [crop_to_box(im, bb) for im, bb in zip(images, batch["bbox"])]
        out["has_crop"] = np.array([c is not None for c in crops], dtype=bool)
    for size in {tuple(int(v) for v in s) for s in sizes}:
        h, w = size
        out[_size_key("img", size)] = np.stack([np.asarray(im.resize((w, h), resample=3)) for im in images])
        if crops is not None:
            # rows without a box carry their whole image: shape-regular, and never used as a crop
            out[_size_key("crop", size)] = np.stack(
                [np.asarray((c if c is not None else im).resize((w, h), resample=3)) for c, im in zip(crops, images)])
    return out


def normalise(u8: np.ndarray):
    """(b, h, w, 3) uint8 -> (b, 3, h, w) float tensor, the same arithmetic as ``_to_tensor``."""
    import torch

    from vreid.evaluate.features import IMAGENET_MEAN, IMAGENET_STD

    arr = np.asarray(u8, dtype=np.float32) / 255.0
    arr = (arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


class EnsembleFeatureActor:
    """One actor of the pool: all models in memory (loaded once, reused for every batch); it only runs
    forwards on the read stage's decoded, resized pixels."""

    def __init__(self, checkpoints: Sequence[str], scales: Sequence[float], flip: bool, crop_average: bool,
                 device: str = "cpu", threads: int = 1):
        import torch

        from vreid.train.checkpoint import load_model_for_inference

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
        self.device = device
        self.models = []
        for ckpt in checkpoints:
            model, info = load_model_for_inference(ckpt, device=device)
            self.models.append((model, tuple(info["image_size"])))
        self.scales = tuple(scales)
        self.flip = flip
        self.crop_average = crop_average
        from vreid.progress import RowProgress

        self.progress = RowProgress(PROGRESS_KEY)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vreid.ensemble.views import multiview_features

        out: dict[str, np.ndarray] = {"row": np.asarray(batch["row"], dtype=np.int64)}
        has = np.asarray(batch["has_crop"], dtype=bool) if self.crop_average and "has_crop" in batch else None
        for i, (model, size) in enumerate(self.models):
            key = _size_key("img", size)
            if key not in batch:
                raise RuntimeError(f"batch inference: the read stage produced no {key} pixels for model {i}")
            f = multiview_features(model, normalise(batch[key]).to(self.device), self.scales, self.flip)
            out[f"feat_{i}"] = f.cpu().numpy().astype(np.float32)
            if has is not None:
                # box crops (VehicleNet IV-C "Cropped Images"); an image without a box keeps its own feature
                fc = f.clone()
                idx = np.flatnonzero(has)
                if len(idx):
                    px = np.asarray(batch[_size_key("crop", size)])[idx]
                    fc[idx] = multiview_features(model, normalise(px).to(self.device), self.scales, self.flip)
                out[f"crop_{i}"] = fc.cpu().numpy().astype(np.float32)
        self.progress.add(len(out["row"]))
        return out


def extract_ensemble_features(
    paths: Sequence[str],
    checkpoints: Sequence[str],
    scales: Sequence[float] = (1.0, 0.9, 0.8),
    flip: bool = True,
    bboxes: Optional[Sequence[Any]] = None,
    crop_average: bool = False,
    num_actors: int = 1,
    batch_size: int = 64,
    use_gpu: bool = False,
    cpus_per_actor: float = 1.0,
    work_dir: Optional[str] = None,
    decode_cpus: float = 0.5,
) -> tuple[list[np.ndarray], Optional[list[np.ndarray]]]:
    """Features of ``paths`` for each checkpoint: ``(features, crop_features)``, one [N, D_i] array per
    model in row order; ``crop_features`` is None unless ``crop_average`` and boxes are given."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    if len(paths) == 0:
        raise ValueError("batch inference needs at least one image path")
    work = Path(work_dir or tempfile.mkdtemp(prefix="vreid-infer-"))
    work.mkdir(parents=True, exist_ok=True)
    table = {"row": np.arange(len(paths), dtype=np.int64), "path": [str(p) for p in paths]}
    if bboxes is not None:
        table["bbox"] = [list(b) if b is not None and len(b) == 4 else None for b in bboxes]
    index = pa.Table.from_pandas(pd.DataFrame(table), preserve_index=False)
    out_dir = work / "features"
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job prints its own one-line progress
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    from vreid.train.checkpoint import read_model_config

    sizes = [tuple(read_model_config(str(c).removeprefix("file://"))["image_size"]) for c in checkpoints]
    crop = crop_average and bboxes is not None
    # the index (paths, boxes: a few MB even for 138,517 images) goes to the object store from memory, in
    # blocks of 4 batches; read_parquet of a written copy started parquet footer-reader actors per job
    n_blocks = max(1, -(-len(paths) // (4 * batch_size)))
    step = -(-len(paths) // n_blocks)
    ds = ray.data.from_arrow([index.slice(i, step) for i in range(0, len(paths), step)])
    # decode + resize in the read tasks, beside the actors' forwards: the actors never wait on JPEG decoding
    ds = ds.map_batches(decode_stage, fn_kwargs={"sizes": sizes, "crop": crop}, batch_size=batch_size,
                        batch_format="numpy", num_cpus=decode_cpus)
    ds = ds.map_batches(
        EnsembleFeatureActor,
        fn_constructor_kwargs={
            "checkpoints": [str(c) for c in checkpoints], "scales": list(scales), "flip": flip,
            "crop_average": crop, "device": "cuda" if use_gpu else "cpu",
            "threads": max(1, int(cpus_per_actor)),
        },
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus_per_actor if not use_gpu else None,
        num_gpus=1 if use_gpu else None,
    )
    from vreid.progress import progress_board

    with progress_board() as board:  # rows done / total, printed by this driver (and so in `ray job logs`)
        board.watch_rows(PROGRESS_KEY, len(paths), "ensemble: extracted")
        ds.write_parquet(str(out_dir))
    result = pq.read_table(str(out_dir)).to_pandas()
    result = result.sort_values("row")
    if len(result) != len(paths) or not np.array_equal(result["row"].to_numpy(), np.arange(len(paths))):
        raise RuntimeError(f"batch inference returned {len(result)} rows for {len(paths)} images")
    def column(name: str) -> np.ndarray:
        return np.stack(result[name].to_numpy()).astype(np.float32)

    feats = [column(f"feat_{i}") for i in range(len(checkpoints))]
    crops = [column(f"crop_{i}") for i in range(len(checkpoints))] if "crop_0" in result.columns else None
    return feats, crops
