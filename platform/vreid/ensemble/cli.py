"""``vreid ensemble``: the AI City ensemble job from the command line (same as jobs/aicity_ensemble.py)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("models (one of)")
    src.add_argument("--selection", help="a grid's selection.json (or its experiment folder)")
    src.add_argument("--experiment", help="MLflow experiment (grid) name: take the runs tagged selected / the best --top-k")
    src.add_argument("--checkpoint", action="append", default=[], help="an explicit checkpoint folder (repeatable)")
    p.add_argument("--top-k", type=int, default=None, help="use only the best k of the selection (default: all selected)")
    p.add_argument("--manifests", help="a `vreid data vehiclenet` output folder: test_* and val_* manifests")
    p.add_argument("--query", help="test query manifest (ranked in track2.txt)")
    p.add_argument("--gallery", help="test gallery manifest")
    p.add_argument("--val-query", help="validation query manifest (with identities: prints Table VI)")
    p.add_argument("--val-gallery", help="validation gallery manifest")
    p.add_argument("--camera-checkpoint", help="a camera classifier (trained with data.label_by: camera) whose "
                   "feature clusters drive camera verification (chain: camera_verification.source: clusters)")
    p.add_argument("--chain", help="post-processing chain YAML (default: all steps off but the ensemble)")
    p.add_argument("--out", required=True, help="output folder (absolute path or a mounted shared path)")
    p.add_argument("--scales", default="1,0.9,0.8", help="scale jitter, fractions of the image area (default 1,0.9,0.8)")
    p.add_argument("--no-flip", action="store_true", help="do not add horizontally flipped views")
    p.add_argument("--num-actors", type=int, default=1, help="Ray Data actor pool size")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the selection's, $MLFLOW_TRACKING_URI, or <out>/../mlflow.db)")
    p.add_argument("--log-experiment", help="MLflow experiment for the ensemble run (default: the grid's)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ensemble", help="fuse the best-k models' flip/scale features, post-process, write track2.txt")
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vreid import tracking
    from vreid.ensemble.job import EnsembleInputs, ModelRef, models_from_mlflow, models_from_selection, run_ensemble
    from vreid.errors import VreidError

    chosen = [x for x in (args.selection, args.experiment, args.checkpoint or None) if x]
    if len(chosen) != 1:
        raise VreidError("give exactly one of --selection, --experiment or --checkpoint")
    uri = args.tracking_uri
    experiment = args.log_experiment
    parent = None  # the grid's run, when the ensemble is logged into the grid's own store
    if args.selection:
        from vreid.distributed.grid import load_selection

        sel = load_selection(args.selection)
        models = models_from_selection(args.selection, args.top_k)
        uri = uri or sel.get("tracking_uri")
        experiment = experiment or sel.get("grid")
        if uri == sel.get("tracking_uri") and experiment == sel.get("grid"):
            parent = sel.get("parent_run_id")
        source = str(Path(args.selection).resolve())
    elif args.experiment:
        uri = uri or tracking.default_tracking_uri(Path(args.out).resolve().parent)
        models = models_from_mlflow(args.experiment, uri, args.top_k or 8)
        experiment = experiment or args.experiment
        source = f"mlflow:{args.experiment}"
    else:
        models = [ModelRef(str(Path(c).resolve())) for c in args.checkpoint]
        source = "checkpoints"
    q, g, vq, vg = args.query, args.gallery, args.val_query, args.val_gallery
    if args.manifests:
        m = Path(args.manifests)
        q = q or (str(m / "test_query.parquet") if (m / "test_query.parquet").is_file() else None)
        g = g or (str(m / "test_gallery.parquet") if (m / "test_gallery.parquet").is_file() else None)
        vq = vq or (str(m / "val_query.parquet") if (m / "val_query.parquet").is_file() else None)
        vg = vg or (str(m / "val_gallery.parquet") if (m / "val_gallery.parquet").is_file() else None)
    try:
        scales = tuple(float(s) for s in args.scales.split(","))
    except ValueError:
        raise VreidError(f"--scales: expected comma-separated numbers, got {args.scales!r}") from None
    inp = EnsembleInputs(
        models=models, out_dir=str(Path(args.out).resolve()), test_query=q, test_gallery=g, val_query=vq,
        val_gallery=vg, chain=args.chain, scales=scales, flip=not args.no_flip, num_actors=args.num_actors,
        batch_size=args.batch_size, use_gpu=args.gpu, cpus_per_actor=args.cpus_per_actor,
        experiment=experiment, tracking_uri=uri, source=source,
        camera_checkpoint=str(Path(args.camera_checkpoint).resolve()) if args.camera_checkpoint else None,
        parent_run_id=parent,
    )
    result = run_ensemble(inp)
    print_tables(result["tables"])
    if result["submission"]:
        print(f"submission: {result['submission']}")
    print(f"outputs: {result['out_dir']}")
    if result.get("mlflow_run_id"):
        print(f"MLflow run: {result['mlflow_run_id']}")
    return 0


def print_tables(tables: dict) -> None:
    import pandas as pd

    for key, title in (("single_vs_ensemble", "Single models vs the ensemble (validation)"),
                       ("postprocess", "Post-processing chain (validation, Table VI)")):
        if tables.get(key):
            print(f"\n{title}")
            print(pd.DataFrame(tables[key]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
