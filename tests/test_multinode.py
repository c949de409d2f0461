"""Multi-node honesty: storage every node can read, and a grid that survives losing a node.

Unit checks of vreid/storage.py (URI joins, the multi-node refusal), then S3 storage on a
local S3-compatible server (moto's server mode on 127.0.0.1), and a real two-node Ray cluster on this
machine (`ray start --head` + `ray start --address`) whose second node's raylet is killed mid-grid.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vreid import storage
from vreid.errors import VreidError


def test_join_keeps_the_uri_query_at_the_end(tmp_path):
    base = "s3://bucket/ray?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(base, "demo", "selection.json") == \
        "s3://bucket/ray/demo/selection.json?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(str(tmp_path), "demo") == str(tmp_path / "demo")
    assert storage.checkpoint_uri(base, "bucket/ray/x-stage1/checkpoint_1") == \
        "s3://bucket/ray/x-stage1/checkpoint_1?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.checkpoint_uri(str(tmp_path), "/a/b") == "/a/b"


def test_local_storage_refused_on_a_multi_node_cluster(tmp_path):
    local, db = str(tmp_path / "ray"), f"sqlite:///{tmp_path}/mlflow.db"
    storage.check_cluster_storage(local, db, nodes=1)  # one node: anything goes
    with pytest.raises(VreidError, match="local folder but this Ray cluster has 2 nodes"):
        storage.check_cluster_storage(local, "http://127.0.0.1:5000", nodes=2)
    with pytest.raises(VreidError, match="local SQLite file"):
        storage.check_cluster_storage("s3://bucket/ray", db, nodes=2)
    # named shared mount: accepted
    storage.check_cluster_storage(local, db, shared=str(tmp_path), nodes=2)
    storage.check_cluster_storage("s3://bucket/ray", "http://127.0.0.1:5000", nodes=2)
    with pytest.raises(VreidError, match="not a folder"):
        storage.check_cluster_storage(local, db, shared=str(tmp_path / "nope"), nodes=2)


# -- a real two-node cluster on this machine, S3 storage on a local moto server ---------------------------
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a real HTTP S3 API) with an empty bucket ``vreid-test``."""
    import urllib.request

    from local_ray import free_port

    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=open(root / "moto.log", "w"),
                            stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((root / "moto.log").read_text())
            time.sleep(0.5)
    query = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    old = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    fs, _ = storage.filesystem(f"s3://vreid-test?{query}&allow_bucket_creation=true")
    fs.create_dir("vreid-test")
    try:
        yield {"query": query, "fs": fs}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)


def test_node_loss_warning_when_the_dashboard_does_not_answer():
    """More than one node and no dashboard answering at the recorded address: a warning naming the fix
    (the node-loss stall this repo hit); one node, or a dashboard answering /api/version: nothing."""
    import http.server
    import threading

    from local_ray import free_port

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200 if self.path == "/api/version" else 404)
            self.end_headers()
            self.wfile.write(b'{"ray_version": "x"}')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = f"127.0.0.1:{server.server_address[1]}"
        assert storage.node_loss_warning(nodes=2, url=up) is None
        assert storage.node_loss_warning(nodes=1, url=None) is None
        down = f"127.0.0.1:{free_port()}"
        warning = storage.node_loss_warning(nodes=2, url=down)
        assert warning and "2 nodes" in warning and down in warning and "--include-dashboard=true" in warning
        assert "--include-dashboard=true" in storage.node_loss_warning(nodes=3, url=None)
    finally:
        server.shutdown()


