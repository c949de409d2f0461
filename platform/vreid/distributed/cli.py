"""``vreid grid`` (Ray Tune grid of Ray Train runs) and ``vreid compare`` (the grid from MLflow)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grid", help="run a search space (Stage-I/II per trial) on Ray Tune, select the best k")
    p.add_argument("space", help="a YAML config with a 'grid' section (search_spaces/*.yaml)")
    p.add_argument("--name", help="experiment name (default: the config's name)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted grid; finished trials are kept")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of the local Ray cluster")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: output.mlflow_tracking_uri, "
                   "$MLFLOW_TRACKING_URI, or sqlite:///<output.root>/mlflow.db)")
    p.add_argument("--shared-storage", metavar="MOUNT", help="a mount every node sees (NFS, EFS): a local "
                   "storage_path or SQLite store under it is accepted on a multi-node cluster (default $VREID_SHARED_STORAGE)")
    p.add_argument("--progress-steps", type=int, default=None, metavar="N",
                   help="a progress line every N optimiser steps inside each epoch (default 50; 0: off)")
    p.add_argument("--verbose", action="store_true", help="stream the Ray workers' logs (default: one line per epoch)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept manifest rows whose image path lies outside the dataset root(s) it was built from")
    p.set_defaults(func=_grid)

    c = sub.add_parser("compare", help="print a grid's trials from MLflow, sorted by validation mAP")
    c.add_argument("name", help="grid (MLflow experiment) name")
    c.add_argument("--root", default="outputs", help="output root holding mlflow.db (default: outputs)")
    c.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or <root>/mlflow.db)")
    c.add_argument("--csv", help="also write the table as CSV")
    c.add_argument("--markdown", help="also write the table as markdown")
    c.set_defaults(func=_compare)


def _grid(args: argparse.Namespace) -> int:
    from vreid.config import load_config
    from vreid.distributed.grid import run_grid

    from vreid.distributed.ray_train import init_ray

    from vreid.errors import ConfigError
    from vreid.io import read_text_file
    from vreid.preflight import check_grid_config, check_num_cpus

    check_num_cpus(args.num_cpus)
    read_text_file(args.space, "grid config", ConfigError)
    cfg = load_config(args.space, args.overrides)
    check_grid_config(cfg, args.space, args.allow_outside_root)  # every grid point, before Ray starts
    if args.tracking_uri:
        cfg.output.mlflow_tracking_uri = args.tracking_uri
    init_ray(num_cpus=args.num_cpus, log_to_driver=args.verbose)
    extra = {"progress_every_steps": args.progress_steps} if args.progress_steps is not None else None
    selection = run_grid(cfg, name=args.name, resume=args.resume, num_cpus=args.num_cpus, shared=args.shared_storage,
                         extra_config=extra)
    print(f"selected {len(selection['selected'])} of {len(selection['finished'])} finished trials "
          f"({len(selection['failed'])} failed) -> {selection['path']}")
    for item in selection["failed"]:
        print(f"  failed trial {item['trial_id']}: {item.get('error')}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from vreid import tracking
    from vreid.io import atomic_write_text

    uri = args.tracking_uri or tracking.default_tracking_uri(args.root, create=False)
    tracking.require_existing_store(uri)
    table = tracking.compare_table(args.name, uri)
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 50):
        print(table.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index=False))
    if args.markdown:
        atomic_write_text(args.markdown, table.to_markdown(index=False, floatfmt=".4f"))
    return 0
