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
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept manifest rows whose image path lies outside the dataset root(s) it was built from")
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
    check_arguments(args)
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
        q, g, vq, vg = manifests_from_folder(args.manifests, q, g, vq, vg)
    scales = parse_scales(args.scales)
    if not args.allow_outside_root:
        from vreid.data.schema import check_paths_under_roots, read_manifest

        for path in {p for p in (q, g, vq, vg) if p and Path(p).is_file()}:
            check_paths_under_roots(read_manifest(path), path)
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


def check_arguments(args: argparse.Namespace) -> None:
    """Everything about the arguments that can be checked before Ray starts."""
    import math

    from vreid.errors import ConfigError
    from vreid.io import check_output_dir, read_text_file, recover_set

    if "://" in args.out:
        raise ConfigError(f"--out {args.out}: write to an absolute path on shared storage (mounted)")
    check_output_dir(args.out)
    recover_set(args.out)  # a run killed mid-swap: the old set back, dead runs' temporaries (and _work) gone
    for flag, value in (("--num-actors", args.num_actors), ("--batch-size", args.batch_size), ("--top-k", args.top_k)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if not (math.isfinite(args.cpus_per_actor) and args.cpus_per_actor > 0):
        raise ConfigError(f"--cpus-per-actor must be > 0, got {args.cpus_per_actor}")
    parse_scales(args.scales)
    if args.chain:
        read_text_file(args.chain, "chain config", ConfigError)
    if args.selection:
        check_selection(args.selection)


def parse_scales(text: str) -> tuple[float, ...]:
    import math

    from vreid.errors import ConfigError

    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ConfigError(f"--scales: expected comma-separated numbers, got {text!r}") from None
    bad = [s for s in scales if not (math.isfinite(s) and 0 < s <= 1)]
    if bad:
        raise ConfigError(f"--scales {text}: {bad[0]} is not a fraction of the image area in (0, 1]")
    return scales


def check_selection(path: str) -> dict:
    """A selection file (``selection.json`` of ``vreid grid``, or its folder) with the expected shape."""
    from pathlib import Path

    from vreid.errors import ConfigError
    from vreid.io import read_json_file

    p = Path(path)
    if p.is_dir():
        p = p / "selection.json"
    data = read_json_file(p, "selection file", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object with a 'selected' list, got {type(data).__name__}")
    selected = data.get("selected")
    if not isinstance(selected, list):
        raise ConfigError(f"{p}: 'selected' must be a list of trials, got {selected!r}")
    if not selected:
        raise ConfigError(f"{p}: the selection is empty ('selected' lists no trial; did every trial fail?)")
    for i, item in enumerate(selected):
        if not isinstance(item, dict):
            raise ConfigError(f"{p}: selected[{i}] must be an object with a 'checkpoint_uri', got {item!r}")
        uri = item.get("checkpoint_uri")
        if not isinstance(uri, str) or not uri:
            raise ConfigError(f"{p}: selected[{i}].checkpoint_uri must be a checkpoint path, got {uri!r}")
    return data


def manifests_from_folder(folder: str, q, g, vq, vg):
    """The test / validation manifests of a ``vreid data vehiclenet`` folder; each pair whole or absent."""
    from pathlib import Path

    from vreid.errors import ConfigError

    m = Path(folder)
    if not m.is_dir():
        raise ConfigError(f"--manifests {m}: folder not found")
    found = {}
    for pair in (("test_query", "test_gallery"), ("val_query", "val_gallery")):
        present = [n for n in pair if (m / f"{n}.parquet").is_file()]
        if len(present) == 1:
            missing = next(n for n in pair if n not in present)
            raise ConfigError(f"--manifests {m}: {missing}.parquet not found (beside {present[0]}.parquet)")
        found.update({n: str(m / f"{n}.parquet") for n in present})
    if not found:
        raise ConfigError(f"--manifests {m}: no test_query/test_gallery.parquet nor val_query/val_gallery.parquet "
                          "found (expected a `vreid data vehiclenet` output folder)")
    return (q or found.get("test_query"), g or found.get("test_gallery"), vq or found.get("val_query"),
            vg or found.get("val_gallery"))


def print_tables(tables: dict) -> None:
    import pandas as pd

    for key, title in (("single_vs_ensemble", "Single models vs the ensemble (validation)"),
                       ("postprocess", "Post-processing chain (validation, Table VI)")):
        if tables.get(key):
            print(f"\n{title}")
            print(pd.DataFrame(tables[key]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
