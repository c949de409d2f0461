"""Training-time validation with the target's own protocol (vreid.evaluate.protocols), on the views
the recipe is evaluated with (:func:`vreid.evaluate.features.default_views` unless ``eval.flip`` /
``eval.scales`` are set), so the logged ``val_mAP`` is what ``vreid evaluate --checkpoint`` gives.

* ``veri776`` / ``cityflow``: same id + same camera is junk.
* ``vehicleid``: no cameras, nothing junk; the mean over ``eval.vehicleid_draws`` seeded gallery draws
  (one image per id) of the validation query + gallery images.
* ``veriwild``: the same-camera rule recorded in the validation manifests (``vreid data vehiclenet
  --same-camera``; ``keep``, the dataset authors' protocol, when none is recorded).

A run without a known target (manifests not from ``vreid data vehiclenet`` and no ``target`` set) is
validated as VeRi-776 (same id + same camera is junk).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vreid.config import RunConfig

VAL_KEYS = ("val_mAP", "val_rank1", "val_rank5", "val_mINP")


def eval_views(cfg: RunConfig) -> tuple[bool, tuple[float, ...]]:
    from vreid.evaluate.features import default_views

    flip, scales = default_views(cfg.recipe, cfg.target or "veri776")
    if cfg.eval.flip is not None:
        flip = cfg.eval.flip
    if cfg.eval.scales is not None:
        scales = tuple(float(s) for s in cfg.eval.scales)
    return bool(flip), tuple(scales)


def recorded_same_camera(df) -> str:
    """The VeRi-Wild gallery rule a manifest records (``keep`` when it records none)."""
    meta = df.attrs.get("vreid") or {}
    return str((meta.get("vehiclenet") or {}).get("same_camera") or meta.get("same_camera") or "keep")


def protocol_rows(protocol: str, qf, gf, q_df, g_df, metric: str = "cosine", vehicleid_draws: int = 10,
                  vehicleid_seed: int = 0, same_camera: Optional[str] = None) -> list[dict]:
    """The protocol's table rows for query/gallery features (see the module docstring)."""
    import pandas as pd

    from vreid.evaluate import protocols

    if protocol == "vehicleid":
        feats = np.concatenate([qf, gf])
        df = pd.concat([q_df, g_df], ignore_index=True)
        return protocols.vehicleid(feats, df, n_draws=vehicleid_draws, seed=vehicleid_seed, metric=metric)
    if protocol == "veriwild":
        rule = same_camera or recorded_same_camera(g_df)
        return protocols.veriwild(qf, gf, q_df, g_df, same_camera=rule, metric=metric)
    runner = protocols.cityflow if protocol == "cityflow" else protocols.veri776
    return runner(qf, gf, q_df, g_df, metric=metric)


def validate(model, cfg: RunConfig, device) -> dict[str, float]:
    """``val_mAP`` / ``val_rank1`` / ``val_rank5`` / ``val_mINP`` of ``model`` on the validation split;
    ``{}`` when the config has none. The model's train/eval mode is restored."""
    from vreid.data.schema import read_manifest
    from vreid.evaluate.features import extract_features

    if not (cfg.data.val_query and cfg.data.val_gallery):
        return {}
    q_df = read_manifest(cfg.data.val_query)
    g_df = read_manifest(cfg.data.val_gallery)
    flip, scales = eval_views(cfg)
    was_training = model.training
    # whole images, as `vreid evaluate` (box crops are a post-processing step, VehicleNet IV-C)
    kw = dict(image_size=tuple(cfg.data.image_size), scales=scales, flip=flip, batch_size=cfg.eval.batch_size,
              use_bbox=False, device=str(device), progress=False)
    try:
        qf = extract_features(model, q_df, **kw)
        gf = extract_features(model, g_df, **kw)
    finally:
        model.train(was_training)
    row = protocol_rows(cfg.target or "veri776", qf, gf, q_df, g_df, metric=cfg.eval.metric,
                        vehicleid_draws=cfg.eval.vehicleid_draws, vehicleid_seed=cfg.eval.vehicleid_seed)[0]
    return {"val_mAP": float(row["mAP"]), "val_rank1": float(row["CMC@1"]), "val_rank5": float(row["CMC@5"]),
            "val_mINP": float(row["mINP"])}
