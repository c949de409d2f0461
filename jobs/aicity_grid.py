"""Ray job entrypoint: a grid of Stage-I/II trainings on Ray Tune + Ray Train.

    ray job submit --working-dir . -- python jobs/aicity_grid.py search_spaces/aicity2020.yaml [--resume]

Inside a Ray job the driver joins the cluster ($RAY_ADDRESS is set by Ray). Use absolute paths (or
shared storage URIs) for data, storage_path and the MLflow tracking URI.
"""

import sys

from vreid.cli import main as vreid_main

if __name__ == "__main__":
    sys.exit(vreid_main(["grid", *sys.argv[1:]]))