def test_storage_roundtrip_on_s3(moto_s3, tmp_path):
    uri = f"s3://vreid-test/unit?{moto_s3['query']}"
    target = storage.join(uri, "g", "selection.json")
    assert storage.read_text(target) is None
    storage.write_text(target, '{"a": 1}')
    assert storage.read_text(target) == '{"a": 1}'
    # a checkpoint folder on S3 comes back as a local folder, whole
    moto_s3["fs"].create_dir("vreid-test/unit/ck")
    for name, data in (("model_config.json", b"{}"), ("metrics.json", b"{}")):
        with moto_s3["fs"].open_output_stream(f"vreid-test/unit/ck/{name}") as f:
            f.write(data)
    os.environ["VREID_CHECKPOINT_CACHE"] = str(tmp_path / "cache")
    try:
        local = Path(storage.local_checkpoint(storage.checkpoint_uri(uri, "vreid-test/unit/ck")))
    finally:
        os.environ.pop("VREID_CHECKPOINT_CACHE")
    assert sorted(p.name for p in local.iterdir()) == ["metrics.json", "model_config.json"]
    with pytest.raises(VreidError, match="checkpoint not found"):
        storage.local_checkpoint(f"s3://vreid-test/unit/nope?{moto_s3['query']}")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def two_nodes(moto_s3, tmp_path_factory):
    """A head (2 CPUs) and a second node (4 CPUs) started with `ray start` on this machine, sharing nothing
    but loopback; the second node's raylet is found by its node-manager port. (With a one-CPU head the
    survivors had no room at all after the loss; the stall described in README happens with two too.)"""
    import tempfile

    from local_ray import free_port, free_port_flags, kill_temp_dir, pids_of

    tmp = tempfile.mkdtemp(prefix="vrm", dir="/tmp")
    ray_bin = str(Path(sys.executable).parent / "ray")
    # Ray's single-node switch (set by the loopback-only session cluster) refuses a second node
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env = {**env, **AWS_ENV, "RAY_AUTH_MODE": "disabled", "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           # a lost node is declared dead after ~5 s instead of ~30 s
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
    port = free_port()
    # every process of this cluster (Train's detached placement-group cleaner included) must connect to
    # it, not guess among the Ray instances of this shared machine ("Found multiple active Ray
    # instances": the cleaner died, failed worker groups' placement groups stayed reserved, and the
    # survivors' workers waited for ever); a loaded machine starts a worker in more than Train's 60 s
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "180"
    # the dashboard on (its own free port): Ray Train's placement-group cleaner asks the dashboard's
    # State API whether a Train controller is dead; without it the worker groups' placement groups of
    # the controllers lost with the node were never removed, were re-placed on the head, and the retried
    # trials waited for ever for the CPUs they held (README, multi-node)
    head = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={tmp}", "--disable-usage-stats",
            *[f for f in free_port_flags(head=True) if not f.startswith("--port=")]]
    nm_port = free_port()
    worker = [ray_bin, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=4",
              f"--node-manager-port={nm_port}", f"--object-manager-port={free_port()}", "--disable-usage-stats",
              *free_port_flags(head=False)]
    try:
        for cmd in (head, worker):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        raylet = [p for p in pids_of(f"--node_manager_port={nm_port}") if "raylet" in _comm(p).split(" ")[0]]
        assert len(raylet) == 1, raylet
        yield {"address": f"127.0.0.1:{port}", "env": env, "worker_raylet": raylet[0], "temp_dir": tmp}
    finally:
        kill_temp_dir(tmp)


# Opt-in with the node-loss test below (VREID_NODE_LOSS_TEST=1): a second Ray cluster of two nodes costs
# about 35 CPU-seconds to start (issue 12); the refusal's rule is checked without it above
# (test_local_storage_refused_on_a_multi_node_cluster), this is `vreid grid` counting real nodes.
@pytest.mark.skipif(os.environ.get("VREID_NODE_LOSS_TEST") != "1",
                    reason="starts a two-node cluster; VREID_NODE_LOSS_TEST=1 runs it (README, multi-node)")
