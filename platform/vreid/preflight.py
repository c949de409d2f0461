"""Checks run on the driver before Ray starts, so bad input fails in a second with one clear line
instead of inside a Ray worker minutes later.

:func:`check_run_config` covers what a training run reads or builds: every number of a stage schedule
finite (a NaN or inf learning rate passes ``lr <= 0``), the backbone known to timm (or one of the
ResNet-IBN-a names), pretrained weights present in the local cache or at the given path, and every
manifest the run reads present and valid (schema, nulls, split / dataset values).
:func:`check_grid_config` does the same for every point of a grid.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from vreid.config import RunConfig, config_from_dict, set_dotted
from vreid.errors import ConfigError, VreidError

_STAGE_FLOATS = ("lr", "backbone_lr_mult", "momentum", "weight_decay", "gamma", "min_lr", "warmup_factor",
                 "label_smoothing")


def check_numbers(cfg: RunConfig, where: str) -> None:
    """Every float setting finite; learning rates > 0; the rest >= 0."""
    for stage in cfg.stages:
        s = cfg.stage(stage)
        for name in _STAGE_FLOATS:
            value = getattr(s, name)
            if value is None:  # unset: the recipe's default for the backbone family, filled when the stage is built
                continue
            if not math.isfinite(value):
                raise ConfigError(f"{where}: '{stage}.{name}' must be a finite number, got {value}")
            if name == "lr" and value <= 0:
                raise ConfigError(f"{where}: '{stage}.lr' must be > 0, got {value}")
            if value < 0:
                raise ConfigError(f"{where}: '{stage}.{name}' must be >= 0, got {value}")
    for section in ("model", "ssbver", "scaling"):
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}: '{section}.{f.name}' must be a finite number, got {value}")
    for i, s in enumerate(cfg.eval.scales or []):  # None: the recipe's / protocol's default views
        if not math.isfinite(s) or s <= 0:
            raise ConfigError(f"{where}: 'eval.scales[{i}]' must be a finite number > 0, got {s}")


def check_backbone(name: str, pretrained: Any, key: str = "model.backbone", where: str = "") -> None:
    """The backbone exists (timm or ResNet-IBN-a) and its pretrained weights can be found offline."""
    import timm

    from vreid.models.backbones import find_cached_weights, is_ibn_a, missing_weights_message

    prefix = f"{where}: " if where else ""
    if not is_ibn_a(name) and not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"{prefix}'{key}': unknown backbone {name!r} (not a timm model nor a "
                          "resnet*_ibn_a name; `python -c \"import timm; print(timm.list_models('resnet*'))\"` lists some)")
    if pretrained is True and not is_ibn_a(name) and find_cached_weights(name) is None:
        raise VreidError(prefix + missing_weights_message(name))
    if isinstance(pretrained, str) and not Path(pretrained).expanduser().is_file():
        raise ConfigError(f"{prefix}'model.pretrained': weights file {pretrained} not found")


def run_manifests(cfg: RunConfig) -> dict[str, str]:
    """``{config key: path}`` of every manifest a run of ``cfg`` reads."""
    out = {}
    for stage in cfg.stages:
        if cfg.recipe == "vehiclenet" and stage == "stage1":
            key = "stage1_train"
        else:
            key = "stage2_train" if cfg.data.stage2_train else "stage1_train"
        path = getattr(cfg.data, key)
        if not path:
            raise ConfigError(f"no training manifest for {cfg.recipe}/{stage}: set data.manifests or data.{key}")
        out[f"data.{key}"] = path
    if cfg.data.val_query or cfg.data.val_gallery:
        if not (cfg.data.val_query and cfg.data.val_gallery):
            raise ConfigError("set both data.val_query and data.val_gallery (or neither)")
        out["data.val_query"] = cfg.data.val_query
        out["data.val_gallery"] = cfg.data.val_gallery
    return out


def check_manifests(cfg: RunConfig, where: str, cache: dict[str, Any] | None = None,
                    allow_outside_root: bool = False) -> None:
    """Every manifest the run reads exists, is a valid manifest (read and validated here) and names only
    images under the dataset roots it was built from (unless ``allow_outside_root``)."""
    from vreid.data.schema import check_paths_under_roots, read_manifest

    cache = {} if cache is None else cache
    for key, path in run_manifests(cfg).items():
        if path in cache:
            continue
        if not Path(path).is_file():
            hint = f" (data.manifests: {cfg.data.manifests})" if cfg.data.manifests else ""
            raise ConfigError(f"{where}: '{key}': manifest file not found: {path}{hint}")
        df = read_manifest(path)
        if key.endswith("_train") and len(df) == 0:
            raise ConfigError(f"{where}: '{key}': {path} has no images")
        check_paths_under_roots(df, path, allow_outside_root)
        cache[path] = True


def check_run_config(cfg: RunConfig, where: str, cache: dict[str, Any] | None = None,
                     allow_outside_root: bool = False) -> None:
    check_numbers(cfg, where)
    check_backbone(cfg.model.backbone, cfg.model.pretrained, where=where)
    check_manifests(cfg, where, cache, allow_outside_root)


def grid_points(cfg: RunConfig) -> list[dict[str, Any]]:
    """Every ``{dotted key: value}`` point of ``cfg.grid.params`` (the cross product), the last key
    varying fastest."""
    params = cfg.grid.params if cfg.grid else {}
    keys = list(params)
    return [dict(zip(keys, values)) for values in itertools.product(*(params[k] for k in keys))]


def point_run(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The run config dict of one grid point: ``base`` (a config dict) with the point's values set."""
    run = copy.deepcopy(base)
    for key, value in point.items():
        set_dotted(run, key, value)
    run["grid"] = None
    return run


