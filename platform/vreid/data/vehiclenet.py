"""The VehicleNet merge (Zheng et al., VehicleNet, Sec. III-A and Sec. III-C "two-stage progressive
learning"; FORMATS.md "VehicleNet (the merge)").

Stage I trains one classifier over the union of the public datasets (Eq. 4: one label space over
all sources); Stage II fine-tunes on the target dataset alone with a new classifier (Eq. 3).
:func:`build_vehiclenet` turns dataset roots into the manifests both stages and the evaluation need:

``stage1_train.parquet``
    the target's training part + every other source, one contiguous ``label`` over source-prefixed
    identities (``source_id``; CompCars classes are model x year). Other sources contribute all their
    labelled images (train + query + gallery, the paper's 434,440 count; VeRi-776 query copies of
    test images counted once) unless ``train_only_others``. Nothing of the target's validation ids,
    queries or test images enters (checked; :class:`DataFormatError` if violated).
``stage2_train.parquet``
    the target's training part with its own contiguous labels.
``val_query.parquet`` / ``val_gallery.parquet``
    CityFlow: ids <= 400 train; for ids 401-478 the first image (sorted names) of each (id, camera)
    is a query and the gallery is the whole original training set (the query's own copy is same id +
    same camera, hence junk). VeRi-776 / VeRi-Wild: the official query / gallery. VehicleID: a seeded
    draw of the small test list.
``test_query.parquet`` / ``test_gallery.parquet``
    the official test query / gallery, in sorted file-name order (CityFlow: the AI City test images,
    ids -1, which ``track2.txt`` ranks).
``summary.json``
    counts per source, number of classes, options used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from vreid.data.schema import DATASETS, normalize_manifest, write_manifest
from vreid.errors import ConfigError, DataFormatError
from vreid.io import atomic_dir, atomic_write_text

TARGETS = ("cityflow", "veri776", "vehicleid", "veriwild")
CITYFLOW_VAL_MIN_ID = 401  # VehicleNet's CityFlow validation ids are 401-478
OUTPUT_FILES = ("stage1_train.parquet", "stage2_train.parquet", "val_query.parquet", "val_gallery.parquet",
                "test_query.parquet", "test_gallery.parquet", "summary.json")
_SPLIT_ORDER = {"train": 0, "gallery": 1, "query": 2}


def read_source(name: str, root: str | os.PathLike, split: str | None = None, seed: int = 0, draw: int = 0,
                same_camera: str = "keep", include_train: bool = True) -> pd.DataFrame:
    """Read one dataset root with its reader; ``split`` only applies to VehicleID and VeRi-Wild."""
    from vreid.data.cityflow import read_cityflow
    from vreid.data.compcars import read_compcars
    from vreid.data.vehicleid import read_vehicleid
    from vreid.data.veri776 import read_veri776
    from vreid.data.veriwild import read_veriwild

    if name == "veri776":
        return read_veri776(root)
    if name == "cityflow":
        return read_cityflow(root)
    if name == "vehicleid":
        return read_vehicleid(root, split=split or "small", seed=seed, draw=draw, include_train=include_train)
    if name == "veriwild":
        return read_veriwild(root, split=split or "small", same_camera=same_camera)
    if name == "compcars":
        return read_compcars(root)
    raise ConfigError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def assign_labels(df: pd.DataFrame, dataset_order: list[str]) -> pd.DataFrame:
    """Contiguous labels 0..C-1 over ``source_id``, ordered by dataset, then vehicle id, then id text."""
    keys = df[["dataset", "vehicle_id", "source_id"]].drop_duplicates("source_id").copy()
    keys["_d"] = keys["dataset"].map({d: i for i, d in enumerate(dataset_order)})
    keys = keys.sort_values(["_d", "vehicle_id", "source_id"], kind="stable").reset_index(drop=True)
    label_of = pd.Series(range(len(keys)), index=keys["source_id"].to_numpy())
    out = df.copy()
    out["label"] = out["source_id"].map(label_of).astype("int64")
    return out


def _as_split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    out = df.copy()
    out["split"] = split
    out["label"] = -1
    return out.sort_values("image_name", kind="stable").reset_index(drop=True)


def _cityflow_target(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    train = df[df["split"] == "train"]
    part = train[train["vehicle_id"] < CITYFLOW_VAL_MIN_ID]
    val = train[train["vehicle_id"] >= CITYFLOW_VAL_MIN_ID].sort_values("image_name", kind="stable")
    val_query = val.groupby(["vehicle_id", "camera"], sort=True).head(1)
    return {"train": part, "train_full": train, "val_query": _as_split(val_query, "query"),
            "val_gallery": _as_split(train, "gallery"),
            "test_query": _as_split(df[df["split"] == "query"], "query"),
            "test_gallery": _as_split(df[df["split"] == "gallery"], "gallery")}


def _official_target(df: pd.DataFrame, val_df: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    val_df = df if val_df is None else val_df
    train = df[df["split"] == "train"]
    return {"train": train, "train_full": train,
            "val_query": _as_split(val_df[val_df["split"] == "query"], "query"),
            "val_gallery": _as_split(val_df[val_df["split"] == "gallery"], "gallery"),
            "test_query": _as_split(df[df["split"] == "query"], "query"),
            "test_gallery": _as_split(df[df["split"] == "gallery"], "gallery")}


def _other_source(name: str, root, train_only: bool, seed: int) -> pd.DataFrame:
    """All labelled images of a non-target source (or its training split only)."""
    if name == "vehicleid":
        full = Path(root) / "train_test_split" / "test_list_13164.txt"
        df = read_source(name, root, split="full" if full.is_file() else "large", seed=seed)
    elif name == "veriwild":
        df = read_source(name, root, split="large")
    else:
        df = read_source(name, root)
    df = df[df["vehicle_id"] != -1]
    if train_only:
        df = df[df["split"] == "train"]
    # VeRi-776 query images are copies of test images: count each image once (the gallery copy)
    df = df.assign(_o=df["split"].map(_SPLIT_ORDER)).sort_values("_o", kind="stable")
    return df.drop_duplicates(["dataset", "image_name"]).drop(columns="_o")


def check_no_leakage(stage1: pd.DataFrame, target: str, evaluation: dict[str, pd.DataFrame]) -> None:
    """Raise if any target evaluation image, or any target query identity, is in ``stage1``.

    For CityFlow the validation gallery is the whole original training set, which by design shares
    images with Stage I; only its queries' identities (ids 401-478) must stay out.
    """
    paths = set(stage1["path"])
    for name, df in evaluation.items():
        if target == "cityflow" and name == "val_gallery":
            continue
        leaked = df[df["path"].isin(paths)]
        if len(leaked):
            raise DataFormatError(f"VehicleNet merge: {len(leaked)} {target} {name} image(s) would enter stage1_train, "
                                  f"e.g. {leaked['path'].iloc[0]}")
    target_ids = set(stage1.loc[stage1["dataset"] == target, "source_id"])
    for name in ("val_query", "test_query"):
        df = evaluation[name]
        ids = set(df.loc[df["vehicle_id"] != -1, "source_id"])
        both = sorted(ids & target_ids)
        if both:
            raise DataFormatError(f"VehicleNet merge: {target} {name} identities {both[:5]} would enter stage1_train")


def build_vehiclenet(sources: dict[str, str | os.PathLike], target: str, out_dir: str | os.PathLike,
                     train_only_others: bool = False, seed: int = 0, test_split: str = "small",
                     same_camera: str = "keep", stage2_full_train: bool = False) -> dict:
    """Build the VehicleNet manifests for ``target`` from ``sources`` (``{dataset: root}``) into ``out_dir``.

    ``seed``: the VehicleID validation/test draw. ``test_split``: VehicleID / VeRi-Wild test size
    (``small`` / ``medium`` / ``large``). ``same_camera``: the VeRi-Wild gallery rule (``keep`` /
    ``remove``). ``stage2_full_train``: Stage II on all target training ids (for the CityFlow test
    submission, as the paper does; the validation split is then no longer held out of Stage II).
    Returns the summary (also written to ``summary.json``). Everything is read and checked before any
    file is written.
    """
    if not sources:
        raise ConfigError("VehicleNet merge: no sources given (expected e.g. cityflow=ROOT)")
    unknown = [s for s in sources if s not in DATASETS]
    if unknown:
        raise ConfigError(f"VehicleNet merge: unknown source(s) {unknown}; expected some of {list(DATASETS)}")
    if target not in TARGETS:
        raise ConfigError(f"VehicleNet merge: target {target!r} must be one of {list(TARGETS)}")
    if target not in sources:
        raise ConfigError(f"VehicleNet merge: target {target!r} is not among the sources {list(sources)}")

    root = sources[target]
    if target == "cityflow":
        parts = _cityflow_target(read_source("cityflow", root))
    elif target == "veri776":
        parts = _official_target(read_source("veri776", root))
    elif target == "vehicleid":
        test = read_source("vehicleid", root, split=test_split, seed=seed)
        val = read_source("vehicleid", root, split="small", seed=seed, include_train=False)
        parts = _official_target(test, val)
    else:
        parts = _official_target(read_source("veriwild", root, split=test_split, same_camera=same_camera),
                                 read_source("veriwild", root, split="small", same_camera=same_camera))
    others = {name: _other_source(name, r, train_only_others, seed) for name, r in sources.items() if name != target}

    order = [target] + [d for d in DATASETS if d in others]
    stage1 = pd.concat([parts["train"]] + [others[d] for d in order[1:]], ignore_index=True)
    stage1 = assign_labels(stage1.assign(split="train"), order)
    evaluation = {k: parts[k] for k in ("val_query", "val_gallery", "test_query", "test_gallery")}
    check_no_leakage(stage1, target, evaluation)
    stage2 = assign_labels(parts["train_full" if stage2_full_train else "train"].assign(split="train"), [target])

    options = {"target": target, "sources": {k: str(Path(v).resolve()) for k, v in sources.items()},
               "train_only_others": train_only_others, "seed": seed, "test_split": test_split,
               "same_camera": same_camera, "stage2_full_train": stage2_full_train,
               "cityflow_val_min_id": CITYFLOW_VAL_MIN_ID if target == "cityflow" else None}
    per_source = {d: {"images": int((stage1["dataset"] == d).sum()),
                      "ids": int(stage1.loc[stage1["dataset"] == d, "source_id"].nunique())} for d in order}
    summary = {
        "options": options,
        "stage1": {"images": len(stage1), "classes": int(stage1["label"].nunique()), "per_source": per_source},
        "stage2": {"images": len(stage2), "classes": int(stage2["label"].nunique())},
        **{name: {"images": len(df), "ids": int(df.loc[df["vehicle_id"] != -1, "source_id"].nunique())}
           for name, df in evaluation.items()},
        "files": list(OUTPUT_FILES),
    }
    out_dir = Path(out_dir)
    frames = {"stage1_train": stage1, "stage2_train": stage2, **evaluation}
    empty = [name for name, df in frames.items() if len(df) == 0]
    if empty:
        raise DataFormatError(f"VehicleNet merge: {', '.join(empty)} would have 0 images (target {target} at "
                              f"{root}); nothing written")
    # the seven files are one set: written into a temporary sibling folder, swapped in whole
    with atomic_dir(out_dir, known=OUTPUT_FILES) as tmp:
        for name, df in frames.items():
            df = normalize_manifest(df.reset_index(drop=True))
            write_manifest(df, tmp / f"{name}.parquet", {"vehiclenet": {**options, "role": name}})
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
