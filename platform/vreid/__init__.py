"""vreid: a Ray-distributed experiment and ensemble platform for vehicle re-identification.

The package follows the pipeline a user runs: ``data`` (on-disk formats -> parquet manifests),
``models`` / ``losses`` / ``train`` (VehicleNet Stage-I/II and SSBVER recipes), ``evaluate``
(features, metrics, protocols, re-ranking, post-processing), ``ensemble`` (fusion and the AI City
submission), with Ray (``distributed``) and MLflow (``tracking``) at the edges.

The main entry points are importable from here (loaded on first use, so ``import vreid`` stays fast):

* ``load_checkpoint(dir) -> (model, info)``: a trained checkpoint's re-id model, in eval mode
* ``read_manifest(path) -> DataFrame``: a parquet manifest (one row per image)
* ``extract_features(model, manifest_df, image_size=...) -> (N, D) array``: L2-normalised features
* ``evaluate_protocol(name, qf, gf, q_df, g_df) -> rows``: a dataset protocol's table rows
* ``evaluate_features(qf, gf, q_ids, g_ids, q_cams, g_cams) -> dict``: mAP / CMC / mINP
* ``load_config(yaml) -> RunConfig``, ``train_run(cfg)``, ``run_grid(cfg)``: training on Ray
* ``load_selection(path)``, ``run_ensemble(inputs)``: the ensemble job; ``main(argv)``: the CLI
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute): resolved lazily (PEP 562) so `import vreid` does not import torch or ray
_ENTRY_POINTS = {
    "load_checkpoint": ("vreid.train.checkpoint", "load_model_for_inference"),
    "read_manifest": ("vreid.data.schema", "read_manifest"),
    "extract_features": ("vreid.evaluate.features", "extract_features"),
    "evaluate_features": ("vreid.evaluate.metrics", "evaluate_features"),
    "evaluate_protocol": ("vreid.api", "evaluate_protocol"),
    "load_config": ("vreid.config", "load_config"),
    "train_run": ("vreid.distributed.run", "train_run"),
    "run_grid": ("vreid.distributed.grid", "run_grid"),
    "load_selection": ("vreid.distributed.grid", "load_selection"),
    "run_ensemble": ("vreid.ensemble.job", "run_ensemble"),
    "main": ("vreid.cli", "main"),
}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        module, attr = _ENTRY_POINTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vreid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ENTRY_POINTS))
