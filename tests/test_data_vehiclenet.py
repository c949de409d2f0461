"""The VehicleNet merge: one contiguous label space, source prefixes, no leakage, the CityFlow
validation split recomputed independently from the raw files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import vreid.cli
from vreid.data.schema import read_manifest, read_manifest_metadata, write_manifest
from vreid.data.synth import synthesize
from vreid.data.vehiclenet import OUTPUT_FILES, build_vehiclenet, check_no_leakage
from vreid.errors import ConfigError, DataFormatError

IDS, PER_ID = 12, 5


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return synthesize(tmp_path_factory.mktemp("vn_synth"), seed=11, ids=IDS, images_per_id=PER_ID)


@pytest.fixture(scope="module")
def cityflow_merge(roots, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vn_cityflow")
    build_vehiclenet(dict(roots), "cityflow", out)
    return out


def _cityflow_train_labels(root: Path) -> list[tuple[str, int, int]]:
    """(name, id, camera) from train_label.xml, parsed here with a regex, independently of the reader."""
    text = (root / "train_label.xml").read_bytes().decode("gb2312")
    items = re.findall(r'imageName="([^"]+)" vehicleID="(\d+)" cameraID="c(\d+)"', text)
    return [(n, int(v), int(c)) for n, v, c in items]


def _check_labels(df: pd.DataFrame) -> None:
    labels = sorted(df["label"].unique())
    assert labels == list(range(len(labels)))  # contiguous 0..C-1
    assert df.groupby("label")["source_id"].nunique().max() == 1
    assert df.groupby("source_id")["label"].nunique().max() == 1
    assert all(s.startswith(d + ":") for s, d in zip(df["source_id"], df["dataset"]))


def test_outputs_and_labels(cityflow_merge):
    assert sorted(p.name for p in cityflow_merge.iterdir()) == sorted(OUTPUT_FILES)
    stage1 = read_manifest(cityflow_merge / "stage1_train.parquet")
    _check_labels(stage1)
    assert (stage1["split"] == "train").all()
    # the target's ids come first in the label space
    first = stage1.sort_values("label")["dataset"].drop_duplicates().tolist()
    assert first[0] == "cityflow" and set(first) == {"cityflow", "veri776", "vehicleid", "veriwild", "compcars"}
    stage2 = read_manifest(cityflow_merge / "stage2_train.parquet")
    _check_labels(stage2)
    assert set(stage2["dataset"]) == {"cityflow"}
    for name in ("val_query", "val_gallery", "test_query", "test_gallery"):
        assert (read_manifest(cityflow_merge / f"{name}.parquet")["label"] == -1).all()
    assert read_manifest_metadata(cityflow_merge / "stage1_train.parquet")["vehiclenet"]["target"] == "cityflow"


def test_cityflow_validation_split_counts(roots, cityflow_merge):
    items = _cityflow_train_labels(roots["cityflow"])
    low = [it for it in items if it[1] <= 400]
    first_per_pair: dict[tuple[int, int], str] = {}
    for name, vid, cam in sorted(items):
        if vid >= 401:
            first_per_pair.setdefault((vid, cam), name)
    val_query = read_manifest(cityflow_merge / "val_query.parquet")
    val_gallery = read_manifest(cityflow_merge / "val_gallery.parquet")
    assert len(val_query) == len(first_per_pair) > 0
    assert sorted(val_query["image_name"]) == sorted(first_per_pair.values())
    assert (val_query["vehicle_id"] >= 401).all()
    assert len(val_gallery) == len(items) and set(val_gallery["image_name"]) == {n for n, _, _ in items}
    # each query's own copy is in the gallery, as same id + same camera (junk)
    assert set(val_query["path"]) <= set(val_gallery["path"])
    stage1 = read_manifest(cityflow_merge / "stage1_train.parquet")
    city = stage1[stage1["dataset"] == "cityflow"]
    assert len(city) == len(low) and sorted(city["image_name"]) == sorted(n for n, _, _ in low)
    assert len(read_manifest(cityflow_merge / "stage2_train.parquet")) == len(low)
    summary = json.loads((cityflow_merge / "summary.json").read_text())
    assert summary["val_query"]["images"] == len(first_per_pair)
    assert summary["stage1"]["per_source"]["cityflow"]["images"] == len(low)


def test_no_leakage_of_cityflow_evaluation(roots, cityflow_merge):
    stage1 = read_manifest(cityflow_merge / "stage1_train.parquet")
    city = stage1[stage1["dataset"] == "cityflow"]
    assert (city["vehicle_id"] <= 400).all()
    test_query = read_manifest(cityflow_merge / "test_query.parquet")
    test_gallery = read_manifest(cityflow_merge / "test_gallery.parquet")
    assert not set(stage1["path"]) & (set(test_query["path"]) | set(test_gallery["path"]))
    # the AI City test sets, ids unknown, in sorted file-name order (what track2.txt ranks)
    n_query = len((roots["cityflow"] / "name_query.txt").read_text().split())
    n_test = len((roots["cityflow"] / "name_test.txt").read_text().split())
    assert len(test_query) == n_query and len(test_gallery) == n_test
    assert test_gallery["image_name"].tolist() == sorted(test_gallery["image_name"])
    assert (test_query["vehicle_id"] == -1).all()


def test_other_sources_contribute_everything(roots, cityflow_merge):
    stage1 = read_manifest(cityflow_merge / "stage1_train.parquet")
    counts = stage1["dataset"].value_counts().to_dict()
    # VeRi-776: train + test images, the query copies counted once; VehicleID: train + all test lists;
    # VeRi-Wild: train + the large test set; CompCars: all images with valid boxes
    veri_names = set((roots["veri776"] / "name_train.txt").read_text().split()) | set(
        (roots["veri776"] / "name_test.txt").read_text().split())
    assert counts["veri776"] == len(veri_names) == IDS * PER_ID
    assert counts["vehicleid"] == IDS * PER_ID
    assert counts["veriwild"] == IDS * PER_ID
    n_labels = len(list((roots["compcars"] / "data" / "label").rglob("*.txt")))
    assert 0 < counts["compcars"] < n_labels
    assert stage1["label"].nunique() == stage1["source_id"].nunique()
    summary = json.loads((cityflow_merge / "summary.json").read_text())
    assert summary["stage1"]["images"] == len(stage1)
    assert summary["stage1"]["classes"] == stage1["label"].nunique()


def test_train_only_others(roots, tmp_path):
    summary = build_vehiclenet(dict(roots), "cityflow", tmp_path, train_only_others=True)
    stage1 = read_manifest(tmp_path / "stage1_train.parquet")
    n_train = len((roots["veri776"] / "name_train.txt").read_text().split())
    assert (stage1["dataset"] == "veri776").sum() == n_train
    assert summary["options"]["train_only_others"] is True


def test_veri776_target_keeps_its_test_set_out(roots, tmp_path):
    build_vehiclenet({"veri776": roots["veri776"], "compcars": roots["compcars"]}, "veri776", tmp_path)
    stage1 = read_manifest(tmp_path / "stage1_train.parquet")
    _check_labels(stage1)
    assert set(stage1["dataset"]) == {"veri776", "compcars"}
    veri = stage1[stage1["dataset"] == "veri776"]
    train_names = (roots["veri776"] / "name_train.txt").read_text().split()
    assert sorted(veri["image_name"]) == sorted(train_names)
    val_gallery = read_manifest(tmp_path / "val_gallery.parquet")
    test_query = read_manifest(tmp_path / "test_query.parquet")
    assert not set(stage1["path"]) & (set(val_gallery["path"]) | set(test_query["path"]))
    assert not set(veri["vehicle_id"]) & set(test_query["vehicle_id"])
    assert len(test_query) == len((roots["veri776"] / "name_query.txt").read_text().split())


def test_vehicleid_target_seeded(roots, tmp_path):
    build_vehiclenet({"vehicleid": roots["vehicleid"]}, "vehicleid", tmp_path / "a", seed=4, test_split="large")
    build_vehiclenet({"vehicleid": roots["vehicleid"]}, "vehicleid", tmp_path / "b", seed=4, test_split="large")
    a = read_manifest(tmp_path / "a" / "val_query.parquet")
    b = read_manifest(tmp_path / "b" / "val_query.parquet")
    assert a["image_name"].tolist() == b["image_name"].tolist()
    gallery = read_manifest(tmp_path / "a" / "test_gallery.parquet")
    assert gallery.groupby("vehicle_id").size().max() == 1  # one gallery image per id
    stage1 = read_manifest(tmp_path / "a" / "stage1_train.parquet")
    test_ids = set(gallery["vehicle_id"])
    assert not set(stage1["vehicle_id"]) & test_ids


def test_stage2_full_train(roots, tmp_path):
    summary = build_vehiclenet({"cityflow": roots["cityflow"]}, "cityflow", tmp_path, stage2_full_train=True)
    stage2 = read_manifest(tmp_path / "stage2_train.parquet")
    assert len(stage2) == len(_cityflow_train_labels(roots["cityflow"]))
    assert summary["stage1"]["images"] < len(stage2)  # Stage I still leaves the validation ids out


def test_leakage_check_raises(cityflow_merge):
    stage1 = read_manifest(cityflow_merge / "stage1_train.parquet")
    evaluation = {n: read_manifest(cityflow_merge / f"{n}.parquet")
                  for n in ("val_query", "val_gallery", "test_query", "test_gallery")}
    check_no_leakage(stage1, "cityflow", evaluation)  # the built merge is clean
    leaked = pd.concat([stage1, evaluation["test_gallery"].head(1)], ignore_index=True)
    with pytest.raises(DataFormatError, match="test_gallery"):
        check_no_leakage(leaked, "cityflow", evaluation)
    query_id = evaluation["val_query"].head(1).assign(path="/elsewhere/copy.jpg", split="train")
    with pytest.raises(DataFormatError, match="val_query identities"):
        check_no_leakage(pd.concat([stage1, query_id], ignore_index=True), "cityflow", evaluation)


def test_bad_merge_arguments(roots, tmp_path, capsys):
    with pytest.raises(ConfigError, match="not among the sources"):
        build_vehiclenet({"veri776": roots["veri776"]}, "cityflow", tmp_path)
    with pytest.raises(ConfigError, match="target 'compcars'"):
        build_vehiclenet({"compcars": roots["compcars"]}, "compcars", tmp_path)
    with pytest.raises(ConfigError, match="market"):
        build_vehiclenet({"market": roots["veri776"], "veri776": roots["veri776"]}, "veri776", tmp_path)
    assert not list(tmp_path.iterdir())
    # a broken source fails before anything is written
    (roots["compcars"].parent / "broken").mkdir(exist_ok=True)
    code = vreid.cli.main(["data", "vehiclenet", "--source", f"cityflow={roots['cityflow']}",
                           "--source", f"veri776={roots['compcars'].parent / 'broken'}",
                           "--target", "cityflow", "--out", str(tmp_path / "out")])
    assert code == 2 and "train_label.xml" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_vehiclenet_stats_check(roots, tmp_path, capsys):
    out = tmp_path / "vn"
    code = vreid.cli.main(["data", "vehiclenet", "--source", f"cityflow={roots['cityflow']}",
                           "--source", f"veri776={roots['veri776']}", "--target", "cityflow", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "stage1_train" in printed and "veri776" in printed
    assert vreid.cli.main(["data", "stats", str(out / "stage1_train.parquet")]) == 0
    table = capsys.readouterr().out
    stage1 = read_manifest(out / "stage1_train.parquet")
    assert re.search(rf"all\s+all\s+{len(stage1)}\s", table)
    assert vreid.cli.main(["data", "check", str(out / "stage1_train.parquet"), "--workers", "2"]) == 0
    capsys.readouterr()
    # a truncated copy of one image and a box larger than another: check names both and fails
    victim = tmp_path / "truncated.jpg"
    victim.write_bytes(Path(stage1["path"].iloc[0]).read_bytes()[:200])
    bad = stage1.copy()
    bad.loc[0, "path"] = str(victim)
    bad.at[1, "bbox"] = [0, 0, 500, 10]
    write_manifest(bad, tmp_path / "bad.parquet")
    assert vreid.cli.main(["data", "check", str(tmp_path / "bad.parquet"), "--workers", "2",
                           "--allow-outside-root"]) == 1  # the truncated copy lies outside the roots
    err = capsys.readouterr().err
    assert str(victim) in err and "exceeds image size" in err and stage1["path"].iloc[1] in err
