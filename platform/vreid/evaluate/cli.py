"""``vreid evaluate`` (a dataset protocol, optionally the Table VI chain) and ``vreid submission check``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vreid.errors import EvaluationInputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a checkpoint or saved features with a dataset protocol",
        description="Run VeRi-776 / CityFlow-validation / VehicleID / VeRi-Wild evaluation and print the table. "
                    "With --chain, run the post-processing chain (VehicleNet Table VI) and print mAP per step.")
    p.add_argument("--protocol", required=True, choices=["veri776", "cityflow", "vehicleid", "veriwild"])
    p.add_argument("--query", required=True, help="query manifest (.parquet)")
    p.add_argument("--gallery", required=True, help="gallery manifest (.parquet)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--features-dir", action="append",
                     help="folder with query.parquet/.npy and gallery.parquet/.npy (repeat for an ensemble; "
                          "optional query_crop/gallery_crop for the crop step)")
    src.add_argument("--checkpoint", action="append", help="training checkpoint directory (repeatable)")
    p.add_argument("--camera-features-dir",
                   help="with --chain: a camera model's saved features (query.parquet/.npy, gallery.parquet/.npy), "
                        "clustered for camera_verification.source: clusters (VehicleNet IV-C)")
    p.add_argument("--camera-checkpoint",
                   help="with --chain: a camera model checkpoint (trained with data.label_by: camera) whose "
                        "features are clustered for camera_verification.source: clusters")
    p.add_argument("--save-table", help="with --chain: also write the per-step table as JSON to this file")
    p.add_argument("--split", default="", help="setting name shown in the table (small/medium/large, ...)")
    p.add_argument("--same-camera", choices=["keep", "remove"], default=None,
                   help="VeRi-Wild junk rule (default keep: the dataset authors' protocol)")
    p.add_argument("--chain", help="post-processing chain YAML (e.g. search_spaces/postprocess_aicity.yaml)")
    p.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    p.add_argument("--ap-mode", choices=["standard", "top100", "trapezoid"], default="standard")
    p.add_argument("--draws", type=int, default=10, help="VehicleID: number of seeded gallery draws")
    p.add_argument("--seed", type=int, default=0, help="VehicleID: seed of the draws")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="with --checkpoint: add the horizontally flipped image's feature (default: the "
                        "recipe's protocol -- VehicleNet yes, SSBVER no)")
    p.add_argument("--scales", type=_scales, default=None, metavar="S[,S...]",
                   help="with --checkpoint: area scale factors, e.g. 1,0.9,0.8 (default: the recipe's protocol "
                        "-- VehicleNet on cityflow 1,0.9,0.8, otherwise 1)")
    p.add_argument("--json", dest="json_out", help="also write the protocol's rows (full precision) to this JSON file")
    p.add_argument("--save-features", help="with --checkpoint: save the extracted features into this folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)

    s = subparsers.add_parser("submission", help="AI City track2 submission tools")
    ssub = s.add_subparsers(dest="submission_command", metavar="ACTION")
    ssub.required = True
    c = ssub.add_parser("check", help="validate a track2.txt file")
    c.add_argument("file")
    c.add_argument("--queries", type=int, required=True, help="number of queries (1052 for AI City)")
    c.add_argument("--gallery", type=int, required=True, help="number of gallery images (18290 for AI City)")
    c.set_defaults(func=_check_submission)


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"scales must be positive area factors, got {text!r}")
    return values


def checkpoint_views(info: dict, protocol: str, flip=None, scales=None) -> tuple[bool, tuple[float, ...]]:
    """The views a checkpoint is evaluated with: on the protocol it was validated with, the views its
    training validated with (recorded in ``model_config.json``: the recipe's defaults unless the run's
    ``eval.flip`` / ``eval.scales`` said otherwise); on another protocol the recipe's defaults there
    (:func:`vreid.evaluate.features.default_views`); then the ``--flip`` / ``--scales`` overrides."""
    from vreid.evaluate.features import default_views

    d_flip, d_scales = default_views(info.get("recipe"), protocol)
    recorded = info.get("eval") or {}
    if info.get("target") == protocol and "flip" in recorded and recorded.get("scales"):
        d_flip, d_scales = bool(recorded["flip"]), tuple(float(v) for v in recorded["scales"])
    return (d_flip if flip is None else bool(flip)), tuple(d_scales if scales is None else scales)


def _read_manifest(path: str):
    import pandas as pd

    try:
        from vreid.data.schema import read_manifest
    except ImportError:  # the data layer is optional for saved-features evaluation
        read_manifest = None
    if read_manifest is not None:
        return read_manifest(path)
    if not Path(path).is_file():
        raise EvaluationInputError(f"{path}: manifest not found")
    return pd.read_parquet(path)


def _align(feats, index, df, what: str, source: Path):
    """Rows of saved features in the manifest's order, matched by image_name (or path)."""
    import numpy as np

    key = "image_name" if "image_name" in index.columns and "image_name" in df.columns else "path"
    if key not in index.columns or key not in df.columns:
        raise EvaluationInputError(f"{source}: cannot match features to the {what} manifest (no image_name/path)")
    pos = {name: i for i, name in enumerate(index[key].astype(str))}
    missing = [n for n in df[key].astype(str) if n not in pos]
    if missing:
        raise EvaluationInputError(f"{source}: no features for {len(missing)} {what} images, e.g. {missing[0]}")
    return feats[np.array([pos[n] for n in df[key].astype(str)], dtype=np.int64)]


