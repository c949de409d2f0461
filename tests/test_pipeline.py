"""The whole pipeline at a small size (what `make demo` runs), then the ensemble again as a Ray job
submitted with `ray job submit` to the session's Ray head: the same selection, manifests and chain
must give a byte-identical track2.txt.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO


# the demo at 32 x 32 (the demo: 64 x 64): the same steps at a quarter of the pixels; max_failures 1: one
# Train restart after the killed worker; a third grid point that cannot train
OVERRIDES = ["stage1.epochs=2", "stage2.epochs=2", "data.image_size=[32, 32]", "scaling.max_failures=1",
             "grid.params={'stage1.lr+stage2.lr': [0.05, 0.08, -1.0]}"]
SPACE, CHAIN = str(REPO / "search_spaces" / "demo.yaml"), str(REPO / "search_spaces" / "postprocess_demo.yaml")


@pytest.fixture(scope="module")
def demo_run(ray_cluster, mlflow_server, tmp_path_factory):
    """The demo pipeline, small, tracked by a real `mlflow server` over HTTP, interrupted once and
    resumed, with the grid's faults (tests/engine_callbacks.py::pipeline_faults): its point that cannot
    train (a negative learning rate) is reported failed before the grid starts, never a Tune trial; in
    trial lr0.08 a worker is killed after its first epoch (Ray Train restarts it from the checkpoint);
    trial lr0.05 holds after its Stage-II epoch 1 until lr0.08 has finished, and then the demo's driver
    (a process of its own, as `vreid demo` is) gets SIGINT. The demo is then resumed in this process
    (`run_demo(resume=True)`, what `vreid demo --resume` runs): its data is kept, lr0.08 is not run
    again, nor is the camera model (it trained beside the grid and finished before the interrupt),
    lr0.05 continues its Stage-II from its epoch-1 checkpoint, then the ensemble and the report. (Held in Stage-II, not Stage-I: the resumed trial then has one Ray Train run
    left, not two, on this test's critical path.)
    (One grid for the faults, the interrupt and the pipeline: each Tune grid costs trial actors, Train
    controllers, workers and Train's helper actors, ~40 CPU-seconds per trial on this 2-core machine.)"""
    import os
    import signal
    import sys

    from engine_callbacks import by_value, pipeline_faults
    from vreid.demo import run_demo

    by_value()
    tmp = tmp_path_factory.mktemp("pipeline")
    out, faults = tmp / "demo", tmp / "faults"
    driver = tmp / "driver.py"
    driver.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from engine_callbacks import by_value, pipeline_faults\n"
        "from vreid.demo import run_demo\n"
        "by_value()\n"
        f"run_demo({str(out)!r}, {SPACE!r}, {CHAIN!r}, overrides={OVERRIDES!r}, "
        f"extra_config={{'callbacks': pipeline_faults({str(faults)!r})}})\n")
    env = {**ray_cluster["env"], "RAY_ADDRESS": ray_cluster["address"], "MLFLOW_TRACKING_URI": mlflow_server}
    log_path = tmp / "driver.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(driver)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    camera_done = out / "camera_model" / "ray" / "demo_camera-stage1" / "vreid_stage.json"  # it trains beside the grid
    while not ((faults / "hold" / "held").exists() and "finished (1/2 done)" in log_path.read_text() and camera_done.exists()):
        if proc.poll() is not None:
            pytest.fail("the demo's driver exited early:\n" + log_path.read_text()[-4000:])
        if time.time() > deadline:
            proc.kill()
            pytest.fail("lr0.05 did not hold, or lr0.08 or the camera model did not finish:\n" + log_path.read_text()[-4000:])
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    interrupted = {"returncode": proc.wait(timeout=180), "log": log_path.read_text(),
                   "selection_written": (out / "ray" / "demo" / "selection.json").exists(),
                   "epochs": (faults / "hold" / "epochs").read_text().splitlines()}
    (faults / "hold" / "release").write_text("")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    try:
        result = run_demo(out, SPACE, CHAIN, overrides=OVERRIDES, resume=True,
                          extra_config={"callbacks": pipeline_faults(str(faults))})
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    result["faults"] = faults
    result["interrupted"] = interrupted
    return result


def rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path)).metadata.num_rows


