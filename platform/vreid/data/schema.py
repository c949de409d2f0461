"""The parquet manifest: one row per image, the single table every later stage reads.

Every dataset reader (``vreid.data.veri776`` ... ``vreid.data.compcars``) returns a
``pandas.DataFrame`` with exactly these columns, and the VehicleNet merge writes them to parquet.

=============  ==================  ========================================================================
column         type                meaning
=============  ==================  ========================================================================
``path``       string              absolute path of the image file
``image_name`` string              the name the dataset's own lists use: ``0001_c001_00016450_0.jpg``
                                   (VeRi-776), ``000001.jpg`` (CityFlow), ``0000001`` (VehicleID),
                                   ``00001/000001`` (VeRi-Wild), ``78/1/2014/3ac218c0c6c378.jpg`` (CompCars)
``dataset``    string              ``veri776`` | ``cityflow`` | ``vehicleid`` | ``veriwild`` | ``compcars``
``split``      string              ``train`` | ``query`` | ``gallery``
``vehicle_id`` int64               the dataset's own id; -1 where unknown (CityFlow test images); for
                                   CompCars the model id (its class is model x year, see ``source_id``)
``camera``     int64               camera number (``c012`` -> 12); -1 where the format has none
``timestamp``  float64, nullable   VeRi-776: the frame stamp in the file name; VeRi-Wild: the time field
                                   of ``vehicle_info.txt`` as POSIX seconds (read as UTC)
``track``      int64, nullable     CityFlow: 0-based line number in ``train_track.txt`` / ``test_track.txt``
``bbox``       list<int32>, null.  ``[x1, y1, x2, y2]`` in 0-based pixels with x2 / y2 exclusive, i.e. the
                                   crop ``img[y1:y2, x1:x2]``. CompCars labels are 1-based and inclusive,
                                   so ``(x1, y1, x2, y2)`` on disk becomes ``[x1 - 1, y1 - 1, x2, y2]``
``viewpoint``  int64, nullable     CompCars: -1 unknown, 1 front, 2 rear, 3 side, 4 front-side, 5 rear-side
``color``      int64, nullable     VeRi-776 ``colorID``; VehicleID colour attribute; VeRi-Wild colour
                                   (names are coded in sorted order, the code book is in the metadata)
``type``       int64, nullable     VeRi-776 ``typeID``; VeRi-Wild type (coded like ``color``)
``model``      string, nullable    CompCars ``make/model/year``; VeRi-Wild model name; VehicleID model id
``label``      int64               contiguous 0..C-1 training label in manifests built by the merge
                                   (``vreid.data.vehiclenet``), -1 everywhere else
``source_id``  string              the identity prefixed by its source, never colliding across sources:
                                   ``veri776:0001``, ``cityflow:0001``, ``vehicleid:1234``,
                                   ``veriwild:00001``, ``compcars:78/1/2014``; images of unknown identity
                                   get a per-image id ``cityflow:unknown/000001.jpg``
=============  ==================  ========================================================================

The VehicleNet paper's Table I (images / ids / cameras per dataset) is what :func:`manifest_stats`
prints for any manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vreid.errors import DataFormatError
from vreid.io import atomic_path

DATASETS = ("veri776", "cityflow", "vehicleid", "veriwild", "compcars")
SPLITS = ("train", "query", "gallery")
METADATA_KEY = b"vreid"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("image_name", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("vehicle_id", pa.int64(), nullable=False),
        pa.field("camera", pa.int64(), nullable=False),
        pa.field("timestamp", pa.float64(), nullable=True),
        pa.field("track", pa.int64(), nullable=True),
        pa.field("bbox", pa.list_(pa.int32()), nullable=True),
        pa.field("viewpoint", pa.int64(), nullable=True),
        pa.field("color", pa.int64(), nullable=True),
        pa.field("type", pa.int64(), nullable=True),
        pa.field("model", pa.string(), nullable=True),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
    ]
)

COLUMNS = tuple(MANIFEST_SCHEMA.names)
_NULLABLE_SCHEMA = pa.schema([f.with_nullable(True) for f in MANIFEST_SCHEMA])
_STRING_COLUMNS = ("path", "image_name", "dataset", "split", "source_id")
_INT_COLUMNS = ("vehicle_id", "camera", "label")
_NULLABLE_INT_COLUMNS = ("track", "viewpoint", "color", "type")


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and the right pandas dtypes."""
    return normalize_manifest(pd.DataFrame({c: [] for c in COLUMNS}))


