"""ray_cluster.yaml against what vreid itself needs from it (Ray's own schema is Ray's to test):
the shared mount holds every path the cluster search spaces use and is named to vreid's multi-node
check, the MLflow server the head starts is the one every node is pointed at, the repo is installed
where it is synced, and the AI City grid fits the cluster at once as README says.

Instance specs are AWS's published figures (https://aws.amazon.com/ec2/instance-types/), typed here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from vreid.config import load_config
from vreid.distributed.grid import grid_size

AWS_SPECS = {"m5.2xlarge": {"CPU": 8, "GPU": 0}, "g5.12xlarge": {"CPU": 48, "GPU": 4}}
CLUSTER_SPACES = ("aicity2020.yaml", "veri776_vehiclenet.yaml", "ssbver_veri776.yaml")


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def _commands(cluster, *keys):
    return "\n".join(c for k in keys for c in cluster.get(k) or [])


def _mount(cluster) -> str:
    found = re.search(r"mount -t nfs4 .* (/\S+)\)", _commands(cluster, "initialization_commands"))
    assert found, "initialization_commands mount no NFS share"
    return found.group(1)


def test_cluster_spaces_keep_everything_on_the_shared_mount_and_name_it(cluster):
    mount = _mount(cluster)
    setup = _commands(cluster, "setup_commands")
    assert f"export VREID_SHARED_STORAGE={mount}" in setup, "vreid's multi-node check would refuse the cluster's storage"
    for name in CLUSTER_SPACES:
        cfg = load_config(REPO / "search_spaces" / name)
        for what, path in (("output.storage_path", cfg.output.storage_path), ("output.root", cfg.output.root)):
            assert path and Path(path).is_relative_to(mount), f"{name}: {what} {path} is not on {mount}"


def test_every_node_points_at_the_mlflow_server_the_head_starts(cluster):
    head = _commands(cluster, "head_setup_commands")
    served = re.search(r"mlflow server .*--port (\d+).*--backend-store-uri sqlite:///(\S+)", head)
    assert served, "the head does not start an mlflow server"
    exported = re.search(r"MLFLOW_TRACKING_URI=http://(?:\$\(.*?\)|[^\s:]+):(\d+)", _commands(cluster, "setup_commands"))
    assert exported and exported.group(1) == served.group(1)
    assert Path(served.group(2)).is_relative_to(_mount(cluster)), "the MLflow database is not on shared storage"


def test_the_synced_repo_is_what_gets_installed(cluster):
    (target, source), = cluster["file_mounts"].items()
    assert source == "." and f"cd {target} && python3 -m pip install -e ." in _commands(cluster, "setup_commands")
    for big in ("**/.git", "**/.venv", "**/outputs", "**/mlruns"):
        assert big in cluster["rsync_exclude"]
    runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert {".git", ".venv", "outputs", "mlruns"} <= set(runtime_env["excludes"])


def test_node_resources_match_the_instances_and_the_aicity_grid_fits_at_once(cluster):
    types = cluster["available_node_types"]
    for name, t in types.items():
        spec = AWS_SPECS[t["node_config"]["InstanceType"]]
        assert t["resources"].get("CPU") == spec["CPU"] and t["resources"].get("GPU", 0) == spec["GPU"], name
    assert types[cluster["head_node_type"]]["resources"].get("GPU", 0) == 0, "the head trains nothing"
    cfg = load_config(REPO / "search_spaces" / "aicity2020.yaml")
    s = cfg.scaling
    gpus = s.num_workers * s.gpus_per_worker + cfg.grid.trial_gpus
    cpus = s.num_workers * s.cpus_per_worker + cfg.grid.trial_cpus
    at_once = sum(t.get("max_workers", 0) * min(int(t["resources"].get("GPU", 0) // gpus), int(t["resources"]["CPU"] // cpus))
                  for t in types.values() if t["resources"].get("GPU", 0))
    # README: "On 8 g5.12xlarge nodes (32 GPUs, one trial per GPU) all 32 trials run at once"
    assert grid_size(cfg.grid.params) == 32 and at_once >= 32, at_once
    assert "all 32 trials run at once" in (REPO / "README.md").read_text()