def _features_from_dir(folder: str, q_df, g_df):
    from vreid.evaluate.features import load_features

    d = Path(folder)
    qf, qi = load_features(d / "query.parquet")
    gf, gi = load_features(d / "gallery.parquet")
    out = [_align(qf, qi, q_df, "query", d / "query.parquet"), _align(gf, gi, g_df, "gallery", d / "gallery.parquet")]
    crops = [None, None]
    if (d / "query_crop.parquet").is_file() and (d / "gallery_crop.parquet").is_file():
        a, ai = load_features(d / "query_crop.parquet")
        b, bi = load_features(d / "gallery_crop.parquet")
        crops = [_align(a, ai, q_df, "query", d), _align(b, bi, g_df, "gallery", d)]
    return out, crops


def _features_from_checkpoint(ckpt: str, q_df, g_df, args, want_crops: bool):
    from vreid.evaluate.features import extract_features, save_features
    from vreid.train.checkpoint import load_model_for_inference

    model, info = load_model_for_inference(ckpt)
    size = tuple(info.get("image_size", (256, 256)))
    flip, scales = checkpoint_views(info, args.protocol, args.flip, args.scales)
    kw = dict(image_size=size, batch_size=args.batch_size, progress=not args.no_progress, flip=flip, scales=scales)
    qf = extract_features(model, q_df, use_bbox=False, **kw)
    gf = extract_features(model, g_df, use_bbox=False, **kw)
    crops = [None, None]
    if want_crops:
        crops = [extract_features(model, q_df, use_bbox=True, **kw), extract_features(model, g_df, use_bbox=True, **kw)]
    if args.save_features:
        out = Path(args.save_features) / Path(ckpt).name
        save_features(out / "query.parquet", qf, q_df)
        save_features(out / "gallery.parquet", gf, g_df)
        if want_crops:
            save_features(out / "query_crop.parquet", crops[0], q_df)
            save_features(out / "gallery_crop.parquet", crops[1], g_df)
        print(f"features saved under {out}")
    return [qf, gf], crops


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from vreid.evaluate import protocols
    from vreid.evaluate.chain import PostProcessConfig, format_table, run_chain

    _check_arguments(args)
    if args.save_table and not args.chain:
        raise EvaluationInputError("--save-table writes the chain's table: give --chain")
    q_df, g_df = _read_manifest(args.query), _read_manifest(args.gallery)
    config = PostProcessConfig.from_yaml(args.chain) if args.chain else None
    want_crops = bool(config and config.crop_average)
    if want_crops:
        from vreid.evaluate.chain import NO_BOX_MESSAGE, boxed_rows

        if boxed_rows(q_df) + boxed_rows(g_df) == 0:
            raise EvaluationInputError(f"{args.chain}: {NO_BOX_MESSAGE}")
    models, crop_sets = [], []
    for src in args.features_dir or []:
        f, c = _features_from_dir(src, q_df, g_df)
        models.append(f)
        crop_sets.append(c)
    for ckpt in args.checkpoint or []:
        f, c = _features_from_checkpoint(ckpt, q_df, g_df, args, want_crops)
        models.append(f)
        crop_sets.append(c)
    qf, gf = models[0]

    kw = dict(metric=args.metric, ap_mode=args.ap_mode)
    if args.protocol == "vehicleid":
        import pandas as pd

        feats = np.concatenate([qf, gf])
        df = pd.concat([q_df, g_df], ignore_index=True)
        rows = protocols.vehicleid(feats, df, setting=args.split, n_draws=args.draws, seed=args.seed, **kw)
    elif args.protocol == "veriwild":
        rows = protocols.veriwild(qf, gf, q_df, g_df, same_camera=args.same_camera or "keep", split=args.split, **kw)
    else:
        if args.same_camera == "keep":
            raise EvaluationInputError(f"--same-camera keep is not the {args.protocol} protocol "
                                       "(same id + same camera is junk there)")
        runner = protocols.veri776 if args.protocol == "veri776" else protocols.cityflow
        rows = runner(qf, gf, q_df, g_df, **kw)
        if args.split:
            rows[0]["setting"] = args.split
    print(protocols.format_rows(rows))
    if args.json_out:
        import json

        from vreid.io import atomic_write_text

        atomic_write_text(args.json_out, json.dumps(rows, indent=2, default=float) + "\n")

    if config is not None:
        if args.protocol == "veriwild" and args.same_camera:
            config.remove_same_camera = args.same_camera == "remove"
        elif args.protocol == "vehicleid":
            raise EvaluationInputError("--chain needs a query/gallery protocol, not vehicleid's random draws")
        q_crop = [c[0] for c in crop_sets] if want_crops else None
        g_crop = [c[1] for c in crop_sets] if want_crops else None
        if want_crops and any(c is None for c in q_crop):
            raise EvaluationInputError("the chain's crop_average step needs crop features: query_crop/gallery_crop "
                                       "in each --features-dir, or use --checkpoint")
        cam_q = cam_g = None
        if args.camera_features_dir and args.camera_checkpoint:
            raise EvaluationInputError("give --camera-features-dir or --camera-checkpoint, not both")
        if args.camera_features_dir:
            (cam_q, cam_g), _ = _features_from_dir(args.camera_features_dir, q_df, g_df)
        elif args.camera_checkpoint:
            (cam_q, cam_g), _ = _features_from_checkpoint(args.camera_checkpoint, q_df, g_df, args, False)
        cv = config.camera_verification
        if cv.enabled and cv.source == "clusters" and cam_q is None:
            raise EvaluationInputError(f"{args.chain}: camera_verification.source is 'clusters': give "
                                       "--camera-features-dir or --camera-checkpoint (a camera model, "
                                       "trained with data.label_by: camera)")
        _, table = run_chain([m[0] for m in models], [m[1] for m in models], q_df, g_df, config,
                             q_crop=q_crop, g_crop=g_crop, q_camera_features=cam_q, g_camera_features=cam_g)
        print()
        print(f"post-processing chain {args.chain}:")
        print(format_table(table))
        if args.save_table:
            import json

            from vreid.io import atomic_write_text

            atomic_write_text(args.save_table, json.dumps(table, indent=2, default=float))
            print(f"table written to {args.save_table}")
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    from vreid.errors import ConfigError
    from vreid.io import check_output_dir, read_text_file

    for flag, value in (("--draws", args.draws), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.chain:
        read_text_file(args.chain, "chain config", ConfigError)
    if args.save_features:
        check_output_dir(args.save_features, "--save-features")


def _check_submission(args: argparse.Namespace) -> int:
    from vreid.ensemble.submission import validate_track2
    from vreid.errors import ConfigError

    for flag, value in (("--queries", args.queries), ("--gallery", args.gallery)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")

    validate_track2(args.file, args.queries, args.gallery)
    print(f"{args.file}: OK ({args.queries} queries x {min(100, args.gallery)} gallery numbers)")
    return 0