def split_grid_points(cfg: RunConfig, where: str) -> tuple[list[dict[str, Any]], list[tuple[int, dict[str, Any], VreidError]]]:
    """The grid points whose config is valid, and ``(index, point, error)`` for each that is not (the
    config's own checks, as a trial builds it). `vreid grid` refuses a grid with any invalid point
    (:func:`check_grid_config`); :func:`vreid.distributed.grid.run_grid` reports such points as failed
    trials without starting them."""
    base = cfg.to_dict()
    base["grid"] = None
    valid, invalid = [], []
    for i, point in enumerate(grid_points(cfg)):
        label = ", ".join(f"grid.params.{k}={v!r}" for k, v in point.items())
        try:
            config_from_dict(point_run(base, point), f"{where} ({label})")
        except VreidError as exc:
            invalid.append((i, point, exc))
            continue
        valid.append(point)
    return valid, invalid


def check_grid_config(cfg: RunConfig, where: str, allow_outside_root: bool = False) -> None:
    """``grid.top_k`` >= 1 and every grid point a valid, buildable run (checked as the trial will build it)."""
    if cfg.grid is None or not cfg.grid.params:
        raise ConfigError(f"{where}: this config has no 'grid.params' section to sweep")
    if cfg.grid.top_k < 1:
        raise ConfigError(f"{where}: 'grid.top_k' must be >= 1, got {cfg.grid.top_k}")
    if cfg.grid.max_concurrent_trials < 0:
        raise ConfigError(f"{where}: 'grid.max_concurrent_trials' must be >= 0, got {cfg.grid.max_concurrent_trials}")
    if not (cfg.grid.trial_cpus > 0 and math.isfinite(cfg.grid.trial_cpus)):
        raise ConfigError(f"{where}: 'grid.trial_cpus' must be > 0, got {cfg.grid.trial_cpus}")
    base = cfg.to_dict()
    base["grid"] = None
    cache: dict[str, Any] = {}
    for point in grid_points(cfg):
        label = ", ".join(f"grid.params.{k}={v!r}" for k, v in point.items())
        try:
            trial = config_from_dict(point_run(base, point), f"{where} ({label})")
            trial.data = trial.data.resolved(Path.cwd())
            check_run_config(trial, f"{where} ({label})", cache, allow_outside_root)
        except ConfigError:
            raise
        except VreidError as exc:
            raise ConfigError(f"{where} ({label}): {exc}") from None


def check_num_cpus(num_cpus: float | None) -> None:
    if num_cpus is not None and not (math.isfinite(num_cpus) and num_cpus > 0):
        raise ConfigError(f"--num-cpus must be > 0, got {num_cpus}")
