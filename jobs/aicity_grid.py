"""Ray job entrypoint: a grid of Stage-I/II trainings on Ray Tune + Ray Train.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/aicity_grid.py search_spaces/aicity2020.yaml [--resume] [--tracking-uri URI]

Inside a Ray job the driver joins the cluster ($RAY_ADDRESS is set by Ray); jobs/runtime_env.yaml puts
the submitted vreid package on every node. Use absolute paths (or shared storage URIs) for data,
storage_path and the MLflow tracking URI. Takes the arguments of `vreid grid`.
"""

import sys

from vreid.cli import main as vreid_main

if __name__ == "__main__":
    sys.exit(vreid_main(["grid", *sys.argv[1:]]))
