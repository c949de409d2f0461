"""Ray Data batch inference for the ensemble (needs a Ray cluster).

``read_parquet -> map_batches(EnsembleFeatureActor, compute=ActorPoolStrategy(size=n)) ->
write_parquet``: each actor loads every selected model once (in ``__init__``), and each image is read
and decoded once for all models and all views. Output order is not guaranteed, so every row carries
its ``row`` id and the result is re-ordered by it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

PROGRESS_KEY = "ensemble-rows"


class EnsembleFeatureActor:
    """One actor of the pool: all models in memory, one decode per image."""

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
        from vreid.ensemble.views import decode, multiview_features, to_batch
        from vreid.evaluate.features import crop_to_box

        images = [decode(str(p)) for p in batch["path"]]  # decoded once for every model and view
        crops = None
        if self.crop_average and "bbox" in batch:
            crops = [crop_to_box(im, bb) for im, bb in zip(images, batch["bbox"])]
        out: dict[str, np.ndarray] = {"row": np.asarray(batch["row"], dtype=np.int64)}
        for i, (model, size) in enumerate(self.models):
            x = to_batch(images, size).to(self.device)
            f = multiview_features(model, x, self.scales, self.flip)
            out[f"feat_{i}"] = f.cpu().numpy().astype(np.float32)
            if crops is not None:
                # box crops (VehicleNet IV-C "Cropped Images"); an image without a box keeps its own feature
                fc = f.clone()
                idx = [j for j, c in enumerate(crops) if c is not None]
                if idx:
                    fc[idx] = multiview_features(model, to_batch([crops[j] for j in idx], size).to(self.device),
                                                 self.scales, self.flip)
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
) -> tuple[list[np.ndarray], Optional[list[np.ndarray]]]:
    """Features of ``paths`` for each checkpoint: ``(features, crop_features)``, one [N, D_i] array per
    model in row order; ``crop_features`` is None unless ``crop_average`` and boxes are given."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    work = Path(work_dir or tempfile.mkdtemp(prefix="vreid-infer-"))
    work.mkdir(parents=True, exist_ok=True)
    table = {"row": np.arange(len(paths), dtype=np.int64), "path": [str(p) for p in paths]}
    if bboxes is not None:
        table["bbox"] = [list(b) if b is not None and len(b) == 4 else None for b in bboxes]
    index_path = work / "inference_index.parquet"
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(table), preserve_index=False), index_path)
    out_dir = work / "features"
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job prints its own one-line progress
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray.data.read_parquet(str(index_path))
    ds = ds.map_batches(
        EnsembleFeatureActor,
        fn_constructor_kwargs={
            "checkpoints": [str(c) for c in checkpoints], "scales": list(scales), "flip": flip,
            "crop_average": crop_average and bboxes is not None, "device": "cuda" if use_gpu else "cpu",
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
