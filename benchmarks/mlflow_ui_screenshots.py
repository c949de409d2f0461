"""Screenshots of a grid in the MLflow UI (headless Chromium): the runs table and the compare view.

    python benchmarks/mlflow_ui_screenshots.py --tracking-uri sqlite:///$PWD/outputs/demo/mlflow.db \
        --experiment demo --out outputs/demo/ui

Starts `mlflow server` on a free loopback port over the given store (or uses --server-url), asks it for
the experiment's runs, and has Chromium (Debian's `chromium`: `apt-get install -y chromium`) save
`runs_table.png` (the experiment page), `compare.png` (the compare view of the finished trials),
`parent_run.png` (the grid's run page) and `model_version.png` (the registry's champion). A check to
look at, not a test: it is not run by the test suite or CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tracking_uri: str, workdir: Path, artifacts: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    log = open(workdir / "mlflow_server.log", "w")
    proc = subprocess.Popen([str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", tracking_uri,
                             *(["--artifacts-destination", artifacts] if artifacts else [])], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("mlflow server did not start:\n" + (workdir / "mlflow_server.log").read_text()[-2000:])


def screenshot(chromium: str, url: str, out: Path, size: str, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vreid-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed on {url}:\n{proc.stderr[-2000:]}")
    print(f"{out}  <-  {url}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", help="the grid's store (sqlite:///... or http://...)")
    p.add_argument("--artifacts-destination", help="the store's proxied artifact root, when it had one (mlflow server)")
    p.add_argument("--server-url", help="an MLflow server already serving the store (skips starting one)")
    p.add_argument("--experiment", required=True, help="the grid's experiment name")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--size", default="1680,2000", help="window size W,H")
    p.add_argument("--wide-size", default="2900,900", help="window size of the runs table (its columns scroll right)")
    p.add_argument("--wait-ms", type=int, default=20000, help="virtual time Chromium gives the page to render")
    args = p.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    proc = None
    if args.server_url:
        url = args.server_url.rstrip("/")
    elif args.tracking_uri and args.tracking_uri.startswith("http"):
        url = args.tracking_uri.rstrip("/")
    elif args.tracking_uri:
        proc, url = start_server(args.tracking_uri, out, args.artifacts_destination)
    else:
        raise SystemExit("give --tracking-uri or --server-url")
    try:
        from mlflow import MlflowClient

        client = MlflowClient(url)
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise SystemExit(f"no experiment {args.experiment!r} at {url}")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        trials = [r for r in runs if r.data.tags.get("vreid.role") == "trial" and r.info.status == "FINISHED"]
        parent = [r for r in runs if r.data.tags.get("vreid.role") == "grid"]
        eid = exp.experiment_id
        from vreid.tracking import GRID_VIEW_KEY, SHARED_VIEW_PREFIX

        if SHARED_VIEW_PREFIX + GRID_VIEW_KEY in exp.tags:  # the trials view `vreid grid` saves
            screenshot(chromium, f"{url}/#/experiments/{eid}/runs?viewStateShareKey={GRID_VIEW_KEY}",
                       out / "runs_table.png", args.wide_size, args.wait_ms)
        else:
            screenshot(chromium, f"{url}/#/experiments/{eid}/runs", out / "runs_table.png", args.size, args.wait_ms)
        if trials:
            ids = urllib.parse.quote(json.dumps([r.info.run_id for r in trials]))
            screenshot(chromium, f"{url}/#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([eid]))}",
                       out / "compare.png", args.size, args.wait_ms)
        if parent:
            screenshot(chromium, f"{url}/#/experiments/{eid}/runs/{parent[0].info.run_id}", out / "parent_run.png",
                       args.size, args.wait_ms)
        name = f"vreid-{args.experiment}"
        try:
            version = client.get_model_version_by_alias(name, "champion").version
            screenshot(chromium, f"{url}/#/models/{name}/versions/{version}", out / "model_version.png", args.size, args.wait_ms)
        except Exception as exc:  # no registry entry: say so, keep the other screenshots
            print(f"no registered model {name}@champion: {exc}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    sys.exit(main())
