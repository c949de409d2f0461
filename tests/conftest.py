"""Shared fixtures. One local Ray cluster per test session (started lazily by the tests that need it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests choose their own stores
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (4 logical CPUs on this 2-core machine, no dashboard)."""
    import ray

    from vreid.distributed.ray_train import init_ray

    # socket paths must stay under 107 bytes: a short temp dir
    tmp = tempfile.mkdtemp(prefix="vr", dir="/tmp")
    os.environ["VREID_RAY_TMPDIR"] = tmp
    init_ray(num_cpus=4, _temp_dir=tmp, log_to_driver=False)
    yield ray
    ray.shutdown()


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
