"""Ray job entrypoint: the AI City ensemble.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/aicity_ensemble.py \
        --selection /shared/vreid/ray_results/aicity2020/selection.json \
        --manifests /shared/vreid/manifests/cityflow --chain search_spaces/postprocess_aicity.yaml \
        --out /shared/vreid/outputs/aicity2020/ensemble --tracking-uri http://<head>:5000

The job runs in a temporary copy of the working directory: give absolute paths (or mounted shared
storage) for every input and output. Without --tracking-uri the ensemble run goes to the grid's MLflow
store (the selection's tracking_uri), nested under the grid's run.
"""

import argparse
import sys

from vreid.cli import main as vreid_main
from vreid.ensemble.cli import add_arguments

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="aicity_ensemble", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.parse_args()  # validate here for a clear usage message, then run through the CLI
    sys.exit(vreid_main(["ensemble", *sys.argv[1:]]))
