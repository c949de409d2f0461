"""Every reader against hand-written fixtures in the real on-disk formats (tests/fixtures/data/)."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from vreid.data.cityflow import read_cityflow
from vreid.data.compcars import read_compcars
from vreid.data.schema import COLUMNS, write_manifest, read_manifest
from vreid.data.vehicleid import read_vehicleid, vehicleid_draws
from vreid.data.veri776 import parse_veri_name, read_veri776
from vreid.data.veriwild import read_veriwild

FIX = Path(__file__).parent / "fixtures" / "data"


def _rows(df, split):
    return df[df["split"] == split].reset_index(drop=True)


def test_fixture_xml_is_real_gb2312():
    raw = (FIX / "veri776" / "train_label.xml").read_bytes()
    assert any(b > 127 for b in raw)
    assert "训练集" in raw.decode("gb2312")
    # the reason the readers decode themselves: expat refuses the declared multi-byte encoding
    with pytest.raises((ET.ParseError, ValueError)):
        ET.fromstring(raw)


def test_veri776_fixture():
    df = read_veri776(FIX / "veri776")
    assert list(df.columns) == list(COLUMNS)
    train, query, gallery = _rows(df, "train"), _rows(df, "query"), _rows(df, "gallery")
    assert train["image_name"].tolist() == ["0001_c001_00016450_0.jpg", "0001_c002_00016500_0.jpg",
                                            "0002_c001_00020000_0.jpg"]
    assert train["vehicle_id"].tolist() == [1, 1, 2]
    assert train["camera"].tolist() == [1, 2, 1]
    assert train["timestamp"].tolist() == [16450.0, 16500.0, 20000.0]
    assert train["color"].tolist() == [1, 1, 7] and train["type"].tolist() == [4, 4, 2]
    assert train["source_id"].tolist() == ["veri776:0001", "veri776:0001", "veri776:0002"]
    assert query["image_name"].tolist() == ["0003_c003_00030000_0.jpg"]
    assert query["path"].iloc[0] == str((FIX / "veri776" / "image_query" / "0003_c003_00030000_0.jpg").resolve())
    assert (query["color"].tolist(), query["type"].tolist()) == ([2], [1])
    assert gallery["vehicle_id"].tolist() == [3, 3, 4] and gallery["camera"].tolist() == [3, 4, 3]
    assert gallery["color"].tolist() == [2, 2, 10] and gallery["type"].tolist() == [1, 1, 9]
    assert (df["label"] == -1).all() and df["bbox"].isna().all()
    assert all(Path(p).is_absolute() for p in df["path"])


def test_veri776_without_xml():
    df = read_veri776(FIX / "veri776", use_xml=False)
    assert len(df) == 7 and df["color"].isna().all()


def test_veri_name_parses_base_name_only():
    # a parent folder that itself looks like <id>_c<camera> must not be parsed
    assert parse_veri_name("/data/123_c456/0001_c017_00016450_2.jpg", "x") == (1, 17, 16450.0)


def test_cityflow_fixture():
    df = read_cityflow(FIX / "cityflow")
    train, query, gallery = _rows(df, "train"), _rows(df, "query"), _rows(df, "gallery")
    assert train["image_name"].tolist() == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    assert train["vehicle_id"].tolist() == [1, 1, 402, 402]
    assert train["camera"].tolist() == [1, 2, 3, 3]
    # train_track.txt: line 0 = 000001.jpg, line 1 = 000003.jpg 000004.jpg (trailing spaces)
    assert train["track"].astype(object).where(train["track"].notna(), None).tolist() == [0, None, 1, 1]
    assert train["source_id"].tolist() == ["cityflow:0001", "cityflow:0001", "cityflow:0402", "cityflow:0402"]
    assert query["vehicle_id"].tolist() == [-1] and query["camera"].tolist() == [-1]
    assert query["track"].isna().all()
    # test_track.txt uses bare numbers: "1 3 " -> track 0, "2 " -> track 1
    assert gallery["image_name"].tolist() == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert gallery["track"].tolist() == [0, 1, 0]
    assert gallery["source_id"].nunique() == 3 and query["source_id"].iloc[0] != gallery["source_id"].iloc[0]
    assert gallery["path"].iloc[0].endswith("image_test/000001.jpg")


def test_cityflow_without_tracks():
    assert read_cityflow(FIX / "cityflow", tracks=False)["track"].isna().all()


def test_vehicleid_fixture_draw():
    df = read_vehicleid(FIX / "vehicleid", split="small", seed=3, draw=4)
    train = _rows(df, "train")
    assert train["image_name"].tolist() == ["0000001", "0000002"] and train["vehicle_id"].tolist() == [12, 12]
    assert train["model"].tolist() == ["5", "5"] and train["color"].tolist() == [2, 2]
    assert (df["camera"] == -1).all()
    test = df[df["split"] != "train"]
    # ids 30 (2 images) and 31 (3 images): one gallery image each, the rest queries
    assert test.groupby("vehicle_id")["split"].apply(lambda s: (s == "gallery").sum()).to_dict() == {30: 1, 31: 1}
    assert len(test) == 5 and (test["split"] == "query").sum() == 3
    # the documented draw: default_rng([seed, draw]) over ids ascending, names sorted
    rng = np.random.default_rng([3, 4])
    expect = {30: ["0000003", "0000004"][rng.integers(2)], 31: ["0000005", "0000006", "0000007"][rng.integers(3)]}
    got = dict(zip(test.loc[test["split"] == "gallery", "vehicle_id"], test.loc[test["split"] == "gallery", "image_name"]))
    assert got == expect
    assert test.set_index("vehicle_id")["model"].to_dict()[30] == "7"
    assert test.loc[test["vehicle_id"] == 31, "model"].isna().all() and (test.loc[test["vehicle_id"] == 31, "color"] == 0).all()
    assert df.attrs["vreid"]["seed"] == 3 and df.attrs["vreid"]["draw"] == 4


def test_vehicleid_draws_seeded_and_reproducible():
    draws = list(vehicleid_draws(FIX / "vehicleid", "large", seed=7, n=10))
    assert len(draws) == 10
    again = list(vehicleid_draws(FIX / "vehicleid", "large", seed=7, n=10))
    for k, (a, b) in enumerate(zip(draws, again)):
        assert a.equals(b)
        single = read_vehicleid(FIX / "vehicleid", split="large", seed=7, draw=k, include_train=False)
        assert a["split"].tolist() == single["split"].tolist()
        assert (a["split"] == "train").sum() == 0
        # id 40 has a single image: it is always the gallery image
        assert a.loc[a["vehicle_id"] == 40, "split"].tolist() == ["gallery"]
    galleries = {tuple(d.loc[d["split"] == "gallery", "image_name"]) for d in draws}
    assert len(galleries) > 1  # ten draws are not all the same split
    other_seed = [tuple(d.loc[d["split"] == "gallery", "image_name"]) for d in vehicleid_draws(FIX / "vehicleid", "large", seed=8, n=10)]
    assert other_seed != [tuple(d.loc[d["split"] == "gallery", "image_name"]) for d in draws]


def test_vehicleid_splits_pick_lists():
    assert read_vehicleid(FIX / "vehicleid", "small")["vehicle_id"].nunique() == 3
    assert read_vehicleid(FIX / "vehicleid", "large")["vehicle_id"].nunique() == 4
    assert read_vehicleid(FIX / "vehicleid", "full").attrs["vreid"]["test_list"] == "test_list_13164.txt"


def test_veriwild_fixture_keep_and_remove():
    keep = read_veriwild(FIX / "veriwild", split="small", same_camera="keep")
    train, query, gallery = _rows(keep, "train"), _rows(keep, "query"), _rows(keep, "gallery")
    assert train["image_name"].tolist() == ["00001/000001", "00001/000002", "00002/000003"]
    assert train["vehicle_id"].tolist() == [1, 1, 2] and train["camera"].tolist() == [28, 29, 28]
    # 2018-03-11 12:40:26 UTC: 2018-03-11 00:00 is 1520726400, plus 45626 s
    assert train["timestamp"].iloc[0] == 1520772026.0
    assert train["timestamp"].iloc[1] - train["timestamp"].iloc[0] == 274.0
    assert train["model"].tolist() == ["Haima 7", "Haima 7", "Audi A4"]
    # names are coded in sorted order: types [mpv, sedan], colours [black, red, white]
    assert train["type"].tolist() == [0, 0, 1] and train["color"].tolist() == [0, 0, 2]
    assert keep.attrs["vreid"]["type_names"] == ["mpv", "sedan"]
    assert train["path"].iloc[0].endswith("images/00001/000001.jpg")
    assert query["image_name"].tolist() == ["00003/000004"] and query["camera"].tolist() == [5]
    assert gallery["image_name"].tolist() == ["00003/000005", "00003/000006"]
    assert keep.attrs["vreid"]["same_camera"] == "keep"
    remove = read_veriwild(FIX / "veriwild", split="small", same_camera="remove")
    # 00003/000005 shares the query's id 3 and camera 5
    assert _rows(remove, "gallery")["image_name"].tolist() == ["00003/000006"]
    assert remove.attrs["vreid"]["same_camera"] == "remove" and remove.attrs["vreid"]["same_camera_removed"] == 1


def test_veriwild_split_picks_lists():
    assert read_veriwild(FIX / "veriwild", split="large").attrs["vreid"]["test_lists"] == [
        "test_10000_query.txt", "test_10000.txt"]


def test_same_camera_recorded_in_parquet(tmp_path):
    from vreid.data.schema import read_manifest_metadata
    write_manifest(read_veriwild(FIX / "veriwild", same_camera="remove"), tmp_path / "w.parquet")
    assert read_manifest_metadata(tmp_path / "w.parquet")["same_camera"] == "remove"


def test_compcars_fixture_boxes_and_classes():
    df = read_compcars(FIX / "compcars")
    # walk order: make "5" sorts before "78"; both 5/20/2010 images are invalid (degenerate box; box
    # 1..17 wider than the 16-pixel image), so two rows remain
    assert df["image_name"].tolist() == ["78/1/2014/3ac218c0c6c378.jpg", "78/1/2015/b3a9a2e0cfc1a9.jpg"]
    # label "2 3 10 9" (1-based inclusive) -> [1, 2, 10, 9] (0-based, end-exclusive)
    assert df["bbox"].tolist() == [[1, 2, 10, 9], [0, 0, 16, 12]]
    assert df["viewpoint"].tolist() == [1, 3]
    assert df["model"].tolist() == ["78/1/2014", "78/1/2015"]
    assert df["source_id"].tolist() == ["compcars:78/1/2014", "compcars:78/1/2015"]
    assert df["vehicle_id"].tolist() == [1, 1] and (df["split"] == "train").all()
    assert df.attrs["vreid"]["invalid_boxes_dropped"] == 2


def test_compcars_without_size_check_and_subsets():
    loose = read_compcars(FIX / "compcars", check_image_size=False)
    assert len(loose) == 3
    row = loose[loose["image_name"] == "5/20/2010/d00d0000000002.jpg"].iloc[0]
    assert row["bbox"] == [0, 0, 17, 12] and row["viewpoint"] == -1
    assert read_compcars(FIX / "compcars", subset="train")["image_name"].tolist() == ["78/1/2014/3ac218c0c6c378.jpg"]
    assert read_compcars(FIX / "compcars", subset="test")["image_name"].tolist() == ["78/1/2015/b3a9a2e0cfc1a9.jpg"]


@pytest.mark.parametrize("reader", [read_veri776, read_cityflow, read_vehicleid, read_veriwild, read_compcars])
def test_readers_round_trip_through_parquet(tmp_path, reader):
    name = reader.__name__.removeprefix("read_")
    df = reader(FIX / name)
    write_manifest(df, tmp_path / "m.parquet")
    back = read_manifest(tmp_path / "m.parquet")
    assert back.drop(columns=["bbox"]).equals(df.drop(columns=["bbox"]))
    assert back["bbox"].tolist() == df["bbox"].tolist()
    assert back.attrs["vreid"]["format"] == name


def test_veriwild_time_parse_matches_datetime():
    from vreid.data.veriwild import parse_time
    want = dt.datetime(2018, 3, 11, 1, 0, 10, tzinfo=dt.timezone.utc).timestamp()
    assert parse_time("2018-03-11 01:00:10", "x") == want
