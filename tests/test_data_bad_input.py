"""Bad input: each case raises DataFormatError naming the file (and line), through the API and the CLI,
and nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import vreid.cli
from vreid.data.cityflow import read_cityflow
from vreid.data.compcars import read_compcars
from vreid.data.vehicleid import read_vehicleid, vehicleid_draws
from vreid.data.veri776 import read_veri776
from vreid.data.veriwild import read_veriwild
from vreid.errors import ConfigError, DataFormatError

FIX = Path(__file__).parent / "fixtures" / "data"
READERS = {"veri776": read_veri776, "cityflow": read_cityflow, "vehicleid": read_vehicleid,
           "veriwild": read_veriwild, "compcars": read_compcars}


def _append(rel: str, text: str):
    def mutate(root: Path):
        with open(root / rel, "a") as f:
            f.write(text)
    return mutate


def _remove(rel: str):
    return lambda root: (root / rel).unlink()


def _replace(rel: str, old: str, new: str, encoding: str = "utf-8"):
    def mutate(root: Path):
        path = root / rel
        text = path.read_bytes().decode(encoding)
        assert old in text
        path.write_bytes(text.replace(old, new).encode(encoding))
    return mutate


# (format, mutation, the file the message must name, a further text the message must contain)
CASES = {
    # missing list / label files
    "veri776-missing-list": ("veri776", _remove("name_test.txt"), "name_test.txt", "missing"),
    "veri776-missing-xml": ("veri776", _remove("train_label.xml"), "train_label.xml", "missing"),
    "cityflow-missing-list": ("cityflow", _remove("name_query.txt"), "name_query.txt", "missing"),
    "cityflow-missing-xml": ("cityflow", _remove("train_label.xml"), "train_label.xml", "missing"),
    "vehicleid-missing-list": ("vehicleid", _remove("train_test_split/test_list_800.txt"), "test_list_800.txt", "missing"),
    "veriwild-missing-list": ("veriwild", _remove("train_test_split/test_3000_query.txt"), "test_3000_query.txt", "missing"),
    "veriwild-missing-info": ("veriwild", _remove("train_test_split/vehicle_info.txt"), "vehicle_info.txt", "missing"),
    "compcars-missing-label": ("compcars", _remove("data/label/78/1/2015/b3a9a2e0cfc1a9.txt"), "b3a9a2e0cfc1a9.txt", "missing"),
    # XML that does not parse (line 6 of the file: the unclosed <Item)
    "veri776-bad-xml": ("veri776", _replace("test_label.xml", 'typeID="1" />\n<Item imageName="0003_c004',
                                            'typeID="1"\n<Item imageName="0003_c004', "gb2312"),
                        "test_label.xml:", "not well-formed"),
    "cityflow-bad-xml": ("cityflow", _replace("train_label.xml", "</Items>", "</Itemz>", "gb2312"),
                         "train_label.xml:9", "not well-formed"),
    # a list naming an image not on disk
    "veri776-no-image": ("veri776", _remove("image_train/0002_c001_00020000_0.jpg"), "name_train.txt:3", "not on disk"),
    "cityflow-no-image": ("cityflow", _remove("image_test/000002.jpg"), "name_test.txt:2", "not on disk"),
    "vehicleid-no-image": ("vehicleid", _remove("image/0000002.jpg"), "train_list.txt:2", "not on disk"),
    "veriwild-no-image": ("veriwild", _remove("images/00003/000006.jpg"), "test_3000.txt:2", "not on disk"),
    # duplicate image names
    "veri776-duplicate": ("veri776", _append("name_train.txt", "0001_c001_00016450_0.jpg\n"), "name_train.txt:4", "duplicate"),
    "cityflow-duplicate": ("cityflow", _append("name_test.txt", "000001.jpg\n"), "name_test.txt:4", "duplicate"),
    "vehicleid-duplicate": ("vehicleid", _append("train_test_split/train_list.txt", "0000001 12\n"), "train_list.txt:3", "duplicate"),
    "veriwild-duplicate": ("veriwild", _append("train_test_split/train_list.txt", "00001/000001\n"), "train_list.txt:4", "duplicate"),
    # ids / cameras that do not parse
    "veri776-bad-name": ("veri776", _append("name_train.txt", "00x1_c001_00016450_0.jpg\n"), "name_train.txt:4", "does not parse"),
    "cityflow-bad-id": ("cityflow", _replace("train_label.xml", 'vehicleID="0402" cameraID="c003"/>\n<Item imageName="000004.jpg"',
                                             'vehicleID="04x2" cameraID="c003"/>\n<Item imageName="000004.jpg"', "gb2312"),
                        "train_label.xml:7", "vehicleID"),
    "cityflow-bad-camera": ("cityflow", _replace("train_label.xml", 'cameraID="c002"', 'cameraID="cam2"', "gb2312"),
                            "train_label.xml:6", "camera"),
    "vehicleid-bad-id": ("vehicleid", _replace("train_test_split/train_list.txt", "0000002 12", "0000002 1x2"),
                         "train_list.txt:2", "vehicle id"),
    "veriwild-bad-camera": ("veriwild", _replace("train_test_split/vehicle_info.txt", "00002/000003;28;", "00002/000003;c2x;"),
                            "vehicle_info.txt:4", "camera"),
    "veriwild-bad-time": ("veriwild", _replace("train_test_split/vehicle_info.txt", "2018-03-12 00:00:00", "yesterday"),
                          "vehicle_info.txt:4", "time"),
    "compcars-bad-box": ("compcars", _replace("data/label/78/1/2014/3ac218c0c6c378.txt", "2 3 10 9", "2 3 x 9"),
                         "3ac218c0c6c378.txt:3", "box coordinate"),
}


def _copy(tmp_path: Path, fmt: str) -> Path:
    root = tmp_path / fmt
    shutil.copytree(FIX / fmt, root)
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_api(tmp_path, case):
    fmt, mutate, file_part, text = CASES[case]
    root = _copy(tmp_path, fmt)
    mutate(root)
    with pytest.raises(DataFormatError) as info:
        READERS[fmt](root)
    message = str(info.value)
    assert file_part in message and text in message, message


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_cli(tmp_path, capsys, case):
    fmt, mutate, file_part, text = CASES[case]
    root = _copy(tmp_path, fmt)
    mutate(root)
    out = tmp_path / "out" / "m.parquet"
    assert vreid.cli.main(["data", "index", fmt, str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert file_part in err and text in err, err
    assert not out.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_missing_root(tmp_path, capsys, fmt):
    missing = tmp_path / "no_such_root"
    with pytest.raises(DataFormatError, match="no_such_root"):
        READERS[fmt](missing)
    assert vreid.cli.main(["data", "index", fmt, str(missing), "--out", str(tmp_path / "m.parquet")]) == 2
    assert "no_such_root" in capsys.readouterr().err
    assert not (tmp_path / "m.parquet").exists()


def test_xml_item_disagreeing_with_file_name(tmp_path):
    root = _copy(tmp_path, "veri776")
    _replace("train_label.xml", 'vehicleID="0002" cameraID="c001"', 'vehicleID="0009" cameraID="c001"', "gb2312")(root)
    with pytest.raises(DataFormatError, match=r"train_label\.xml:7.*0002_c001_00020000_0\.jpg"):
        read_veri776(root)


def test_cityflow_track_naming_unknown_image(tmp_path):
    root = _copy(tmp_path, "cityflow")
    _append("test_track.txt", "7 \n")(root)
    with pytest.raises(DataFormatError, match=r"test_track\.txt:3.*'7'"):
        read_cityflow(root)


def test_compcars_missing_split_list(tmp_path):
    root = _copy(tmp_path, "compcars")
    (root / "data/train_test_split/classification/test.txt").unlink()
    with pytest.raises(DataFormatError, match=r"classification/test\.txt"):
        read_compcars(root, subset="test")
    assert len(read_compcars(root)) == 2  # "all" walks the image folder and needs no list


def test_bad_options(tmp_path, capsys):
    with pytest.raises(ConfigError, match="huge"):
        read_vehicleid(FIX / "vehicleid", split="huge")
    with pytest.raises(ConfigError, match="same_camera"):
        read_veriwild(FIX / "veriwild", same_camera="drop")
    with pytest.raises(ConfigError, match="seed"):
        vehicleid_draws(FIX / "vehicleid", seed=-1)
    out = str(tmp_path / "m.parquet")
    assert vreid.cli.main(["data", "index", "veri776", str(FIX / "veri776"), "--out", out, "--split", "large"]) == 2
    assert "--split" in capsys.readouterr().err
    assert vreid.cli.main(["data", "index", "cityflow", str(FIX / "cityflow"), "--out", out, "--same-camera", "remove"]) == 2
    assert "--same-camera" in capsys.readouterr().err
    assert vreid.cli.main(["data", "vehiclenet", "--source", "cityflow", "--target", "cityflow", "--out", out]) == 2
    assert "NAME=ROOT" in capsys.readouterr().err
    assert not Path(out).exists()
