"""Import, once, the modules vreid's processes import, so Python writes their bytecode cache now.

`make` installs with `pip install --no-compile` (byte-compiling every one of the ~21,000 files pip
unpacks costs ~75 CPU-seconds here, most of them never imported). Without a cache, the first processes
of a run all compile the same modules at the same time: the two pytest workers, every Ray worker,
controller and helper actor starting in the first minutes, the MLflow server. Compiling what they import
once, two groups side by side, costs ~20 s of wall time on this 2-core machine; a fresh clone's
pytest run took ~45 s longer than a re-run without it (543 s against 491-499 s).

    python tools/warm_bytecode.py          # what the Makefile runs after installing
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import warnings

# imported by both sides below: first, alone
COMMON = ["numpy", "pandas", "pyarrow", "pyarrow.parquet", "yaml", "PIL.Image"]
# the model side (Train workers, the ensemble's actors, evaluation) and the cluster and tracking side
# (Ray's own processes on every head, Tune, Ray Data, the MLflow client), side by side. Only modules
# that many processes import: one a single process imports (matplotlib for the report, scikit-learn
# for the camera clusters, the MLflow server's app) is compiled once either way.
MODELS = ["torch", "torchvision", "timm"]
CLUSTER = ["ray", "ray.tune", "ray.data", "ray.dashboard.dashboard", "ray.dashboard.agent",
           "ray.dashboard.modules.job.job_manager", "ray._private.log_monitor", "ray.autoscaler._private.monitor",
           "ray.util.client.server.server", "ray._private.runtime_env.agent.main", "mlflow"]
# what needs both sides: Ray Train's torch backend, MLflow's torch flavour, every vreid module
LAST = ["ray.train.torch", "mlflow.pytorch", "vreid"]


def _import(names: list[str]) -> None:
    warnings.simplefilter("ignore")
    for name in names:
        importlib.import_module(name)
        if name == "vreid":  # every module of the package (lazily imported ones too), not its entry point
            import vreid

            for info in pkgutil.walk_packages(vreid.__path__, "vreid."):
                if not info.name.endswith("__main__"):
                    importlib.import_module(info.name)


def _run(*groups: list[str]) -> None:
    procs = [subprocess.Popen([sys.executable, __file__, "--only", *group]) for group in groups]
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"warm_bytecode: importing failed: {failed}")


def main(argv: list[str]) -> None:
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the point is the cache: also for the children
    sys.dont_write_bytecode = False
    if argv[:1] == ["--only"]:
        _import(argv[1:])
        return
    _run(COMMON)
    _run(MODELS, CLUSTER)
    _run(LAST)


if __name__ == "__main__":
    main(sys.argv[1:])
