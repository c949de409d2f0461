"""``vreid data ...``: synthesize demo data, index a dataset, build the VehicleNet merge, stats, check.

Each handler turns its arguments into plain calls of the library (``vreid.data.*``); heavy
imports (pandas, pyarrow, PIL) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys

FORMATS = ("veri776", "cityflow", "vehicleid", "veriwild", "compcars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: synthesize demo data, index formats to parquet, VehicleNet merge")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    dsub.required = True

    s = dsub.add_parser("synth", help="write small synthetic datasets in all five official layouts")
    s.add_argument("--out", required=True, help="output folder (gets veri776/, cityflow/, ...)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ids", type=int, default=30, help="identities per source (default 30)")
    s.add_argument("--images-per-id", type=int, default=8, help="images per identity (default 8)")
    s.set_defaults(func=_synth)

    i = dsub.add_parser("index", help="read one dataset root into a parquet manifest")
    i.add_argument("format", choices=FORMATS)
    i.add_argument("root", help="the dataset's unpacked root folder")
    i.add_argument("--out", required=True, help="output FILE.parquet")
    i.add_argument("--split", choices=("small", "medium", "large", "full"),
                   help="VehicleID (800/1600/2400/13164 ids) or VeRi-Wild (3000/5000/10000) test size")
    i.add_argument("--seed", type=int, default=0, help="VehicleID query/gallery draw seed")
    i.add_argument("--draw", type=int, default=0, help="VehicleID draw index (0..9)")
    i.add_argument("--same-camera", choices=("keep", "remove"), default=None,
                   help="VeRi-Wild: keep (authors) or remove (fast-reid) same-id same-camera gallery images")
    i.set_defaults(func=_index)

    v = dsub.add_parser("vehiclenet", help="build the VehicleNet Stage-I/II, validation and test manifests")
    v.add_argument("--source", action="append", default=[], metavar="NAME=ROOT", required=True,
                   help="a dataset root, e.g. cityflow=/data/AIC19 (repeatable)")
    v.add_argument("--target", required=True, choices=("cityflow", "veri776", "vehicleid", "veriwild"))
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--train-only-others", action="store_true",
                   help="other sources contribute their training split only (default: all their images)")
    v.add_argument("--seed", type=int, default=0, help="VehicleID draw seed")
    v.add_argument("--test-split", choices=("small", "medium", "large"), default="small",
                   help="VehicleID / VeRi-Wild test size of the target")
    v.add_argument("--same-camera", choices=("keep", "remove"), default="keep", help="VeRi-Wild gallery rule")
    v.add_argument("--stage2-full-train", action="store_true",
                   help="Stage II on all target training ids (final CityFlow submission)")
    v.set_defaults(func=_vehiclenet)

    st = dsub.add_parser("stats", help="images / ids / cameras per dataset and split (VehicleNet Table I)")
    st.add_argument("manifest", help="FILE.parquet")
    st.set_defaults(func=_stats)

    c = dsub.add_parser("check", help="decode every image of a manifest; list unreadable or truncated ones")
    c.add_argument("manifest", help="FILE.parquet")
    c.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    c.add_argument("--allow-outside-root", action="store_true",
                   help="also open rows whose path lies outside the dataset root(s) the manifest was built from")
    c.set_defaults(func=_check)

    dt = dsub.add_parser("detect", help="re-detect vehicles with Mask R-CNN (local weights file) and write "
                                        "the boxes into a manifest (VehicleNet IV-C cropped images)")
    dt.add_argument("manifest", help="FILE.parquet")
    dt.add_argument("--weights", required=True, help="local torchvision maskrcnn_resnet50_fpn state dict (.pth)")
    dt.add_argument("--out", required=True, help="output FILE.parquet (the manifest with the new boxes)")
    dt.add_argument("--score-threshold", type=float, default=0.5, help="minimum detection score (default 0.5)")
    dt.add_argument("--min-size", type=int, default=800, help="the detector's input short side (default 800)")
    dt.set_defaults(func=_detect)


def _synth(args: argparse.Namespace) -> int:
    from vreid.data.synth import synthesize

    from vreid.errors import ConfigError
    from vreid.io import check_output_dir

    check_output_dir(args.out)
    if args.ids < 1 or args.images_per_id < 1:
        raise ConfigError(f"--ids and --images-per-id must be >= 1, got {args.ids} and {args.images_per_id}")
    roots = synthesize(args.out, seed=args.seed, ids=args.ids, images_per_id=args.images_per_id)
    for name, root in roots.items():
        print(f"{name}\t{root}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from vreid.data.schema import manifest_stats, write_manifest
    from vreid.errors import ConfigError
    from vreid.io import check_output_file

    fmt = args.format
    if args.split is not None and fmt not in ("vehicleid", "veriwild"):
        raise ConfigError(f"--split applies to vehicleid and veriwild only, not {fmt}")
    if args.split == "full" and fmt == "veriwild":
        raise ConfigError("--split full applies to vehicleid only (VeRi-Wild: small, medium or large)")
    if args.same_camera is not None and fmt != "veriwild":
        raise ConfigError(f"--same-camera applies to veriwild only, not {fmt}")
    if not 0 <= args.draw <= 9:
        raise ConfigError(f"--draw {args.draw}: expected a VehicleID draw index in 0..9 (the protocol's 10 draws)")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: expected an integer >= 0")
    check_output_file(args.out)
    if fmt == "veri776":
        from vreid.data.veri776 import read_veri776
        df = read_veri776(args.root)
    elif fmt == "cityflow":
        from vreid.data.cityflow import read_cityflow
        df = read_cityflow(args.root)
    elif fmt == "vehicleid":
        from vreid.data.vehicleid import read_vehicleid
        df = read_vehicleid(args.root, split=args.split or "small", seed=args.seed, draw=args.draw)
    elif fmt == "veriwild":
        from vreid.data.veriwild import read_veriwild
        df = read_veriwild(args.root, split=args.split or "small", same_camera=args.same_camera or "keep")
    else:
        from vreid.data.compcars import read_compcars
        df = read_compcars(args.root)
    write_manifest(df, args.out)
    print(manifest_stats(df).to_string(index=False))
    print(f"wrote {len(df)} rows to {args.out}")
    return 0


def _vehiclenet(args: argparse.Namespace) -> int:
    from vreid.data.vehiclenet import build_vehiclenet
    from vreid.errors import ConfigError
    from vreid.io import check_output_dir, recover_set

    sources = {}
    for item in args.source:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            raise ConfigError(f"--source {item!r}: expected NAME=ROOT, e.g. cityflow=/data/AIC19")
        if name in sources:
            raise ConfigError(f"--source {name} given twice")
        sources[name] = root
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: expected an integer >= 0")
    check_output_dir(args.out)
    recover_set(args.out)  # a run killed mid-swap: the old set back in place, dead runs' temporaries gone
    summary = build_vehiclenet(sources, args.target, args.out, train_only_others=args.train_only_others,
                               seed=args.seed, test_split=args.test_split, same_camera=args.same_camera,
                               stage2_full_train=args.stage2_full_train)
    s1 = summary["stage1"]
    print(f"stage1_train: {s1['images']} images, {s1['classes']} classes")
    for name, c in s1["per_source"].items():
        print(f"  {name}: {c['images']} images, {c['ids']} ids")
    print(f"stage2_train: {summary['stage2']['images']} images, {summary['stage2']['classes']} classes")
    for name in ("val_query", "val_gallery", "test_query", "test_gallery"):
        print(f"{name}: {summary[name]['images']} images")
    print(f"wrote {args.out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from vreid.data.schema import manifest_stats, read_manifest

    df = read_manifest(args.manifest)
    print(manifest_stats(df).to_string(index=False))
    return 0


def _check(args: argparse.Namespace) -> int:
    from vreid.data.check import check_images
    from vreid.data.schema import check_paths_under_roots, read_manifest

    from vreid.errors import ConfigError

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    df = read_manifest(args.manifest)
    check_paths_under_roots(df, args.manifest, args.allow_outside_root)
    bad = check_images(df["path"].tolist(), df["bbox"].tolist(), args.workers)
    for path, problem in bad:
        print(f"{path}: {problem}", file=sys.stderr)
    print(f"checked {len(df)} images: {len(bad)} unreadable or inconsistent")
    return 1 if bad else 0


def _detect(args: argparse.Namespace) -> int:
    from vreid.evaluate.detect import redetect_manifest

    s = redetect_manifest(args.manifest, args.weights, args.out, score_threshold=args.score_threshold,
                          min_size=args.min_size)
    print(f"{s['detected']} of {s['images']} images got a Mask R-CNN box; {len(s['no_detection'])} had no vehicle "
          f"detection and keep their previous box (none: the full image), listed in the metadata (detect.no_detection)")
    print(f"wrote {args.out}")
    return 0
