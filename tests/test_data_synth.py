"""The synthetic data generator: official layouts, determinism, id numbering, and identity in the pixels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import vreid.cli
from vreid.data.cityflow import read_cityflow
from vreid.data.compcars import read_compcars
from vreid.data.synth import synthesize
from vreid.data.vehicleid import read_vehicleid
from vreid.data.veri776 import read_veri776
from vreid.data.veriwild import read_veriwild
from vreid.errors import ConfigError

IDS, PER_ID = 12, 6


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    return synthesize(tmp_path_factory.mktemp("synth"), seed=3, ids=IDS, images_per_id=PER_ID)


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    a = synthesize(tmp_path / "a", seed=1, ids=6, images_per_id=3)
    b = synthesize(tmp_path / "b", seed=1, ids=6, images_per_id=3)
    c = synthesize(tmp_path / "c", seed=2, ids=6, images_per_id=3, sources=("veri776",))
    for name in a:
        assert _digest(a[name]) == _digest(b[name]), name
    assert _digest(a["veri776"]) != _digest(c["veri776"])
    # rebuilding into the same folder replaces it (and nothing else)
    again = synthesize(tmp_path / "a", seed=2, ids=6, images_per_id=3, sources=("veri776",))
    assert _digest(again["veri776"]) == _digest(c["veri776"])
    assert _digest(a["cityflow"]) == _digest(b["cityflow"])


def test_refuses_to_overwrite_foreign_folder(tmp_path, capsys):
    (tmp_path / "veri776").mkdir()
    (tmp_path / "veri776" / "precious.txt").write_text("x")
    with pytest.raises(ConfigError, match="refusing"):
        synthesize(tmp_path, ids=3, images_per_id=2)
    assert vreid.cli.main(["data", "synth", "--out", str(tmp_path), "--ids", "3", "--images-per-id", "2"]) == 2
    assert "veri776" in capsys.readouterr().err
    assert (tmp_path / "veri776" / "precious.txt").read_text() == "x"


def test_cli_synth(tmp_path, capsys):
    assert vreid.cli.main(["data", "synth", "--out", str(tmp_path), "--seed", "5", "--ids", "4",
                           "--images-per-id", "2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cityflow", "compcars", "vehicleid", "veri776", "veriwild"]
    assert len(read_veri776(tmp_path / "veri776").query("split != 'query'")) == 8


def test_veri776_layout(synth):
    df = read_veri776(synth["veri776"])
    labelled = df[df["split"] != "query"]
    assert len(labelled) == IDS * PER_ID and labelled["vehicle_id"].nunique() == IDS
    train_ids = set(df.loc[df["split"] == "train", "vehicle_id"])
    test_ids = set(df.loc[df["split"] == "gallery", "vehicle_id"])
    assert not train_ids & test_ids and len(train_ids) == 8
    # one query per (test id, camera), each a copy of a test image
    query = df[df["split"] == "query"]
    gallery = df[df["split"] == "gallery"]
    assert len(query) == len(gallery[["vehicle_id", "camera"]].drop_duplicates())
    assert set(query["image_name"]) <= set(gallery["image_name"])
    raw = (synth["veri776"] / "train_label.xml").read_bytes()
    assert b'encoding="gb2312"' in raw and any(b > 127 for b in raw)
    raw.decode("gb2312")  # real gb2312 bytes
    assert df["color"].notna().all() and df["type"].notna().all()
    # each identity seen by several cameras; timestamps of one identity within minutes
    assert (labelled.groupby("vehicle_id")["camera"].nunique() >= 3).all()
    span = labelled.groupby("vehicle_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert span.max() < 6000 < labelled["timestamp"].max() - labelled["timestamp"].min()
    gt = (synth["veri776"] / "gt_image.txt").read_text().splitlines()
    assert len(gt) == len(query)


def test_cityflow_numbering(synth):
    df = read_cityflow(synth["cityflow"])
    train = df[df["split"] == "train"]
    ids = set(train["vehicle_id"])
    assert all(1 <= v <= 95 or 241 <= v <= 478 for v in ids)
    assert any(v <= 400 for v in ids) and any(401 <= v <= 478 for v in ids)
    assert len(train) == len(ids) * PER_ID and len(ids) == 8
    assert train["image_name"].tolist() == sorted(train["image_name"])
    hidden = pd.read_csv(synth["cityflow"] / "_synth_test_ids.csv", dtype={"image_name": str})
    test_ids = set(hidden["vehicle_id"])
    assert not test_ids & ids
    assert all(96 <= v <= 240 or 479 <= v <= 666 for v in test_ids)
    for split in ("query", "gallery"):
        assert sorted(df.loc[df["split"] == split, "image_name"]) == sorted(hidden.loc[hidden["split"] == split, "image_name"])
    assert (df.loc[df["split"] != "train", "vehicle_id"] == -1).all()
    # a track is one identity in one camera; trailing spaces as the release has them
    assert train["track"].notna().all()
    assert (train.groupby("track")[["vehicle_id", "camera"]].nunique() == 1).all().all()
    lines = (synth["cityflow"] / "train_track.txt").read_text().splitlines()
    assert all(line.endswith(" ") for line in lines)
    assert df.loc[df["split"] == "gallery", "track"].notna().all()


def test_vehicleid_layout(synth):
    small = read_vehicleid(synth["vehicleid"], "small")
    large = read_vehicleid(synth["vehicleid"], "large")
    assert (small["split"] == "train").sum() == (large["split"] == "train").sum() == IDS // 2 * PER_ID
    s_ids = set(small.loc[small["split"] != "train", "vehicle_id"])
    l_ids = set(large.loc[large["split"] != "train", "vehicle_id"])
    assert s_ids < l_ids and len(l_ids) == IDS // 2
    assert (large["camera"] == -1).all() and large["model"].notna().any()


def test_veriwild_layout(synth):
    df = read_veriwild(synth["veriwild"], "large")
    assert len(df) == IDS * PER_ID
    assert (df[df["split"] == "query"].groupby("vehicle_id").size() == 1).all()
    span = df.groupby("vehicle_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert span.max() < 3600 < df["timestamp"].max() - df["timestamp"].min()
    assert df["model"].notna().all() and df["color"].notna().all()
    small = read_veriwild(synth["veriwild"], "small")
    assert set(small["vehicle_id"][small["split"] == "query"]) < set(df["vehicle_id"][df["split"] == "query"])
    removed = read_veriwild(synth["veriwild"], "large", same_camera="remove")
    q = df[df["split"] == "query"]
    g = df[df["split"] == "gallery"]
    same = g.merge(q[["vehicle_id", "camera"]], on=["vehicle_id", "camera"])
    assert len(removed) == len(df) - len(same)


def test_compcars_layout(synth):
    df = read_compcars(synth["compcars"])
    meta = df.attrs["vreid"]
    assert meta["invalid_boxes_dropped"] >= 1
    assert len(df) + meta["invalid_boxes_dropped"] == IDS * PER_ID
    assert df["source_id"].nunique() == IDS  # classes = model x year
    assert df["vehicle_id"].nunique() == IDS // 3  # models, each over several years
    assert set(df["viewpoint"].dropna()) <= {-1, 1, 2, 3}
    for path, box in zip(df["path"][:40], df["bbox"][:40]):
        w, h = Image.open(path).size
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
        assert 64 <= w <= 96 and 64 <= h <= 96
    split = read_compcars(synth["compcars"], subset="train")
    assert 0 < len(split) < len(df)


def _chromaticity_hist(path: str) -> np.ndarray:
    """A colour feature: 6x6 histogram of (r, g) chromaticity over the image centre."""
    a = np.asarray(Image.open(path).convert("RGB").resize((32, 32)), dtype=np.float64)
    c = a[8:24, 8:24].reshape(-1, 3)
    ch = c / (c.sum(1, keepdims=True) + 1e-6)
    h, _ = np.histogramdd(ch[:, :2], bins=(6, 6), range=((0, 1), (0, 1)))
    return h.ravel() / h.sum()


def test_identity_is_in_the_pixels(tmp_path):
    """Nearest-neighbour retrieval on a plain colour feature beats chance by far on the VeRi query/gallery."""
    root = synthesize(tmp_path, seed=0, sources=("veri776",))["veri776"]  # the default size: 30 ids x 8
    df = read_veri776(root)
    q = df[df["split"] == "query"].reset_index(drop=True)
    g = df[df["split"] == "gallery"].reset_index(drop=True)
    Q = np.stack([_chromaticity_hist(p) for p in q["path"]])
    G = np.stack([_chromaticity_hist(p) for p in g["path"]])
    dist = ((Q[:, None] - G[None]) ** 2).sum(-1)
    hits = evaluated = 0
    for i in range(len(q)):
        junk = (g["vehicle_id"] == q["vehicle_id"][i]) & (g["camera"] == q["camera"][i])
        good = (g["vehicle_id"] == q["vehicle_id"][i]) & ~junk
        if not good.any():
            continue
        evaluated += 1
        order = [j for j in np.argsort(dist[i], kind="stable") if not junk[j]]
        hits += bool(good[order[0]])
    chance = 1 / g["vehicle_id"].nunique()
    cmc1 = hits / evaluated
    assert evaluated >= 20
    assert cmc1 > 5 * chance, (cmc1, chance)
