"""The bad-input matrix: every command, every class of bad input, run through the CLI as a user would.

Each case must end with exit code 2, exactly one ``vreid: error: ...`` line on stderr naming the file
(and line, where there is one), no traceback, nothing written or changed on disk, and no Ray started
(everything that can be checked is checked before Ray). The cases run in-process
(``vreid.cli.main``) for speed; a few run as a subprocess, and the Ray-side cases (an error inside a
worker, re-running a failed name) use the session ``ray_cluster``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vreid.cli

REPO = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "data"
NOT_WRITABLE = "/proc/vreid-cannot-write-here"  # refused even for root (this sandbox runs tests as root)


# -- the workspace every case starts from ----------------------------------------------------------------
@pytest.fixture(scope="module")
def ws(vehiclenet_manifests, tmp_path_factory):
    """Good inputs: the VehicleNet manifests, a real checkpoint (tiny timm model), a run config, a saved
    features folder, a selection and a chain YAML; each case corrupts a copy of one of them."""
    import torch

    from vreid.data.schema import read_manifest
    from vreid.evaluate.features import save_features
    from vreid.models import ReidModel
    from vreid.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("bad_input_ws")
    ckpt = root / "ckpt"
    kwargs = {"backbone_name": "test_resnet", "head": "vehiclenet", "num_classes": 3, "fc_dim": 16, "dropout": 0.0}
    torch.manual_seed(0)
    model = ReidModel(**kwargs)
    save_checkpoint(ckpt, export_model=model, model_config={**kwargs, "pretrained": False, "image_size": [32, 32],
                                                             "recipe": "vehiclenet", "stage": "stage2"},
                    state={"epoch": torch.tensor(0)}, metrics={"epoch": 1})
    feats = root / "features"
    rng = np.random.default_rng(0)
    for name in ("val_query", "val_gallery"):
        df = read_manifest(vehiclenet_manifests / f"{name}.parquet")
        save_features(feats / f"{name.split('_')[1]}.parquet", rng.normal(size=(len(df), 8)).astype(np.float32), df)
    config = root / "run.yaml"
    text = (REPO / "search_spaces" / "demo.yaml").read_text()
    config.write_text(text.replace("outputs/demo/manifests", str(vehiclenet_manifests)))
    selection = root / "selection.json"
    selection.write_text(json.dumps({"grid": "g", "selected": [{"trial_id": "t0", "checkpoint_uri": str(ckpt)}]}))
    chain = root / "chain.yaml"
    chain.write_text("ensemble: true\nre_ranking:\n  enabled: false\n")
    return {"root": root, "manifests": vehiclenet_manifests, "ckpt": ckpt, "config": config, "features": feats,
            "selection": selection, "chain": chain}


# -- helpers building a corrupted copy -----------------------------------------------------------------
def copy_fixture(fmt: str, tmp: Path) -> Path:
    dst = tmp / fmt
    shutil.copytree(FIX / fmt, dst)
    return dst


def empty_file(fmt: str, rel: str) -> Callable[[dict, Path], Path]:
    def make(ws, tmp):
        root = copy_fixture(fmt, tmp)
        (root / rel).write_text("")
        return root
    return make


def edit(fmt: str, rel: str, old: str, new: str, encoding: str = "utf-8"):
    def make(ws, tmp):
        root = copy_fixture(fmt, tmp)
        p = root / rel
        text = p.read_bytes().decode(encoding)
        assert old in text, (rel, old)
        p.write_bytes(text.replace(old, new).encode(encoding))
        return root
    return make


def append(fmt: str, rel: str, text: str):
    def make(ws, tmp):
        root = copy_fixture(fmt, tmp)
        with open(root / rel, "a") as f:
            f.write(text)
        return root
    return make


def manifests_copy(ws, tmp: Path, drop: str | None = None) -> Path:
    dst = tmp / "manifests"
    shutil.copytree(ws["manifests"], dst)
    if drop:
        (dst / drop).unlink()
    return dst


def manifest_with(ws, tmp: Path, column: str, value, name: str = "val_query.parquet") -> Path:
    """A copy of a manifest with ``column`` of row 0 set to ``value`` (written with pyarrow, bypassing
    our writer's checks, as another tool could)."""
    table = pq.read_table(ws["manifests"] / name)
    values = table.column(column).to_pylist()
    values[0] = value
    field = table.schema.field(column)
    table = table.set_column(table.schema.get_field_index(column), field.with_nullable(True),
                             pa.array(values, type=field.type))
    out = tmp / name
    pq.write_table(table, out)
    return out


def truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def ckpt_copy(ws, tmp: Path) -> Path:
    dst = tmp / "ckpt"
    shutil.copytree(ws["ckpt"], dst)
    return dst


def ckpt_truncated(keep: float):
    def make(ws, tmp):
        c = ckpt_copy(ws, tmp)
        truncated(ws["ckpt"] / "model.safetensors", c / "model.safetensors", keep)
        return c
    return make


def ckpt_config(update: dict | None = None, raw: bytes | None = None):
    def make(ws, tmp):
        c = ckpt_copy(ws, tmp)
        if raw is not None:
            (c / "model_config.json").write_bytes(raw)
        else:
            cfg = json.loads((c / "model_config.json").read_text())
            cfg.update(update)
            (c / "model_config.json").write_text(json.dumps(cfg))
        return c
    return make


def features_copy(ws, tmp: Path, corrupt: str) -> Path:
    dst = tmp / "features"
    shutil.copytree(ws["features"], dst)
    truncated(ws["features"] / corrupt, dst / corrupt, 0.6)
    return dst


def write(tmp: Path, name: str, data: bytes | str) -> Path:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


NON_UTF8 = "name: x\ndescription: caf\xe9\n".encode("latin-1")


# -- the cases --------------------------------------------------------------------------------------------
@dataclass
class Case:
    argv: Callable[[dict, Path], list[str]]
    expect: list[str]  # substrings of the error line; "{tmp}" is the case's temporary folder
    cls: str  # the class
    env: dict = field(default_factory=dict)


def index(fmt: str, make, *extra: str, out: str = "out.parquet"):
    return lambda ws, tmp: ["data", "index", fmt, str(make(ws, tmp)), "--out", str(tmp / out), *extra]


def vehiclenet(make, target: str = "cityflow", out: Callable[[Path], str] | None = None):
    def argv(ws, tmp):
        root = make(ws, tmp) if make else FIX / target
        return ["data", "vehiclenet", "--source", f"{target}={root}", "--target", target,
                "--out", out(tmp) if out else str(tmp / "vn")]
    return argv


def train(*sets: str, config: Callable | None = None):
    def argv(ws, tmp):
        cfg = str(config(ws, tmp)) if config else str(ws["config"])
        out = ["train", cfg, "--name", "bad", "--set", f"output.root={tmp / 'out'}"]
        for s in sets:
            out += ["--set", s.format(tmp=tmp, manifests=ws["manifests"])]
        return out
    return argv


def grid(*sets: str, config: Callable | None = None):
    def argv(ws, tmp):
        cfg = str(config(ws, tmp)) if config else str(ws["config"])
        out = ["grid", cfg, "--name", "badgrid", "--set", f"output.root={tmp / 'out'}"]
        for s in sets:
            out += ["--set", s]
        return out
    return argv


def ensemble(*extra, models: Callable | None = None, out: Callable[[Path], str] | None = None):
    def argv(ws, tmp):
        m = models(ws, tmp) if models else ["--checkpoint", str(ws["ckpt"])]
        rest = [x(ws, tmp) if callable(x) else x for x in extra]
        if not any(r == "--manifests" or r == "--query" for r in rest):
            rest = ["--manifests", str(ws["manifests"])] + rest
        return ["ensemble", *m, *rest, "--out", out(tmp) if out else str(tmp / "ens")]
    return argv


def evaluate(*extra, features: Callable | None = None, query: Callable | None = None):
    def argv(ws, tmp):
        src = features(ws, tmp) if features else ["--features-dir", str(ws["features"])]
        q = str(query(ws, tmp)) if query else str(ws["manifests"] / "val_query.parquet")
        rest = [x(ws, tmp) if callable(x) else x for x in extra]
        return ["evaluate", "--protocol", "cityflow", "--query", q,
                "--gallery", str(ws["manifests"] / "val_gallery.parquet"), *src, *rest]
    return argv


def submission(line: str, n_gallery: int = 100):
    def argv(ws, tmp):
        nums = [str(i) for i in range(1, 101)]
        tokens = line.split()
        p = write(tmp, "track2.txt", " ".join(tokens + nums[len(tokens):]) + "\n")
        return ["submission", "check", str(p), "--queries", "1", "--gallery", str(n_gallery)]
    return argv


def stats(make):
    return lambda ws, tmp: ["data", "stats", str(make(ws, tmp))]


def check(make):
    return lambda ws, tmp: ["data", "check", str(make(ws, tmp)), "--workers", "1"]


def a_file(tmp: Path) -> Path:
    p = tmp / "a_file"
    p.write_text("keep me\n")
    return p


def a_dir(tmp: Path) -> Path:
    p = tmp / "a_dir"
    p.mkdir(exist_ok=True)
    (p / "old.txt").write_text("old\n")
    return p


def interrupted_demo(tmp: Path) -> Path:
    """A demo folder as `vreid demo` leaves it when interrupted after its data steps (default sizes)."""
    out = tmp / "demo"
    out.mkdir(exist_ok=True)
    (out / ".vreid-demo").write_text("generated by `vreid demo`; safe to delete\n")
    (out / ".vreid-demo-data.json").write_text('{"ids": null, "images_per_id": null}')
    return out


CASES: dict[str, Case] = {
    # ---- class 1: errors that used to surface inside Ray: validated before Ray starts
    "train-unknown-backbone": Case(train("model.backbone=resnet9000"), ["model.backbone", "resnet9000"], "1"),
    "train-missing-val-gallery": Case(
        train(config=lambda ws, tmp: _config_with_manifests(ws, tmp, manifests_copy(ws, tmp, "val_gallery.parquet"))),
        ["val_gallery.parquet", "not found"], "1"),
    "train-missing-stage1": Case(
        train(config=lambda ws, tmp: _config_with_manifests(ws, tmp, manifests_copy(ws, tmp, "stage1_train.parquet"))),
        ["stage1_train.parquet", "not found"], "1"),
    "train-pretrained-no-cache": Case(train("model.backbone=resnet18", "model.pretrained=true"),
                                      ["resnet18", "not in the local cache"], "1",
                                      env={"HF_HOME": "{tmp}/hf", "TORCH_HOME": "{tmp}/torch", "HF_HUB_CACHE": "{tmp}/hf/hub"}),
    "train-pretrained-missing-file": Case(train("model.pretrained={tmp}/nope.pth"), ["nope.pth", "not found"], "1"),
    "train-num-cpus-0": Case(lambda ws, tmp: train()(ws, tmp) + ["--num-cpus", "0"], ["--num-cpus", "> 0"], "1"),
    "grid-unknown-backbone": Case(grid("grid.params={model.backbone: [test_resnet, resnet9000]}"),
                                  ["resnet9000", "grid.params.model.backbone"], "1"),
    "grid-missing-val-gallery": Case(
        grid(config=lambda ws, tmp: _config_with_manifests(ws, tmp, manifests_copy(ws, tmp, "val_gallery.parquet"))),
        ["val_gallery.parquet", "not found"], "1"),
    "ensemble-num-actors-0": Case(ensemble("--num-actors", "0"), ["--num-actors", ">= 1"], "1"),
    "ensemble-batch-size-0": Case(ensemble("--batch-size", "0"), ["--batch-size", ">= 1"], "1"),
    "ensemble-cpus-per-actor-0": Case(ensemble("--cpus-per-actor", "0"), ["--cpus-per-actor", "> 0"], "1"),
    "ensemble-scales-0": Case(ensemble("--scales", "1,0"), ["--scales", "0"], "1"),
    # ---- class 3: corrupted files
    "ensemble-truncated-safetensors": Case(ensemble(models=lambda ws, tmp: ["--checkpoint", str(ckpt_truncated(0.5)(ws, tmp))]),
                                           ["model.safetensors", "{tmp}"], "3"),
    "ensemble-empty-safetensors": Case(ensemble(models=lambda ws, tmp: ["--checkpoint", str(ckpt_truncated(0.0)(ws, tmp))]),
                                       ["model.safetensors", "{tmp}"], "3"),
    "ensemble-config-unknown-key": Case(
        ensemble(models=lambda ws, tmp: ["--checkpoint", str(ckpt_config({"colour": 3})(ws, tmp))]),
        ["model_config.json", "colour"], "3"),
    "ensemble-config-unknown-backbone": Case(
        ensemble(models=lambda ws, tmp: ["--checkpoint", str(ckpt_config({"backbone_name": "resnet9000"})(ws, tmp))]),
        ["model_config.json", "resnet9000"], "7"),
    "ensemble-config-wrong-type": Case(
        ensemble(models=lambda ws, tmp: ["--checkpoint", str(ckpt_config({"num_classes": "three"})(ws, tmp))]),
        ["model_config.json", "num_classes"], "3"),
    "ensemble-config-not-a-mapping": Case(
        ensemble(models=lambda ws, tmp: ["--checkpoint", str(ckpt_config(raw=b"[1, 2]")(ws, tmp))]),
        ["model_config.json", "mapping"], "3"),
    "ensemble-config-non-utf8": Case(
        ensemble(models=lambda ws, tmp: ["--checkpoint", str(ckpt_config(raw=b'{"backbone_name": "caf\xe9"}')(ws, tmp))]),
        ["model_config.json", "UTF-8"], "3"),
    "evaluate-truncated-safetensors": Case(
        evaluate(features=lambda ws, tmp: ["--checkpoint", str(ckpt_truncated(0.5)(ws, tmp))]), ["model.safetensors"], "3"),
    "evaluate-truncated-npy": Case(
        evaluate(features=lambda ws, tmp: ["--features-dir", str(features_copy(ws, tmp, "query.npy"))]),
        ["query.npy", "{tmp}"], "3"),
    "evaluate-truncated-features-parquet": Case(
        evaluate(features=lambda ws, tmp: ["--features-dir", str(features_copy(ws, tmp, "gallery.parquet"))]),
        ["gallery.parquet", "{tmp}"], "3"),
    "ensemble-selection-selected-string": Case(
        ensemble(models=lambda ws, tmp: ["--selection", str(write(tmp, "selection.json", '{"selected": "t0"}'))]),
        ["selection.json", "selected"], "3"),
    "ensemble-selection-item-string": Case(
        ensemble(models=lambda ws, tmp: ["--selection", str(write(tmp, "selection.json", '{"selected": ["t0"]}'))]),
        ["selection.json", "selected[0]"], "3"),
    "ensemble-selection-uri-number": Case(
        ensemble(models=lambda ws, tmp: ["--selection", str(write(tmp, "selection.json",
                                                                   '{"selected": [{"checkpoint_uri": 5}]}'))]),
        ["selection.json", "checkpoint_uri"], "3"),
    "ensemble-selection-non-utf8": Case(
        ensemble(models=lambda ws, tmp: ["--selection", str(write(tmp, "selection.json", b'{"grid": "caf\xe9", "selected": []}'))]),
        ["selection.json", "UTF-8"], "3"),
    "ensemble-chain-non-utf8": Case(ensemble("--chain", lambda ws, tmp: str(write(tmp, "chain.yaml", NON_UTF8))),
                                    ["chain.yaml", "UTF-8"], "3"),
    "evaluate-chain-non-utf8": Case(evaluate("--chain", lambda ws, tmp: str(write(tmp, "chain.yaml", NON_UTF8))),
                                    ["chain.yaml", "UTF-8"], "3"),
    "train-config-non-utf8": Case(train(config=lambda ws, tmp: write(tmp, "run.yaml", NON_UTF8)), ["run.yaml", "UTF-8"], "3"),
    "grid-config-non-utf8": Case(grid(config=lambda ws, tmp: write(tmp, "space.yaml", NON_UTF8)), ["space.yaml", "UTF-8"], "3"),
    "stats-null-path": Case(stats(lambda ws, tmp: manifest_with(ws, tmp, "path", None)), ["val_query.parquet", "'path'", "null"], "3"),
    "stats-null-vehicle-id": Case(stats(lambda ws, tmp: manifest_with(ws, tmp, "vehicle_id", None)),
                                  ["val_query.parquet", "'vehicle_id'", "null"], "3"),
    "check-null-source-id": Case(check(lambda ws, tmp: manifest_with(ws, tmp, "source_id", None)),
                                 ["val_query.parquet", "'source_id'", "null"], "3"),
    "stats-truncated-parquet": Case(stats(lambda ws, tmp: truncated(ws["manifests"] / "val_query.parquet", tmp / "m.parquet")),
                                    ["m.parquet"], "3"),
    "stats-empty-parquet": Case(stats(lambda ws, tmp: truncated(ws["manifests"] / "val_query.parquet", tmp / "m.parquet", 0)),
                                ["m.parquet"], "3"),
    "evaluate-null-query-manifest": Case(evaluate(query=lambda ws, tmp: manifest_with(ws, tmp, "camera", None)),
                                         ["val_query.parquet", "'camera'", "null"], "3"),
    "ensemble-null-manifest": Case(
        ensemble("--query", lambda ws, tmp: str(manifest_with(ws, tmp, "image_name", None, "test_query.parquet")),
                 "--gallery", lambda ws, tmp: str(ws["manifests"] / "test_gallery.parquet")),
        ["test_query.parquet", "'image_name'", "null"], "3"),
    "train-null-manifest": Case(
        train(config=lambda ws, tmp: _config_with_manifests(ws, tmp, _manifests_with_null(ws, tmp))),
        ["stage2_train.parquet", "'vehicle_id'", "null"], "3"),
    # ---- class 4: empty or contradictory input
    "index-veri776-empty-list": Case(index("veri776", empty_file("veri776", "name_train.txt")), ["name_train.txt", "empty"], "4"),
    "index-cityflow-empty-list": Case(index("cityflow", empty_file("cityflow", "name_query.txt")), ["name_query.txt", "empty"], "4"),
    "index-vehicleid-empty-list": Case(index("vehicleid", empty_file("vehicleid", "train_test_split/train_list.txt")),
                                       ["train_list.txt", "empty"], "4"),
    "index-vehicleid-empty-test": Case(index("vehicleid", empty_file("vehicleid", "train_test_split/test_list_800.txt")),
                                       ["test_list_800.txt", "empty"], "4"),
    "index-veriwild-empty-list": Case(index("veriwild", empty_file("veriwild", "train_test_split/train_list.txt")),
                                      ["train_list.txt", "empty"], "4"),
    "index-veriwild-empty-info": Case(index("veriwild", empty_file("veriwild", "train_test_split/vehicle_info.txt")),
                                      ["vehicle_info.txt", "empty"], "4"),
    "index-compcars-no-images": Case(index("compcars", lambda ws, tmp: _without_images(copy_fixture("compcars", tmp))),
                                     ["data/image", "no usable CompCars images"], "4"),
    "index-vehicleid-conflicting-colour": Case(index("vehicleid", append("vehicleid", "attribute/color_attr.txt", "12 5\n")),
                                               ["color_attr.txt:3", "line 1"], "4"),
    "index-vehicleid-conflicting-model": Case(index("vehicleid", append("vehicleid", "attribute/model_attr.txt", "12 999\n")),
                                              ["model_attr.txt:3", "line 1"], "4"),
    "index-veriwild-conflicting-info": Case(
        index("veriwild", append("veriwild", "train_test_split/vehicle_info.txt",
                                 "00001/000001;30;2018-03-11 12:40:26;Haima 7;mpv;white\n")),
        ["vehicle_info.txt:", "line 2"], "4"),
    "index-vehicleid-draw-99": Case(index("vehicleid", lambda ws, tmp: FIX / "vehicleid", "--draw", "99"), ["--draw", "0..9"], "4"),
    "index-vehicleid-draw-neg": Case(index("vehicleid", lambda ws, tmp: FIX / "vehicleid", "--draw", "-1"), ["--draw", "0..9"], "4"),
    "index-vehicleid-seed-neg": Case(index("vehicleid", lambda ws, tmp: FIX / "vehicleid", "--seed", "-1"), ["--seed", ">= 0"], "4"),
    "vehiclenet-target-0-val": Case(vehiclenet(edit("cityflow", "train_label.xml", 'vehicleID="0402"', 'vehicleID="0002"',
                                                    "gb2312")), ["val_query", "0 images"], "4"),
    "vehiclenet-target-empty-list": Case(vehiclenet(empty_file("cityflow", "name_test.txt")), ["name_test.txt", "empty"], "4"),
    "stats-unknown-split": Case(stats(lambda ws, tmp: manifest_with(ws, tmp, "split", "validation")),
                                ["val_query.parquet", "'split'", "validation"], "4"),
    "stats-unknown-dataset": Case(stats(lambda ws, tmp: manifest_with(ws, tmp, "dataset", "veri777")),
                                  ["val_query.parquet", "'dataset'", "veri777"], "4"),
    "train-lr-nan": Case(train("stage1.lr=.nan"), ["stage1.lr", "nan"], "4"),
    "train-lr-inf": Case(train("stage2.lr=.inf"), ["stage2.lr", "inf"], "4"),
    "train-lr-zero": Case(train("stage1.lr=0"), ["stage1.lr", "> 0"], "4"),
    "train-momentum-nan": Case(train("stage1.momentum=.nan"), ["stage1.momentum", "nan"], "4"),
    "grid-lr-nan": Case(grid("grid.params={stage1.lr: [0.01, .nan]}"), ["stage1.lr", "nan"], "4"),
    "grid-top-k-0": Case(grid("grid.top_k=0"), ["grid.top_k", ">= 1"], "4"),
    # one point of three invalid: `vreid grid` refuses the grid before Ray starts (the Python API's
    # run_grid would report that point as a failed trial and run the others: tests/test_pipeline.py)
    "grid-one-point-invalid": Case(grid("grid.params={stage1.lr: [0.05, -1.0, 0.08]}"),
                                   ["grid.params.stage1.lr=-1.0", "'stage1.lr' must be > 0, got -1.0"], "4"),
    # `vreid demo --resume` with nothing to resume, and with another dataset size than the interrupted demo
    "demo-resume-nothing": Case(lambda ws, tmp: ["demo", "--out", str(tmp / "no_demo"), "--resume"],
                                ["{tmp}/no_demo", "no earlier demo to resume"], "1"),
    "demo-resume-other-size": Case(lambda ws, tmp: ["demo", "--out", str(interrupted_demo(tmp)), "--resume", "--ids", "9"],
                                   [".vreid-demo-data.json", "'ids': None", "'ids': 9", "same --ids/--images-per-id"], "4"),
    "ensemble-top-k-0": Case(ensemble("--top-k", "0", models=lambda ws, tmp: ["--selection", str(ws["selection"])]),
                             ["--top-k", ">= 1"], "4"),
    "ensemble-top-k-neg": Case(ensemble("--top-k", "-1", models=lambda ws, tmp: ["--selection", str(ws["selection"])]),
                               ["--top-k", ">= 1"], "7"),
    "ensemble-selection-empty": Case(
        ensemble(models=lambda ws, tmp: ["--selection", str(write(tmp, "selection.json", '{"selected": []}'))]),
        ["selection.json", "empty"], "4"),
    "evaluate-draws-0": Case(evaluate("--draws", "0"), ["--draws", ">= 1"], "4"),
    "evaluate-batch-size-0": Case(evaluate("--batch-size", "0"), ["--batch-size", ">= 1"], "4"),
    "submission-plus-sign": Case(submission("+16"), ["track2.txt:1", "'+16'"], "4"),
    "submission-underscore": Case(submission("4_4"), ["track2.txt:1", "'4_4'"], "4"),
    "submission-unicode-digits": Case(submission("\u0661\u0662"), ["track2.txt:1"], "4"),
    "submission-negative": Case(submission("-3"), ["track2.txt:1", "-3"], "4"),
    "submission-queries-0": Case(lambda ws, tmp: submission("1")(ws, tmp)[:3] + ["--queries", "0", "--gallery", "100"],
                                 ["--queries", ">= 1"], "4"),
    # ---- class 5: an unusable --out
    "index-out-is-dir": Case(lambda ws, tmp: ["data", "index", "veri776", str(FIX / "veri776"), "--out", str(a_dir(tmp))],
                             ["a_dir", "is a folder"], "5"),
    "index-out-under-file": Case(lambda ws, tmp: ["data", "index", "veri776", str(FIX / "veri776"),
                                                  "--out", str(a_file(tmp) / "m.parquet")], ["a_file", "not a folder"], "5"),
    "index-out-not-writable": Case(lambda ws, tmp: ["data", "index", "veri776", str(FIX / "veri776"),
                                                    "--out", NOT_WRITABLE + ".parquet"], ["/proc", "cannot write"], "5"),
    "vehiclenet-out-is-file": Case(vehiclenet(None, out=lambda tmp: str(a_file(tmp))), ["a_file", "not a folder"], "5"),
    "vehiclenet-out-under-file": Case(vehiclenet(None, out=lambda tmp: str(a_file(tmp) / "vn")), ["a_file", "not a folder"], "5"),
    "vehiclenet-out-not-writable": Case(vehiclenet(None, out=lambda tmp: NOT_WRITABLE), ["/proc", "cannot write"], "5"),
    "ensemble-out-is-file": Case(ensemble(out=lambda tmp: str(a_file(tmp))), ["a_file", "not a folder"], "5"),
    "ensemble-out-under-file": Case(ensemble(out=lambda tmp: str(a_file(tmp) / "ens")), ["a_file", "not a folder"], "5"),
    "ensemble-out-not-writable": Case(ensemble(out=lambda tmp: NOT_WRITABLE), ["/proc", "cannot write"], "5"),
    "synth-out-is-file": Case(lambda ws, tmp: ["data", "synth", "--out", str(a_file(tmp)), "--ids", "2"],
                              ["a_file", "not a folder"], "5"),
    "evaluate-save-features-under-file": Case(
        evaluate("--save-features", lambda ws, tmp: str(a_file(tmp) / "f"),
                 features=lambda ws, tmp: ["--checkpoint", str(ws["ckpt"])]), ["a_file", "not a folder"], "5"),
    # ---- class 10: manifest rows outside the dataset roots the manifest was built from
    "check-path-outside-root": Case(check(lambda ws, tmp: manifest_with(ws, tmp, "path", "/etc/passwd")),
                                    ["val_query.parquet", "row 0", "/etc/passwd", "outside the dataset root"], "10"),
    "check-path-dotdot": Case(check(lambda ws, tmp: manifest_with(ws, tmp, "path", _dotdot(ws))),
                              ["val_query.parquet", "row 0", "outside the dataset root"], "10"),
    "train-path-outside-root": Case(
        train(config=lambda ws, tmp: _config_with_manifests(ws, tmp, _manifests_with(ws, tmp, "val_gallery.parquet", "path",
                                                                                       "/etc/passwd"))),
        ["val_gallery.parquet", "/etc/passwd", "outside the dataset root"], "10"),
    "ensemble-path-outside-root": Case(
        ensemble("--manifests", lambda ws, tmp: str(_manifests_with(ws, tmp, "test_gallery.parquet", "path", "/etc/passwd"))),
        ["test_gallery.parquet", "/etc/passwd", "outside the dataset root"], "10"),
    # ---- class 7: messages that missed the file
    "ensemble-manifests-missing-file": Case(ensemble("--manifests", lambda ws, tmp: str(manifests_copy(ws, tmp, "test_gallery.parquet"))),
                                            ["test_gallery.parquet", "not found"], "7"),
    "ensemble-manifests-not-a-folder": Case(ensemble("--manifests", lambda ws, tmp: str(tmp / "nowhere")),
                                            ["nowhere", "not found"], "7"),
    "ensemble-checkpoint-missing": Case(ensemble(models=lambda ws, tmp: ["--checkpoint", str(tmp / "no_ckpt")]),
                                        ["no_ckpt", "not found"], "7"),
}


def _without_images(root: Path) -> Path:
    for p in (root / "data" / "image").rglob("*.jpg"):
        p.unlink()
    return root


def _config_with_manifests(ws, tmp: Path, manifests: Path) -> Path:
    cfg = tmp / "run.yaml"
    cfg.write_text(ws["config"].read_text().replace(str(ws["manifests"]), str(manifests)))
    return cfg


def _dotdot(ws) -> str:
    import pyarrow.parquet as pq

    first = pq.read_table(ws["manifests"] / "val_query.parquet").column("path")[0].as_py()
    return str(Path(first).parent / ".." / ".." / ".." / ".." / "etc" / "passwd")


def _manifests_with(ws, tmp: Path, name: str, column: str, value) -> Path:
    m = manifests_copy(ws, tmp)
    bad = manifest_with({"manifests": m}, tmp, column, value, name)
    shutil.move(bad, m / name)
    return m


def _manifests_with_null(ws, tmp: Path) -> Path:
    m = manifests_copy(ws, tmp)
    bad = manifest_with({"manifests": m}, tmp, "vehicle_id", None, "stage2_train.parquet")
    shutil.move(bad, m / "stage2_train.parquet")
    return m


def _snapshot(*roots: Path) -> dict[str, tuple]:
    out = {}
    for root in roots:
        for dirpath, dirnames, files in os.walk(root):
            for name in dirnames + files:
                p = Path(dirpath) / name
                st = p.lstat()
                digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
                out[str(p)] = (digest, st.st_mode)
    return out


def assert_clean_refusal(rc: int, err: str, expect: list[str]) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("vreid: error: ")]
    assert len(errors) == 1 and len(lines) == 1, f"expected one 'vreid: error:' line, got:\n{err}"
    for text in expect:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    assert rc == 2, (rc, err)
    return errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_refused(name, ws, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    for k, v in case.env.items():
        monkeypatch.setenv(k, v.format(tmp=tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("VREID_LOG_DIR", str(ws["root"].parent / "logs"))
    argv = case.argv(ws, tmp_path)
    ray_was_up = _ray_up()
    before = _snapshot(tmp_path, ws["root"], ws["manifests"])
    capsys.readouterr()
    rc = vreid.cli.main(argv)
    err = capsys.readouterr().err
    assert_clean_refusal(rc, err, [e.format(tmp=tmp_path) for e in case.expect])
    assert _snapshot(tmp_path, ws["root"], ws["manifests"]) == before, "a refused command changed files"
    if not ray_was_up:
        assert not _ray_up(), "Ray was started for input that could be checked before it"


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def test_matrix_covers_every_command_and_class():
    commands = {name.split("-")[0] for name in CASES}
    assert {"index", "vehiclenet", "stats", "check", "synth", "train", "grid", "ensemble", "evaluate",
            "submission"} <= commands
    assert {c.cls for c in CASES.values()} == {"1", "3", "4", "5", "7", "10"}


# -- the same refusals as a user's shell sees them (a separate process) -----------------------------------
@pytest.mark.parametrize("name", ["train-unknown-backbone", "submission-plus-sign", "index-out-is-dir"])
@pytest.mark.integration  # vreid processes
def test_bad_input_subprocess(name, ws, tmp_path):
    case = CASES[name]
    argv = case.argv(ws, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "vreid.cli", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert_clean_refusal(proc.returncode, proc.stderr, [e.format(tmp=tmp_path) for e in case.expect])


def test_unexpected_error_is_one_line_with_a_log(tmp_path, capsys, monkeypatch):
    """A bug (not bad input) still prints one line, naming the log file that holds the full trace; exit 1."""
    import vreid.data.cli as dcli

    def boom(args):
        raise KeyError("an internal bug")

    monkeypatch.setenv("VREID_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(dcli, "_stats", boom)
    rc = vreid.cli.main(["data", "stats", "x.parquet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("vreid: error: "), err
    assert "KeyError" in lines[0] and "an internal bug" in lines[0]
    logs = list((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0]
    assert "Traceback" in logs[0].read_text() and "boom" in logs[0].read_text()


# -- errors inside Ray workers (the shared ray_cluster) -------------------------------------------------
def _tiny_run(ws, tmp: Path, manifests: Path) -> Path:
    cfg = tmp / "tiny.yaml"
    cfg.write_text(f"""
name: tiny
recipe: vehiclenet
data: {{manifests: {manifests}, image_size: [32, 32], loader_workers: 0}}
model: {{backbone: test_resnet, fc_dim: 16, dropout: 0.0}}
stage1: {{epochs: 1, batch_size: 32, lr: 0.05, milestones: [5]}}
stage2: {{epochs: 0}}
eval: {{flip: false, batch_size: 128}}
scaling: {{num_workers: 1, cpus_per_worker: 0.5, max_failures: 0}}
output: {{root: {tmp / 'out'}}}
""")
    return cfg


def test_worker_error_is_one_line_and_the_run_failed_then_a_fixed_rerun_sets_it_aside(ray_cluster, ws, tmp_path, capsys,
                                                                                      monkeypatch):
    """A corrupt image (found only when a Ray Train worker decodes it) gives one ``vreid: error:`` line naming
    the image, exit 2, the full trace in a log file and the MLflow run FAILED. Re-running the same --name
    with a fixed config then starts afresh: the failed Train run's own folder (as Ray left it) is moved
    aside and no run is resumed, so a new MLflow run gets the new config's params. (That check stops
    where `vreid train` would start training: a second Ray Train run costs ~35 CPU-seconds here, and a
    fresh run training is what every other Train test shows.)"""
    from vreid import tracking

    monkeypatch.setenv("VREID_LOG_DIR", str(tmp_path / "logs"))
    bad = manifests_copy(ws, tmp_path)
    shutil.move(bad, tmp_path / "bad_manifests")
    bad = tmp_path / "bad_manifests"
    table = pq.read_table(bad / "stage1_train.parquet")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    paths = table.column("path").to_pylist()
    paths[0] = str(corrupt)
    table = table.set_column(0, table.schema.field("path"), pa.array(paths, pa.string()))
    pq.write_table(table, bad / "stage1_train.parquet")

    rc = vreid.cli.main(["train", str(_tiny_run(ws, tmp_path, bad)), "--name", "again", "--allow-outside-root"])
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("vreid: error: ")]
    assert rc == 2 and len(line) == 1, err
    assert "corrupt.jpg" in line[0] and "cannot read image" in line[0] and "Traceback" not in err
    logs = list((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in line[0] and "Traceback" in logs[0].read_text()

    uri = tracking.default_tracking_uri(tmp_path / "out")
    runs = tracking.runs_dataframe("again", uri)
    assert list(runs["status"]) == ["FAILED"]
    assert runs["params.data.manifests"].iloc[0] == str(bad)

    from vreid.config import load_config, resolve_target
    from vreid.distributed.ray_train import storage_path_for
    from vreid.distributed.run import _resumable_run, start_mlflow_run

    fixed = load_config(str(_tiny_run(ws, tmp_path, ws["manifests"])))
    fixed.name = "again"
    resolve_target(fixed)  # as `vreid train` does before comparing configs
    storage = Path(storage_path_for(fixed))
    run_file = storage / "again.mlflow_run.json"
    assert run_file.is_file() and (storage / "again-stage1").is_dir(), sorted(p.name for p in storage.iterdir())
    assert _resumable_run(fixed, str(storage), run_file, uri) is None  # what `vreid train` asks first
    assert not run_file.exists() and not (storage / "again-stage1").exists()
    assert len(list(storage.glob("again-stage1.stale-*"))) == 1
    start_mlflow_run(fixed, "again", "again", uri)
    runs = tracking.runs_dataframe("again", uri).sort_values("start_time")
    assert list(runs["status"]) == ["FAILED", "RUNNING"]
    assert runs["params.data.manifests"].iloc[1] == str(ws["manifests"])


def test_allow_outside_root_opens_the_row(ws, tmp_path, capsys):
    """With --allow-outside-root the row is opened (and reported: /etc/passwd is no image)."""
    m = manifest_with(ws, tmp_path, "path", "/etc/passwd")
    assert vreid.cli.main(["data", "check", str(m), "--workers", "1", "--allow-outside-root"]) == 1
    assert "/etc/passwd" in capsys.readouterr().err


def test_rerunning_a_name_resumes_only_the_same_config(ws, tmp_path):
    """Same config: the run resumes. Different config: a FAILED run is set aside (new MLflow run, its Ray
    folders moved), a FINISHED one is refused naming the differing keys. Real MLflow (SQLite), no Ray."""
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.config import load_config
    from vreid.errors import ConfigError
    from vreid.distributed.run import _resumable_run, _run_params, start_mlflow_run

    cfg = load_config(ws["config"], [f"output.root={tmp_path / 'out'}"])
    cfg.name = "same"
    uri = tracking.default_tracking_uri(tmp_path / "out")
    storage = tmp_path / "ray"
    (storage / "same-stage1").mkdir(parents=True)
    run_file = storage / "same.mlflow_run.json"
    run_id = start_mlflow_run(cfg, "same", "same", uri)
    run_file.write_text(json.dumps({"run_id": run_id, "config": _run_params(cfg)}))
    client = MlflowClient(uri)

    client.set_terminated(run_id, status="FAILED")
    assert _resumable_run(cfg, str(storage), run_file, uri) == run_id  # same config: resume the failed run
    assert client.get_run(run_id).info.status == "RUNNING"

    changed = load_config(ws["config"], [f"output.root={tmp_path / 'out'}", "stage1.lr=0.5"])
    changed.name = "same"
    client.set_terminated(run_id, status="FINISHED")
    with pytest.raises(ConfigError, match=r"different config \(stage1\.lr\)"):
        _resumable_run(changed, str(storage), run_file, uri)

    client.set_terminated(run_id, status="FAILED")
    assert _resumable_run(changed, str(storage), run_file, uri) is None  # a fresh run will start
    assert not run_file.exists() and not (storage / "same-stage1").exists()
    assert len(list(storage.glob("same-stage1.stale-*"))) == 1