def test_pipeline_outputs_exist_and_parse(demo_run):
    from vreid.ensemble.submission import validate_track2

    out = Path(demo_run["out"])
    man = out / "manifests"
    for name in ("stage1_train", "stage2_train", "val_query", "val_gallery", "test_query", "test_gallery"):
        assert rows(man / f"{name}.parquet") > 0
    for fmt in ("veri776", "cityflow", "vehicleid", "veriwild", "compcars"):
        assert rows(out / "index" / f"{fmt}.parquet") > 0
    sel = json.loads(Path(demo_run["selection"]["path"]).read_text())
    assert len(sel["selected"]) == 2 and all(Path(s["checkpoint_uri"].removeprefix("file://")).is_dir() for s in sel["selected"])
    assert demo_run["tracking_uri"].startswith("http://127.0.0.1:")
    track2 = Path(demo_run["submission"])
    validate_track2(track2, rows(man / "test_query.parquet"), rows(man / "test_gallery.parquet"))
    prov = json.loads(track2.with_name("track2.provenance.json").read_text())
    assert prov["git_commit"] and len(prov["models"]) == 2 and all(m["mlflow_run_id"] for m in prov["models"])
    tables = json.loads((out / "ensemble" / "tables.json").read_text())
    assert len(tables["single_vs_ensemble"]) == 3
    assert [r["step"] for r in tables["postprocess"]][0] == "base"
    assert any(r["step"].startswith("re_ranking") for r in tables["postprocess"])
    report = (out / "report.md").read_text()
    for heading in ("Stage-I vs Stage-II", "ensemble", "Post-processing", "fficiency"):
        assert heading.lower() in report.lower(), heading
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 5, pngs
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert (out / "compare.md").read_text().count("|") > 10


