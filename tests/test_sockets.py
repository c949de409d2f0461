"""Nothing vreid starts locally listens beyond loopback.

The sockets are read from the kernel (psutil) for every process the test started: the local cluster
``vreid train`` / ``grid`` / ``ensemble`` start through ``init_ray`` (GCS, raylet, dashboard and runtime-env
agents, workers, the driver), and the session's test cluster (``ray start --head`` as tests/conftest.py
runs it) with a driver attached to it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]

LIST_SOCKETS = r'''
import json, os, sys
import psutil

def listening(marker):
    me = psutil.Process()
    procs = {p.pid: p for p in [me] + me.children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        if marker and any(marker in c for c in (p.info["cmdline"] or [])):
            procs[p.pid] = p
    out = []
    for p in procs.values():
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append([p.pid, p.name(), c.laddr.ip, c.laddr.port])
        except psutil.Error:
            pass
    return out
'''


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _run(script: str, env: dict) -> list:
    proc = subprocess.run([sys.executable, "-c", LIST_SOCKETS + script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "platform"), **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.integration  # starts a local Ray cluster
def test_local_cluster_of_init_ray_listens_on_loopback_only():
    """``init_ray`` as ``vreid train`` / ``grid`` / ``ensemble`` call it, with a task and an actor running."""
    sockets = _run(r'''
import ray
from vreid.distributed.ray_train import init_ray
init_ray(num_cpus=2)

@ray.remote(num_cpus=0.5)
def task():
    return os.getpid()

@ray.remote(num_cpus=0.5)
class Actor:
    def pid(self):
        return os.getpid()

a = Actor.remote()
ray.get([task.remote(), a.pid.remote()])
found = listening(ray._private.worker._global_node.get_session_dir_path())
ray.shutdown()
print(json.dumps(found))
''', {"VREID_RAY_TMPDIR": tempfile.mkdtemp(prefix="vs", dir="/tmp"), "RAY_ADDRESS": ""})  # short socket paths
    names = {s[1] for s in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check saw the cluster's own servers
    assert any("DashboardAgent" in n for n in names) and any("RuntimeEnvAgent" in n for n in names), sockets
    wide = [s for s in sockets if not _loopback(s[2])]
    assert not wide, f"listening beyond loopback: {wide}"


def test_test_cluster_and_an_attached_driver_listen_on_loopback_only(ray_cluster):
    """The session's ``ray start --head`` cluster (conftest.py), and a driver process attached to it."""
    sockets = _run(r'''
import ray
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)

@ray.remote(num_cpus=0.1)
def task():
    return os.getpid()

ray.get(task.remote())
found = listening(os.environ["MARKER"])
ray.shutdown()
print(json.dumps(found))
''', {"RAY_ADDRESS": ray_cluster["address"], "MARKER": ray_cluster["temp_dir"], "RAY_AUTH_MODE": "disabled"})
    names = {s[1] for s in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets
    wide = [s for s in sockets if not _loopback(s[2])]
    assert not wide, f"listening beyond loopback: {wide}"
