"""Outputs are atomic, as files and as sets, and keep sane modes.

Kill tests: ``data index`` and ``data vehiclenet`` are killed with SIGKILL at random moments and right
after each rename into place (``VREID_KILL_AFTER_RENAME``), ``ensemble`` (a Ray job per try) after its
last file rename; the output is then always the old set or the new set, whole, and
the next run removes the dead run's temporaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vreid.io import atomic_dir, atomic_path, atomic_write_text, clean_stale

REPO = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "data"
VREID = [sys.executable, "-m", "vreid.cli"]


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``root`` (the set as a reader sees it)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def siblings(target: Path) -> list[str]:
    """Temporaries left beside ``target`` (names starting with ``.<target name>.``)."""
    return sorted(n for n in os.listdir(target.parent) if n.startswith(f".{target.name}."))


def run(argv: list[str], env: dict | None = None, cwd: Path | None = None, kill_after: float | None = None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), **(env or {})}
    proc = subprocess.Popen(VREID + argv, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


# -- data vehiclenet: the seven files are one set ------------------------------------------------------
def vn_args(out: Path, sources: list[str]) -> list[str]:
    args = ["data", "vehiclenet", "--target", "cityflow", "--out", str(out)]
    for s in sources:
        args += ["--source", f"{s}={FIX / s}"]
    return args


OLD_SOURCES, NEW_SOURCES = ["cityflow"], ["cityflow", "veri776", "vehicleid"]


@pytest.fixture(scope="module")
def vn_sets(tmp_path_factory):
    """The old and the new set, each written by an undisturbed run, and how long a run takes."""
    root = tmp_path_factory.mktemp("vn_sets")
    t0 = time.time()
    assert run(vn_args(root / "old", OLD_SOURCES))[0] == 0
    took = time.time() - t0
    assert run(vn_args(root / "new", NEW_SOURCES))[0] == 0
    old, new = tree(root / "old"), tree(root / "new")
    assert old.keys() == new.keys() and old != new and len(old) == 7
    return {"root": root, "old": old, "new": new, "seconds": took}


def _fresh_old(vn_sets, tmp: Path) -> Path:
    out = tmp / "manifests"
    shutil.copytree(vn_sets["root"] / "old", out)
    return out


@pytest.mark.parametrize("kill_at", range(1, 9))  # 7 file renames inside the temporary folder, then the swap
@pytest.mark.integration  # vreid processes, killed
def test_vehiclenet_killed_after_each_rename(vn_sets, tmp_path, kill_at):
    out = _fresh_old(vn_sets, tmp_path)
    rc, _, _ = run(vn_args(out, NEW_SOURCES), env={"VREID_KILL_AFTER_RENAME": str(kill_at)})
    assert rc == -signal.SIGKILL
    assert tree(out) == (vn_sets["new"] if kill_at == 8 else vn_sets["old"])
    # the next run cleans the dead run's temporary folder and writes the new set
    assert run(vn_args(out, NEW_SOURCES))[0] == 0
    assert tree(out) == vn_sets["new"] and siblings(out) == []


@pytest.mark.parametrize("kill_at", [1, 2])  # without renameat2: old set moved aside, then the new set moved in
@pytest.mark.integration  # vreid processes, killed
def test_vehiclenet_fallback_swap_killed_between_renames(vn_sets, tmp_path, kill_at):
    out = _fresh_old(vn_sets, tmp_path)
    env = {"VREID_NO_RENAME_EXCHANGE": "1", "VREID_KILL_AFTER_RENAME": str(7 + kill_at)}
    assert run(vn_args(out, NEW_SOURCES), env=env)[0] == -signal.SIGKILL
    if kill_at == 1:  # killed with the old set aside and the new one not yet in: readers see no folder...
        assert not out.exists()
    # ...until the next start puts the old set back (recover_set) before its own work
    assert run(["data", "vehiclenet", "--target", "cityflow", "--out", str(out), "--source", "cityflow=/nonexistent"]
               )[0] == 2
    assert tree(out) == (vn_sets["new"] if kill_at == 2 else vn_sets["old"])


@pytest.mark.integration  # vreid processes, killed
def test_vehiclenet_killed_at_random_moments(vn_sets, tmp_path):
    rng = random.Random(0)
    out = _fresh_old(vn_sets, tmp_path)
    seen = {"old": 0, "new": 0}
    for i in range(6):
        rc, _, _ = run(vn_args(out, NEW_SOURCES if i % 2 == 0 else OLD_SOURCES),
                       kill_after=rng.uniform(0.5, vn_sets["seconds"] * 1.1))
        state = tree(out)
        assert state in (vn_sets["old"], vn_sets["new"]), f"run {i} (rc {rc}) left a mixed set"
        seen["old" if state == vn_sets["old"] else "new"] += 1
    assert run(vn_args(out, NEW_SOURCES))[0] == 0
    assert tree(out) == vn_sets["new"] and siblings(out) == []


# -- data index: one file ---------------------------------------------------------------------------------------
@pytest.mark.integration  # vreid processes, killed
def test_index_killed_after_rename_and_at_random(tmp_path):
    out = tmp_path / "m.parquet"
    assert run(["data", "index", "veri776", str(FIX / "veri776"), "--out", str(out)])[0] == 0
    new = out.read_bytes()
    old = b"old manifest"
    out.write_bytes(old)
    assert run(["data", "index", "veri776", str(FIX / "veri776"), "--out", str(out)],
               env={"VREID_KILL_AFTER_RENAME": "1"})[0] == -signal.SIGKILL
    assert out.read_bytes() == new
    rng = random.Random(1)
    for _ in range(4):
        out.write_bytes(old)
        run(["data", "index", "veri776", str(FIX / "veri776"), "--out", str(out)], kill_after=rng.uniform(0.3, 3.0))
        assert out.read_bytes() in (old, new)
    assert run(["data", "index", "veri776", str(FIX / "veri776"), "--out", str(out)])[0] == 0
    assert siblings(out) == []  # the killed runs' temporary files are gone


# -- ensemble: track2.txt, its provenance, tables.json and the feature arrays are one set -----------------
@pytest.fixture(scope="module")
def ens_inputs(vehiclenet_manifests, tmp_path_factory):
    import torch

    from vreid.models import ReidModel
    from vreid.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ens_inputs")
    kwargs = {"backbone_name": "test_resnet", "head": "vehiclenet", "num_classes": 3, "fc_dim": 16, "dropout": 0.0}
    torch.manual_seed(0)
    save_checkpoint(root / "ckpt", export_model=ReidModel(**kwargs),
                    model_config={**kwargs, "pretrained": False, "image_size": [32, 32], "recipe": "vehiclenet",
                                  "stage": "stage2"}, state={"epoch": torch.tensor(0)}, metrics={})
    from vreid.data.schema import read_manifest, write_manifest

    small = root / "manifests"  # 4 queries, 100 gallery images: the swap is what is tested, not the scale
    for name, n in (("test_query", 4), ("test_gallery", 100)):
        df = read_manifest(vehiclenet_manifests / f"{name}.parquet")
        write_manifest(df.head(n).reset_index(drop=True), small / f"{name}.parquet")
    return {"ckpt": root / "ckpt", "manifests": small}


def _old_ensemble(out: Path) -> dict[str, str]:
    (out / "test").mkdir(parents=True)
    (out / "track2.txt").write_text("old\n")
    (out / "track2.provenance.json").write_text('{"models": "old"}')
    (out / "tables.json").write_text('{"models": "old"}')
    (out / "test" / "query_features.npy").write_bytes(b"old")
    return tree(out)


def _is_new_ensemble(out: Path, ckpt: Path) -> bool:
    names = set(tree(out))
    want = {"track2.txt", "track2.provenance.json", "tables.json", "test/query_features.npy",
            "test/gallery_features.npy"}
    if names != want:
        return False
    prov = json.loads((out / "track2.provenance.json").read_text())
    tables = json.loads((out / "tables.json").read_text())
    return (prov["models"][0]["checkpoint"] == str(ckpt) and tables["models"][0]["checkpoint"] == str(ckpt)
            and len((out / "track2.txt").read_text().splitlines()) == prov["n_queries"])


def test_ensemble_killed_after_its_renames(ray_cluster, ens_inputs, tmp_path, monkeypatch):
    """Killed after its last file rename inside the temporary folder (track2.txt, its provenance and
    tables.json all renamed, the folder not yet swapped), the old set stays whole: nothing of the new set
    is visible before the swap. An undisturbed run after that kill (in this process, attached to the
    same cluster: one vreid process start fewer) replaces the set and leaves no stale temporaries. (The
    swap itself, and kills at random moments, are tried on the index and VehicleNet sets above: the same
    `io.atomic_dir` swap, without a Ray job per try.)"""
    from vreid.cli import main

    m = ens_inputs["manifests"]
    args = ["ensemble", "--checkpoint", str(ens_inputs["ckpt"]), "--query", str(m / "test_query.parquet"),
            "--gallery", str(m / "test_gallery.parquet"), "--scales", "1", "--no-flip", "--batch-size", "256"]
    env = {"RAY_ADDRESS": ray_cluster["address"], "RAY_AUTH_MODE": "disabled"}
    # renames: track2.txt (1), its provenance (2), tables.json (3), the folder swap (4)
    out = tmp_path / "ens"
    old = _old_ensemble(out)
    rc, _, err = run(args + ["--out", str(out)], env={**env, "VREID_KILL_AFTER_RENAME": "3"}, cwd=tmp_path)
    assert rc == -signal.SIGKILL, err[-2000:]
    assert tree(out) == old, "the new set was visible before its swap"
    assert siblings(out), "the kill left no temporary behind: nothing to clean up"
    monkeypatch.chdir(tmp_path)
    assert main(args + ["--out", str(out)]) == 0
    assert _is_new_ensemble(out, ens_inputs["ckpt"]) and siblings(out) == []  # stale temporaries and _work gone


def test_set_refuses_a_folder_holding_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("not ours")
    rc, _, err = run(vn_args(out, OLD_SOURCES))
    assert rc == 2 and "thesis.tex" in err and (out / "thesis.tex").read_text() == "not ours"


# -- modes ---------------------------------------------------------------------------------------------------
def test_replaced_file_keeps_its_mode_and_new_files_follow_the_umask(tmp_path):
    target = tmp_path / "m.parquet"
    assert run(["data", "index", "veri776", str(FIX / "veri776"), "--out", str(target)])[0] == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    target.chmod(0o640)
    assert run(["data", "index", "veri776", str(FIX / "veri776"), "--out", str(target)])[0] == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    # a process with umask 002 (a shared group folder) gets group-writable files
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "t.txt", "x")
        with atomic_dir(tmp_path / "set") as d:
            atomic_write_text(d / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.txt").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "set").stat().st_mode) == 0o775
    assert stat.S_IMODE((tmp_path / "set" / "a.txt").stat().st_mode) == 0o664


@pytest.mark.integration  # vreid processes, killed
def test_vehiclenet_and_track2_modes(vn_sets, tmp_path):
    for p in (vn_sets["root"] / "new").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_umask(), p
    from vreid.ensemble.submission import write_track2

    import numpy as np

    out = tmp_path / "track2.txt"
    write_track2(np.tile(np.arange(100), (2, 1)), ["1.jpg", "2.jpg"], [f"{i:06d}.jpg" for i in range(1, 101)], out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()  # was -rw------- (mkstemp's mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_clean_stale_leaves_live_writers_alone(tmp_path):
    target = tmp_path / "f.txt"
    live = tmp_path / f".f.txt.{os.getpid()}.0123abcd.tmp"
    dead_pid = 2 ** 22 - 7  # above this machine's pid_max
    dead = tmp_path / f".f.txt.{dead_pid}.0123abcd.tmp"
    live.write_text("")
    dead.write_text("")
    assert clean_stale(target) == [dead]
    assert live.exists() and not dead.exists()
    with atomic_path(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"