def test_grid_faults_and_mlflow_over_http(demo_run):
    """A worker killed mid-trial resumes from its checkpoint (each epoch in MLflow once); the grid point
    that cannot train is reported failed with its error (and its FAILED run); selection comes from the
    others."""
    from mlflow import MlflowClient

    from vreid import tracking

    sel = demo_run["selection"]
    uri = demo_run["tracking_uri"]
    assert (demo_run["faults"] / "fault_injected").exists(), "no worker was killed"
    assert len(sel["finished"]) == 2 and len(sel["failed"]) == 1
    assert "stage1.lr" in sel["failed"][0]["error"]
    client = MlflowClient(uri)
    for item in sel["finished"]:
        steps = sorted(m.step for m in client.get_metric_history(item["mlflow_run_id"], "val_mAP"))
        assert steps == [1, 2, 3, 4], steps  # Stage-I epochs 1-2, Stage-II epochs 1-2, each once
        assert sorted(m.step for m in client.get_metric_history(item["mlflow_run_id"], "stage1/loss")) == [1, 2]
        run = client.get_run(item["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["vreid.selected"] == "true"
        assert run.data.tags["git_commit"] and run.data.tags["manifest.stage1_train"] != "none"
        assert run.data.tags["mlflow.parentRunId"] and run.data.params["model.backbone"] == "test_resnet"
    bad = client.get_run(sel["failed"][0]["mlflow_run_id"])
    assert bad.info.status == "FAILED" and "'stage1.lr' must be > 0" in bad.data.tags["vreid.error"]
    assert bad.info.run_name == "lr-1" and bad.data.tags["mlflow.parentRunId"] == sel["parent_run_id"]
    table = tracking.compare_table("demo", uri)
    assert len(table) == 3 and sorted(table["status"]) == ["FAILED", "FINISHED", "FINISHED"]
    assert table.iloc[0]["selected"] and table.iloc[0]["val_mAP"] == pytest.approx(sel["selected"][0]["metrics"]["val_mAP"])
    assert table.iloc[0]["params_m"] > 0


def test_interrupted_demo_stops_and_resumes_where_it_stopped(demo_run):
    """The demo's driver, interrupted while lr0.05 held after its Stage-II epoch 1 and lr0.08 had
    finished, stops there: it exits non-zero, says how to continue, and writes no selection (Ray Tune
    returns after a SIGINT; selecting from the trials that happened to finish would hand the ensemble a
    partial grid). Resumed, lr0.05 keeps its finished Stage-I and trains its Stage-II epoch 2 from the
    epoch-1 checkpoint (nothing is trained again); its epochs and lr0.08's are each logged once
    (test_grid_faults_and_mlflow_over_http)."""
    it = demo_run["interrupted"]
    assert it["returncode"] != 0 and not it["selection_written"], it["log"][-3000:]
    assert "grid 'demo' interrupted with 1 of 2 trial(s) unfinished" in it["log"] and "--resume" in it["log"]
    assert it["epochs"] == ["stage1 1", "stage1 2", "stage2 1"]
    # the camera model finished beside the grid before the interrupt: resumed, it was not trained again
    from mlflow import MlflowClient

    client = MlflowClient(demo_run["tracking_uri"])
    camera_runs = client.search_runs([client.get_experiment_by_name("demo_camera").experiment_id])
    assert len(camera_runs) == 1 and camera_runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(camera_runs[0].info.run_id, "stage1/loss")) == [1, 2, 3]
    assert (demo_run["faults"] / "hold" / "epochs").read_text().splitlines() == ["stage1 1", "stage1 2", "stage2 1", "stage2 2"]


def test_mlflow_is_where_runs_are_compared_and_handed_on(demo_run):
    """Run names from the swept values, swept keys first, the grid's summary on its parent run (and no
    base values for the swept keys there), each trial's model loadable with mlflow.pytorch.load_model and
    giving the checkpoint's features, the selected models in the Model Registry with aliases, the
    ensemble run nested under its grid, manifests as dataset inputs, MLflow's own source/git fields."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow import MlflowClient

    from vreid import tracking
    from vreid.distributed.grid import registry_name
    from vreid.train.checkpoint import load_model_for_inference

    sel = demo_run["selection"]
    uri = demo_run["tracking_uri"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    # runs named by their swept values; the swept keys are the first columns of the comparison
    names = sorted(item["run_name"] for item in sel["finished"])
    assert names == ["lr0.05", "lr0.08"], names
    # the experiment opens on its runs table, and a saved view shows the trials with the swept keys
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.vreid-trials"])
    assert view["selectedColumns"][0] == "params.`grid.stage1.lr and stage2.lr`"
    assert view["orderByKey"] == "metrics.`val_mAP`" and "vreid.role" in view["searchFilter"]
    table = tracking.compare_table("demo", uri)
    assert list(table.columns[:3]) == ["run", "trial", "stage1.lr and stage2.lr"]
    assert set(table["run"]) == {"lr0.05", "lr0.08", "lr-1"}
    # the parent run: summary metrics and the selection table; swept keys only as the grid's lists
    parent = client.get_run(sel["parent_run_id"])
    assert parent.data.tags["vreid.role"] == "grid" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_mAP"] == pytest.approx(sel["selected"][0]["metrics"]["val_mAP"])
    assert parent.data.metrics["trials_finished"] == 2 and parent.data.metrics["trials_failed"] == 1
    for key in ("stage1.lr", "stage2.lr"):
        assert key not in parent.data.params, key
    assert parent.data.params["stage1.batch_size"] == "32"  # not swept: the base value is what every trial ran
    assert parent.data.params["grid.stage1.lr and stage2.lr"] == "[0.05, 0.08, -1.0]"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "selection")}
    assert {"selection/selection_table.md", "selection/selection.json"} <= artifacts
    table_md = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="selection/selection_table.md",
                                                        tracking_uri=uri)).read_text()
    assert all(item["run_name"] in table_md for item in sel["finished"])
    assert "lr0.05" in parent.data.tags["mlflow.note.content"]
    # each finished trial's model comes back from MLflow and gives the checkpoint's features
    tracking.configure(uri)
    x = torch.rand(3, 3, 32, 32)
    for item in sel["finished"]:
        run = client.get_run(item["mlflow_run_id"])
        assert run.info.run_name == item["run_name"]
        assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git_commit"] != "unknown"
        assert run.data.tags["mlflow.source.name"] and run.data.tags["mlflow.note.content"]
        assert {d.dataset.name for d in run.inputs.dataset_inputs} >= {"stage1_train", "stage2_train", "val_query", "val_gallery"}
        loaded = mlflow.pytorch.load_model(item["model_uri"])
        reference, _ = load_model_for_inference(item["checkpoint_uri"])
        with torch.no_grad():
            got, want = loaded(x), reference.extract(x)
        assert got.shape == (3, 128) and torch.allclose(got, want, atol=1e-5)
        info = mlflow.models.get_model_info(item["model_uri"])
        assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, 32, 32]
    # the registry: champion = rank1 = the best selected trial
    name = registry_name("demo")
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == client.get_model_version_by_alias(name, "rank1").version == sel["selected"][0]["model_version"]
    assert client.get_model_version_by_alias(name, "rank2").version == sel["selected"][1]["model_version"]
    loaded = mlflow.pytorch.load_model(f"models:/{name}@champion")
    with torch.no_grad():
        assert loaded(x).shape == (3, 128)
    # the ensemble run: nested under the grid, its manifests as inputs
    ens = client.search_runs([exp.experiment_id], "tags.`vreid.role` = 'ensemble'")
    assert len(ens) == 1 and ens[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert {d.dataset.name for d in ens[0].inputs.dataset_inputs} >= {"test_query", "test_gallery"}


def test_readme_python_api(demo_run, tmp_path, monkeypatch, capsys):
    """README's Python API block, run verbatim from a folder whose outputs/demo is this test's demo: it
    prints the CityFlow protocol row of the best trial, whose mAP is the val_mAP the trial reported."""
    import re

    from local_ray import readme_block

    code = readme_block("tests/test_pipeline.py::test_readme_python_api")
    assert len(code.strip().splitlines()) == 5
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "demo").symlink_to(demo_run["out"])
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert "'protocol': 'cityflow'" in printed, printed
    m_ap = float(re.search(r"'mAP': (?:np\.float\d+\()?([0-9.e+-]+)", printed).group(1))
    assert m_ap == pytest.approx(demo_run["selection"]["selected"][0]["metrics"]["val_mAP"], abs=1e-6)


def test_readme_ray_job_submit(demo_run, tmp_path):
    """README's "Ray jobs on a local Ray cluster" block, run as written on a fresh token-auth head:
    its `ray start --head` line (plus free ports and a temp dir of its own: this machine is shared), its
    `ray get-auth-token` and `ray job submit` lines verbatim, with the venv's bin first on PATH (README's
    `. .venv/bin/activate`) and `DEMO` set to this test's demo output. The job's track2.txt must equal
    the in-process ensemble's byte for byte, and the job logs its run to the `--tracking-uri` it got."""
    import os
    import sys

    from mlflow import MlflowClient

    from local_ray import exports, free_port_flags, kill_temp_dir, readme_block, shell_commands
    from vreid.ensemble.submission import validate_track2

    commands = shell_commands(readme_block("tests/test_pipeline.py::test_readme_ray_job_submit"))
    start = [c for c in commands if c.startswith("ray start --head")]
    token = [c for c in commands if c.startswith("ray get-auth-token")]
    submit = [c for c in commands if c.startswith("ray job submit")]
    assert len(start) == len(token) == len(submit) == 1, commands
    assert exports(commands)["RAY_AUTH_MODE"] == "token"

    tmp = tempfile.mkdtemp(prefix="vrj", dir="/tmp")  # socket paths must stay under 107 bytes
    # the head's own token file instead of ~/.ray/auth_token (shared by everybody on this machine)
    Path(tmp, "auth_token").write_text(uuid.uuid4().hex)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "PYTHONPATH")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["RAY_AUTH_TOKEN_PATH"] = str(Path(tmp, "auth_token"))
    flags = free_port_flags(head=True)
    dashboard_port = next(f.split("=")[1] for f in flags if f.startswith("--dashboard-port="))

    def sh(command: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=REPO, env={**env, **extra}, capture_output=True,
                              text=True, timeout=900)

    try:
        assert sh(token[0]).returncode == 0
        # a head that finds a token turns token auth on by itself (no RAY_AUTH_MODE needed)
        started = sh(" ".join([start[0], *flags, f"--temp-dir={tmp}/ray", "--disable-usage-stats"]))
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        address = f"http://127.0.0.1:{dashboard_port}"
        unauth = sh("ray job list", RAY_API_SERVER_ADDRESS=address)
        assert unauth.returncode != 0 and "AuthenticationError" in unauth.stderr, "the head did not enable token auth"
        job_env = {**exports(commands), "RAY_API_SERVER_ADDRESS": address, "DEMO": demo_run["out"]}
        for _ in range(40):  # the head's job agent may still be starting
            proc = sh(submit[0], **job_env)
            if proc.returncode == 0 or "No available agent" not in proc.stdout + proc.stderr:
                break
            time.sleep(3)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-6000:]
        assert "succeeded" in log.lower()
        assert "[vreid] ensemble: extracted" in log, "no extraction progress in the job's log"
    finally:
        kill_temp_dir(tmp)

    out = Path(demo_run["out"])
    man = out / "manifests"
    job_out = out / "job_ensemble"
    validate_track2(job_out / "track2.txt", rows(man / "test_query.parquet"), rows(man / "test_gallery.parquet"))
    assert (job_out / "track2.txt").read_bytes() == Path(demo_run["submission"]).read_bytes()
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("demo")
    runs = client.search_runs([exp.experiment_id], "tags.`vreid.role` = 'ensemble'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_ensemble_rejects_bad_input_before_work(demo_run, tmp_path):
    from vreid.cli import main

    out = Path(demo_run["out"])
    sel = demo_run["selection"]["path"]
    target = tmp_path / "ens"
    # a gallery smaller than 100
    import pandas as pd

    from vreid.data.schema import read_manifest, write_manifest

    g = read_manifest(out / "manifests" / "test_gallery.parquet")
    write_manifest(g.head(50), tmp_path / "small_gallery.parquet")
    rc = main(["ensemble", "--selection", sel, "--query", str(out / "manifests" / "test_query.parquet"),
               "--gallery", str(tmp_path / "small_gallery.parquet"), "--out", str(target)])
    assert rc == 2 and not (target / "track2.txt").exists()
    # a missing checkpoint
    rc = main(["ensemble", "--checkpoint", str(tmp_path / "nope"), "--manifests", str(out / "manifests"), "--out", str(target)])
    assert rc == 2 and not (target / "track2.txt").exists()
    # a manifest without the expected columns
    pd.DataFrame({"path": ["x.jpg"]}).to_parquet(tmp_path / "bad.parquet")
    rc = main(["ensemble", "--selection", sel, "--query", str(tmp_path / "bad.parquet"),
               "--gallery", str(out / "manifests" / "test_gallery.parquet"), "--out", str(target)])
    assert rc == 2 and not (target / "track2.txt").exists()
