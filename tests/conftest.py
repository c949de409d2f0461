"""Shared fixtures. One local Ray cluster per test session (started lazily by the tests that need it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import subprocess
import sys
import time
import urllib.request

import pytest

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's preemption watcher (an extra actor per Train run that polls for draining nodes, i.e. spot
# instances being reclaimed) off on the test clusters: no node is ever drained here, and each watcher is
# one more process starting on a 2-core machine (about 2 CPU-seconds per Train run). Ray Train hands
# this variable on from the driver to its controllers.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their own stores
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray head on 127.0.0.1 (`ray start --head`, token auth off for this loopback-only test
    cluster), 4 logical CPUs on this 2-core machine; this session's tests attach to it with
    ``ray.init(address=...)``. No dashboard: no test submits a job to this head (README's `ray job
    submit` runs on a head of its own, tests/test_pipeline.py), and an idle dashboard and its agent cost
    about 2 CPU-seconds a minute here, per xdist worker. (A multi-node cluster needs it: the two-node
    fixture of tests/test_multinode.py runs one.)"""
    import subprocess
    import sys

    import ray

    from local_ray import free_port_flags, kill_temp_dir

    tmp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # socket paths must stay under 107 bytes
    # every listening port chosen free: a default port held by another Ray instance on this machine
    # would leave the head without a job agent ("No available agent to submit job")
    ports = free_port_flags(head=True)
    port = next(f.split("=")[1] for f in ports if f.startswith("--port="))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "RAY_AUTH_MODE": "disabled"}
    # loopback only: on Linux Ray turns --node-ip-address=127.0.0.1 into the machine's address (and its
    # servers then listen on every interface) unless its single-node switch is off for the head
    # (the drivers need it too: else they rewrite the 127.0.0.1 of the address and miss the head)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    head_env = env
    cmd = [os.path.join(bin_dir, "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=false",
           "--num-cpus=4", f"--temp-dir={tmp}", "--disable-usage-stats", *ports]
    subprocess.run(cmd, env=head_env, check=True, capture_output=True, text=True, timeout=180)
    address = f"127.0.0.1:{port}"
    try:
        ray.init(address=address, log_to_driver=False)
        yield {"address": address, "temp_dir": tmp, "env": env}
    finally:
        ray.shutdown()
        # only the processes of *this* head (and their children), never `ray stop`, which would stop
        # every Ray instance on the machine
        kill_temp_dir(tmp)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store and a local artifact root."""
    from local_ray import free_port

    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    # MLflow 3's server job execution (its GenAI jobs: a job runner and a Huey consumer per job type, 14
    # processes importing mlflow, about 70 CPU-seconds here) is off: vreid submits no server jobs
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("mlflow server exited:\n" + (root / "server.log").read_text()[-3000:])
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The five generated datasets (small), written once per session by the real generator."""
    from vreid.cli import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(out), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="session")
def vehiclenet_manifests(demo_data, tmp_path_factory):
    """VehicleNet manifests (target CityFlow) built from the generated data by the real merge."""
    from vreid.cli import main

    out = tmp_path_factory.mktemp("manifests")
    args = ["data", "vehiclenet"]
    for src in ("cityflow", "veri776", "compcars", "vehicleid"):
        args += ["--source", f"{src}={demo_data / src}"]
    args += ["--target", "cityflow", "--out", str(out)]
    assert main(args) == 0
    return out


# --- test tiers -------------------------------------------------------------------------------------
# `make test-fast` (pytest -m "not integration") runs the unit tier: maths, readers, configs, losses,
# samplers, selection. A test is integration when it uses a service fixture (a Ray head, an MLflow or
# S3 server, a two-node cluster) or is marked so by hand (a training run, vreid processes spawned or
# killed, a Mask R-CNN forward); the fast tier also fails any test that starts Ray by itself, so a
# test that needs Ray cannot hide in it.
_SERVICE_FIXTURES = {"ray_cluster", "mlflow_server", "two_nodes", "moto_s3"}


# `make test` hands whole files to two pytest-xdist workers in this order (`--dist loadfile
# --no-loadscope-reorder`): the longest first, so the short ones fill both workers' ends
_LONGEST_FIRST = ("test_pipeline.py", "test_train.py", "test_atomic_outputs.py", "test_bad_input.py",
                  "test_multinode.py", "test_eval_cli.py", "test_detect.py", "test_sockets.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if os.environ.get("VREID_TEST_TIER") == "fast" and "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
            pytest.fail(f"{item.nodeid} started Ray in the fast tier: mark it @pytest.mark.integration")
