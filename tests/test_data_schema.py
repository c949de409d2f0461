"""The parquet manifest schema: round trip, metadata, validation errors, Table-I statistics."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vreid.data.schema import (COLUMNS, MANIFEST_SCHEMA, empty_manifest, manifest_stats, read_manifest,
                               read_manifest_metadata, write_manifest)
from vreid.errors import DataFormatError


def _rows() -> pd.DataFrame:
    base = dict(timestamp=float("nan"), track=None, bbox=None, viewpoint=None, color=None, type=None, model=None,
                label=-1)
    rows = [
        dict(base, path="/d/a.jpg", image_name="0001_c001_00016450_0.jpg", dataset="veri776", split="train",
             vehicle_id=1, camera=1, timestamp=16450.0, color=3, type=4, source_id="veri776:0001", label=0),
        dict(base, path="/d/b.jpg", image_name="0001_c002_00016500_0.jpg", dataset="veri776", split="train",
             vehicle_id=1, camera=2, timestamp=16500.0, source_id="veri776:0001", label=0),
        dict(base, path="/d/c.jpg", image_name="0002_c002_00000001_0.jpg", dataset="veri776", split="query",
             vehicle_id=2, camera=2, source_id="veri776:0002"),
        dict(base, path="/c/1.jpg", image_name="000001.jpg", dataset="cityflow", split="gallery", vehicle_id=-1,
             camera=-1, track=0, source_id="cityflow:unknown/gallery/000001.jpg"),
        dict(base, path="/k/x.jpg", image_name="78/1/2014/x.jpg", dataset="compcars", split="train", vehicle_id=1,
             camera=-1, bbox=[0, 1, 10, 9], viewpoint=-1, model="78/1/2014", source_id="compcars:78/1/2014", label=1),
    ]
    return pd.DataFrame(rows)[list(COLUMNS)]


def test_schema_columns_and_types():
    assert MANIFEST_SCHEMA.names == list(COLUMNS)
    assert MANIFEST_SCHEMA.field("bbox").type == pa.list_(pa.int32())
    assert MANIFEST_SCHEMA.field("timestamp").nullable and not MANIFEST_SCHEMA.field("vehicle_id").nullable


def test_round_trip_with_metadata(tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(_rows(), path, {"format": "veri776", "n": 5})
    assert read_manifest_metadata(path) == {"format": "veri776", "n": 5}
    df = read_manifest(path)
    assert list(df.columns) == list(COLUMNS)
    assert df["vehicle_id"].dtype == "int64" and df["track"].dtype == "Int64"
    assert df["bbox"].iloc[4] == [0, 1, 10, 9] and df["bbox"].iloc[0] is None
    assert df["model"].iloc[4] == "78/1/2014" and df["model"].iloc[0] is None
    assert df["timestamp"].iloc[0] == 16450.0 and pd.isna(df["timestamp"].iloc[2])
    assert df["track"].iloc[3] == 0 and df["track"].isna().sum() == 4
    assert df["color"].iloc[0] == 3 and df.attrs["vreid"]["n"] == 5
    # stored types are the schema's, not pandas' guesses
    assert pq.read_schema(path).remove_metadata().equals(MANIFEST_SCHEMA)
    assert not list(tmp_path.glob(".m.parquet*"))  # the temp file was renamed away


def test_empty_manifest_round_trip(tmp_path):
    write_manifest(empty_manifest(), tmp_path / "e.parquet")
    assert len(read_manifest(tmp_path / "e.parquet")) == 0


def test_reader_attrs_become_metadata(tmp_path):
    df = _rows()
    df.attrs["vreid"] = {"same_camera": "remove"}
    write_manifest(df, tmp_path / "m.parquet", {"extra": 1})
    assert read_manifest_metadata(tmp_path / "m.parquet") == {"same_camera": "remove", "extra": 1}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.drop(columns="camera"), "missing manifest column"),
    (lambda d: d.assign(extra=1), "unknown manifest column"),
    (lambda d: d.assign(split=["train", "train", "test", "gallery", "train"]), "'split'"),
    (lambda d: d.assign(dataset="market1501"), "'dataset'"),
    (lambda d: d.assign(vehicle_id=["1", "1", "2", "-1", "1"]), "'vehicle_id'"),
    (lambda d: d.assign(bbox=[None, None, None, None, [5, 1, 5, 9]]), "'bbox' row 4"),
])
def test_write_rejects_bad_frames(tmp_path, mutate, message):
    path = tmp_path / "bad.parquet"
    with pytest.raises(DataFormatError, match=message):
        write_manifest(mutate(_rows()), path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_read_names_missing_column(tmp_path):
    path = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"path": ["/a.jpg"], "image_name": ["a.jpg"]}), path)
    with pytest.raises(DataFormatError, match=r"partial\.parquet.*'dataset'"):
        read_manifest(path)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataFormatError, match="junk.parquet"):
        read_manifest(tmp_path / "junk.parquet")
    with pytest.raises(DataFormatError, match="nope.parquet"):
        read_manifest_metadata(tmp_path / "nope.parquet")


def test_metadata_is_json(tmp_path):
    write_manifest(_rows(), tmp_path / "m.parquet", {"nested": {"a": [1, 2]}})
    raw = pq.read_schema(tmp_path / "m.parquet").metadata[b"vreid"]
    assert json.loads(raw) == {"nested": {"a": [1, 2]}}


def test_manifest_stats_counts():
    stats = manifest_stats(_rows()).set_index(["dataset", "split"])
    # hand-counted from _rows(): veri776 has ids 1 (cams 1, 2) in train and id 2 (cam 2) in query
    assert stats.loc[("veri776", "train")].to_dict() == {"images": 2, "ids": 1, "cameras": 2, "classes": 1}
    assert stats.loc[("veri776", "query")].to_dict() == {"images": 1, "ids": 1, "cameras": 1, "classes": 0}
    assert stats.loc[("veri776", "all")].to_dict() == {"images": 3, "ids": 2, "cameras": 2, "classes": 1}
    assert stats.loc[("cityflow", "gallery")].to_dict() == {"images": 1, "ids": 0, "cameras": 0, "classes": 0}
    assert stats.loc[("all", "all")].to_dict() == {"images": 5, "ids": 3, "cameras": 2, "classes": 2}