def normalize_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame with the manifest columns to the pandas dtypes readers return.

    Non-null ints are ``int64``; nullable ints are pandas ``Int64`` (``<NA>`` for null);
    ``timestamp`` is ``float64`` (NaN for null); ``bbox`` holds ``list[int]`` or ``None``.
    """
    out = pd.DataFrame(index=range(len(df)))
    for name in COLUMNS:
        col = df[name].reset_index(drop=True)
        if name in _STRING_COLUMNS:
            out[name] = col.astype(object)
        elif name in _INT_COLUMNS:
            out[name] = col.astype("int64")
        elif name in _NULLABLE_INT_COLUMNS:
            out[name] = col.astype("Int64")
        elif name == "timestamp":
            out[name] = pd.to_numeric(col, errors="raise").astype("float64")
        elif name == "bbox":
            null = col.isna().to_numpy()
            out[name] = pd.Series([None if n else (b if type(b) is list else [int(v) for v in b])
                                   for b, n in zip(col, null)], dtype=object)
        elif name == "model":
            # an explicit object Series: pandas >= 3 would infer its "str" dtype and turn None into NaN
            null = col.isna().to_numpy()
            out[name] = pd.Series([None if n else str(m) for m, n in zip(col, null)], dtype=object)
    out.attrs.update(df.attrs)
    return out


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return value is pd.NA


def validate_manifest(df: pd.DataFrame, where: str = "manifest") -> None:
    """Raise :class:`DataFormatError` if ``df`` does not fit :data:`MANIFEST_SCHEMA`."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataFormatError(f"{where}: missing manifest column(s) {missing}; expected {list(COLUMNS)}")
    extra = [c for c in df.columns if c not in COLUMNS]
    if extra:
        raise DataFormatError(f"{where}: unknown manifest column(s) {extra}; expected only {list(COLUMNS)}")
    for name in _STRING_COLUMNS + _INT_COLUMNS:
        null = df[name].isna().to_numpy()
        if null.any():
            row = int(np.flatnonzero(null)[0])
            raise DataFormatError(f"{where}: column {name!r} row {row} is null; the column must not be null "
                                  f"({int(null.sum())} null row(s))")
    for name in _STRING_COLUMNS:
        if len(df) and pd.api.types.infer_dtype(df[name], skipna=False) != "string":
            bad = df[name].map(lambda v: not isinstance(v, str)).to_numpy()
            row = int(np.flatnonzero(bad)[0])
            raise DataFormatError(f"{where}: column {name!r} row {row}: expected a string, got {df[name].iloc[row]!r}")
    for name in _INT_COLUMNS + _NULLABLE_INT_COLUMNS:
        col = df[name]
        if name in _INT_COLUMNS and col.isna().any():
            raise DataFormatError(f"{where}: column {name!r} must not be null")
        if not pd.api.types.is_integer_dtype(col.dtype):
            # pandas turns an int column with None into float64: accept integral values only
            for row, value in enumerate(col):
                if _is_null(value):
                    continue
                if isinstance(value, (bool, np.bool_)) or not (
                        isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating))
                                                                 and float(value).is_integer())):
                    raise DataFormatError(f"{where}: column {name!r} row {row}: expected an integer, got {value!r}")
    if not (pd.api.types.is_float_dtype(df["timestamp"].dtype) or pd.api.types.is_integer_dtype(df["timestamp"].dtype)
            or len(df) == 0 or df["timestamp"].isna().all()):
        raise DataFormatError(f"{where}: column 'timestamp' must be numeric, got dtype {df['timestamp'].dtype}")
    bad_ds = sorted(set(df["dataset"]) - set(DATASETS))
    if bad_ds:
        raise DataFormatError(f"{where}: column 'dataset' has {bad_ds}; expected one of {list(DATASETS)}")
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise DataFormatError(f"{where}: column 'split' has {bad_split}; expected one of {list(SPLITS)}")
    bcol = df["bbox"].to_numpy(dtype=object)
    rows = np.flatnonzero(df["bbox"].notna().to_numpy())
    boxes = [bcol[r] for r in rows]
    ok = np.array([len(b) == 4 for b in boxes], dtype=bool)
    if ok.all() and len(boxes):
        a = np.asarray(boxes, dtype=np.float64)
        ok = (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 0] < a[:, 2]) & (a[:, 1] < a[:, 3])
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise DataFormatError(f"{where}: column 'bbox' row {int(rows[k])}: expected [x1, y1, x2, y2] with "
                              f"0 <= x1 < x2 and 0 <= y1 < y2, got {list(boxes[k])}")