def test_local_storage_is_refused_on_two_nodes(two_nodes, vehiclenet_manifests, tmp_path):
    space = _space(vehiclenet_manifests, tmp_path, storage_path=str(tmp_path / "ray"))
    out = subprocess.run([str(Path(sys.executable).parent / "vreid"), "grid", str(space), "--tracking-uri",
                          "http://127.0.0.1:9"], env={**two_nodes["env"], "RAY_ADDRESS": two_nodes["address"]},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "is a local folder but this Ray cluster has 2 nodes" in out.stderr


def _space(manifests: Path, root: Path, **output) -> Path:
    import yaml

    from conftest import REPO

    raw = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    raw["name"] = "twonode"
    raw["data"]["manifests"] = str(manifests)
    raw["output"] = {"root": str(root), **output}
    raw["stage1"]["epochs"] = 2
    raw["stage2"]["epochs"] = 1
    # trial drivers hold (almost) no CPU: a Train worker never waits behind a queued trial's driver
    raw["grid"].update({"params": {"stage1.lr+stage2.lr": [0.05, 0.08]}, "top_k": 2, "max_concurrent_trials": 2,
                        "trial_cpus": 0.01})
    raw["scaling"]["cpus_per_worker"] = 0.9
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# Opt-in (VREID_NODE_LOSS_TEST=1): about 4 minutes on this 2-core machine, which `make test` cannot
# afford (issue 12). It passes since the head runs its dashboard (the fixture above); before that the
# retried trials stalled behind the lost controllers' placement groups (README, multi-node).
@pytest.mark.skipif(os.environ.get("VREID_NODE_LOSS_TEST") != "1",
                    reason="two-node node-loss grid, ~4 min on 2 cores; VREID_NODE_LOSS_TEST=1 runs it (README, multi-node)")
def test_grid_survives_losing_a_node_with_s3_storage(two_nodes, moto_s3, mlflow_server, vehiclenet_manifests, tmp_path):
    """Two trials, part of which (trial drivers, Train controllers or workers) run on the second node
    (asserted from its raylet's child processes). That
    node's raylet is killed once both trials have logged an epoch; Tune retries the lost trial, its Train
    runs resume from their checkpoints on S3 (moto), and the grid finishes with every epoch in MLflow
    exactly once."""
    import signal

    from mlflow import MlflowClient

    from vreid.distributed.grid import load_selection
    from vreid.train.checkpoint import load_model_for_inference

    s3 = f"s3://vreid-test/ray?{moto_s3['query']}"
    space = _space(vehiclenet_manifests, tmp_path, storage_path=s3)
    log_path = tmp_path / "grid.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "vreid"), "grid", str(space), "--tracking-uri", mlflow_server,
                             "--progress-steps", "10"],
                            env={**two_nodes["env"], "RAY_ADDRESS": two_nodes["address"], "VREID_STALL_S": "120"},
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    client = MlflowClient(mlflow_server)
    killed_children = []
    try:
        while True:  # wait until both trials have logged their first epoch
            exp = client.get_experiment_by_name("twonode")
            runs = client.search_runs([exp.experiment_id], "tags.`vreid.role` = 'trial'") if exp else []
            if len(runs) == 2 and all(client.get_metric_history(r.info.run_id, "val_mAP") for r in runs):
                break
            if proc.poll() is not None:
                pytest.fail("the grid ended before the node was killed:\n" + log_path.read_text()[-4000:])
            time.sleep(1)
        raylet = two_nodes["worker_raylet"]
        killed_children = [p for p in _children(raylet) if "ray::" in _comm(p)]
        working = [p for p in killed_children if any(k in _comm(p) for k in ("ImplicitFunc", "RayTrainWorker", "TrainController"))]
        assert working, "nothing of the grid ran on the second node: " + str([_comm(p) for p in killed_children])
        os.kill(raylet, signal.SIGKILL)  # the node is lost (its workers die with their raylet)
        for pid in killed_children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        mark = len(log_path.read_text())
        while proc.poll() is None:  # a stall after the loss is reported by the grid itself: fail then
            if "no report for" in log_path.read_text()[mark:]:
                proc.kill()
                pytest.fail("the grid stalled after the node loss:\n" + log_path.read_text()[-4000:])
            time.sleep(2)
        assert proc.returncode == 0, log_path.read_text()[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    sel = load_selection(storage.join(s3, "twonode", "selection.json"))
    assert len(sel["finished"]) == 2 and not sel["failed"], sel
    for item in sel["finished"]:
        steps = sorted(m.step for m in client.get_metric_history(item["mlflow_run_id"], "val_mAP"))
        assert steps == [1, 2, 3], (item["run_name"], steps)  # Stage-I epochs 1-2, Stage-II epoch 1: each once
        assert item["checkpoint_uri"].startswith("s3://vreid-test/ray/twonode-")
        model, info = load_model_for_inference(item["checkpoint_uri"])  # read back from S3
        assert info["stage"] == "stage2"
    import pyarrow.fs as pafs

    objects = [i.path for i in moto_s3["fs"].get_file_info(pafs.FileSelector("vreid-test/ray", recursive=True))]
    assert any("/checkpoint_" in p and p.endswith("model.safetensors") for p in objects)
    assert "[vreid] trial" in log and "(2/2 done)" in log
    assert "dashboard does not answer" not in log  # the head runs its dashboard: no node-loss warning
    # the Train workers' step progress (on both nodes) reached the driver's log
    steps = re.findall(r"\[vreid\] (lr0\.0[58]) stage1 epoch \d/2 step 10/\d+ \(\d+%\): [\d.]+ images/s, epoch ETA", log)
    assert set(steps) == {"lr0.05", "lr0.08"}, steps
    print(log[-4000:])  # the node-loss run's log (pytest -s shows it)