def to_arrow(df: pd.DataFrame, where: str = "manifest") -> pa.Table:
    validate_manifest(df, where)
    df = normalize_manifest(df)
    arrays = []
    for field in MANIFEST_SCHEMA:
        col = df[field.name]
        if field.name in _NULLABLE_INT_COLUMNS:
            arrays.append(pa.array(col.to_numpy(dtype=object, na_value=None), type=field.type))
        else:
            arrays.append(pa.array(col.tolist() if field.name in ("bbox", "model") else col.to_numpy(),
                                   type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Validate ``df`` and write it as parquet, atomically (temp file, then rename).

    ``metadata`` (plus any ``df.attrs["vreid"]`` a reader left, e.g. its options) is stored as JSON
    in the parquet schema metadata under the key ``vreid``; :func:`read_manifest_metadata` returns it.
    """
    path = Path(path)
    table = to_arrow(df, where=str(path))
    meta = dict(df.attrs.get("vreid", {}))
    meta.update(metadata or {})
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def _read_table(path: str | os.PathLike) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: manifest file not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable parquet manifest ({exc})") from exc


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`; the metadata is in ``df.attrs["vreid"]``."""
    table = _read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataFormatError(f"{path}: manifest is missing column(s) {missing}; expected {list(COLUMNS)}")
    metadata = _metadata_of(table.schema, path)
    try:  # also accepts compatible types written by other tools (e.g. int32 ids)
        # cast to a nullable copy: nulls in non-nullable columns are reported by validate_manifest below
        table = table.select(list(COLUMNS)).cast(_NULLABLE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataFormatError(f"{path}: manifest columns do not match the schema ({exc})") from exc
    data = {}
    for name in COLUMNS:
        col = table.column(name)
        if name in ("bbox", "model") or name in _STRING_COLUMNS:
            data[name] = pd.Series(col.to_pylist(), dtype=object)
        elif name in _NULLABLE_INT_COLUMNS:
            data[name] = col.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        else:
            data[name] = col.to_pandas()
    df = pd.DataFrame(data)
    validate_manifest(df, str(path))  # nulls in non-nullable columns, unknown split / dataset values, boxes
    df.attrs["vreid"] = metadata
    return df


def _metadata_of(schema: pa.Schema, path) -> dict:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: metadata key 'vreid' is not JSON ({exc})") from exc


def read_manifest_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata dict stored by :func:`write_manifest` (``{}`` if none)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: manifest file not found")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable parquet manifest ({exc})") from exc
    return _metadata_of(schema, path)


def manifest_roots(df: pd.DataFrame) -> list[str]:
    """The dataset roots a manifest was built from, as its metadata records them (a reader's ``root``;
    the VehicleNet merge's ``sources``); empty for a manifest written by another tool."""
    meta = df.attrs.get("vreid") or {}
    roots = [meta["root"]] if isinstance(meta.get("root"), str) else []
    sources = (meta.get("vehiclenet") or {}).get("sources") if isinstance(meta.get("vehiclenet"), dict) else None
    if isinstance(sources, dict):
        roots += [r for r in sources.values() if isinstance(r, str)]
    return sorted({os.path.normpath(r) for r in roots})


def check_paths_under_roots(df: pd.DataFrame, where: str, allow_outside: bool = False) -> None:
    """Refuse rows whose image path lies outside the dataset roots the manifest was built from.

    A manifest is data that may come from elsewhere: a row naming ``/etc/shadow`` or another user's
    files would otherwise be opened (and, by ``data check``, reported). Paths are compared after
    normalising ``..`` (not resolving symlinks: datasets are often symlinked into place). A manifest
    that records no root (written by another tool) cannot be checked and is accepted.
    """
    roots = manifest_roots(df)
    if allow_outside or not roots or not len(df):
        return
    prefixes = tuple(r.rstrip(os.sep) + os.sep for r in roots)
    for row, p in enumerate(df["path"]):
        n = os.path.normpath(p) if isinstance(p, str) else ""
        if not (os.path.isabs(n) and n.startswith(prefixes)):
            raise DataFormatError(f"{where}: row {row} path {p!r} is outside the dataset root(s) {roots} this manifest "
                                  "was built from; pass --allow-outside-root if that is intended")


def manifest_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Images / identities / cameras / classes per dataset and split, like VehicleNet's Table I.

    One row per (dataset, split), one ``all`` row per dataset and a final ``all / all`` row.
    ``ids`` counts distinct known identities (``source_id`` of rows with ``vehicle_id != -1``; for
    CompCars a model x year class), ``cameras`` distinct cameras other than -1, ``classes`` distinct
    training labels ``>= 0``. Images are counted by distinct path (VeRi-776 query images are copies
    of test images in their own folder, so its ``all`` row counts them twice, as the folders do).
    """
    rows = []

    def one(dataset: str, split: str, part: pd.DataFrame) -> dict:
        known = part[part["vehicle_id"] != -1]
        cams = part.loc[part["camera"] != -1, ["dataset", "camera"]].drop_duplicates()
        return {
            "dataset": dataset,
            "split": split,
            "images": int(part["path"].nunique()),
            "ids": int(known["source_id"].nunique()),
            "cameras": int(len(cams)),
            "classes": int(part.loc[part["label"] >= 0, "label"].nunique()),
        }

    for dataset in [d for d in DATASETS if d in set(df["dataset"])]:
        part = df[df["dataset"] == dataset]
        for split in [s for s in SPLITS if s in set(part["split"])]:
            rows.append(one(dataset, split, part[part["split"] == split]))
        rows.append(one(dataset, "all", part))
    rows.append(one("all", "all", df))
    return pd.DataFrame(rows, columns=["dataset", "split", "images", "ids", "cameras", "classes"])
